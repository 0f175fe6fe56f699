"""Plumbing for mean ablation: the means to ablate to, and which outputs a circuit keeps.

Zero-ablation throws a head far off its usual range. Mean ablation instead replaces a head's
``z`` by its mean over prompts that share the *same template* (so position-dependent structure
survives) but carry no IOI information: the ABC prompts. The hooks that do the ablating are the
exercises' to write (notebook 02); this module supplies only what they need.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .hooks import act_name, assert_no_hooks, run_and_cache

Head = tuple[int, int]


@torch.inference_mode()
def mean_z_by_template(model, dataset) -> Float[Tensor, "layer batch seq head d_head"]:
    """Every head's ``z`` averaged within each template group, broadcast back to each prompt.

    Runs the model once on ``dataset`` with **no hooks** (the reference runs with whatever hooks
    are attached, which silently bakes an ablation into the means).
    """
    assert_no_hooks(model, "mean_z_by_template")
    names = [act_name("z", l) for l in range(model.cfg.n_layers)]
    _, cache = run_and_cache(model, dataset.toks, names, return_logits=False)
    z = torch.stack([cache[n] for n in names])  # [layer, batch, seq, head, d_head]
    means = torch.empty_like(z)
    for group in dataset.groups:
        idx = torch.as_tensor(group, device=z.device, dtype=torch.long)
        means[:, idx] = z[:, idx].mean(1, keepdim=True)
    return means


def circuit_keep_masks(model, dataset, circuit: dict[str, list[Head]], seq_pos_to_keep: dict[str, str] | None = None) -> list[Tensor]:
    """Per layer, a bool mask [batch, seq, head]: True where a circuit head keeps its own output.

    A head of class ``c`` keeps its output only at the position ``seq_pos_to_keep[c]`` names
    (default ``SEQ_POS_TO_KEEP``: e.g. name movers at ``end``); every other (head, position) is
    to be mean-ablated. This is the IOI paper's bookkeeping of which class acts where; what to do
    with the masks is the experiment.
    """
    if seq_pos_to_keep is None:
        from .circuit import SEQ_POS_TO_KEEP as seq_pos_to_keep
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
