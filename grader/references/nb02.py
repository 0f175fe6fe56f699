"""References for the hidden tests of notebook 02 (backup name movers).

They live with the grader, which the judge imports; the package students import does not hold
them, so no graded answer can be answered by calling its own reference.
"""

from __future__ import annotations

import torch

from ioi_anomalies import circuit_keep_masks, head_dla, logit_diff
from ioi_anomalies.hooks import assert_no_hooks, run_and_cache
from grader.refcache import cached  # computed once per model, source, hidden seed and arguments

Head = tuple[int, int]


def top_head(dla: torch.Tensor) -> tuple[int, int]:
    """The (layer, head) with the largest value of a [layer, head] tensor."""
    return divmod(int(dla.argmax()), dla.shape[1])


def end_ablation_hook(head: int, means: torch.Tensor, end_positions: torch.Tensor):
    """A hook_z hook that sets ``head``'s z at each prompt's END to ``means``."""
    def hook(z, hook):
        rows = torch.arange(z.shape[0], device=z.device)
        end = end_positions.to(z.device)
        z[rows, end, head] = means[rows, end, head].to(z.device)
        return z

    return hook


@torch.inference_mode()
def ablate_at_end(model, dataset, means, head: Head):
    """Logits and cache (every hook_z and the final LN scale) with ``head`` mean-ablated at END."""
    assert_no_hooks(model, "ablate_at_end")
    layer, h = head
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)] + ["ln_final.hook_scale"]
    hook = end_ablation_hook(h, means[layer], dataset.word_idx["end"])
    return run_and_cache(model, dataset.toks, names, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


@cached
@torch.inference_mode()
def dla_before_after(model, dataset, means, head: Head) -> tuple[torch.Tensor, float, float]:
    """(DLA of every head after ablating ``head`` at END, naive prediction, measured logit difference)."""
    logits, cache = ablate_at_end(model, dataset, means, head)
    clean = logit_diff(model(dataset.toks), dataset).item()
    naive = clean - head_dla(model, dataset)[head].item()
    return head_dla(model, dataset, cache=cache), naive, logit_diff(logits, dataset).item()


def ln_scale_ratio(clean_scale: torch.Tensor, ablated_scale: torch.Tensor) -> float:
    """Mean over prompts of clean / ablated final LayerNorm scale."""
    return (clean_scale / ablated_scale).mean().item()


@cached
@torch.inference_mode()
def final_ln_scale_ratio(model, dataset, means, head: Head) -> float:
    """ln_scale_ratio of the final LN scale at END, clean vs ``head`` mean-ablated at END."""
    _, cache = ablate_at_end(model, dataset, means, head)
    _, clean = run_and_cache(model, dataset.toks, ["ln_final.hook_scale"], return_logits=False)
    rows, end = torch.arange(dataset.N), dataset.word_idx["end"]
    return ln_scale_ratio(clean["ln_final.hook_scale"][rows, end, 0], cache["ln_final.hook_scale"][rows, end, 0])


@cached
@torch.inference_mode()
def ablated_logit_diff(model, dataset, means, keep: list[torch.Tensor]) -> float:
    """Mean logit difference with every head's z replaced by ``means`` wherever ``keep`` is False."""
    assert_no_hooks(model, "ablated_logit_diff")

    def make(layer):
        def hook(z, hook):
            k = keep[layer].to(z.device)
            return torch.where(k[..., None], z, means[layer].to(z.device))

        return hook

    hooks = [(f"blocks.{l}.attn.hook_z", make(l)) for l in range(model.cfg.n_layers)]
    logits, _ = run_and_cache(model, dataset.toks, [], fwd_hooks=hooks)
    return logit_diff(logits, dataset).item()


def remove(circuit: dict, heads) -> dict:
    heads = set(heads)
    return {cls: [h for h in hs if h not in heads] for cls, hs in circuit.items()}


def keep_all_but(model, dataset, heads) -> list[torch.Tensor]:
    n, seq = dataset.toks.shape
    keep = [torch.ones(n, seq, model.cfg.n_heads, dtype=torch.bool) for _ in range(model.cfg.n_layers)]
    for l, h in heads:
        keep[l][:, :, h] = False
    return keep


def f_circuit(model, dataset, means, circuit) -> float:
    return ablated_logit_diff(model, dataset, means, circuit_keep_masks(model, dataset, circuit))


@cached
def faithfulness(model, dataset, means, circuit) -> tuple[float, float]:
    """(F(C), F(M))."""
    return f_circuit(model, dataset, means, circuit), logit_diff(model(dataset.toks), dataset).item()


def completeness(model, dataset, means, circuit, K) -> tuple[float, float]:
    """(F(C \\ K), F(M \\ K))."""
    return (f_circuit(model, dataset, means, remove(circuit, K)),
            ablated_logit_diff(model, dataset, means, keep_all_but(model, dataset, K)))


def minimality(model, dataset, means, circuit, v, K) -> float:
    """|F(C \\ (K + {v})) - F(C \\ K)|."""
    K = set(K)
    return abs(f_circuit(model, dataset, means, remove(circuit, K | {v})) - f_circuit(model, dataset, means, remove(circuit, K)))


#: Pairs (v, K = {k}) :func:`minimality_case` tries at most: each costs up to three forward passes.
MINIMALITY_TRIES = 6


@cached
def minimality_case(model, dataset, means, circuit, label: str, tries: int = MINIMALITY_TRIES) -> tuple[Head, Head]:
    """A head ``v`` and a head ``k`` of the circuit, drawn for the hidden input ``label``: among at most
    ``tries`` pairs in a drawn order, the first for which removing ``v`` hurts given ``K = {k}``, and by
    a different amount than without ``K`` (so the answer is far from the trivial ones); the first pair
    drawn when none of them does. The tries are bounded so that a large model grades in minutes."""
    from grader.hidden import generator

    g = generator(label)
    heads = sorted({(int(l), int(h)) for hs in circuit.values() for l, h in hs})
    pairs = [(v, k) for v in heads for k in heads if v != k]
    order = [pairs[i] for i in torch.randperm(len(pairs), generator=g).tolist()]
    F: dict = {}

    def f_without(removed) -> float:
        key = frozenset(removed)
        if key not in F:
            F[key] = f_circuit(model, dataset, means, remove(circuit, key))
        return F[key]

    def informative(pair) -> bool:
        v, k = pair
        d = f_without({v, k}) - f_without({k})
        return d < -0.05 and abs(abs(d) - abs(f_without({v}) - f_without(set()))) > 0.01

    return next((p for p in order[:tries] if informative(p)), order[0])
