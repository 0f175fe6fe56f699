"""Mean ablation: replace a head's output by its average over a reference distribution.

Zero-ablation throws a head far off its usual range. Mean ablation instead replaces a head's
``z`` by its mean over prompts that share the *same template* (so position-dependent structure
survives) but carry no IOI information: the ABC prompts. Ablating name mover 9.9 this way at the
``end`` token, and watching other heads' direct logit attribution rise, is how backup name movers
were found.
"""

from __future__ import annotations

from typing import Iterable

import einops
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
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))

    def make(layer: int, hs: list[int]):
        def hook(z, hook):
            m = means[layer].to(z.device)
            if positions is None:
                z[:, :, hs] = m[:, :, hs]
            else:
                rows = torch.arange(z.shape[0], device=z.device)
                pos = positions.to(z.device)
                for h in hs:
                    z[rows, pos, h] = m[rows, pos, h]
            return z

        return hook

    return [(f"blocks.{l}.attn.hook_z", make(l, hs)) for l, hs in sorted(by_layer.items())]


def z_patch_hooks(heads: Iterable[Head], new_z: dict[str, Tensor], positions: Tensor | None = None):
    """Forward hooks that copy the given heads' ``z`` from ``new_z`` (a cache of another run)."""
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
