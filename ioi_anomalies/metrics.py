"""What the IOI experiments measure: the logit difference and the normalised IOI metric.

The *logit difference* of a prompt is ``logit(IO) - logit(S)`` at the ``end`` position (the token
just before the answer). It is positive when the model prefers the right name, and, unlike a
probability, it is linear in the residual stream, so it can be split into the contributions of
single heads (direct logit attribution).

The *normalised IOI metric* places a patched run between the two unpatched runs:
``(patched - clean) / (clean - corrupted)``, with ``clean`` the logit difference on the IOI
prompts and ``corrupted`` the one on the ABC prompts, both measured with no hooks. It is 0 when
patching changes nothing and -1 when it brings the model down to ABC level.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from .hooks import assert_no_hooks


def logit_diff(
    logits: Float[Tensor, "batch seq d_vocab"],
    dataset,
    per_prompt: bool = False,
) -> Float[Tensor, ""] | Float[Tensor, "batch"]:
    """``logit(IO) - logit(S)`` at each prompt's ``end`` position; the mean unless ``per_prompt``.

    IO and S are the dataset's ``io_tokenIDs`` / ``s_tokenIDs``; for a flipped dataset pass the
    *original* dataset to score against the original names.
    """
    if logits.ndim != 3 or logits.shape[0] != dataset.N:
        raise ValueError(f"expected logits [N={dataset.N}, seq, d_vocab], got {tuple(logits.shape)}.")
    rows = torch.arange(dataset.N, device=logits.device)
    end = dataset.word_idx["end"].to(logits.device)
    at_end = logits[rows, end]
    io = torch.as_tensor(dataset.io_tokenIDs, device=logits.device)
    s = torch.as_tensor(dataset.s_tokenIDs, device=logits.device)
    diff = at_end[rows, io] - at_end[rows, s]
    return diff if per_prompt else diff.mean()


def ioi_metric(
    logits: Float[Tensor, "batch seq d_vocab"],
    dataset,
    clean_logit_diff: float,
    corrupted_logit_diff: float,
) -> Float[Tensor, ""]:
    """``(logit_diff(logits) - clean) / (clean - corrupted)``: 0 = unchanged, -1 = ABC level."""
    denom = clean_logit_diff - corrupted_logit_diff
    if abs(denom) < 1e-8:
        raise ValueError("clean and corrupted logit differences are equal: the metric is undefined.")
    return EndLogitMetric(dataset, offset=clean_logit_diff, scale=denom)(logits)


class EndLogitMetric:
    """A metric that reads the logits only at each prompt's ``end`` position.

    Calling it on full logits [N, seq, vocab] gives a 0-d tensor. ``from_end_logits`` takes the
    logits at ``end`` only, [..., N, vocab], with any leading batch dimensions: the
    path-patching engine uses it to evaluate many patched runs at once without computing logits
    at positions nobody reads.
    """

    def __init__(self, dataset, offset: float = 0.0, scale: float = 1.0):
        self.dataset = dataset
        self.offset, self.scale = offset, scale
        self.io = torch.as_tensor(dataset.io_tokenIDs)
        self.s = torch.as_tensor(dataset.s_tokenIDs)

    def from_end_logits(self, end_logits: Tensor) -> Tensor:
        io, s = self.io.to(end_logits.device), self.s.to(end_logits.device)
        rows = torch.arange(end_logits.shape[-2], device=end_logits.device)
        diff = end_logits[..., rows, io] - end_logits[..., rows, s]
        return (diff.mean(-1) - self.offset) / self.scale

    def __call__(self, logits: Tensor) -> Tensor:
        return (logit_diff(logits, self.dataset) - self.offset) / self.scale


@torch.inference_mode()
def baseline_logit_diffs(model, clean, corrupted) -> tuple[float, float]:
    """Logit differences of the clean and corrupted prompts (scored on the clean names), no hooks."""
    assert_no_hooks(model, "baseline_logit_diffs")
    clean_ld = logit_diff(model(clean.toks), clean).item()
    corrupted_ld = logit_diff(model(corrupted.toks), clean).item()
    return clean_ld, corrupted_ld


def make_ioi_metric(model, clean, corrupted) -> EndLogitMetric:
    """The normalised IOI metric as a one-argument function of patched logits.

    The baselines are measured once, here, on a model with no hooks; they are kept as
    ``metric.clean_logit_diff`` and ``metric.corrupted_logit_diff``.
    """
    clean_ld, corrupted_ld = baseline_logit_diffs(model, clean, corrupted)
    if abs(clean_ld - corrupted_ld) < 1e-8:
        raise ValueError("clean and corrupted logit differences are equal: the metric is undefined.")
    metric = EndLogitMetric(clean, offset=clean_ld, scale=clean_ld - corrupted_ld)
    metric.clean_logit_diff = clean_ld
    metric.corrupted_logit_diff = corrupted_ld
    return metric


def make_logit_diff_metric(dataset) -> EndLogitMetric:
    """The plain mean logit difference on ``dataset``'s names, as a metric object."""
    return EndLogitMetric(dataset)
