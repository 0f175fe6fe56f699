"""Direct logit attribution (DLA): how much each head writes the answer straight into the logits.

With the final LayerNorm folded and every writing weight centred (compatibility mode), the
logits at a position are ``resid / scale @ W_U + b_U``, where ``resid`` is the sum of what every
component wrote (embeddings, each head's ``z @ W_O``, each attention bias ``b_O``, each MLP) and
``scale`` is the final LayerNorm's scale at that position. A component's *direct* effect on the
logit difference is its output divided by the same ``scale`` and dotted with ``W_U[:, IO] -
W_U[:, S]``. Summed over all components, plus ``b_U[IO] - b_U[S]``, it rebuilds the logit
difference exactly.

LayerNorm scale position: the logit difference is read at ``end``, so this project divides by
the final LayerNorm scale **at ``end``** (``ln_position="end"``, the default); the
decomposition is then exact. The reference material divides by the scale at the *last* position
of the padded batch (``pos_slice=-1``), which for right-padded prompts is the final IO token or a
pad, not ``end``; its published DLA numbers (e.g. 9.9 -> 1.7086 on GPT-2 small) include that
choice. Pass ``ln_position="last"`` to reproduce them.
"""

from __future__ import annotations

from typing import Literal

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from .hooks import act_name, assert_no_hooks, run_and_cache

LNPosition = Literal["end", "last"]


def logit_diff_directions(model, dataset) -> Float[Tensor, "batch d_model"]:
    """``W_U[:, IO] - W_U[:, S]`` for every prompt."""
    W_U = model.W_U
    io = torch.as_tensor(dataset.io_tokenIDs, device=W_U.device)
    s = torch.as_tensor(dataset.s_tokenIDs, device=W_U.device)
    return (W_U[:, io] - W_U[:, s]).T


def _rows(dataset, device):
    return torch.arange(dataset.N, device=device), dataset.word_idx["end"].to(device)


def final_ln_scale(cache: dict, dataset, ln_position: LNPosition = "end") -> Float[Tensor, "batch 1"]:
    """The final LayerNorm scale per prompt, at ``end`` or at the batch's last position."""
    scale = cache[act_name("scale")]
    if ln_position == "end":
        rows, end = _rows(dataset, scale.device)
        return scale[rows, end]
    if ln_position == "last":
        return scale[:, -1]
    raise ValueError(f"ln_position must be 'end' or 'last', got {ln_position!r}.")


def head_outputs_at_end(model, cache: dict, dataset) -> Float[Tensor, "layer head batch d_model"]:
    """Each head's output ``z @ W_O`` at every prompt's ``end`` position."""
    rows, end = _rows(dataset, model.W_O.device)
    z = torch.stack([cache[act_name("z", l)][rows, end] for l in range(model.cfg.n_layers)])
    return einops.einsum(z, model.W_O, "layer batch head d_head, layer head d_head d_model -> layer head batch d_model")


def _dla_cache(model, dataset) -> dict:
    names = [act_name("z", l) for l in range(model.cfg.n_layers)] + [act_name("scale")]
    _, cache = run_and_cache(model, dataset.toks, names, return_logits=False)
    return cache


@torch.inference_mode()
def head_dla(
    model,
    dataset,
    cache: dict | None = None,
    ln_position: LNPosition = "end",
    per_prompt: bool = False,
) -> Tensor:
    """Direct logit attribution of every head to ``logit(IO) - logit(S)`` at ``end``.

    Returns [n_layers, n_heads] (batch mean) or [n_layers, n_heads, batch] with ``per_prompt``.
    ``cache`` may be any mapping with ``blocks.{l}.attn.hook_z`` and ``ln_final.hook_scale``
    (e.g. from ``model.run_with_cache``, with or without hooks); without it the model is run once
    with no hooks.
    """
    if cache is None:
        assert_no_hooks(model, "head_dla")
        cache = _dla_cache(model, dataset)
    out = head_outputs_at_end(model, cache, dataset)
    scale = final_ln_scale(cache, dataset, ln_position)
    dirs = logit_diff_directions(model, dataset)
    dla = einops.einsum(out / scale, dirs, "layer head batch d_model, batch d_model -> layer head batch")
    return dla if per_prompt else dla.mean(-1)


@torch.inference_mode()
def residual_components_at_end(model, dataset) -> tuple[Float[Tensor, "component batch d_model"], list[str], dict]:
    """Everything written to the residual stream at ``end``: embeddings, heads, b_O, MLPs.

    Returns ``(stack, labels, cache)``; ``stack.sum(0)`` is the final residual stream at ``end``.
    """
    assert_no_hooks(model, "residual_components_at_end")
    L = model.cfg.n_layers
    names = (
        [act_name("embed"), act_name("pos_embed"), act_name("scale"), act_name("resid_post", L - 1)]
        + [act_name("z", l) for l in range(L)]
        + [act_name("mlp_out", l) for l in range(L)]
    )
    _, cache = run_and_cache(model, dataset.toks, names, return_logits=False)
    rows, end = _rows(dataset, model.W_O.device)
    heads = head_outputs_at_end(model, cache, dataset)
    parts, labels = [cache[act_name("embed")][rows, end], cache[act_name("pos_embed")][rows, end]], ["embed", "pos_embed"]
    for l in range(L):
        for h in range(model.cfg.n_heads):
            parts.append(heads[l, h])
            labels.append(f"{l}.{h}")
        parts.append(model.b_O[l].expand(dataset.N, -1))
        labels.append(f"b_O{l}")
        parts.append(cache[act_name("mlp_out", l)][rows, end])
        labels.append(f"mlp{l}")
    return torch.stack(parts), labels, cache


@torch.inference_mode()
def component_dla(model, dataset, ln_position: LNPosition = "end") -> tuple[Tensor, list[str]]:
    """DLA of every residual component (embeddings, heads, b_O, MLPs) plus the unembed bias.

    Returns ``(values [n_components + 1], labels)``; with ``ln_position="end"`` the values sum to
    the mean logit difference.
    """
    stack, labels, cache = residual_components_at_end(model, dataset)
    scale = final_ln_scale(cache, dataset, ln_position)
    dirs = logit_diff_directions(model, dataset)
    values = einops.einsum(stack / scale, dirs, "comp batch d_model, batch d_model -> comp batch").mean(-1)
    b_U = getattr(model, "b_U", None)
    if b_U is None:
        bias = torch.zeros((), device=values.device)
    else:
        io = torch.as_tensor(dataset.io_tokenIDs, device=b_U.device)
        s = torch.as_tensor(dataset.s_tokenIDs, device=b_U.device)
        bias = (b_U[io] - b_U[s]).mean()
    return torch.cat([values, bias.reshape(1)]), labels + ["b_U"]
