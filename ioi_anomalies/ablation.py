"""Mean ablation: replace a head's output by its average over a reference distribution.

Zero-ablation throws a head far off its usual range. Mean ablation instead replaces a head's
``z`` by its mean over prompts that share the *same template* (so position-dependent structure
survives) but carry no IOI information: the ABC prompts. Ablating name mover 9.9 this way at the
``end`` token, and watching other heads' direct logit attribution rise, is how backup name movers
were found.
"""

from __future__ import annotations

from typing import Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from .hooks import assert_no_hooks, run_and_cache

Head = tuple[int, int]


@torch.inference_mode()
def mean_z_by_template(model, dataset) -> Float[Tensor, "layer batch seq head d_head"]:
    """Every head's ``z`` averaged within each template group, broadcast back to each prompt.

    Runs the model once on ``dataset`` with **no hooks** (the reference runs with whatever hooks
    are attached, which silently bakes an ablation into the means).
    """
    assert_no_hooks(model, "mean_z_by_template")
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    _, cache = run_and_cache(model, dataset.toks, names, return_logits=False)
    z = torch.stack([cache[n] for n in names])  # [layer, batch, seq, head, d_head]
    means = torch.empty_like(z)
    for group in dataset.groups:
        idx = torch.as_tensor(group, device=z.device, dtype=torch.long)
        means[:, idx] = z[:, idx].mean(1, keepdim=True)
    return means


def mean_ablation_hooks(
    heads: Iterable[Head],
    means: Float[Tensor, "layer batch seq head d_head"],
    positions: Tensor | None = None,
) -> list[tuple[str, callable]]:
    """Forward hooks that set the given heads' ``z`` to ``means`` (at ``positions`` only, if given).

    ``positions`` is a LongTensor [batch] (e.g. ``dataset.word_idx["end"]``); ``None`` ablates
    every position. Use with ``model.hooks(fwd_hooks=...)`` or ``model.run_with_hooks``.
    """
    heads = list(heads)
    source = {f"blocks.{l}.attn.hook_z": means[l] for l in {int(l) for l, _ in heads}}
    return z_patch_hooks(heads, source, positions)


def z_patch_hooks(heads: Iterable[Head], new_z: dict[str, Tensor], positions: Tensor | None = None):
    """Forward hooks that copy the given heads' ``z`` from ``new_z`` (``hook_z`` name -> tensor
    [batch, seq, head, d_head], e.g. a cache of another run), at ``positions`` only if given."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))

    def make(layer: int, hs: list[int]):
        key = f"blocks.{layer}.attn.hook_z"

        def hook(z, hook):
            src = new_z[key].to(z.device)
            if positions is None:
                z[:, :, hs] = src[:, :, hs]
            else:
                rows = torch.arange(z.shape[0], device=z.device)
                pos = positions.to(z.device)
                for h in hs:
                    z[rows, pos, h] = src[rows, pos, h]
            return z

        return hook

    return [(f"blocks.{l}.attn.hook_z", make(l, hs)) for l, hs in sorted(by_layer.items())]


@torch.inference_mode()
def patch_heads_z(model, orig, new, heads: Iterable[Head], positions: Tensor | None = None) -> Tensor:
    """Logits of ``orig`` with the given heads' ``z`` taken from a run on ``new`` (activation patching).

    Everything else recomputes. ``new`` is a dataset (run here, no hooks) or a dict of cached
    ``hook_z`` activations of the same shape as ``orig``'s.
    """
    assert_no_hooks(model, "patch_heads_z")
    heads = list(heads)
    if isinstance(new, dict):
        new_z = new
    else:
        names = sorted({f"blocks.{l}.attn.hook_z" for l, _ in heads})
        _, new_z = run_and_cache(model, new.toks, names, return_logits=False)
    with model.hooks(fwd_hooks=z_patch_hooks(heads, new_z, positions)):
        return model(orig.toks)


def circuit_keep_masks(model, dataset, circuit: dict[str, list[Head]], seq_pos_to_keep: dict[str, str]) -> list[Tensor]:
    """Per layer, a bool mask [batch, seq, head]: True where a circuit head keeps its own output.

    A head of class ``c`` keeps its output only at the position ``seq_pos_to_keep[c]`` names
    (e.g. name movers at ``end``); every other (head, position) is mean-ablated.
    """
    n, seq = dataset.toks.shape
    rows = torch.arange(n)
    masks = [torch.zeros(n, seq, model.cfg.n_heads, dtype=torch.bool) for _ in range(model.cfg.n_layers)]
    for cls, heads in circuit.items():
        if cls not in seq_pos_to_keep:
            raise ValueError(f"no position to keep for class {cls!r}: add it to seq_pos_to_keep.")
        pos = dataset.word_idx[seq_pos_to_keep[cls]].cpu()
        for layer, head in heads:
            masks[layer][rows, pos, head] = True
    return masks


def circuit_ablation_hooks(
    model,
    means: Float[Tensor, "layer batch seq head d_head"],
    dataset,
    circuit: dict[str, list[Head]],
    seq_pos_to_keep: dict[str, str],
) -> list[tuple[str, callable]]:
    """Hooks that keep only ``circuit``: every other head, and circuit heads away from their
    positions, are replaced by ``means`` (e.g. ``mean_z_by_template(model, abc)``).

    This is how the IOI paper measures a circuit on its own: run the model with these hooks and
    compare the logit difference with the full model's (faithfulness), or knock classes out of
    the circuit and of the model (completeness), or one head (minimality).
    """
    masks = circuit_keep_masks(model, dataset, circuit, seq_pos_to_keep)

    def make(layer: int):
        def hook(z, hook):
            keep = masks[layer].to(z.device)
            return torch.where(keep[..., None], z, means[layer].to(z.device))

        return hook

    return [(f"blocks.{l}.attn.hook_z", make(l)) for l in range(model.cfg.n_layers)]


@torch.inference_mode()
def logit_diff_with_circuit(model, dataset, means, circuit, seq_pos_to_keep) -> float:
    """F(C): the mean logit difference when only ``circuit`` is left (see circuit_ablation_hooks)."""
    from .metrics import logit_diff

    assert_no_hooks(model, "logit_diff_with_circuit")
    with model.hooks(fwd_hooks=circuit_ablation_hooks(model, means, dataset, circuit, seq_pos_to_keep)):
        return logit_diff(model(dataset.toks), dataset).item()


@torch.inference_mode()
def logit_diff_without_heads(model, dataset, means, heads: Iterable[Head]) -> float:
    """F(M \\ K): the mean logit difference of the full model with ``heads`` mean-ablated everywhere."""
    from .metrics import logit_diff

    assert_no_hooks(model, "logit_diff_without_heads")
    heads = list(heads)
    if not heads:
        return logit_diff(model(dataset.toks), dataset).item()
    with model.hooks(fwd_hooks=mean_ablation_hooks(heads, means)):
        return logit_diff(model(dataset.toks), dataset).item()
