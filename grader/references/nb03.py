"""References for the hidden tests of notebook 03 (positional vs token signal).

They live with the grader, which the judge imports; the package students import does not hold
them.
"""

from __future__ import annotations

import torch

from ioi_anomalies import FLIP_GRID, logit_diff
from ioi_anomalies.hooks import assert_no_hooks, run_and_cache
from grader.refcache import cached  # computed once per model, source, hidden seed and arguments

# Codes of the fit, centred so that each coefficient is a full swing (original minus inverted).
TOKEN_CODES = torch.tensor([0.5, 0.0, -0.5])  # rows: original, random, inverted
POSITION_CODES = torch.tensor([0.5, -0.5])  # columns: original, inverted


def make_grid_datasets(dataset) -> dict:
    return {cell: dataset if flip is None else dataset.gen_flipped_prompts(flip) for cell, flip in FLIP_GRID.items()}


def classify_signals(orig, flipped) -> tuple[int, int]:
    rows = torch.arange(orig.N)
    w = orig.word_idx
    s2 = flipped.toks[rows, w["S2"]]
    if (s2 == orig.toks[rows, w["S2"]]).all():
        row = 0
    elif (s2 == orig.toks[rows, w["IO"]]).all():
        row = 2
    else:
        row = 1
    col = 0 if (s2 == flipped.toks[rows, w["S1"]]).all() else 1
    return row, col


def patch_z_hook(heads: list[int], new_z: torch.Tensor):
    """A hook_z hook that copies the given heads' z (every position) from ``new_z``."""
    heads = [int(h) for h in heads]

    def hook(z, hook):
        z[:, :, heads] = new_z[:, :, heads].to(z.device)
        return z

    return hook


@cached
@torch.inference_mode()
def patched_logit_diff(model, orig, new, heads) -> float:
    """Logit difference on ``orig`` with ``heads``' z taken from a run on ``new`` (all positions)."""
    assert_no_hooks(model, "patched_logit_diff")
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(int(l), []).append(int(h))
    names = [f"blocks.{l}.attn.hook_z" for l in sorted(by_layer)]
    _, cache = run_and_cache(model, new.toks, names, return_logits=False)
    hooks = [(n, patch_z_hook(by_layer[l], cache[n])) for l, n in zip(sorted(by_layer), names)]
    logits, _ = run_and_cache(model, orig.toks, [], fwd_hooks=hooks)
    return logit_diff(logits, orig).item()


@cached
def patch_grid(model, orig, datasets, heads) -> torch.Tensor:
    out = torch.zeros(3, 2)
    for (row, col), ds in datasets.items():
        out[row, col] = patched_logit_diff(model, orig, ds, heads)
    return out


@cached
def per_head_grid(model, orig, datasets, heads) -> torch.Tensor:
    return torch.stack([patch_grid(model, orig, datasets, [h]) for h in heads])


def fit_signal_coefficients(grid: torch.Tensor) -> tuple[float, float]:
    """(token, position) full-swing effects of the least-squares fit c + t*token + p*position."""
    X = torch.stack([torch.ones(6), TOKEN_CODES.repeat_interleave(2), POSITION_CODES.repeat(3)], 1).double()
    coef = torch.linalg.lstsq(X, grid.reshape(6, 1).double()).solution.flatten()
    return coef[1].item(), coef[2].item()
