"""Path patching: how much of a head's effect flows through a chosen *path*.

Activation patching asks "what if this head's output came from the corrupted run?" and lets the
change spread everywhere. Path patching restricts it to one path: from *sender* heads into the
queries, keys or values of chosen *receiver* heads, and nowhere else.

The reference algorithm (Wang et al. 2022), for a set of senders:

1. Run the original (clean) prompts with every head's output ``z`` *frozen* to its clean value,
   except the senders, whose ``z`` comes from the new (corrupted) run. MLPs and LayerNorms
   recompute, so the senders' change reaches the receivers directly and through MLPs, but never
   through other heads. Cache the receivers' ``q``/``k``/``v``.
2. Run the clean prompts again, patching only the receivers' chosen input with the values from
   step 1, and measure the metric (e.g. the normalised IOI metric).

Only senders in layers *below* a receiver can reach it; a sender at or above every receiver
leaves the metric exactly unchanged.

This module holds the plain implementation, two forward passes per sender exactly as above: it is
short enough to check by eye and serves as the oracle for the fast engine
(:mod:`ioi_anomalies.path_patching`).
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .heads import Head, ReceiverInput, check_receivers as _check_receivers
from .hooks import assert_no_hooks, run_and_cache

def z_names(model) -> list[str]:
    return [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]


@torch.inference_mode()
def z_cache(model, toks) -> dict[str, Tensor]:
    """Every head's ``z`` on ``toks`` (no hooks)."""
    _, cache = run_and_cache(model, toks, z_names(model), return_logits=False)
    return cache


def _freeze_hook(senders_here: list[int], orig_z: Tensor, new_z: Tensor):
    def hook(z, hook):
        out = orig_z.clone()
        if senders_here:
            out[:, :, senders_here] = new_z[:, :, senders_here]
        return out

    return hook


def _receiver_hook(heads_here: list[int], patched: Tensor):
    def hook(x, hook):
        x[:, :, heads_here] = patched[:, :, heads_here]
        return x

    return hook


@torch.inference_mode()
def path_patch_logits(
    model,
    senders: Iterable[Head],
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    orig_toks: Tensor,
    orig_z: dict[str, Tensor],
    new_z: dict[str, Tensor],
) -> Tensor:
    """Logits of the clean run after path patching ``senders`` -> ``receivers``' ``receiver_input``.

    ``orig_z`` / ``new_z`` are caches of every head's ``z`` on the clean and corrupted prompts.
    """
    senders = [(int(l), int(h)) for l, h in senders]
    by_layer: dict[int, list[int]] = {}
    for l, h in senders:
        by_layer.setdefault(l, []).append(h)
    # step 1: freeze every head except the senders, recompute MLPs/LNs, cache receiver inputs
    freeze = [
        (name, _freeze_hook(by_layer.get(l, []), orig_z[name], new_z[name])) for l, name in enumerate(z_names(model))
    ]
    recv_layers = sorted({l for l, _ in receivers})
    recv_names = [f"blocks.{l}.attn.hook_{receiver_input}" for l in recv_layers]
    _, patched = run_and_cache(model, orig_toks, recv_names, fwd_hooks=freeze, return_logits=False)
    # step 2: clean run with only the receivers' input patched
    patch = []
    for l, name in zip(recv_layers, recv_names):
        heads_here = [h for rl, h in receivers if rl == l]
        patch.append((name, _receiver_hook(heads_here, patched[name])))
    with model.hooks(fwd_hooks=patch):
        return model(orig_toks)


@torch.inference_mode()
def path_patch_senders_plain(
    model,
    senders: Iterable[Head],
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    metric: Callable[[Tensor], Tensor],
    orig,
    new,
) -> float:
    """The metric after patching the path from *all* ``senders`` together into the receivers.

    With several senders this measures their joint effect, which is not the sum of their
    separate effects: attention is a softmax, so changes to a receiver's keys combine
    nonlinearly.
    """
    assert_no_hooks(model, "path_patch_senders_plain")
    receivers = _check_receivers(model, receivers, receiver_input)
    logits = path_patch_logits(
        model, senders, receivers, receiver_input, orig.toks, z_cache(model, orig.toks), z_cache(model, new.toks)
    )
    return float(metric(logits))


@torch.inference_mode()
def path_patch_heads_to_heads_plain(
    model,
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    metric: Callable[[Tensor], Tensor],
    orig,
    new,
    progress: bool = True,
) -> Float[Tensor, "sender_layer sender_head"]:
    """Path patching from every single head below the receivers, two forward passes per sender.

    Returns [max receiver layer, n_heads]: entry (l, h) is the metric when only head l.h's path
    into the receivers' ``receiver_input`` is patched. The plain reference implementation.
    """
    assert_no_hooks(model, "path_patch_heads_to_heads_plain")
    receivers = _check_receivers(model, receivers, receiver_input)
    max_layer = max(l for l, _ in receivers)
    orig_z, new_z = z_cache(model, orig.toks), z_cache(model, new.toks)
    results = torch.zeros(max_layer, model.cfg.n_heads)
    senders = list(itertools.product(range(max_layer), range(model.cfg.n_heads)))
    for l, h in tqdm(senders, desc=f"path patching -> {receiver_input}", disable=not progress):
        logits = path_patch_logits(model, [(l, h)], receivers, receiver_input, orig.toks, orig_z, new_z)
        results[l, h] = float(metric(logits))
    return results
