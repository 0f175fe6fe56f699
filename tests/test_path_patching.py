"""The fast engine against the plain implementation (the oracle), and attribution patching."""

from __future__ import annotations

import pytest
import torch

from ioi_anomalies import make_ioi_metric, make_logit_diff_metric
from ioi_anomalies.hooks import act_name
from grader.references.nb01 import path_patch as path_patch_senders_plain
from grader.references.nb01 import path_patch_logits, z_cache
from grader.references.nb01 import sweep_senders as path_patch_heads_to_heads_plain
from ioi_anomalies.path_patching import (
    PackedTokens,
    PathPatchingEngine,
    Weights,
    attribution_path_patching,
    compare_with_exact,
    forward_clean,
    path_patch_heads_to_heads,
    path_patch_senders,
)


def test_engine_forward_is_the_models_forward(model, ioi):
    run = forward_clean(Weights.of(model), ioi.toks)
    _, cache = model.run_with_cache(ioi.toks)
    for l in range(model.cfg.n_layers):
        torch.testing.assert_close(run.resid_pre[l], cache[act_name("resid_pre", l)], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run.z[l], cache[act_name("z", l)], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "receivers,inp",
    [([(2, 0), (2, 1)], "k"), ([(1, 2), (2, 3)], "q"), ([(1, 0), (2, 3)], "v"), ([(2, 1)], "q"), ([(1, 1)], "v")],
)
def test_engine_equals_the_plain_implementation(model, ioi, abc, receivers, inp):
    metric = make_ioi_metric(model, ioi, abc)
    plain = path_patch_heads_to_heads_plain(model, receivers, inp, metric, ioi, abc)
    fast = path_patch_heads_to_heads(model, receivers, inp, metric, ioi, abc, progress=False)
    assert fast.shape == plain.shape
    assert (fast - plain).abs().max() <= 1e-4
    assert plain.abs().max() > 1e-4, "the comparison must see real effects"


def test_chunking_does_not_change_results(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    sets = [[(l, h)] for l in range(2) for h in range(model.cfg.n_heads)]
    big = PathPatchingEngine(model, ioi, abc, metric, memory_budget_mb=4096).run(sets, [(2, 2)], "k", progress=False)
    tiny = PathPatchingEngine(model, ioi, abc, metric, memory_budget_mb=1e-3)
    assert tiny.chunk_size() == 1
    torch.testing.assert_close(tiny.run(sets, [(2, 2)], "k", progress=False), big, atol=1e-6, rtol=1e-5)


def test_multi_sender_equals_plain(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    for senders in ([(0, 1), (1, 2)], [(0, 0), (0, 3), (1, 1)], [(2, 0)]):
        a = path_patch_senders(model, senders, [(2, 0), (2, 2)], "k", metric, ioi, abc)
        b = path_patch_senders_plain(model, senders, [(2, 0), (2, 2)], "k", metric, ioi, abc)
        assert abs(a - b) <= 1e-4, senders


def test_a_metric_without_end_shortcut_uses_full_logits(model, ioi, abc):
    ld = make_logit_diff_metric(ioi)

    def plain_metric(logits):  # no from_end_logits: the engine must compute full logits
        return ld(logits)

    fast = path_patch_heads_to_heads(model, [(2, 3)], "v", plain_metric, ioi, abc, progress=False)
    plain = path_patch_heads_to_heads_plain(model, [(2, 3)], "v", plain_metric, ioi, abc)
    assert (fast - plain).abs().max() <= 1e-4


def test_attribution_patching_tracks_the_exact_result(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    exact = path_patch_heads_to_heads(model, [(2, 0), (2, 3)], "v", metric, ioi, abc, progress=False)
    approx = attribution_path_patching(model, [(2, 0), (2, 3)], "v", metric, ioi, abc)
    stats = compare_with_exact(exact, approx)
    assert approx.shape == exact.shape
    assert stats["pearson"] > 0.9, stats
    assert not torch.equal(exact, approx), "a first-order estimate is not exact"


def test_engine_refuses_leftover_hooks(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    model.add_hook(act_name("z", 0), lambda z, hook: z)
    try:
        with pytest.raises(RuntimeError, match="reset_hooks"):
            PathPatchingEngine(model, ioi, abc, metric)
    finally:
        model.reset_hooks()


def test_engine_refuses_a_model_it_cannot_reproduce(tiny_model_dir, ioi, abc):
    from transformer_lens.model_bridge import TransformerBridge

    raw = TransformerBridge.boot_transformers(str(tiny_model_dir), device="cpu")
    raw.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    metric = make_logit_diff_metric(ioi)
    with pytest.raises(ValueError, match="does not reproduce"):
        PathPatchingEngine(raw, ioi, abc, metric)


def test_attribution_patching_is_the_slope_of_plain_path_patching(model, ioi, abc):
    """A head's estimate minus the clean metric is the derivative, at 0, of the plain path
    patching with that head's change scaled by a small factor (central differences); receivers in
    three layers, one of them layer 0. (The logit difference: unlike the IOI metric it is not 0 on
    the clean run.)"""
    metric = make_logit_diff_metric(ioi)
    receivers = [(0, 2), (1, 1), (2, 3)]
    approx = attribution_path_patching(model, receivers, "q", metric, ioi, abc)
    assert approx.shape == (2, model.cfg.n_heads)
    with torch.no_grad():
        clean = float(metric(model(ioi.toks)))
    orig_z, new_z = z_cache(model, ioi.toks), z_cache(model, abc.toks)
    eps = 0.02
    for l, h in [(0, 2), (1, 0), (1, 1)]:
        ends = []
        for scale in (eps, -eps):
            scaled = {name: orig_z[name] + scale * (new_z[name] - orig_z[name]) for name in orig_z}
            ends.append(float(metric(path_patch_logits(model, [(l, h)], receivers, "q", ioi.toks, orig_z, scaled))))
        slope = (ends[0] - ends[1]) / (2 * eps)
        assert abs(slope) > 5e-4, "the check must see a real effect"
        assert abs(approx[l, h].item() - clean - slope) < 1e-5, (l, h, approx[l, h].item() - clean, slope)


def test_attribution_patching_into_layer_0_has_no_senders(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    assert attribution_path_patching(model, [(0, 1)], "k", metric, ioi, abc).shape == (0, model.cfg.n_heads)


def test_path_patching_rejects_senders_the_model_does_not_have(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    with pytest.raises(ValueError, match="sender 0.9 is not a head"):
        path_patch_senders(model, [(0, 9)], [(2, 0)], "k", metric, ioi, abc)
    with pytest.raises(ValueError, match="sender 5.0 is not a head"):
        PathPatchingEngine(model, ioi, abc, metric).run([[(0, 1)], [(5, 0)]], [(2, 0)], "k", progress=False)


def test_packed_tokens_keep_positions_up_to_end_and_compute_from_the_first_difference():
    clean = torch.arange(20).view(4, 5)
    new = clean.clone()
    new[0, 1] = new[1, 2] = new[3, 0] = -1  # prompt 2 never differs: only its END is computed
    end = torch.tensor([4, 2, 3, 2])
    tokens = PackedTokens.build(clean, new, end, every_position=False)
    # sorted by length (3, 3, 4, 5): prompts 1, 3, 2, 0
    assert tokens.index.tolist() == [5, 6, 7, 15, 16, 17, 10, 11, 12, 13, 0, 1, 2, 3, 4]
    assert tokens.groups == [(0, 2, 3), (6, 1, 4), (10, 1, 5)]
    assert tokens.unorder.tolist() == [3, 0, 2, 1]
    assert tokens.active.tolist() == [2, 3, 4, 5, 9, 11, 12, 13, 14]
    assert tokens.end_active.tolist() == [0, 3, 4, 8]
    assert torch.equal(tokens.pack(clean), tokens.index)
    active = torch.full((1, tokens.n_active), -1)
    filled = tokens.fill(tokens.pack(clean), active)[0]
    assert filled.tolist() == [5, 6, -1, -1, -1, -1, 10, 11, 12, -1, 0, -1, -1, -1, -1]
    assert torch.equal(tokens.only_active(filled[None]), active)

    every = PackedTokens.build(clean, new, end, every_position=True)
    assert every.index.tolist() == list(range(20)) and every.groups == [(0, 4, 5)]
    assert every.n_active == every.n_tokens == 20 and every.end_active.tolist() == [4, 9, 14, 19]
