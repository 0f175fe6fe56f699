"""Head-type scores on repeated random tokens.

Feed a sequence of ``seq_len`` random tokens followed by the same sequence again (no BOS). A head
of a given type puts its attention on a fixed offset; its score is its mean attention over a fixed
*window* of (destination -> source) pairs, and over the batch (the reference analysis's
definitions):

- *previous-token*: destinations ``1 .. seq_len`` -> ``d - 1`` (the first copy and the first
  token of the second; not the whole sub-diagonal);
- *duplicate-token*: destinations ``seq_len .. 2 seq_len - 1`` -> ``d - seq_len`` (the earlier
  copy of the same token);
- *induction*: destinations ``seq_len .. 2 seq_len - 1`` -> ``d - seq_len + 1`` (the token that
  *followed* the earlier copy): ``seq_len`` pairs, without ``seq_len - 1 -> 0``, which lies on the
  same diagonal but is no induction position.

A score of 1 means the head does nothing else in its window. A high score is a hint, not a proof:
a head can score high for another reason, and a strongly *negative*-acting head (an anti-induction
head, which attends like an induction head but suppresses the copied token) scores as high as an
induction head.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .hooks import act_name, assert_no_hooks, run_and_cache

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


@torch.inference_mode()
def head_type_scores(model, tokens: Int[Tensor, "batch two_seq"]) -> dict[str, Float[Tensor, "layer head"]]:
    """Induction, duplicate-token and previous-token scores of every head on repeated tokens."""
    assert_no_hooks(model, "head_type_scores")
    if tokens.ndim != 2 or tokens.shape[1] % 2:
        raise ValueError(f"expected repeated tokens [batch, 2 * seq_len], got {tuple(tokens.shape)}.")
    seq_len = tokens.shape[1] // 2
    names = [act_name("pattern", l) for l in range(model.cfg.n_layers)]
    _, cache = run_and_cache(model, tokens.to(model.cfg.device), names, return_logits=False)
    pattern = torch.stack([cache[n] for n in names], dim=1)  # [batch, layer, head, q, k]
    second = pattern[..., seq_len : 2 * seq_len, :]  # destinations in the second copy
    windows = {
        "induction": second[..., 1 : seq_len + 1],
        "duplicate": second[..., :seq_len],
        "previous": pattern[..., 1 : seq_len + 1, :seq_len],
    }
    return {kind: windows[kind].diagonal(dim1=-2, dim2=-1).mean(dim=(0, -1)) for kind in SCORE_TYPES}


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
