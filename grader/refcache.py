"""Hidden-test references computed once and kept with the grader.

A reference function decorated with :func:`cached` computes its value the first time it is asked
with given arguments and reads it back afterwards. The key digests everything the value depends
on: the code (the grader's references, ``grader/hidden.py`` and the ``ioi_anomalies`` package),
the assignment's source notebook, the hidden-test seed in use, the function and its arguments by
content (a model by its weights, a dataset by its tokens and fields, a metric by its code and the
values it closes over). An argument that cannot be digested (a function from the student's
notebook, an unknown object) or a model with hooks attached skips the cache: the reference is
computed as before.

Entries live in ``<course>/.cache/references/`` (folders 0700, files 0600), next to the course's
secret, which the sandbox never sees. Each is written to a temporary file and renamed into place;
it carries a checksum and its key, and one that does not check out is recomputed and rewritten,
never trusted. Values are plain data only (tensors, numbers, strings, lists, tuples, dicts), read
back with ``torch.load(weights_only=True)``.

The judge calls :func:`configure` per submission; anywhere else (the solution notebooks, the
test suite) the cache is off and every reference is computed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_DEPTH = 24
_dir: Path | None = None
_context: bytes = b""
stats = {"hits": 0, "misses": 0, "uncached": 0, "corrupt": 0, "seconds": 0.0}
_code_digest: str | None = None
_object_digests: dict[int, tuple[object, bytes]] = {}  # id -> (the object, kept alive; its digest)


class Uncacheable(Exception):
    """An argument that cannot be digested by content: the reference is computed, not cached."""


def configure(directory: Path | None, context: str = "") -> None:
    """Cache references under ``directory`` (None: off); ``context`` is e.g. the source notebook's digest."""
    global _dir, _context
    _dir = Path(directory) if directory is not None else None
    _context = context.encode()
    for k in stats:
        stats[k] = 0.0 if k == "seconds" else 0


def code_digest() -> str:
    """SHA-256 of the code a reference's value can depend on (computed once per process)."""
    global _code_digest
    if _code_digest is None:
        import ioi_anomalies

        h = hashlib.sha256()
        roots = [ROOT / "grader" / "references", Path(ioi_anomalies.__file__).resolve().parent]
        files = [ROOT / "grader" / "hidden.py", Path(__file__).resolve()]
        for r in roots:
            files += sorted(r.rglob("*.py"))
        for f in files:
            h.update(str(f.relative_to(f.parents[1])).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
        _code_digest = h.hexdigest()
    return _code_digest


# ------------------------------------------------------------------ digests by content
def _remember(obj, make) -> bytes:
    hit = _object_digests.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    d = make()
    _object_digests[id(obj)] = (obj, d)
    return d


def model_digest(model) -> bytes:
    """A model by its class, configuration and weights (once per model object and process)."""
    import torch

    def make():
        h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
        h.update(repr(getattr(model, "cfg", None)).encode())
        for name, t in list(model.state_dict().items()):
            h.update(name.encode() + b"\0")
            _feed_tensor(h, t if isinstance(t, torch.Tensor) else torch.as_tensor(t))
        return h.digest()

    return _remember(model, make)


def _tokenizer_digest(tok) -> bytes:
    def make():
        h = hashlib.sha256(f"{type(tok).__qualname__}|{getattr(tok, 'name_or_path', '')}".encode())
        for k, v in sorted(tok.get_vocab().items()):
            h.update(f"{k}\0{v}\0".encode())
        for k in ("bos_token", "eos_token", "pad_token", "padding_side"):
            h.update(repr(getattr(tok, k, None)).encode())
        return h.digest()

    return _remember(tok, make)


def _feed_tensor(h, t) -> None:
    import torch

    t = t.detach()
    if t.layout != torch.strided or t.is_quantized:
        raise Uncacheable("a tensor that is not dense")
    h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
    flat = t.to("cpu").contiguous().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def _feed(h, obj, depth: int = 0) -> None:
    import torch

    if depth > MAX_DEPTH:
        raise Uncacheable("nested too deeply")
    t = type(obj)
    if obj is None or t in (bool, int, float, str, bytes, complex):
        h.update(f"{t.__name__}:{obj!r};".encode())
    elif isinstance(obj, torch.Tensor):
        _feed_tensor(h, obj)
    elif t.__module__ == "numpy" and hasattr(obj, "dtype"):
        import numpy as np

        if isinstance(obj, np.generic):
            _feed(h, obj.item(), depth + 1)
        elif isinstance(obj, np.ndarray) and obj.dtype != object:
            h.update(f"ndarray{obj.dtype.str}{obj.shape}".encode() + np.ascontiguousarray(obj).tobytes())
        else:
            raise Uncacheable("a numpy array of Python objects")
    elif t in (torch.device, torch.dtype):
        h.update(f"{t.__name__}:{obj};".encode())
    elif t in (list, tuple):
        h.update(f"{t.__name__}[{len(obj)}".encode())
        for x in obj:
            _feed(h, x, depth + 1)
        h.update(b"]")
    elif t in (set, frozenset):
        h.update(b"set{" + b"".join(sorted(_digest(x, depth + 1) for x in obj)) + b"}")
    elif t is dict:
        h.update(b"dict{" + b"".join(sorted(_digest(k, depth + 1) + _digest(v, depth + 1) for k, v in obj.items())) + b"}")
    elif isinstance(obj, torch.nn.Module):
        from ioi_anomalies.hooks import count_user_hooks

        if hasattr(obj, "hook_dict") and count_user_hooks(obj):
            raise Uncacheable("a model with hooks attached")
        h.update(b"model:" + model_digest(obj))
    elif hasattr(obj, "get_vocab") and "tokeniz" in t.__module__:
        h.update(b"tokenizer:" + _tokenizer_digest(obj))
    elif t is types.FunctionType:
        _feed_function(h, obj, depth)
    elif t is functools.partial:
        h.update(b"partial(")
        _feed(h, obj.func, depth + 1)
        _feed(h, obj.args, depth + 1)
        _feed(h, dict(obj.keywords), depth + 1)
        h.update(b")")
    elif (t.__module__ or "").split(".")[0] == "ioi_anomalies" and isinstance(getattr(obj, "__dict__", None), dict):
        h.update(f"object:{t.__module__}.{t.__qualname__}(".encode())
        _feed(h, dict(vars(obj)), depth + 1)
        h.update(b")")
    else:
        raise Uncacheable(f"a {t.__name__}")


def _feed_code(h, code, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Uncacheable("nested too deeply")
    h.update(code.co_code + repr(code.co_names).encode() + repr(code.co_varnames).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _feed_code(h, c, depth + 1)
        else:
            h.update(repr(c).encode())


def _feed_function(h, fn, depth: int) -> None:
    import sys

    module = sys.modules.get(fn.__module__ or "")
    if module is None or getattr(module, "__dict__", None) is not fn.__globals__:
        raise Uncacheable("a function defined in the notebook (its globals are not digested)")
    h.update(f"function:{fn.__module__}.{fn.__qualname__}(".encode())
    _feed_code(h, fn.__code__, depth + 1)
    _feed(h, fn.__defaults__, depth + 1)
    _feed(h, dict(fn.__kwdefaults__ or {}), depth + 1)
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = None
        _feed(h, value, depth + 1)
    h.update(b")")


def _digest(obj, depth: int = 0) -> bytes:
    h = hashlib.sha256()
    _feed(h, obj, depth)
    return h.digest()


def key(fn, args: tuple, kwargs: dict) -> str:
    """The cache key of ``fn(*args, **kwargs)`` in the current context and hidden seed."""
    from . import hidden

    h = hashlib.sha256(b"ioi-reference-cache 1\0")
    h.update(code_digest().encode() + b"\0" + _context + b"\0" + hashlib.sha256(hidden.current_key()).digest())
    h.update(f"{fn.__module__}.{fn.__qualname__}\0".encode())
    _feed(h, args)
    _feed(h, dict(kwargs))
    return h.hexdigest()


# ------------------------------------------------------------------ the store
def _plain(v, depth: int = 0) -> bool:
    import torch

    if depth > MAX_DEPTH:
        return False
    if v is None or type(v) in (bool, int, float, str):
        return True
    if type(v) is torch.Tensor:
        return v.layout == torch.strided and not v.is_quantized
    if type(v) in (list, tuple):
        return all(_plain(x, depth + 1) for x in v)
    if type(v) is dict:
        return all(type(k) in (int, float, str, tuple) and _plain(k, depth + 1) and _plain(x, depth + 1) for k, x in v.items())
    return False


def _path(k: str) -> Path:
    assert _dir is not None
    return _dir / k[:2] / k


def load(k: str):
    """The stored value for key ``k``; ``KeyError`` if there is none or it does not check out (then it is removed)."""
    import torch

    path = _path(k)
    try:
        raw = path.read_bytes()
    except OSError:
        raise KeyError(k) from None
    body = raw[32:]
    try:
        if len(raw) < 32 or hashlib.sha256(body).digest() != raw[:32]:
            raise ValueError("checksum")
        entry = torch.load(io.BytesIO(body), weights_only=True)
        if type(entry) is not dict or entry.get("key") != k or "value" not in entry:
            raise ValueError("not this entry")
        return entry["value"]
    except Exception:  # noqa: BLE001 - corrupt or foreign: recomputed and rewritten
        stats["corrupt"] += 1
        path.unlink(missing_ok=True)
        raise KeyError(k) from None


def store(k: str, value) -> bool:
    """Write ``value`` under ``k`` atomically (0600 in a 0700 folder); plain data only."""
    import torch

    if not _plain(value):
        return False
    path = _path(k)
    for d in (_dir, path.parent):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    buf = io.BytesIO()
    torch.save({"key": k, "value": value}, buf)
    body = buf.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(hashlib.sha256(body).digest() + body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def cached(fn):
    """Decorate a reference: its value is computed once per key and read back afterwards."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _active
        t0 = time.perf_counter()
        _active += 1
        try:
            return _lookup(fn, args, kwargs)
        finally:
            _active -= 1
            if not _active:  # time of the outermost reference only
                stats["seconds"] += time.perf_counter() - t0

    return wrapper


_active = 0


def _lookup(fn, args, kwargs):
    if _dir is None:
        return fn(*args, **kwargs)
    try:
        k = key(fn, args, kwargs)
    except Uncacheable:
        stats["uncached"] += 1
        return fn(*args, **kwargs)
    try:
        value = load(k)
        stats["hits"] += 1
        return value
    except KeyError:
        pass
    value = fn(*args, **kwargs)
    stats["misses"] += 1
    try:
        store(k, value)
    except OSError:
        pass  # a read-only or full disk: the grade does not depend on the cache
    return value
