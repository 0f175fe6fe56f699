"""Each helper against an independent computation, and hook hygiene for every helper."""

from __future__ import annotations

import itertools

import pytest
import torch

from ioi_anomalies import (
    circuit_keep_masks,
    component_dla,
    generate_repeated_tokens,
    head_dla,
    head_type_scores,
    hook_snapshot,
    logit_diff,
    make_ioi_metric,
    mean_z_by_template,
    path_patch_senders,
    repeated_token_loss,
)
from grader.references.nb01 import path_patch as path_patch_senders_plain
from grader.references.nb01 import path_patch_logits
from grader.references.nb01 import sweep_senders as path_patch_heads_to_heads_plain
from ioi_anomalies.hooks import act_name, run_and_cache
from tools import hooks


def test_logit_diff_is_a_direct_gather(model, ioi):
    logits = model(ioi.toks).detach()
    expected = torch.tensor(
        [
            logits[i, ioi.word_idx["end"][i], ioi.io_tokenIDs[i]] - logits[i, ioi.word_idx["end"][i], ioi.s_tokenIDs[i]]
            for i in range(ioi.N)
        ]
    )
    torch.testing.assert_close(logit_diff(logits, ioi, per_prompt=True), expected)
    torch.testing.assert_close(logit_diff(logits, ioi), expected.mean())
    with pytest.raises(ValueError, match="expected logits"):
        logit_diff(logits[:3], ioi)


def test_ioi_metric_is_zero_clean_and_minus_one_corrupted(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    with torch.no_grad():
        assert abs(float(metric(model(ioi.toks)))) < 1e-6
        assert abs(float(metric(model(abc.toks))) + 1) < 1e-5


def test_component_dla_rebuilds_the_logit_difference(model, ioi):
    values, labels = component_dla(model, ioi)
    total = logit_diff(model(ioi.toks), ioi)
    torch.testing.assert_close(values.sum(), total, atol=1e-4, rtol=1e-4)
    assert len(values) == len(labels)


def test_head_dla_matches_the_component_decomposition(model, ioi):
    values, labels = component_dla(model, ioi)
    dla = head_dla(model, ioi)
    for l, h in itertools.product(range(model.cfg.n_layers), range(model.cfg.n_heads)):
        torch.testing.assert_close(dla[l, h], values[labels.index(f"{l}.{h}")], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(head_dla(model, ioi, ln_position="last"), dla), "the LN position must matter"


def test_mean_z_by_template_against_a_loop(model, abc):
    means = mean_z_by_template(model, abc)
    _, cache = model.run_with_cache(abc.toks)
    for l in range(model.cfg.n_layers):
        z = cache[act_name("z", l)]
        for group in abc.groups:
            avg = sum(z[i] for i in group) / len(group)
            for i in group:
                torch.testing.assert_close(means[l, i], avg, atol=1e-5, rtol=1e-5)


def test_circuit_keep_masks_keep_each_class_at_its_position(model, ioi):
    circuit = {"name mover": [(2, 1)], "s2 inhibition": [(1, 0), (1, 3)], "induction": [(0, 2)]}
    masks = circuit_keep_masks(model, ioi, circuit)
    assert len(masks) == model.cfg.n_layers
    rows = torch.arange(ioi.N)
    expected = [torch.zeros(ioi.N, ioi.toks.shape[1], model.cfg.n_heads, dtype=torch.bool) for _ in range(model.cfg.n_layers)]
    for (l, h), pos in [((2, 1), "end"), ((1, 0), "end"), ((1, 3), "end"), ((0, 2), "S2")]:
        expected[l][rows, ioi.word_idx[pos], h] = True
    for got, exp in zip(masks, expected):
        assert torch.equal(got, exp)
    with pytest.raises(ValueError, match="no position to keep"):
        circuit_keep_masks(model, ioi, {"made up": [(0, 0)]})


def test_head_type_scores_against_explicit_loops(model):
    toks = generate_repeated_tokens(model.cfg.d_vocab, seq_len=7, batch=3, seed=11)
    assert torch.equal(toks[:, :7], toks[:, 7:])
    assert torch.equal(toks, generate_repeated_tokens(model.cfg.d_vocab, seq_len=7, batch=3, seed=11))
    scores = head_type_scores(model, toks)
    _, cache = model.run_with_cache(toks)
    # the reference's windows (seq_len 7): destinations and the source each attends to
    windows = {"induction": [(d, d - 6) for d in range(7, 14)], "duplicate": [(d, d - 7) for d in range(7, 14)],
               "previous": [(d, d - 1) for d in range(1, 8)]}
    for l in range(model.cfg.n_layers):
        p = cache[act_name("pattern", l)]
        for kind, pairs in windows.items():
            assert len(pairs) == 7
            vals = [p[b, :, d, s] for b in range(3) for d, s in pairs]
            torch.testing.assert_close(scores[kind][l], torch.stack(vals).mean(0), atol=1e-6, rtol=0)
        # the whole diagonal is not the window: the scores must tell them apart on this model
        assert not torch.allclose(scores["previous"][l], p.diagonal(-1, dim1=-2, dim2=-1).mean(dim=(0, -1)), atol=1e-6)
    first, second = repeated_token_loss(model, toks)
    assert first > 0 and second > 0


def test_path_patching_from_a_sender_at_or_above_the_receivers_is_exactly_zero(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    for sender in [(1, 0), (2, 3)]:
        assert path_patch_senders_plain(model, [sender], [(1, 1)], "k", metric, ioi, abc) == 0.0
        assert path_patch_senders(model, [sender], [(1, 1)], "k", metric, ioi, abc) == 0.0


def test_all_senders_together_equal_patching_every_lower_head(model, ioi, abc):
    """Path patching every head below the receivers = activation patching all their z, then
    reading only the receivers' inputs from that run."""
    metric = make_ioi_metric(model, ioi, abc)
    receivers = [(2, 0), (2, 3)]
    senders = [(l, h) for l in range(2) for h in range(model.cfg.n_heads)]
    for inp in "qkv":
        got = path_patch_senders_plain(model, senders, receivers, inp, metric, ioi, abc)
        _, new_cache = model.run_with_cache(abc.toks)
        with model.hooks(fwd_hooks=[hooks.replace("z", l, new_cache[act_name("z", l)]) for l in range(2)]):
            _, patched = model.run_with_cache(ioi.toks)
        with model.hooks(fwd_hooks=[hooks.patch_heads(inp, 2, [0, 3], patched[act_name(inp, 2)])]), torch.no_grad():
            expected = float(metric(model(ioi.toks)))
        assert abs(got - expected) < 1e-5, inp
        assert abs(got) > 1e-4, "the check must see a real effect"


def test_plain_sweep_equals_single_sender_runs(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    grid = path_patch_heads_to_heads_plain(model, [(2, 1)], "v", metric, ioi, abc)
    assert grid.shape == (2, model.cfg.n_heads)
    for l, h in [(0, 0), (1, 3)]:
        assert abs(grid[l, h].item() - path_patch_senders_plain(model, [(l, h)], [(2, 1)], "v", metric, ioi, abc)) < 1e-6
    assert grid.abs().max() > 1e-4


def test_path_patching_rejects_bad_receivers(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    with pytest.raises(ValueError, match="receiver_input"):
        path_patch_senders(model, [(0, 0)], [(1, 0)], "z", metric, ioi, abc)
    with pytest.raises(ValueError, match="not a head"):
        path_patch_senders(model, [(0, 0)], [(7, 0)], "k", metric, ioi, abc)


# --- hook hygiene -----------------------------------------------------------------------------
def _helpers(model, ioi, abc):
    metric = make_ioi_metric(model, ioi, abc)
    toks = generate_repeated_tokens(model.cfg.d_vocab, 5, 2, seed=0)
    return {
        "logit_diff": lambda: logit_diff(model(ioi.toks), ioi),
        "make_ioi_metric": lambda: make_ioi_metric(model, ioi, abc),
        "head_dla": lambda: head_dla(model, ioi),
        "component_dla": lambda: component_dla(model, ioi),
        "mean_z_by_template": lambda: mean_z_by_template(model, abc),
        "head_type_scores": lambda: head_type_scores(model, toks),
        "repeated_token_loss": lambda: repeated_token_loss(model, toks),
        "path_patch_senders": lambda: path_patch_senders(model, [(0, 1)], [(1, 0)], "q", metric, ioi, abc),
        "path_patch_senders_plain": lambda: path_patch_senders_plain(model, [(0, 1)], [(1, 0)], "q", metric, ioi, abc),
        "path_patch_heads_to_heads_plain": lambda: path_patch_heads_to_heads_plain(model, [(1, 0)], "k", metric, ioi, abc),
    }


def test_every_helper_leaves_the_hooks_it_found(model, ioi, abc):
    before = hook_snapshot(model)
    for name, call in _helpers(model, ioi, abc).items():
        call()
        assert hook_snapshot(model) == before, name


def test_helpers_clean_up_when_they_raise(model, ioi, abc):
    before = hook_snapshot(model)

    def bad_metric(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        path_patch_senders_plain(model, [(0, 1)], [(1, 0)], "k", bad_metric, ioi, abc)
    assert hook_snapshot(model) == before

    def exploding(z, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        run_and_cache(model, ioi.toks, [act_name("scale")], fwd_hooks=[(act_name("z", 0), exploding)])
    assert hook_snapshot(model) == before
    # caches of the wrong shape make the freezing hook fail in the middle of the forward pass
    broken = {act_name("z", l): torch.zeros(1) for l in range(model.cfg.n_layers)}
    with pytest.raises((IndexError, RuntimeError)):
        path_patch_logits(model, [(0, 0)], [(1, 0)], "k", ioi.toks, broken, broken)
    assert hook_snapshot(model) == before


def test_helpers_refuse_a_model_with_leftover_hooks(model, ioi, abc):
    model.add_hook(act_name("z", 0), lambda z, hook: z)
    try:
        with pytest.raises(RuntimeError, match="reset_hooks"):
            head_dla(model, ioi)
        with pytest.raises(RuntimeError, match="reset_hooks"):
            mean_z_by_template(model, abc)
    finally:
        model.reset_hooks()


def test_a_snapshot_sees_added_hooks_but_not_the_bridges_own_first_run_wiring(ioi):
    """A bridge wires capture hooks of its own on its first forward: a snapshot taken before a fresh
    model's first run equals one after it, and still sees a hook someone leaves behind."""
    from ioi_anomalies import random_model

    fresh = random_model(n_layers=2, n_heads=4, d_model=64, seed=1)
    before = hook_snapshot(fresh)
    fresh(ioi.toks[:2])
    assert sum(len(b._capture_hook_handles) for b in fresh.blocks) > 0, "the bridge wired no hooks of its own: the check sees nothing"
    assert hook_snapshot(fresh) == before
    fresh.add_hook(act_name("z", 0), lambda z, hook: z)
    assert hook_snapshot(fresh) != before
    fresh.reset_hooks()
    assert hook_snapshot(fresh) == before
