"""Attention heads as the experiments name them, and the checks every helper applies to them.

A head is ``(layer, head)``. Path patching sends from *sender* heads into one input (``"q"``,
``"k"`` or ``"v"``) of *receiver* heads; :func:`check_receivers` and :func:`check_senders` turn
what the caller passed into plain ``(int, int)`` pairs, or raise an error that says what to fix.
"""

from __future__ import annotations

from typing import Iterable, Literal, Sequence

Head = tuple[int, int]
ReceiverInput = Literal["q", "k", "v"]
RECEIVER_INPUTS: tuple[ReceiverInput, ...] = ("q", "k", "v")


def _check_heads(model, heads: Iterable[Head], role: str) -> list[Head]:
    heads = [(int(l), int(h)) for l, h in heads]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for l, h in heads:
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise ValueError(f"{role} {l}.{h} is not a head of this {n_layers}x{n_heads} model.")
    return heads


def check_receivers(model, receivers: Sequence[Head], receiver_input: str) -> list[Head]:
    """The receivers as ``(layer, head)`` ints; raises on an unknown input, none or a bad head."""
    if receiver_input not in RECEIVER_INPUTS:
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}.")
    receivers = _check_heads(model, receivers, "receiver")
    if not receivers:
        raise ValueError("give at least one receiver head (layer, head).")
    return receivers


def check_senders(model, senders: Iterable[Head]) -> list[Head]:
    """The senders as ``(layer, head)`` ints; raises on a head the model does not have. No
    senders at all is allowed: nothing is patched."""
    return _check_heads(model, senders, "sender")


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """``{layer: [head, ...]}``, layers ascending, heads in the order given."""
    by_layer: dict[int, list[int]] = {}
    for l, h in sorted(heads, key=lambda head: head[0]):
        by_layer.setdefault(l, []).append(h)
    return by_layer
