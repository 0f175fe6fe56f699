"""One hook factory for the project's own experiments: the tests, the benchmarks, the hidden tests' references.

Every setter returns one ``(hook name, hook function)`` pair, ready for
``model.hooks(fwd_hooks=[...])`` or ``run_and_cache(..., fwd_hooks=[...])``, so the hook is removed
with the context that added it. Hook names come from TransformerLens's ``get_act_name``
(``name("z", 3)`` is ``"blocks.3.attn.hook_z"``, ``name("scale")`` the final LayerNorm's scale), never
spelled out by hand.

Head activations (``z``, ``q``, ``k``, ``v``) are ``[batch, position, head, d_head]``:

- :func:`replace`: the whole activation becomes a given tensor (a cached run's, a mean).
- :func:`patch_heads`: some heads take their activation from another run, at every position or at
  one position per prompt.
- :func:`freeze`: every head keeps the clean run's activation except some senders, which take the
  corrupted run's (path patching's first pass).
- :func:`mean_ablate`: every (prompt, position, head) outside a keep mask becomes its mean.

This lives outside ``ioi_anomalies`` on purpose: these hooks are what the notebooks ask students to
write, and the package students import supplies plumbing only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from transformer_lens.utilities import get_act_name

Hook = tuple[str, Callable]


def name(kind: str, layer: int | None = None) -> str:
    """The hook point of ``kind`` (``"z"``, ``"q"``, ``"pattern"``, ``"resid_pre"``, ``"scale"``, ...) at ``layer``."""
    return get_act_name(kind, layer)


def names(kind: str, layers: int | Sequence[int]) -> list[str]:
    """``name(kind, l)`` for each layer (``layers`` a count: every layer below it)."""
    return [get_act_name(kind, l) for l in (range(layers) if isinstance(layers, int) else layers)]


def _heads(heads: Sequence[int]) -> list[int]:
    heads = [int(h) for h in heads]
    if not heads:
        raise ValueError("give at least one head to patch")
    return heads


def replace(kind: str, layer: int, value: Tensor) -> Hook:
    """``kind`` at ``layer`` replaced whole by ``value`` (same shape as the activation)."""

    def hook(act, hook):
        if value.shape != act.shape:
            raise ValueError(f"{hook.name}: replacement of shape {tuple(value.shape)} for an activation of shape {tuple(act.shape)}")
        return value.to(act.dtype).clone()

    return get_act_name(kind, layer), hook


def patch_heads(kind: str, layer: int, heads: Sequence[int], source: Tensor, positions: Tensor | None = None) -> Hook:
    """``heads``' ``kind`` at ``layer`` taken from ``source`` (the activation of another run): at every
    position, or only at ``positions[i]`` of prompt ``i``. Other heads and positions are untouched."""
    heads = _heads(heads)

    def hook(act, hook):
        act = act.clone()
        if positions is None:
            act[:, :, heads] = source[:, :, heads].to(act.dtype)
        else:
            rows = torch.arange(act.shape[0], device=act.device)
            pos = positions.to(act.device)
            for h in heads:
                act[rows, pos, h] = source[rows, pos, h].to(act.dtype)
        return act

    return get_act_name(kind, layer), hook


def freeze(layer: int, clean: Tensor, new: Tensor | None = None, heads: Sequence[int] = ()) -> Hook:
    """Every head's ``z`` at ``layer`` fixed to ``clean``, except ``heads``, which take ``new``'s."""
    heads = [int(h) for h in heads]
    if heads and new is None:
        raise ValueError("freeze: give `new` for the heads that are not frozen to the clean run")

    def hook(z, hook):
        out = clean.to(z.dtype).clone()
        if heads:
            out[:, :, heads] = new[:, :, heads].to(z.dtype)
        return out

    return get_act_name("z", layer), hook


def mean_ablate(layer: int, means: Tensor, keep: Tensor | None = None) -> Hook:
    """``z`` at ``layer`` replaced by ``means`` ([batch, position, head, d_head]) wherever ``keep``
    ([batch, position, head], bool) is False; everywhere when ``keep`` is None."""

    def hook(z, hook):
        m = means.to(z.dtype)
        if keep is None:
            return m.clone()
        return torch.where(keep.to(z.device)[..., None], z, m)

    return get_act_name("z", layer), hook
