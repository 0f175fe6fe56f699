"""Checks used by the notebooks' tests: failures say what is wrong, not just AssertionError.

``check_close`` reports a wrong type, a wrong shape, or the largest differences (by index, e.g.
which heads) and by how much; ``check_heads`` compares sets of (layer, head).
"""

from __future__ import annotations

from typing import Iterable

import torch


class CheckFailed(AssertionError):
    """A test's answer is wrong; the message says how.

    ``what`` names the property that failed (e.g. "double of X"), apart from the detail (shapes,
    values): the grader shows only ``what`` when the check belongs to a hidden test.
    """

    def __init__(self, message: str, what: str | None = None):
        super().__init__(message)
        self.what = what


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double()
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except Exception as exc:  # noqa: BLE001
        raise CheckFailed(f"{what}: expected a tensor or numbers, got {type(x).__name__}", what) from exc


def check_close(actual, expected, what: str, atol: float = 1e-4, rtol: float = 1e-3, index_names: str | None = None) -> None:
    """Raise :class:`CheckFailed` unless ``actual`` matches ``expected`` (shape and values).

    ``index_names`` (e.g. "layer.head") formats the positions of the worst mismatches.
    """
    if actual is None:
        raise CheckFailed(f"{what}: got None; did the function return its result?", what)
    a, e = _as_tensor(actual, what), _as_tensor(expected, what)
    if a.shape != e.shape:
        raise CheckFailed(f"{what}: expected shape {tuple(e.shape)}, got {tuple(a.shape)}", what)
    if torch.isnan(a).any() and not torch.isnan(e).any():
        raise CheckFailed(f"{what}: contains NaN", what)
    bad = (a - e).abs() > atol + rtol * e.abs()
    if bad.any():
        diff = (a - e).abs()
        worst = diff.flatten().argsort(descending=True)[: min(3, int(bad.sum()))]
        parts = []
        for i in worst.tolist():
            idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), a.shape)) if a.ndim else ()
            name = ".".join(map(str, idx)) if index_names == "layer.head" and len(idx) == 2 else str(idx)
            parts.append(f"at {name}: got {a.flatten()[i].item():.4g}, expected {e.flatten()[i].item():.4g}")
        raise CheckFailed(
            f"{what}: {int(bad.sum())} of {a.numel()} values differ (largest difference {diff.max().item():.3g}); "
            + "; ".join(parts),
            what,
        )


def check_heads(actual: Iterable, expected: Iterable, what: str) -> None:
    """Raise unless ``actual`` and ``expected`` are the same set of (layer, head) pairs."""
    try:
        a = {(int(l), int(h)) for l, h in actual}
    except Exception as exc:  # noqa: BLE001
        raise CheckFailed(f"{what}: expected a list of (layer, head) pairs, got {actual!r}", what) from exc
    e = {(int(l), int(h)) for l, h in expected}
    if a != e:
        missing = ", ".join(f"{l}.{h}" for l, h in sorted(e - a)) or "none"
        extra = ", ".join(f"{l}.{h}" for l, h in sorted(a - e)) or "none"
        raise CheckFailed(f"{what}: missing {missing}; unexpected {extra}", what)
