"""Seeds for hidden tests: different for every submission, identical when one file is regraded.

Hidden tests draw their inputs (prompts, heads, random patterns) from ``seed(label)`` or
``generator(label)`` instead of fixed numbers, so one round of feedback cannot be turned into a
lookup table. The judge calls :func:`use_submission` with a key derived from the submission's
content and the course secret before it runs a submission's tests; anywhere else (executing a
solution notebook, the report, the test suite) the key is empty and the seeds are fixed.

Hidden tests must pass for *every* seed: choose inputs whose correct answers are non-trivial
(receivers with senders below them, values that differ from zeros) whatever the draw.

By default the key is the submission's own (``hidden_seed_pool = 0`` in grader_config.toml): every
submission and resubmission draws other inputs. A course that prefers speed sets
``hidden_seed_pool = N``: the keys then come from a pool per assignment (:func:`pooled`), N keys
derived from the course secret and the assignment, of which the submission's own key picks one; two
submissions draw different inputs unless they land on the same key, and the judge keeps the
references of each key (``grader/refcache.py``) instead of recomputing them per submission.
"""

from __future__ import annotations

import hashlib
import hmac

POOL_SIZE = 8
_key: bytes = b""


def pooled(secret: bytes, assignment: str, submission_key: bytes, size: int = POOL_SIZE) -> bytes:
    """The key of the assignment's pool that ``submission_key`` picks (``size`` keys from the course secret)."""
    if size < 1:
        raise ValueError(f"the pool needs at least one key, not {size}")
    pick = int.from_bytes(hashlib.sha256(b"pick\0" + bytes(submission_key)).digest()[:8], "big") % size
    return hmac.new(bytes(secret), f"hidden-test pool\0{assignment}\0{pick}".encode(), hashlib.sha256).digest()


def current_key() -> bytes:
    """The key the seeds derive from now (empty outside the judge)."""
    return _key


def use_submission(key: bytes) -> None:
    """Set the key the hidden tests' seeds derive from (the judge does this per submission)."""
    global _key
    _key = bytes(key)


def seed(label: str) -> int:
    """A seed in [0, 2**31) for the hidden input called ``label``."""
    digest = hashlib.sha256(_key + b"\0" + label.encode()).digest()
    return int.from_bytes(digest[:8], "big") % (1 << 31)


def generator(label: str):
    """A ``torch.Generator`` seeded with ``seed(label)``."""
    import torch

    return torch.Generator().manual_seed(seed(label))
