"""The references of notebook 02's hidden tests, against independent computations; none of them
is importable from the package students use."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch

import ioi_anomalies
from grader.references import nb02 as ref
from ioi_anomalies import circuit_keep_masks, head_dla, logit_diff, mean_z_by_template
from ioi_anomalies.hooks import act_name
from tools import hooks


@pytest.fixture(scope="module")
def means(tiny_model, abc):
    return mean_z_by_template(tiny_model, abc)


def test_no_reference_is_importable_from_the_package():
    own = [n for n, f in vars(ref).items() if inspect.isfunction(f) and f.__module__ == ref.__name__]
    assert own, "the references module defines its functions"
    for name in own + ["mean_ablation_hooks", "logit_diff_with_circuit", "logit_diff_without_heads",
                       "circuit_ablation_hooks", "final_ln_scale_ratio"]:
        assert not hasattr(ioi_anomalies, name), name
    exported = [inspect.unwrap(getattr(ioi_anomalies, n)) for n in ioi_anomalies.__all__]
    codes = {f.__code__ for f in exported if inspect.isfunction(f)}
    assert not codes & {inspect.unwrap(getattr(ref, n)).__code__ for n in own}


def test_top_head_against_a_loop():
    t = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    best = max(itertools.product(range(5), range(7)), key=lambda lh: t[lh].item())
    assert ref.top_head(t) == best


def test_end_ablation_hook_changes_only_the_head_at_end(model, ioi, means):
    hook = ref.end_ablation_hook(2, means[1], ioi.word_idx["end"])
    with model.hooks(fwd_hooks=[(act_name("z", 1), hook)]):
        _, cache = model.run_with_cache(ioi.toks)
    _, clean = model.run_with_cache(ioi.toks)
    z, z0 = cache[act_name("z", 1)], clean[act_name("z", 1)]
    rows, end = torch.arange(ioi.N), ioi.word_idx["end"]
    torch.testing.assert_close(z[rows, end, 2], means[1, rows, end, 2])
    mask = torch.ones(z.shape[:3], dtype=torch.bool)
    mask[rows, end, 2] = False
    torch.testing.assert_close(z[mask], z0[mask])


def test_dla_before_after(model, ioi, means):
    after, naive, measured = ref.dla_before_after(model, ioi, means, (2, 1))
    clean = logit_diff(model(ioi.toks), ioi).item()
    assert naive == pytest.approx(clean - head_dla(model, ioi)[2, 1].item(), abs=1e-5)
    hook = ref.end_ablation_hook(1, means[2], ioi.word_idx["end"])
    with model.hooks(fwd_hooks=[(act_name("z", 2), hook)]):
        _, cache = model.run_with_cache(ioi.toks)
        logits = model(ioi.toks)
    assert measured == pytest.approx(logit_diff(logits, ioi).item(), abs=1e-5)
    torch.testing.assert_close(after, head_dla(model, ioi, cache=cache))
    assert not torch.allclose(after, head_dla(model, ioi)), "the ablation changes the DLA"


def test_final_ln_scale_ratio(model, ioi, means):
    hook = ref.end_ablation_hook(1, means[2], ioi.word_idx["end"])
    _, clean = model.run_with_cache(ioi.toks)
    with model.hooks(fwd_hooks=[(act_name("z", 2), hook)]):
        _, ablated = model.run_with_cache(ioi.toks)
    rows, end = torch.arange(ioi.N), ioi.word_idx["end"]
    expected = (clean[act_name("scale")][rows, end, 0] / ablated[act_name("scale")][rows, end, 0]).mean().item()
    got = ref.final_ln_scale_ratio(model, ioi, means, (2, 1))
    assert got == pytest.approx(expected, abs=1e-6) and abs(got - 1) > 1e-5
    assert ref.ln_scale_ratio(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 4.0])) == pytest.approx(1.5)


def test_ablated_logit_diff_keeps_or_replaces(model, ioi, means):
    n, seq = ioi.toks.shape
    shape = (n, seq, model.cfg.n_heads)
    clean = logit_diff(model(ioi.toks), ioi).item()
    assert ref.ablated_logit_diff(model, ioi, means, [torch.ones(shape, dtype=torch.bool)] * model.cfg.n_layers) == pytest.approx(clean, abs=1e-5)
    with model.hooks(fwd_hooks=[hooks.mean_ablate(l, means[l]) for l in range(model.cfg.n_layers)]):
        all_means = logit_diff(model(ioi.toks), ioi).item()
    none = [torch.zeros(shape, dtype=torch.bool)] * model.cfg.n_layers
    assert ref.ablated_logit_diff(model, ioi, means, none) == pytest.approx(all_means, abs=1e-5)
    assert abs(all_means - clean) > 1e-3


def test_criteria_against_explicit_masks(model, ioi, means):
    circuit = {"name mover": [(2, 1)], "s2 inhibition": [(1, 0)], "induction": [(0, 2)]}
    clean = logit_diff(model(ioi.toks), ioi).item()
    f_c, f_m = ref.faithfulness(model, ioi, means, circuit)
    assert f_m == pytest.approx(clean, abs=1e-5)
    assert f_c == pytest.approx(ref.ablated_logit_diff(model, ioi, means, circuit_keep_masks(model, ioi, circuit)), abs=1e-6)
    f_ck, f_mk = ref.completeness(model, ioi, means, circuit, {(1, 0)})
    assert f_ck == pytest.approx(ref.faithfulness(model, ioi, means, ref.remove(circuit, {(1, 0)}))[0], abs=1e-6)
    keep = ref.keep_all_but(model, ioi, {(1, 0)})
    assert (~keep[1][:, :, 0]).all() and keep[1][:, :, 1:].all() and keep[0].all()
    assert f_mk == pytest.approx(ref.ablated_logit_diff(model, ioi, means, keep), abs=1e-6)
    assert ref.completeness(model, ioi, means, circuit, set())[1] == pytest.approx(clean, abs=1e-5)
    m = ref.minimality(model, ioi, means, circuit, (2, 1), {(0, 2)})
    a = ref.faithfulness(model, ioi, means, ref.remove(circuit, {(0, 2)}))[0]
    b = ref.faithfulness(model, ioi, means, ref.remove(circuit, {(0, 2), (2, 1)}))[0]
    assert m == pytest.approx(abs(b - a), abs=1e-6) and m > 0


def test_minimality_case_takes_the_first_informative_pair_among_bounded_tries(model, ioi, means, monkeypatch):
    from grader.hidden import generator

    circuit = {"name mover": [(2, 1), (2, 3)], "s2 inhibition": [(1, 0)], "induction": [(0, 2)]}
    f = lambda removed: ref.f_circuit(model, ioi, means, ref.remove(circuit, removed))  # noqa: E731

    def informative(v, k):
        d = f({v, k}) - f({k})
        return d < -0.05 and abs(abs(d) - abs(f({v}) - f(set()))) > 0.01

    heads = sorted({h for hs in circuit.values() for h in hs})
    pairs = [(v, k) for v in heads for k in heads if v != k]
    for label, tries in (("a label", ref.MINIMALITY_TRIES), ("another label", 2), ("a third", len(pairs))):
        order = [pairs[i] for i in torch.randperm(len(pairs), generator=generator(label)).tolist()]
        expected = next((p for p in order[:tries] if informative(*p)), order[0])
        assert ref.minimality_case(model, ioi, means, circuit, label, tries) == expected, label
    calls = []
    real = ref.f_circuit
    monkeypatch.setattr(ref, "f_circuit", lambda *a: calls.append(a) or real(*a))
    ref.minimality_case(model, ioi, means, circuit, "another label", tries=2)
    assert 1 <= len(calls) <= 1 + 3 * 2, "at most three passes per try, the unablated one shared"
