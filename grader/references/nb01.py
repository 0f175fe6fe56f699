"""References for ``01_early_induction_heads`` and the helpers its hidden tests share.

Head-type scores use the reference material's fixed windows on repeated random tokens
``[batch, 2 * seq_len]`` (no BOS), each the mean over the batch and a window of
(destination -> source) pairs:

- previous-token: destinations ``1 .. seq_len`` -> ``d - 1`` (the first copy plus the first token
  of the second copy, not the whole sub-diagonal);
- duplicate-token: destinations ``seq_len .. 2 seq_len - 1`` -> ``d - seq_len``;
- induction: destinations ``seq_len .. 2 seq_len - 1`` -> ``d - seq_len + 1`` (exactly ``seq_len``
  pairs: the diagonal at that offset has one more, ``seq_len - 1 -> 0``, not an induction position).

Path patching is the plain algorithm with hooks, two forward passes per sender set: (1) the clean
prompts with every head's ``z`` frozen at its clean value except the senders', taken from the
corrupted run (MLPs and LayerNorms recompute), caching the receivers' q/k/v input; (2) the clean
prompts again with only the receivers' chosen input patched from step 1. It is also the oracle
the package's fast engine is tested against.

The hidden tests' own references (:func:`exact`, :func:`each_sender`, :func:`multi_sender_effects`)
take the package's exact engine, which agrees with the plain algorithm to 1e-4 (its tests check it),
and run the sender sets of one case as one batch: on GPT-2 small a plain pass per sender set would
make them the slowest part of grading. Their inputs are small (a few prompts, a few senders).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ioi_anomalies.hooks import assert_no_hooks, run_and_cache
from ioi_anomalies.heads import check_receivers  # input validation only
from ioi_anomalies.path_patching import PathPatchingEngine  # the exact engine, for the hidden tests' references
from grader.refcache import cached  # computed once per model, source, hidden seed and arguments

Head = tuple[int, int]

# ------------------------------------------------------------------------------ head-type scores
WINDOWS = ("previous", "duplicate", "induction")


def score_window(seq_len: int, kind: str) -> tuple[Tensor, Tensor]:
    """The (destinations, sources) index pairs one score averages over."""
    if kind == "previous":
        dest = torch.arange(1, seq_len + 1)
        return dest, dest - 1
    dest = torch.arange(seq_len, 2 * seq_len)
    if kind == "duplicate":
        return dest, dest - seq_len
    if kind == "induction":
        return dest, dest - seq_len + 1
    raise ValueError(f"unknown score {kind!r}; expected one of {WINDOWS}")


def window_score(pattern: Tensor, seq_len: int, kind: str) -> Tensor:
    """Mean attention of each head over the window of ``kind``: [batch, head, q, k] -> [head]."""
    dest, src = score_window(seq_len, kind)
    return pattern[:, :, dest, src].double().mean(dim=(0, 2)).to(pattern.dtype)


def previous_token_score(pattern: Tensor, seq_len: int) -> Tensor:
    return window_score(pattern, seq_len, "previous")


def duplicate_token_score(pattern: Tensor, seq_len: int) -> Tensor:
    return window_score(pattern, seq_len, "duplicate")


def induction_score(pattern: Tensor, seq_len: int) -> Tensor:
    return window_score(pattern, seq_len, "induction")


def random_patterns(gen: torch.Generator, batch: int, n_heads: int, seq_len: int) -> Tensor:
    """Causal attention patterns with random weights (each row sums to 1)."""
    n = 2 * seq_len
    raw = torch.rand(batch, n_heads, n, n, generator=gen).tril() + 1e-3 * torch.eye(n)
    return raw / raw.sum(-1, keepdim=True)


# ------------------------------------------------------------------------------ path patching
def z_names(model) -> list[str]:
    return [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]


@torch.inference_mode()
def z_cache(model, toks) -> dict[str, Tensor]:
    """Every head's ``z`` on ``toks`` (no hooks)."""
    _, cache = run_and_cache(model, toks, z_names(model), return_logits=False)
    return cache


@torch.inference_mode()
def path_patch_logits(model, senders: Iterable[Head], receivers: Sequence[Head], receiver_input: str,
                      orig_toks: Tensor, orig_z: dict[str, Tensor], new_z: dict[str, Tensor]) -> Tensor:
    """Logits of the clean run after path patching ``senders`` -> the receivers' ``receiver_input``."""
    senders = [(int(l), int(h)) for l, h in senders]

    def freeze(layer):
        mine = [h for l, h in senders if l == layer]
        name = f"blocks.{layer}.attn.hook_z"

        def hook(z, hook):
            out = orig_z[name].clone()
            out[:, :, mine] = new_z[name][:, :, mine]
            return out

        return hook

    recv_layers = sorted({l for l, _ in receivers})
    recv_names = [f"blocks.{l}.attn.hook_{receiver_input}" for l in recv_layers]
    hooks = [(f"blocks.{l}.attn.hook_z", freeze(l)) for l in range(model.cfg.n_layers)]
    _, patched = run_and_cache(model, orig_toks, recv_names, fwd_hooks=hooks, return_logits=False)

    def receive(layer, name):
        heads = [h for l, h in receivers if l == layer]

        def hook(x, hook):
            x[:, :, heads] = patched[name][:, :, heads]
            return x

        return hook

    with model.hooks(fwd_hooks=[(n, receive(l, n)) for l, n in zip(recv_layers, recv_names)]):
        return model(orig_toks)


@cached
@torch.inference_mode()
def path_patch(model, senders: Iterable[Head], receivers: Sequence[Head], receiver_input: str,
               metric: Callable[[Tensor], Tensor], orig, new) -> float:
    """The metric after patching the path from all ``senders`` together into the receivers."""
    assert_no_hooks(model, "path_patch")
    receivers = check_receivers(model, receivers, receiver_input)
    logits = path_patch_logits(model, senders, receivers, receiver_input, orig.toks,
                               z_cache(model, orig.toks), z_cache(model, new.toks))
    return float(metric(logits))


@cached
@torch.inference_mode()
def sweep_senders(model, receivers: Sequence[Head], receiver_input: str, metric: Callable[[Tensor], Tensor],
                  orig, new) -> Tensor:
    """Path patching from every single head below the receivers: [max receiver layer, n_heads].

    The plain oracle of the package's ``path_patch_heads_to_heads``; the exercise's sweep takes a list
    of senders, and its hidden test's reference is :func:`each_sender`."""
    assert_no_hooks(model, "sweep_senders")
    receivers = check_receivers(model, receivers, receiver_input)
    max_layer = max(l for l, _ in receivers)
    orig_z, new_z = z_cache(model, orig.toks), z_cache(model, new.toks)
    out = torch.zeros(max_layer, model.cfg.n_heads)
    for l, h in itertools.product(range(max_layer), range(model.cfg.n_heads)):
        logits = path_patch_logits(model, [(l, h)], receivers, receiver_input, orig.toks, orig_z, new_z)
        out[l, h] = float(metric(logits))
    return out


@cached
@torch.inference_mode()
def exact(model, sender_sets: Sequence[Sequence[Head]], receivers: Sequence[Head], receiver_input: str,
          metric: Callable[[Tensor], Tensor], orig, new) -> list[float]:
    """Path patching of each sender set (its heads together) by the exact engine, in one batch."""
    assert_no_hooks(model, "exact")
    receivers = check_receivers(model, receivers, receiver_input)
    engine = PathPatchingEngine(model, orig, new, metric)
    return [float(x) for x in engine.run([list(s) for s in sender_sets], receivers, receiver_input, progress=False)]


def each_sender(model, senders: Sequence[Head], receivers: Sequence[Head], receiver_input: str,
                metric: Callable[[Tensor], Tensor], orig, new) -> Tensor:
    """Path patching from each sender alone: [len(senders)] (the exercise's ``sweep_senders``)."""
    return torch.tensor(exact(model, [[tuple(s)] for s in senders], receivers, receiver_input, metric, orig, new))


def multi_sender_effects(model, senders, receivers, metric, orig, new, receiver_input: str = "k") -> dict:
    senders = [tuple(s) for s in senders]
    values = exact(model, [[s] for s in senders] + [senders], receivers, receiver_input, metric, orig, new)
    out = dict(zip(senders, values[:-1]))
    out["together"] = values[-1]
    return out


# ------------------------------------------------------------------------------ the rest
def strongest_senders(results: Tensor, k: int) -> list[Head]:
    """The ``k`` most negative entries of a [layer, head] result, most negative first."""
    flat = [(float(results[l, h]), l, h) for l in range(results.shape[0]) for h in range(results.shape[1])]
    return [(l, h) for _, l, h in sorted(flat)[:k]]


@cached
@torch.inference_mode()
def attention_s2_to_s1_plus_1(model, dataset, heads: Sequence[Head]) -> Tensor:
    names = sorted({f"blocks.{l}.attn.hook_pattern" for l, _ in heads})
    _, cache = run_and_cache(model, dataset.toks, names, return_logits=False)
    vals = []
    for l, h in heads:
        p = cache[f"blocks.{l}.attn.hook_pattern"]
        vals.append(sum(float(p[i, h, dataset.word_idx["S2"][i], dataset.word_idx["S1+1"][i]]) for i in range(dataset.N)) / dataset.N)
    return torch.tensor(vals)


def attention_drops(s: float, d1: float, d2: float) -> tuple[float, float, float]:
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731  softmax([x, 0])[0]
    return sig(s) - sig(s - d1), sig(s) - sig(s - d2), sig(s) - sig(s - d1 - d2)


# ------------------------------------------------------------------------------ hidden-test inputs
def small_ioi(model, label: str, n: int = 4):
    """A few IOI prompts and their ABC corruption, drawn for the hidden input ``label``."""
    from grader.hidden import seed
    from ioi_anomalies import ABC_FLIP, IOIDataset

    ds = IOIDataset("mixed", N=n, tokenizer=model.tokenizer, seed=seed(label) % 100_000 + 100)
    return ds, ds.gen_flipped_prompts(ABC_FLIP)


def path_case(model, label: str, n_senders: int = 1, pool: int = 2, receiver_input: str = "k"):
    """A non-trivial path-patching case for the hidden input ``label``.

    Receivers: a head of the top layer, and sometimes one of the layer below it. Senders:
    ``n_senders`` heads at least two layers below the top (so heads sit between them and a
    receiver, and freezing them matters), chosen among ``pool`` random candidate sets as the one
    whose path moves the metric most, so the answer differs from the unpatched value. Metric: the
    plain logit difference (zeros never match it). Returns ``(senders, receivers, metric, orig, new)``.
    """
    from grader.hidden import generator
    from ioi_anomalies import make_logit_diff_metric

    g = generator(label)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if L < 2:
        raise ValueError("path patching needs at least two layers")
    orig, new = small_ioi(model, label)
    metric = make_logit_diff_metric(orig)
    receivers = [(L - 1, int(torch.randint(0, H, (1,), generator=g)))]
    if L >= 3 and int(torch.randint(0, 2, (1,), generator=g)):
        receivers.append((L - 2, int(torch.randint(0, H, (1,), generator=g))))
    lower = [(l, h) for l in range(max(1, L - 2)) for h in range(H)]
    picks = [sorted(lower[int(i)] for i in torch.randperm(len(lower), generator=g)[:n_senders]) for _ in range(pool)]
    values = exact(model, [[]] + picks, receivers, receiver_input, metric, orig, new)
    gaps = [abs(v - values[0]) for v in values[1:]]
    return picks[gaps.index(max(gaps))], receivers, metric, orig, new


# ------------------------------------------------------------------------------ hidden-test checks
# Each check states the property that failed and nothing else: no inputs, no expected values, no
# text from the student's exception (the judge reports exceptions raised by the student's code).
def same(got, ref, prop: str, atol: float, rtol: float = 0.0) -> None:
    """Raise ``AssertionError(prop)`` unless ``got`` has ``ref``'s shape and values."""
    try:
        g = got.detach().cpu().double() if isinstance(got, Tensor) else torch.as_tensor(got, dtype=torch.float64)
    except Exception:  # noqa: BLE001
        raise AssertionError(f"{prop} (the answer is not a tensor or numbers)") from None
    r = ref.detach().cpu().double() if isinstance(ref, Tensor) else torch.as_tensor(ref, dtype=torch.float64)
    if g.shape != r.shape:
        raise AssertionError(f"{prop} (the shape differs)")
    if not bool(((g - r).abs() <= atol + rtol * r.abs()).all()):
        raise AssertionError(prop)


def check_head_score(fn, kind: str) -> None:
    """``fn(pattern, seq_len)`` equals the reference window on random patterns of drawn sizes."""
    from grader.hidden import generator

    g = generator(f"head score {kind}")
    for _ in range(2):
        seq_len = int(torch.randint(4, 13, (1,), generator=g))
        batch = int(torch.randint(2, 5, (1,), generator=g))
        n_heads = batch + 1 + int(torch.randint(0, 4, (1,), generator=g))  # never the batch size
        pattern = random_patterns(g, batch, n_heads, seq_len)
        same(fn(pattern, seq_len), window_score(pattern, seq_len, kind),
             f"the {kind} score matches the reference window on random patterns of other sizes", atol=1e-6)


def check_path_patch(fn, model, label: str) -> None:
    """One sender and two senders into top-layer receivers' q, k and v, against the reference."""
    for n_senders, inp in ((1, "q"), (1, "k"), (1, "v"), (2, "k")):
        senders, receivers, metric, orig, new = path_case(model, f"{label} {n_senders} {inp}", n_senders, receiver_input=inp)
        ref = exact(model, [senders], receivers, inp, metric, orig, new)[0]
        same(fn(model, senders, receivers, inp, metric, orig, new), ref,
             f"path patching into the receivers' {inp} matches the reference on other heads and prompts", atol=2e-4)


def sweep_case(model, label: str, receiver_input: str):
    """Three senders in a drawn order that is not sorted: a path case's sender, another head below the top
    layer, and a head of the top layer (which reaches no receiver). Returns ``(senders, receivers, metric, orig, new)``."""
    from grader.hidden import generator

    g = generator(label + " senders")
    (first,), receivers, metric, orig, new = path_case(model, label, 1, pool=2, receiver_input=receiver_input)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    others = [(l, h) for l in range(L - 1) for h in range(H) if (l, h) != first]
    senders = [first, others[int(torch.randint(len(others), (1,), generator=g))], (L - 1, int(torch.randint(H, (1,), generator=g)))]
    senders = [senders[i] for i in torch.randperm(3, generator=g).tolist()]
    if senders == sorted(senders):  # an order a sorted sweep would also produce tells nothing
        senders.reverse()
    return senders, receivers, metric, orig, new


def check_sweep(fn, model, label: str) -> None:
    """The sweep over a few senders on the loaded model and on a random model of another size, against the reference."""
    from grader.hidden import seed
    from ioi_anomalies import random_model

    inp = "qkv"[seed(label) % 3]
    senders, receivers, metric, orig, new = sweep_case(model, label, inp)
    same(fn(model, senders, receivers, inp, metric, orig, new), each_sender(model, senders, receivers, inp, metric, orig, new),
         "the sweep matches the reference on other senders, receivers and prompts", atol=2e-4)
    other = random_model(n_layers=3, n_heads=4, seed=seed(label + " model") % 1000)
    senders, receivers, metric, orig, new = sweep_case(other, label + " other", "k")
    same(fn(other, senders, receivers, "k", metric, orig, new), each_sender(other, senders, receivers, "k", metric, orig, new),
         "the sweep matches the reference on a random model of another size", atol=2e-4)


def check_strongest_senders(fn, label: str) -> None:
    from grader.hidden import generator

    g = generator(label)
    for shape, k in (((4, 6), 3), ((9, 12), 5)):
        r = torch.randn(*shape, generator=g)
        try:
            got = [(int(l), int(h)) for l, h in fn(r, k)]
        except (TypeError, ValueError):
            raise AssertionError("return a list of (layer, head) pairs") from None
        assert got == strongest_senders(r, k), "the k most negative heads, most negative first, on other results"


def check_s2_attention(fn, model, label: str) -> None:
    from grader.hidden import generator, seed
    from ioi_anomalies import IOIDataset, random_model

    g = generator(label)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ds = IOIDataset(["BABA", "ABBA"][seed(label) % 2], N=7, tokenizer=model.tokenizer, seed=seed(label) % 100_000)
    heads = [(int(torch.randint(0, L, (1,), generator=g)), int(torch.randint(0, H, (1,), generator=g))) for _ in range(3)]
    same(fn(model, ds, heads), attention_s2_to_s1_plus_1(model, ds, heads),
         "attention S2 -> S1+1 matches the reference on other prompts and heads", atol=1e-5)
    other = random_model(n_layers=3, n_heads=4, seed=seed(label + " model") % 1000)
    tiny = IOIDataset("mixed", N=5, tokenizer=other.tokenizer, seed=seed(label + " tiny") % 100_000)
    heads = [(0, int(torch.randint(0, 4, (1,), generator=g))), (2, int(torch.randint(0, 4, (1,), generator=g)))]
    same(fn(other, tiny, heads), attention_s2_to_s1_plus_1(other, tiny, heads),
         "attention S2 -> S1+1 matches the reference on a random model of another size", atol=1e-5)


def multi_sender_case(model, label: str, draws: int = 3, pool: int = 3, clear: float = 2e-3):
    """A two-sender case in which each sender matters beside the other.

    ``together`` must differ from either sender alone, or an answer that patches one sender for
    "together" would pass: candidate receivers (a draw like :func:`path_case`'s, up to ``draws``
    times, stopping once a case is ``clear``) each get ``pool`` random sender pairs, and the pair
    kept is the one whose ``together`` is furthest from its nearer single sender. A receiver that
    ignores its keys (a head that always attends one position) thus never decides the case.
    Returns ``(senders, receivers, metric, orig, new)``.
    """
    from grader.hidden import generator
    from ioi_anomalies import make_logit_diff_metric

    g = generator(label + " multi")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if L < 2:
        raise ValueError("path patching needs at least two layers")
    orig, new = small_ioi(model, label)
    metric = make_logit_diff_metric(orig)
    lower = [(l, h) for l in range(max(1, L - 2)) for h in range(H)]
    best, best_gap = None, -1.0
    for _ in range(draws):
        receivers = [(L - 1, int(torch.randint(0, H, (1,), generator=g)))]
        if L >= 3 and int(torch.randint(0, 2, (1,), generator=g)):
            receivers.append((L - 2, int(torch.randint(0, H, (1,), generator=g))))
        pairs = [sorted(lower[int(i)] for i in torch.randperm(len(lower), generator=g)[:2]) for _ in range(pool)]
        sets = [s for a, b in pairs for s in ([a], [b], [a, b])]
        values = exact(model, sets, receivers, "k", metric, orig, new)
        for i, pair in enumerate(pairs):
            alone_a, alone_b, together = values[3 * i: 3 * i + 3]
            gap = min(abs(together - alone_a), abs(together - alone_b))
            if gap > best_gap:
                best, best_gap = (pair, receivers), gap
        if best_gap >= clear:
            break
    (senders, receivers) = best
    return senders, receivers, metric, orig, new


def check_multi_sender(fn, model, label: str) -> None:
    senders, receivers, metric, orig, new = multi_sender_case(model, label)
    got = fn(model, senders, receivers, metric, orig, new)
    ref = multi_sender_effects(model, senders, receivers, metric, orig, new)
    try:
        keys = {tuple(int(x) for x in k) if isinstance(k, (tuple, list)) else k for k in got}
    except Exception:  # noqa: BLE001
        raise AssertionError("a dict keyed by (layer, head) and 'together'") from None
    assert keys == set(ref), "one entry per sender, keyed (layer, head), plus 'together'"
    for s in senders:
        same(got[tuple(s)], ref[tuple(s)], "each sender alone, into the keys, matches the reference on other heads", atol=2e-4)
    same(got["together"], ref["together"], "the senders together, into the keys, match the reference on other heads", atol=2e-4)


def check_attention_drops(fn, label: str) -> None:
    from grader.hidden import generator

    g = generator(label)
    for _ in range(3):
        s, a, c = (float(x) for x in (torch.rand(3, generator=g) * torch.tensor([8.0, 3.0, 3.0]) - torch.tensor([2.0, 0.0, 0.0])))
        same(torch.tensor(fn(s, a, c), dtype=torch.float64), torch.tensor(attention_drops(s, a, c)),
             "the three drops match sigmoid arithmetic on other scores", atol=1e-5)
