"""The hook factory (``tools.hooks``) and hook names (``ioi_anomalies.hooks.act_name``): each setter
changes exactly what it says, on the tiny model, and is removed with the context that added it."""

from __future__ import annotations

import pytest
import torch

from ioi_anomalies import run_and_cache
from ioi_anomalies.hooks import act_name
from tools import hooks


@pytest.fixture(scope="module")
def zs(tiny_model, ioi, abc):
    """Every layer's z on the IOI prompts (clean) and on the ABC prompts (new)."""
    names = hooks.names("z", tiny_model.cfg.n_layers)
    _, clean = run_and_cache(tiny_model, ioi.toks, names, return_logits=False)
    _, new = run_and_cache(tiny_model, abc.toks, names, return_logits=False)
    return clean, new


def _z_under(model, toks, hook, layer=1):
    _, cache = run_and_cache(model, toks, [act_name("z", layer)], fwd_hooks=[hook], return_logits=False)
    return cache[act_name("z", layer)]


def test_names_are_transformer_lens_hook_points(model):
    assert act_name("z", 2) == hooks.name("z", 2) == "blocks.2.attn.hook_z"
    assert act_name("scale") == "ln_final.hook_scale" and act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    assert hooks.names("k", 2) == ["blocks.0.attn.hook_k", "blocks.1.attn.hook_k"] and hooks.names("v", [2]) == ["blocks.2.attn.hook_v"]
    for kind in ("z", "q", "k", "v", "pattern", "resid_pre", "mlp_out"):
        assert act_name(kind, 1) in model.hook_dict, kind
    for kind in ("embed", "pos_embed", "scale"):
        assert act_name(kind) in model.hook_dict, kind


def test_replace_sets_the_whole_activation(model, ioi, zs):
    clean, new = zs
    n = act_name("z", 1)
    assert not torch.allclose(clean[n], new[n]), "the two runs must differ for the check to see anything"
    torch.testing.assert_close(_z_under(model, ioi.toks, hooks.replace("z", 1, new[n])), new[n])
    with pytest.raises(ValueError, match="shape"):
        _z_under(model, ioi.toks, hooks.replace("z", 1, new[n][:1]))


def test_patch_heads_changes_only_the_heads_and_positions_named(model, ioi, zs):
    clean, new = zs
    n = act_name("z", 1)
    got = _z_under(model, ioi.toks, hooks.patch_heads("z", 1, [0, 2], new[n]))
    torch.testing.assert_close(got[:, :, [0, 2]], new[n][:, :, [0, 2]])
    torch.testing.assert_close(got[:, :, [1, 3]], clean[n][:, :, [1, 3]])
    end = ioi.word_idx["end"]
    rows = torch.arange(ioi.N)
    got = _z_under(model, ioi.toks, hooks.patch_heads("z", 1, [3], new[n], positions=end))
    expected = clean[n].clone()
    expected[rows, end, 3] = new[n][rows, end, 3]
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="at least one head"):
        hooks.patch_heads("z", 1, [], new[n])


def test_patch_heads_on_a_receiver_input(model, ioi, abc):
    n = act_name("k", 2)
    _, src = run_and_cache(model, abc.toks, [n], return_logits=False)
    _, clean = run_and_cache(model, ioi.toks, [n], return_logits=False)
    _, got = run_and_cache(model, ioi.toks, [n], fwd_hooks=[hooks.patch_heads("k", 2, [1], src[n])], return_logits=False)
    torch.testing.assert_close(got[n][:, :, 1], src[n][:, :, 1])
    torch.testing.assert_close(got[n][:, :, [0, 2, 3]], clean[n][:, :, [0, 2, 3]])


def test_freeze_keeps_the_clean_run_except_the_senders(model, abc, zs):
    clean, new = zs
    n = act_name("z", 1)
    # run on the ABC prompts: frozen heads must show the clean (IOI) run's z, not their own
    torch.testing.assert_close(_z_under(model, abc.toks, hooks.freeze(1, clean[n])), clean[n])
    got = _z_under(model, abc.toks, hooks.freeze(1, clean[n], new[n], heads=[2]))
    torch.testing.assert_close(got[:, :, 2], new[n][:, :, 2])
    torch.testing.assert_close(got[:, :, [0, 1, 3]], clean[n][:, :, [0, 1, 3]])
    with pytest.raises(ValueError, match="new"):
        hooks.freeze(1, clean[n], heads=[2])


def test_mean_ablate_replaces_outside_the_keep_mask(model, ioi, zs):
    clean, new = zs
    n = act_name("z", 1)
    means = new[n].mean(0, keepdim=True).expand_as(new[n])
    torch.testing.assert_close(_z_under(model, ioi.toks, hooks.mean_ablate(1, means)), means)
    keep = torch.zeros(clean[n].shape[:3], dtype=torch.bool)
    keep[:, :, 1] = True
    keep[0, 0, 0] = True
    got = _z_under(model, ioi.toks, hooks.mean_ablate(1, means, keep))
    torch.testing.assert_close(got[keep], clean[n][keep])
    torch.testing.assert_close(got[~keep], means[~keep])


def test_setters_leave_no_hook_behind(model, ioi, zs):
    from ioi_anomalies import count_user_hooks

    clean, _ = zs
    with model.hooks(fwd_hooks=[hooks.freeze(l, clean[act_name("z", l)]) for l in range(model.cfg.n_layers)]):
        assert count_user_hooks(model) >= model.cfg.n_layers  # a bridge lists each hook point under its aliases too
        model(ioi.toks)
    assert count_user_hooks(model) == 0


@pytest.mark.parametrize("names", [["blocks.0.attn.hook_pattern"], ["blocks.0.attn.hook_z", "blocks.2.hook_resid_post"],
                                   ["blocks.1.attn.hook_z", "ln_final.hook_scale"]])
def test_a_cache_without_logits_stops_where_its_last_name_is_computed(model, ioi, names):
    """Without logits the pass ends once every named activation exists: the same values as a whole pass
    (under a hook that changes them), nothing after the last name runs, and the model is left as it was."""
    def where_ran(extra_hooks):
        ran = []
        probes = [(n, (lambda n: lambda act, hook: ran.append(n))(n)) for n in (act_name("resid_post", l) for l in range(model.cfg.n_layers))]
        probes.append(("hook_unembed", lambda act, hook: ran.append("unembed")))
        return ran, probes + extra_hooks

    double_z0 = [(act_name("z", 0), lambda z, hook: 2 * z)]
    _, whole = run_and_cache(model, ioi.toks, names, fwd_hooks=double_z0)
    ran, hooks_ = where_ran(double_z0)
    logits, cache = run_and_cache(model, ioi.toks, names, fwd_hooks=hooks_, return_logits=False)
    assert logits is None and set(cache) == set(names)
    for n in names:
        assert torch.equal(cache[n], whole[n]), n
    last = max((int(n.split(".")[1]) if n.startswith("blocks.") else model.cfg.n_layers - 1) for n in names)
    assert ran == [act_name("resid_post", l) for l in range(last + 1)], "the pass ran past the last named activation"
    assert torch.equal(model(ioi.toks), run_and_cache(model, ioi.toks, [])[0]), "the next whole pass is unchanged"


def test_a_cache_of_names_past_the_final_layernorm_runs_the_whole_pass(model, ioi):
    ran = []
    _, cache = run_and_cache(model, ioi.toks, ["hook_unembed"], fwd_hooks=[("hook_unembed", lambda a, hook: ran.append(1))],
                             return_logits=False)
    assert ran == [1] and "hook_unembed" in cache
