"""Head-type scores on repeated random tokens.

Feed a sequence of ``seq_len`` random tokens followed by the same sequence again. In the second
half, a head of a given type puts its attention on a fixed offset:

- *previous-token* head: from position d to d - 1;
- *duplicate-token* head: from d to d - seq_len (the earlier copy of the same token);
- *induction* head: from d to d - seq_len + 1 (the token that *followed* the earlier copy).

Each score is the head's attention along that diagonal, averaged over the diagonal and the
batch: 1 means the head does nothing else.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .hooks import assert_no_hooks, run_and_cache

SCORE_TYPES = ("induction", "duplicate", "previous")


def generate_repeated_tokens(
    d_vocab: int, seq_len: int, batch: int = 1, seed: int = 0, device="cpu"
) -> Int[Tensor, "batch two_seq"]:
    """``batch`` sequences of ``seq_len`` random tokens, each repeated once (no BOS).

    Tokens come from a ``torch.Generator`` seeded with ``seed``: the global RNG is untouched.
    """
    if seq_len < 2 or batch < 1:
        raise ValueError(f"need seq_len >= 2 and batch >= 1, got seq_len={seq_len}, batch={batch}.")
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(0, d_vocab, (batch, seq_len), generator=gen, dtype=torch.long)
    return torch.cat([half, half], dim=1).to(device)


def diagonal_score(pattern: Float[Tensor, "batch head q k"], offset: int) -> Float[Tensor, "head"]:
    """Mean attention along the diagonal ``k = q - offset``, over the diagonal and the batch."""
    return pattern.diagonal(-offset, dim1=-2, dim2=-1).mean(dim=(0, -1))


@torch.inference_mode()
def head_type_scores(model, tokens: Int[Tensor, "batch two_seq"]) -> dict[str, Float[Tensor, "layer head"]]:
    """Induction, duplicate-token and previous-token scores of every head on repeated tokens."""
    assert_no_hooks(model, "head_type_scores")
    if tokens.ndim != 2 or tokens.shape[1] % 2:
        raise ValueError(f"expected repeated tokens [batch, 2 * seq_len], got {tuple(tokens.shape)}.")
    seq_len = tokens.shape[1] // 2
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = run_and_cache(model, tokens.to(model.cfg.device), names, return_logits=False)
    offsets = {"induction": seq_len - 1, "duplicate": seq_len, "previous": 1}
    return {
        kind: torch.stack([diagonal_score(cache[n], off) for n in names]) for kind, off in offsets.items()
    }


@torch.inference_mode()
def repeated_token_loss(model, tokens: Int[Tensor, "batch two_seq"]) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second half of repeated tokens.

    A model with induction heads predicts the second half far better than the first.
    """
    assert_no_hooks(model, "repeated_token_loss")
    logits = model(tokens.to(model.cfg.device))
    logp = logits[:, :-1].log_softmax(-1)
    nll = -logp.gather(-1, tokens[:, 1:, None].to(logp.device))[..., 0]
    seq_len = tokens.shape[1] // 2
    return nll[:, : seq_len - 1].mean().item(), nll[:, seq_len:].mean().item()
