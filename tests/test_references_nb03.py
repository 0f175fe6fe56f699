"""The references of notebook 03's hidden tests, against independent computations; none of them
is importable from the package students use."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch

import ioi_anomalies
from grader.references import nb03 as ref
from ioi_anomalies import FLIP_GRID, logit_diff, make_ioi_metric


def test_no_reference_is_importable_from_the_package():
    own = [n for n, f in vars(ref).items() if inspect.isfunction(f) and f.__module__ == ref.__name__]
    assert own
    for name in own + ["z_patch_hooks", "patch_heads_z"]:
        assert not hasattr(ioi_anomalies, name), name


def test_grid_datasets_and_their_cells(ioi):
    grid = ref.make_grid_datasets(ioi)
    assert set(grid) == set(FLIP_GRID)
    for cell, flip in FLIP_GRID.items():
        expected = ioi.sentences if flip is None else ioi.gen_flipped_prompts(flip).sentences
        assert grid[cell].sentences == expected
        assert ref.classify_signals(ioi, grid[cell]) == cell


def test_patch_z_hook_patches_only_the_listed_heads():
    z, new = torch.randn(2, 5, 4, 3), torch.randn(2, 5, 4, 3)
    out = ref.patch_z_hook([0, 2], new)(z.clone(), None)
    torch.testing.assert_close(out[:, :, [0, 2]], new[:, :, [0, 2]])
    torch.testing.assert_close(out[:, :, [1, 3]], z[:, :, [1, 3]])


def test_patched_logit_diff_agrees_with_transformer_lens(model, ioi, abc):
    from transformer_lens import patching

    metric = make_ioi_metric(model, ioi, abc)
    _, abc_cache = model.run_with_cache(abc.toks)
    tl = patching.get_act_patch_attn_head_out_all_pos(model, ioi.toks, abc_cache, metric)
    ours = torch.zeros_like(tl)
    for l, h in itertools.product(range(model.cfg.n_layers), range(model.cfg.n_heads)):
        ld = ref.patched_logit_diff(model, ioi, abc, [(l, h)])
        ours[l, h] = (ld - metric.clean_logit_diff) / (metric.clean_logit_diff - metric.corrupted_logit_diff)
    torch.testing.assert_close(ours, tl, atol=1e-5, rtol=1e-4)
    model.reset_hooks()


def test_grids(model, ioi):
    datasets = ref.make_grid_datasets(ioi)
    heads = [(1, 0), (1, 3), (2, 2)]
    grid = ref.patch_grid(model, ioi, datasets, heads)
    assert grid[0, 0].item() == pytest.approx(logit_diff(model(ioi.toks), ioi).item(), abs=1e-5)
    assert grid.std() > 1e-3, "the flips change the logit difference"
    per_head = ref.per_head_grid(model, ioi, datasets, heads[:2])
    torch.testing.assert_close(per_head[1], ref.patch_grid(model, ioi, datasets, heads[1:2]))


def test_coefficients_are_full_swings():
    t, p, c = 1.5, 4.5, 0.3
    grid = torch.tensor([[c + t / 2 + p / 2, c + t / 2 - p / 2], [c + p / 2, c - p / 2], [c - t / 2 + p / 2, c - t / 2 - p / 2]])
    assert ref.fit_signal_coefficients(grid) == pytest.approx((t, p), abs=1e-6)
    # with balanced, centred codes the fit is the mean swing, even for a grid that is not linear
    g = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    assert ref.fit_signal_coefficients(g) == pytest.approx(((g[0] - g[2]).mean().item(), (g[:, 0] - g[:, 1]).mean().item()), abs=1e-5)
