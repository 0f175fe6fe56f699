"""What the IOI experiments measure: the logit difference and the normalised IOI metric.

The *logit difference* of a prompt is ``logit(IO) - logit(S)`` at the ``end`` position (the token
just before the answer). It is positive when the model prefers the right name, and, unlike a
probability, it is linear in the residual stream, so it can be split into the contributions of
single heads (direct logit attribution).

The *normalised IOI metric* places a patched run between the two unpatched runs:
``(patched - clean) / (clean - corrupted)``, with ``clean`` the logit difference on the IOI
prompts and ``corrupted`` the one on the ABC prompts, both measured with no hooks. It is 0 when
patching changes nothing and -1 when it brings the model down to ABC level.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from .hooks import assert_no_hooks


def logit_diff(
    logits: Float[Tensor, "batch seq d_vocab"],
    dataset,
    per_prompt: bool = False,
) -> Float[Tensor, ""] | Float[Tensor, "batch"]:
    """``logit(IO) - logit(S)`` at each prompt's ``end`` position; the mean unless ``per_prompt``.

    IO and S are the dataset's ``io_tokenIDs`` / ``s_tokenIDs``; for a flipped dataset pass the
    *original* dataset to score against the original names.
    """
    if logits.ndim != 3 or logits.shape[0] != dataset.N:
        raise ValueError(f"expected logits [N={dataset.N}, seq, d_vocab], got {tuple(logits.shape)}.")
    rows = torch.arange(dataset.N, device=logits.device)
    end = dataset.word_idx["end"].to(logits.device)
    at_end = logits[rows, end]
    io = torch.as_tensor(dataset.io_tokenIDs, device=logits.device)
    s = torch.as_tensor(dataset.s_tokenIDs, device=logits.device)
    diff = at_end[rows, io] - at_end[rows, s]
    return diff if per_prompt else diff.mean()


def ioi_metric(
    logits: Float[Tensor, "batch seq d_vocab"],
    dataset,
    clean_logit_diff: float,
    corrupted_logit_diff: float,
) -> Float[Tensor, ""]:
    """``(logit_diff(logits) - clean) / (clean - corrupted)``: 0 = unchanged, -1 = ABC level."""
    denom = clean_logit_diff - corrupted_logit_diff
    if abs(denom) < 1e-8:
        raise ValueError("clean and corrupted logit differences are equal: the metric is undefined.")
    return (logit_diff(logits, dataset) - clean_logit_diff) / denom


@torch.inference_mode()
def baseline_logit_diffs(model, clean, corrupted) -> tuple[float, float]:
    """Logit differences of the clean and corrupted prompts (scored on the clean names), no hooks."""
    assert_no_hooks(model, "baseline_logit_diffs")
    clean_ld = logit_diff(model(clean.toks), clean).item()
    corrupted_ld = logit_diff(model(corrupted.toks), clean).item()
    return clean_ld, corrupted_ld


def make_ioi_metric(model, clean, corrupted) -> Callable[[Tensor], Tensor]:
    """The normalised IOI metric as a one-argument function of patched logits.

    The baselines are measured once, here, on a model with no hooks.
    """
    clean_ld, corrupted_ld = baseline_logit_diffs(model, clean, corrupted)

    def metric(logits: Tensor) -> Tensor:
        return ioi_metric(logits, clean, clean_ld, corrupted_ld)

    metric.clean_logit_diff = clean_ld  # type: ignore[attr-defined]
    metric.corrupted_logit_diff = corrupted_ld  # type: ignore[attr-defined]
    return metric
