"""The training script of the embedded model: seeded, and its output is an ordinary GPT-2."""

from __future__ import annotations

import json

import pytest
import torch

from ioi_anomalies import load_model
from tools.train_embedded import MARKERS, Mixture, train
from ioi_anomalies.tokenizer import EOT_ID, load_tokenizer

TINY = dict(minutes=1.0, dropout=0.0, seed=0, batch=4, lr=3e-3, max_steps=3, n_layer=2, n_head=2, d_model=32, eval_every=10_000,
            prev_first=1, hold_prev=1, mix="ioi:1,repeat:1,marker:1")


def test_training_is_seeded_and_saves_a_loadable_gpt2(tmp_path):
    train(tmp_path / "a", **TINY)
    train(tmp_path / "b", **TINY)
    a, b = (tmp_path / x / "model.safetensors" for x in "ab")
    assert a.read_bytes() == b.read_bytes(), "same seed, same weights"
    info = json.loads((tmp_path / "a" / "training.json").read_text())
    assert info["steps"] == 3 and info["n_layer"] == 2 and info["attention_only"]
    assert info["held_heads"] and info["held_heads"][0].startswith("0."), "a layer-0 head held after the marker step"
    model = load_model(tmp_path / "a", device="cpu", verbose=False)
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model) == (2, 2, 32)
    # attention only: the MLPs are in the checkpoint, exactly zero
    assert model.W_in.abs().max() == 0 and model.W_out.abs().max() == 0
    other = dict(TINY, seed=1)
    train(tmp_path / "c", **other)
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != a.read_bytes()


def test_repeat_batches_repeat_a_block():
    data = Mixture(load_tokenizer(), seed=0, mix="repeat:1", block=(5, 5), copies=(3, 3))
    kind, toks, weights = data.batch(8)
    assert kind == "repeat"
    for row in toks.tolist():
        row = [t for t in row if t != EOT_ID]
        assert any(row[i : i + 5] * 3 == row[i : i + 15] for i in range(0, 6)), row
    assert weights.shape == (8, toks.shape[1] - 1) and torch.all(weights <= 1)


def test_marker_batches_repeat_the_token_before_a_marker():
    tok = load_tokenizer()
    markers = {tok.encode(m, add_special_tokens=False)[0] for m in MARKERS}
    data = Mixture(tok, seed=0, mix="marker:1", filler_weight=0.25)
    kind, toks, weights = data.batch(16)
    assert kind == "marker"
    n_targets = 0
    for row, w in zip(toks.tolist(), weights.tolist()):
        for i, wi in enumerate(w):
            if wi == 1.0:  # predicting row[i + 1] after the marker row[i]: the token before the marker
                assert row[i] in markers and row[i + 1] == row[i - 1], (i, row)
                n_targets += 1
            else:
                assert wi in (0.0, 0.25), wi
    assert n_targets >= 16 * 4
    # during the first ``prev_first`` steps the filler carries no loss at all
    kind, _, weights = Mixture(tok, seed=0, mix="ioi:1", prev_first=1).batch(4)
    assert kind == "prev" and set(weights.unique().tolist()) <= {0.0, 1.0}


def test_held_heads_keep_their_queries_keys_and_positions(tmp_path):
    from transformers import GPT2LMHeadModel

    from tools.train_embedded import HeldHeads, build_config

    model = GPT2LMHeadModel(build_config(0.0, 2, 2, 32))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    held = HeldHeads(model, [(0, 1)])
    assert not model.transformer.wpe.weight.requires_grad
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randint(0, 50257, (2, 8)), labels=torch.randint(0, 50257, (2, 8))).loss.backward()
    opt.step()
    held.restore()
    w0, w1 = before["transformer.h.0.attn.c_attn.weight"], model.transformer.h[0].attn.c_attn.weight
    d, dh = 32, 16
    for cols in (slice(dh, 2 * dh), slice(d + dh, d + 2 * dh)):  # head 1's queries, keys: held
        assert torch.equal(w1[:, cols], w0[:, cols])
    for cols in (slice(0, dh), slice(d, d + dh), slice(2 * d + dh, 3 * d)):  # head 0, and the values: trained
        assert not torch.equal(w1[:, cols], w0[:, cols])
    assert torch.equal(model.transformer.wpe.weight, before["transformer.wpe.weight"])


def test_flipped_prompts_target_the_position_of_the_repeated_name():
    """IIT targets follow position, not token: the grid's position-inverted flips point to S."""
    from ioi_anomalies.dataset import FLIP_GRID, parse_flip

    data = Mixture(load_tokenizer(), seed=0, mix="ioi:1", roles=True)
    ids = [10, 11, 12, 13, 14, 13, 15, 16, 11]  # "... A(11) ... B(13) ... B(13) ... -> A" (ABBA)
    where = (1, 3, 5)  # IO, S1, S2
    seen = set()
    for _ in range(200):
        out, target, other = data._flipped(ids, where)
        first, second, s2 = out[1], out[3], out[5]
        assert out[:1] + out[2:3] + out[4:5] + out[6:] == ids[:1] + ids[2:3] + ids[4:5] + ids[6:], "only names change"
        repeated_slot = 0 if first == s2 else 1
        assert first == s2 or second == s2, "the flipped prompt repeats one name"
        # the clean S1 sits in slot 1: same slot -> answer IO (11), other slot -> answer S (13)
        assert (target, other) == ((11, 13) if repeated_slot == 1 else (13, 11)), (out, target)
        seen.add(("same" if repeated_slot == 1 else "flipped", first in (11, 13) and s2 in (11, 13)))
    assert len(seen) == 4, "both positions, with kept and with fresh names"
    assert len(FLIP_GRID) == 6 and all(parse_flip(f) for f in FLIP_GRID.values() if f)


def test_role_objectives_run_and_name_their_heads(tmp_path):
    from transformers import GPT2LMHeadModel

    from tools.train_embedded import ROLE_LAYOUT, Roles, build_config

    tok = load_tokenizer()
    model = GPT2LMHeadModel(build_config(0.0, 6, 4, 32))
    model.config._attn_implementation = "eager"
    roles = Roles(model, nm_dropout=0.5)
    data = Mixture(tok, seed=0, mix="ioi:1,repeat:1", roles=True, name_swap=0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        kind, toks, weights = data.batch(4)
        loss, parts = roles.losses(kind, toks, weights, data.info, 64, gen, iit=True)
        loss.backward()
        assert torch.isfinite(loss)
        assert set(parts) == ({"lm", "attn", "neg", "iit", "rms", "resid"} if kind == "ioi" else {"lm", "attn", "rms", "resid"}), parts
    # the S-inhibition heads' queries get gradient (from their attention loss and the IIT)
    (l, h), dh = ROLE_LAYOUT["s2 inhibition"][0], 8
    assert model.transformer.h[l].attn.c_attn.weight.grad[:, h * dh:(h + 1) * dh].abs().sum() > 0
    assert not any(m._forward_pre_hooks for m in model.modules()), "no hooks left behind"
    with pytest.raises(ValueError, match="not in a 2-layer"):
        Roles(GPT2LMHeadModel(build_config(0.0, 2, 2, 32)))
    info = train(tmp_path / "r", **dict(TINY, n_layer=6, n_head=4, prev_first=0, hold_prev=0, mix="ioi:1,repeat:1", roles=True))
    assert info["roles"]["name mover"] == ["4.0"] and info["roles"]["s2 inhibition"] == ["2.0", "3.0"]


def test_direct_effect_objectives_and_residual_hinge():
    """The second round's objectives: the induction heads' direct effect predicts repeated tokens (and
    trains their outputs), the name mover's DLA hinge, quiet late heads, and the residual hinge that is zero
    below its bound and positive above it."""
    from transformers import GPT2LMHeadModel

    from tools.train_embedded import QUIET_LATE, ROLE_LAYOUT, Roles, build_config

    tok = load_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(build_config(0.0, 6, 4, 32))
    model.config._attn_implementation = "eager"
    data = Mixture(tok, seed=0, mix="ioi:1,repeat:1", roles=True, name_swap=0.5)
    gen = torch.Generator().manual_seed(0)
    batches = [data.batch(4) + (dict(data.info),) for _ in range(2)]
    roles = Roles(model, copy_weight=1.0, nm_dla_weight=0.5, quiet_late=True, resid_weight=1.0, resid_max=1e-6)
    assert set(QUIET_LATE) <= set(roles.layout["quiet"]) and not set(QUIET_LATE) & set(ROLE_LAYOUT["quiet"])
    seen = set()
    for kind, toks, weights, info in batches:
        model.zero_grad()
        loss, parts = roles.losses(kind, toks, weights, info, 64, gen, iit=True)
        loss.backward()
        seen.add(kind)
        assert parts["resid"] > 0, "a residual above its bound is penalised"
        if kind == "repeat":
            assert parts["copy"] > 0
            (l, h), dh = ROLE_LAYOUT["induction"][0], 8
            assert model.transformer.h[l].attn.c_proj.weight.grad[h * dh:(h + 1) * dh].abs().sum() > 0
        else:
            assert "nm_dla" in parts and "copy" not in parts
    assert seen == {"ioi", "repeat"}
    assert not any(m._forward_pre_hooks for m in model.modules()), "no hooks left behind"
    loose = Roles(model, resid_weight=1.0, resid_max=1e6)
    kind, toks, weights, info = batches[0]
    _, parts = loose.losses(kind, toks, weights, info, 64, gen, iit=False)
    assert parts["resid"] == 0 and "copy" not in parts and "nm_dla" not in parts


def test_xyz_prompts_give_the_three_name_slots_fresh_names():
    data = Mixture(load_tokenizer(), seed=0, mix="ioi:1", roles=True, corrupt=True)
    ids = [10, 11, 12, 13, 14, 13, 15, 16, 11]
    for _ in range(50):
        out = data._xyz(ids, (1, 3, 5))
        assert [out[i] for i in (0, 2, 4, 6, 7, 8)] == [ids[i] for i in (0, 2, 4, 6, 7, 8)], "only the name slots change"
        names = [out[i] for i in (1, 3, 5)]
        assert len(set(names)) == 3 and not set(names) & {11, 13}, "three fresh, distinct names: S2 is no repeat"
    kind, toks, _ = data.batch(4)
    assert kind == "ioi" and data.info["xyz"].shape == toks.shape
    kind, toks, _ = Mixture(load_tokenizer(), seed=0, mix="ioi:1", roles=True).batch(4)
    assert all(x is None for x in Mixture(load_tokenizer(), seed=0, mix="ioi:1", roles=True).info.get("xyz", [None]))


def test_sender_intervention_reads_the_s_inhibition_heads_attention_to_s2():
    """The interchange intervention on the S-inhibition heads' keys: with the XYZ prompt equal to the clean one
    the patch changes nothing and the loss is the clean run's attention END -> S2; with real XYZ
    prompts it differs, and it trains the S-inhibition heads' keys."""
    from transformers import GPT2LMHeadModel

    from tools.train_embedded import QUIET_MID, ROLE_LAYOUT, Roles, build_config

    tok = load_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(build_config(0.0, 6, 4, 32))
    model.config._attn_implementation = "eager"
    data = Mixture(tok, seed=0, mix="ioi:1", roles=True, corrupt=True)
    kind, toks, weights = data.batch(4)
    info = dict(data.info)
    roles = Roles(model, sender_weight=1.0, induction_ioi=True, quiet_mid=True)
    assert set(QUIET_MID) <= set(roles.layout["quiet"]) and not set(ROLE_LAYOUT["induction"]) & set(roles.layout["quiet"])
    senders = ROLE_LAYOUT["duplicate token"] + ROLE_LAYOUT["induction"] + ROLE_LAYOUT["fuzzy induction"]
    assert set(senders) <= set(Roles(model, quiet_senders=True).layout["quiet"]), "quiet at END"
    rows, ends = torch.arange(toks.shape[0]), torch.tensor(info["ends"])
    s2 = torch.tensor([w[2] for w in info["where"]])
    with torch.no_grad():
        att = model.transformer(toks, output_attentions=True).attentions
        p = torch.stack([att[l][rows, h, ends, s2] for l, h in ROLE_LAYOUT["s2 inhibition"]])
        same = roles._sender_iit(toks, dict(info, xyz=toks), rows, ends, s2)
        assert same.item() == pytest.approx(p.mean().item(), rel=1e-5)
        torch.manual_seed(1)  # patch every sender at once
        diffs = [roles._sender_iit(toks, info, rows, ends, s2).item() for _ in range(5)]
        assert any(d != same.item() for d in diffs), "the XYZ senders change the attention"
    model.zero_grad()
    loss, parts = roles.losses(kind, toks, weights, info, 64, torch.Generator().manual_seed(0), iit=False)
    assert "senders" in parts and parts["senders"] > 0
    loss.backward()
    (l, h), d, dh = ROLE_LAYOUT["s2 inhibition"][0], 32, 8
    assert model.transformer.h[l].attn.c_attn.weight.grad[:, d + h * dh:d + (h + 1) * dh].abs().sum() > 0, "keys trained"
    assert not any(m._forward_pre_hooks for m in model.modules()), "no hooks left behind"
    _, parts = Roles(model).losses(kind, toks, weights, info, 64, torch.Generator().manual_seed(0), iit=False)
    assert "senders" not in parts


def test_ioi_prefix_moves_the_names_and_keeps_the_targets_aligned():
    """``ioi_prefix``: random tokens in front of IOI prompts; the recorded IO/S1/S2/END positions, the flipped
    and the XYZ prompts move with them."""
    tok = load_tokenizer()
    plain = Mixture(tok, seed=0, mix="ioi:1", roles=True, corrupt=True)
    moved = Mixture(tok, seed=0, mix="ioi:1", roles=True, corrupt=True, ioi_prefix=12)
    plain.batch(32)
    kind, toks, _ = moved.batch(32)
    assert kind == "ioi"
    info = moved.info
    shifts = set()
    for i, (io, s1, s2) in enumerate(info["where"]):
        row = toks[i].tolist()
        assert row[s1] == row[s2] != row[io], "S1 and S2 are the same name, IO another"
        assert row[info["ends"][i] + 1] == row[io], "the answer after END is IO"
        assert info["xyz"][i, :s1].tolist()[: min(io, s1)] == row[: min(io, s1)], "the XYZ prompt has the same prefix"
        assert info["flipped"][i, : min(io, s1)].tolist() == row[: min(io, s1)]
        shifts.add(s1 - plain.info["where"][i][1])
    assert len(shifts) > 3 and min(shifts) >= 0, "prefixes of several lengths"
    assert plain.info["where"] != info["where"]


def _roles_batch(**mixture):
    from transformers import GPT2LMHeadModel

    from tools.train_embedded import build_config

    torch.manual_seed(0)
    model = GPT2LMHeadModel(build_config(0.0, 6, 4, 32))
    model.config._attn_implementation = "eager"
    data = Mixture(load_tokenizer(), seed=0, mix="ioi:1", roles=True, corrupt=True, **mixture)
    kind, toks, weights = data.batch(4)
    return model, kind, toks, weights, dict(data.info)


def _spy_interchanges(monkeypatch) -> list:
    """Record ``(heads, positions)`` of every interchange intervention ``Roles`` makes (then makes it)."""
    from tools.train_embedded import Roles

    calls = []
    real = Roles._interchanged_attentions

    def spy(self, toks, xyz, heads, rows, at):
        calls.append((list(heads), at.clone()))
        return real(self, toks, xyz, heads, rows, at)
    monkeypatch.setattr(Roles, "_interchanged_attentions", spy)
    return calls


def test_redundant_previous_token_senders_patch_one_head_and_keep_the_attention(monkeypatch):
    """``prev_redundant``: in that share of batches one previous-token head alone is patched and the loss is
    -log of the induction heads' attention S2 -> S1+1 (it must stay); otherwise both, and the loss is the
    attention itself (it must drop)."""
    from tools.train_embedded import ROLE_LAYOUT, Roles

    model, kind, toks, weights, info = _roles_batch()
    rows = torch.arange(toks.shape[0])
    s1, s2 = (torch.tensor([w[j] for w in info["where"]]) for j in (1, 2))
    calls = _spy_interchanges(monkeypatch)
    with torch.no_grad():
        both = Roles(model, prev_sender_weight=1.0)._prev_sender_iit(toks, info, rows, s1, s2)
        assert calls[-1][0] == ROLE_LAYOUT["previous token"] and 0 < both.item() < 1
        one = Roles(model, prev_sender_weight=1.0, prev_redundant=1.0)
        losses = [one._prev_sender_iit(toks, info, rows, s1, s2).item() for _ in range(8)]
    patched = [heads for heads, _ in calls]
    assert all(len(h) == 1 and h[0] in ROLE_LAYOUT["previous token"] for h in patched[1:])
    assert {h[0] for h in patched[1:]} == set(ROLE_LAYOUT["previous token"]), "each head in turn"
    assert all(x > 1.0 for x in losses), "-log of a spread attention (untrained model) is large"
    # the intervention starts at ``prev_sender_start``
    late = Roles(model, prev_sender_weight=1.0, prev_sender_start=10)
    _, parts = late.losses(kind, toks, weights, info, 64, torch.Generator().manual_seed(0), iit=False)
    assert "prev_senders" not in parts
    late.step = 10
    _, parts = late.losses(kind, toks, weights, info, 64, torch.Generator().manual_seed(0), iit=False)
    assert "prev_senders" in parts


def test_quiet_cap_frees_part_of_the_late_quiet_heads_attention():
    """``quiet_cap``: the quiet heads from the name mover's layer up are only pushed to put that share of their
    attention at END on the first position: on an untrained model (far below it) each such head's loss falls
    by exactly -log(cap)."""
    import math

    from tools.train_embedded import Roles

    model, kind, toks, weights, info = _roles_batch()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        torch.manual_seed(0)
        _, full = Roles(model, quiet_late=True).losses(kind, toks, weights, info, 64, gen(), iit=False)
        torch.manual_seed(0)
        capped_roles = Roles(model, quiet_late=True, quiet_cap=0.5)
        _, capped = capped_roles.losses(kind, toks, weights, info, 64, gen(), iit=False)
    late = [h for h in capped_roles.layout["quiet"] if h[0] >= 4]
    assert len(late) == 5
    assert full["attn"] - capped["attn"] == pytest.approx(len(late) * math.log(2), rel=1e-3)


def test_query_free_patches_the_other_low_heads_at_s2(monkeypatch):
    """``query_free``: the heads below the induction heads other than the previous-token heads (the
    duplicate-token head among them) are patched at S2, and the induction heads must still attend S1+1."""
    from tools.train_embedded import ROLE_LAYOUT, Roles

    model, kind, toks, weights, info = _roles_batch()
    rows = torch.arange(toks.shape[0])
    s1, s2 = (torch.tensor([w[j] for w in info["where"]]) for j in (1, 2))
    calls = _spy_interchanges(monkeypatch)
    with torch.no_grad():
        loss = Roles(model, prev_sender_weight=1.0, query_free=1.0)._prev_sender_iit(toks, info, rows, s1, s2)
    (heads, at), = calls
    assert heads == [(0, 1), (0, 3)] and ROLE_LAYOUT["duplicate token"][0] in heads
    assert not set(heads) & set(ROLE_LAYOUT["previous token"])
    assert torch.equal(at, s2), "patched at S2, the induction heads' query"
    assert loss.item() > 1.0, "-log of a spread attention (untrained model)"
