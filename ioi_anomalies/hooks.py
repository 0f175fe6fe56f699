"""Hook hygiene: every experiment starts from a model with no hooks left over.

A hook added with ``model.add_hook`` and never removed keeps firing in every later forward pass,
silently changing results (the reference notebook leaves a 9.9 ablation hook on through a whole
later section). Helpers in this package only add hooks inside ``model.hooks(...)`` context
managers, which remove them even when an exception escapes. Hook points are named by
TransformerLens's ``get_act_name`` (:func:`act_name`), never spelled out by hand.
"""

from __future__ import annotations

import torch


def act_name(kind: str, layer: int | None = None) -> str:
    """TransformerLens's name of a hook point (``get_act_name``): ``act_name("z", 3)`` is
    ``"blocks.3.attn.hook_z"``, ``act_name("scale")`` the final LayerNorm's scale. TransformerLens
    loads on the first call, not when this module is imported."""
    from transformer_lens.utilities import get_act_name

    return get_act_name(kind, layer)


def hook_snapshot(model) -> dict[str, tuple]:
    """The ids of every forward/backward hook on every submodule of ``model``, but the libraries' own.

    On a model's first forward pass, transformers installs output-capturing hooks and each
    TransformerBridge block wires capture hooks of its own, and both keep them: they are left out,
    so a snapshot taken before a model's first run compares equal to one taken after it."""
    own = {h.id for module in model.modules() for h in getattr(module, "_capture_hook_handles", ())}
    snap = {}
    for name, module in model.named_modules():
        ids = tuple(
            tuple(i for i, fn in getattr(module, attr).items()
                  if i not in own and getattr(fn, "__module__", "") != "transformers.utils.output_capturing")
            for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        )
        if any(ids):
            snap[name] = ids
    return snap


def count_user_hooks(model) -> int:
    """How many hooks sit on the model's hook points (TransformerLens ``HookPoint``s)."""
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


def assert_no_hooks(model, where: str = "") -> None:
    """Raise if any hook is attached to a hook point of ``model`` (call ``model.reset_hooks()``)."""
    n = count_user_hooks(model)
    if n:
        names = [name for name, hp in model.hook_dict.items() if hp._forward_hooks or hp._backward_hooks]
        raise RuntimeError(
            f"{where + ': ' if where else ''}the model has {n} hooks left over on {names[:6]}"
            f"{'...' if len(names) > 6 else ''}. Call model.reset_hooks() before this experiment."
        )


def run_and_cache(model, toks: torch.Tensor, names: list[str], fwd_hooks=(), return_logits: bool = True):
    """One forward pass under ``fwd_hooks`` that also caches the activations named in ``names``.

    Returns ``(logits or None, cache)`` with ``cache`` a plain dict ``name -> detached tensor``.
    With ``return_logits=False`` the pass stops as soon as every named activation exists (the end
    of the last block a name is in, or of the final LayerNorm): the later blocks and the
    unembedding, most of a small model's forward pass, are not run, and neither are hooks placed
    after that point. Every hook is removed afterwards, even when the forward pass raises.
    """
    cache: dict[str, torch.Tensor] = {}

    def saver(key):
        def save(act, hook):
            cache[key] = act.detach()

        return save

    hooks = list(fwd_hooks) + [(n, saver(n)) for n in names]
    stop = None if return_logits else _last_hook_point(model, names)
    if stop is not None:
        hooks.append((stop, _stop_here))  # last: the hooks on that point itself run first
    with model.hooks(fwd_hooks=hooks):
        out = model(toks, return_type="logits" if return_logits else None)
    return (out if return_logits else None), cache


def _last_hook_point(model, names: list[str]) -> str | None:
    """The hook point after which none of ``names`` is computed: ``blocks.L.hook_resid_post`` for the
    last block L a name is in, ``ln_final.hook_out`` for a name of the final LayerNorm; None (run to the
    end) for no names, a name beyond them, or a model that is not a TransformerBridge."""
    from transformer_lens.model_bridge import TransformerBridge

    if not names or not isinstance(model, TransformerBridge):
        return None
    last = -1
    for name in names:
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
            last = max(last, int(parts[1]))
        elif parts[0] == "ln_final":
            last = model.cfg.n_layers
        else:
            return None
    point = "ln_final.hook_out" if last == model.cfg.n_layers else act_name("resid_post", last)
    return point if point in model.hook_dict else None


def _stop_here(act, hook):
    """End the forward pass here: the bridge's forward catches this exception (its ``stop_at_layer``)."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(act)
