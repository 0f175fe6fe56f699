"""The path-patching engine: the reference quantity, computed only where it can change.

Path patching (Wang et al. 2022) measures how much of a sender head's effect flows through one
*path*: into the queries, keys or values of chosen *receiver* heads, and nowhere else. The plain
way takes two full forward passes per sender set: (1) the clean prompts with every head's output
``z`` frozen at its clean value except the senders', taken from the corrupted run (MLPs and
LayerNorms recompute), caching the receivers' q/k/v; (2) the clean prompts again with only the
receivers' chosen input patched from step 1, then the metric. Students write that version in
notebook 01. This engine computes *exactly* the same numbers (the test suite checks it against
the plain version to 1e-4) with far less work, using four facts about the algorithm:

1. **Step 1 only needs MLPs.** With every head frozen to its clean output, the only thing a
   sender changes is its own output, ``delta = (z_new - z_clean) @ W_O``, added to the residual
   stream at its layer; after that, only MLPs (and their LayerNorms) react. So a sender's run
   starts from the *cached* clean residual at its layer, adds ``delta`` and runs just the MLPs up
   to the receivers' layers, where the receivers' q/k/v are read off.
2. **Step 2 starts at the first receiver a sender can reach.** Receivers at or below a sender's
   layer keep their clean input, and nothing below the first changed receiver changes, so the
   second run starts from the cached clean residual there; in that layer only the receiver heads
   are recomputed. Only the last layer's ``end`` positions and the logits at ``end`` are needed.
3. **Only tokens that can matter.** Under causal attention nothing after a prompt's ``end``
   reaches the metric, so each prompt keeps only its positions up to ``end``; prompts are packed
   end to end along one token axis (sorted by length, so attention runs per group of equally
   long prompts and no padding is computed). Nothing *before* the first token where the clean
   and corrupted prompts differ changes in any run either: those tokens keep their clean values.
4. **Senders batch.** Many senders are stacked along a new batch dimension and run together,
   in chunks sized to a memory budget; a chunk holds senders of one layer, so it starts there.

The code follows that list, top to bottom:

- *The functional GPT-2* (:class:`Weights`, :func:`causal_attention`, :func:`forward_clean`):
  the model's own arithmetic in plain torch (compatibility mode: folded LayerNorms, the bridge's
  weights), so no hooks are involved at all.
- *The packed-token layout* (:class:`PackedTokens`, fact 3): which tokens are computed and where
  each one sits.
- *The engine* (:class:`PathPatchingEngine`): step 1, the senders' runs (fact 1); step 2, the
  receivers' pass (fact 2); and :meth:`~PathPatchingEngine.run`, which batches the senders
  (fact 4).
- *The faces*: :func:`path_patch_heads_to_heads`, :func:`path_patch_senders` and
  :func:`attribution_path_patching`.

:func:`attribution_path_patching` (the engine's :meth:`~PathPatchingEngine.attribute`) gives the
first-order approximation (attribution patching): one forward and one backward pass through the
same two steps for all senders together. It is cheap and usually ranks senders well, but it
linearises softmaxes and MLPs; its correlation with the exact result is reported by
:func:`compare_with_exact` so users learn when to trust it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .heads import Head, ReceiverInput, check_receivers, check_senders, heads_by_layer
from .hooks import assert_no_hooks


# --------------------------------------------------------------------- the functional GPT-2
class QKV(NamedTuple):
    """Queries, keys and values, each [..., token, head, d_head]."""

    q: Tensor
    k: Tensor
    v: Tensor


@dataclass
class Weights:
    """The model's weights in HookedTransformer layout (compatibility mode, LNs folded), and the
    pieces of its forward pass. Every piece takes any number of leading batch dimensions."""

    W_Q: Tensor
    b_Q: Tensor
    W_K: Tensor
    b_K: Tensor
    W_V: Tensor
    b_V: Tensor
    W_O: Tensor
    b_O: Tensor
    W_in: Tensor
    b_in: Tensor
    W_out: Tensor
    b_out: Tensor
    W_U: Tensor
    b_U: Tensor
    W_E: Tensor
    W_pos: Tensor
    eps: float
    act_fn: str
    n_layers: int
    n_heads: int
    d_head: int

    @classmethod
    def of(cls, model) -> "Weights":
        cfg = model.cfg
        if getattr(cfg, "normalization_type", "LN") not in ("LN", "LNPre"):
            raise ValueError("the path-patching engine supports LayerNorm GPT-2-style models only.")
        if cfg.act_fn not in ("gelu_new", "gelu", "relu", "gelu_fast"):
            raise ValueError(f"unsupported activation {cfg.act_fn!r}.")
        names = ["W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O", "W_in", "b_in", "W_out", "b_out", "W_U", "W_E", "W_pos"]
        weights = {n: getattr(model, n).detach() for n in names}
        b_U = getattr(model, "b_U", None)
        weights["b_U"] = b_U.detach() if b_U is not None else torch.zeros(weights["W_U"].shape[1], device=weights["W_U"].device)
        return cls(**weights, eps=cfg.eps, act_fn=cfg.act_fn, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_head=cfg.d_head)

    def __post_init__(self):
        # fused, GEMM-friendly layouts for every head at once: one matmul for q, k and v; one
        # for the output projection
        n_layers, n_heads, d_model, d_head = self.W_Q.shape
        W_qkv = torch.cat([self.W_Q, self.W_K, self.W_V], dim=1).permute(0, 2, 1, 3)
        self.W_qkv = W_qkv.reshape(n_layers, d_model, 3 * n_heads * d_head).contiguous()
        self.b_qkv = torch.cat([self.b_Q, self.b_K, self.b_V], dim=1).reshape(n_layers, 3 * n_heads * d_head)
        self.W_O_flat = self.W_O.reshape(n_layers, n_heads * d_head, -1).contiguous()

    def ln(self, x: Tensor) -> Tensor:
        """LayerNorm without weights (they are folded into the next matmul)."""
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)

    def act(self, x: Tensor) -> Tensor:
        if self.act_fn in ("gelu_new", "gelu_fast"):
            return F.gelu(x, approximate="tanh")
        if self.act_fn == "gelu":
            return F.gelu(x)
        return F.relu(x)

    def qkv(self, layer: int, resid_pre: Tensor, heads: Sequence[int] | None = None) -> QKV:
        """q, k and v of ``heads`` (default: every head) at ``layer``: each [..., token, head, d_head]."""
        if heads is None:  # every head: one matmul on the fused weights
            x = self.ln(resid_pre) @ self.W_qkv[layer] + self.b_qkv[layer]
            return QKV(*x.view(*x.shape[:-1], 3, self.n_heads, self.d_head).unbind(-3))
        x = self.ln(resid_pre)
        return QKV(*(
            einops.einsum(x, W[layer, heads], "... s d, h d e -> ... s h e") + b[layer, heads]
            for W, b in ((self.W_Q, self.b_Q), (self.W_K, self.b_K), (self.W_V, self.b_V))
        ))

    def attn_out(self, layer: int, z: Tensor, heads: Sequence[int] | None = None) -> Tensor:
        """What ``heads`` (default: every head) write into the residual stream, ``z @ W_O``, without
        the bias ``b_O``: z [..., token, head, d_head] -> [..., token, d_model]."""
        if heads is None:  # every head: one matmul on the fused weights
            return z.reshape(*z.shape[:-2], -1) @ self.W_O_flat[layer]
        return einops.einsum(z, self.W_O[layer, heads], "... s h e, h e d -> ... s d")

    def mlp(self, layer: int, resid_mid: Tensor) -> Tensor:
        hidden = self.act(self.ln(resid_mid) @ self.W_in[layer] + self.b_in[layer])
        return hidden @ self.W_out[layer] + self.b_out[layer]

    def logits(self, resid_final: Tensor) -> Tensor:
        return self.ln(resid_final) @ self.W_U + self.b_U


def causal_attention(q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor | None = None) -> Tensor:
    """Causal attention with torch's fused kernel: q [..., query, head, d_head], k and v
    [..., key, head, d_head] -> z [..., query, head, d_head]. The queries sit at the first
    positions, or at ``q_pos`` [batch, query] when given (with one leading batch dimension)."""
    lead = q.shape[:-3]
    q_, k_, v_ = (x.reshape(-1, *x.shape[-3:]).transpose(1, 2) for x in (q, k, v))
    if q_pos is None:
        z = F.scaled_dot_product_attention(q_, k_, v_, is_causal=True)
    else:
        mask = torch.arange(k.shape[-3], device=q.device) <= q_pos[..., :, None]  # [batch, query, key]
        mask = mask[:, None].expand(*lead, -1, -1, -1).reshape(-1, 1, *mask.shape[-2:])
        z = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)
    return z.transpose(1, 2).reshape(*lead, *q.shape[-3:-1], v.shape[-1])


@dataclass
class CleanRun:
    """What the engine caches from one clean forward pass."""

    resid_pre: list[Tensor]  # per layer, [prompt, position, d_model]
    attn_out: list[Tensor]  # per layer, sum of heads + b_O, [prompt, position, d_model]
    z: list[Tensor]  # per layer, [prompt, position, head, d_head]
    resid_final: Tensor  # [prompt, position, d_model]


@torch.no_grad()
def forward_clean(w: Weights, toks: Tensor) -> CleanRun:
    """The model's forward pass in plain torch, caching what the engine needs."""
    resid = w.W_E[toks] + w.W_pos[: toks.shape[1]]
    resid_pre, attn_out, zs = [], [], []
    for layer in range(w.n_layers):
        resid_pre.append(resid)
        z = causal_attention(*w.qkv(layer, resid))
        out = w.attn_out(layer, z) + w.b_O[layer]
        zs.append(z)
        attn_out.append(out)
        mid = resid + out
        resid = mid + w.mlp(layer, mid)
    return CleanRun(resid_pre, attn_out, zs, resid)


# ----------------------------------------------------------------- the packed-token layout
@dataclass
class PackedTokens:
    """Which tokens the engine computes, and where each one sits.

    Each prompt keeps its positions up to its own ``end`` (every position when the metric reads
    every logit): nothing after ``end`` can reach the metric under causal attention. The prompts,
    sorted by length, are laid end to end along one *packed* token axis, so position-wise work
    (LayerNorms, q/k/v, MLPs) runs on real tokens only, and attention runs per group of equally
    long prompts. Of the packed tokens only the *active* ones are computed: from the first
    position where the clean and corrupted prompts differ on (``end`` always), since before it
    every run is the clean run; the clean keys and values stand in for the others in attention.
    """

    n_prompts: int
    seq_len: int  # positions kept of the padded prompts: the longest prompt's
    index: Tensor  # packed token -> its place in the flattened [n_prompts * seq_len] batch
    groups: list[tuple[int, int, int]]  # equally long prompts: (first packed token, n prompts, length)
    unorder: Tensor  # the caller's prompt j is packed prompt unorder[j]
    active: Tensor  # active token -> packed token
    end_active: Tensor  # each prompt's END among the active tokens, in packed prompt order

    @classmethod
    def build(cls, clean_toks: Tensor, new_toks: Tensor, end: Tensor, every_position: bool) -> "PackedTokens":
        """The layout for clean and corrupted tokens [prompt, seq_len] with END positions ``end``;
        ``every_position`` keeps (and computes) every position of every prompt."""
        n_prompts, seq_len = clean_toks.shape
        device = end.device
        lengths = torch.full((n_prompts,), seq_len, device=device) if every_position else end + 1
        order = torch.sort(lengths, stable=True).indices  # packed prompt i is the caller's prompt order[i]
        sorted_len = lengths[order]
        pos = torch.arange(seq_len, device=device)
        keep = pos[None, :] < sorted_len[:, None]  # [prompt, position], in packed prompt order
        index = (order[:, None] * seq_len + pos[None, :])[keep]
        groups, start = [], 0
        for length, count in zip(*torch.unique_consecutive(sorted_len, return_counts=True)):
            groups.append((start, int(count), int(length)))
            start += int(count) * int(length)
        unorder = torch.empty_like(order)
        unorder[order] = torch.arange(n_prompts, device=device)
        # active tokens: from the first position where the prompts differ, END always
        differs = clean_toks != new_toks
        first = torch.where(differs.any(1), differs.float().argmax(1), seq_len)
        if every_position:  # every position's logits are read
            first = torch.zeros_like(first)
        first = torch.minimum(first, end)
        active = (index % seq_len >= first[index // seq_len]).nonzero().squeeze(1)
        # each END among the active tokens: packed token of each END -> its active token
        end_packed = torch.cumsum(sorted_len, 0) - 1
        where = torch.full((index.numel(),), -1, dtype=torch.long, device=device)
        where[active] = torch.arange(active.numel(), device=device)
        return cls(n_prompts, seq_len, index, groups, unorder, active, where[end_packed])

    @property
    def n_tokens(self) -> int:
        return int(self.index.numel())

    @property
    def n_active(self) -> int:
        return int(self.active.numel())

    def pack(self, x: Tensor) -> Tensor:
        """[prompt, position, ...] -> [packed token, ...]"""
        return x.reshape(self.n_prompts * self.seq_len, *x.shape[2:])[self.index]

    def fill(self, clean: Tensor, active: Tensor) -> Tensor:
        """Every packed token: ``active`` [run, active token, ...] at the active ones, ``clean``
        [packed token, ...] at the others."""
        if self.n_active == self.n_tokens:
            return active
        full = clean.expand(active.shape[0], *clean.shape).clone()
        full[:, self.active] = active
        return full

    def only_active(self, x: Tensor) -> Tensor:
        """[run, packed token, ...] -> [run, active token, ...]"""
        return x[:, self.active] if self.n_active < self.n_tokens else x

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal attention within each prompt: q, k, v [..., packed token, head, d_head] -> z."""
        out = []
        for start, n, length in self.groups:
            tokens = slice(start, start + n * length)
            out.append(causal_attention(*(x[..., tokens, :, :].unflatten(-3, (n, length)) for x in (q, k, v))).flatten(-4, -3))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-3)

    def attend_ends(self, q_end: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention of each prompt's END query only: q_end [..., prompt, head, d_head] (packed
        prompt order), k and v [..., packed token, head, d_head] -> z [..., prompt, head, d_head]."""
        out, first_prompt = [], 0
        for start, n, length in self.groups:
            tokens = slice(start, start + n * length)
            keys, values = (x[..., tokens, :, :].unflatten(-3, (n, length)) for x in (k, v))
            queries = q_end[..., first_prompt : first_prompt + n, :, :].unsqueeze(-3)  # [..., n, 1, head, d_head]
            at_end = torch.full((n, 1), length - 1, device=q_end.device)
            out.append(causal_attention(queries, keys, values, q_pos=at_end).squeeze(-3))
            first_prompt += n
        return out[0] if len(out) == 1 else torch.cat(out, dim=-3)


# ------------------------------------------------------------------------------- the engine
@dataclass(frozen=True)
class Receivers:
    """Receiver heads by layer, and which of their inputs is patched."""

    heads_at: dict[int, list[int]]
    input: ReceiverInput

    @classmethod
    def of(cls, model, receivers: Sequence[Head], receiver_input: str) -> "Receivers":
        return cls(heads_by_layer(check_receivers(model, receivers, receiver_input)), receiver_input)

    @property
    def lowest_layer(self) -> int:
        return min(self.heads_at)

    @property
    def top_layer(self) -> int:
        """Senders below this layer reach at least one receiver."""
        return max(self.heads_at)

    def read(self, qkv: QKV) -> Tensor:
        """The receivers' patched input (q, k or v) out of ``qkv``."""
        return getattr(qkv, self.input)

    def patch(self, qkv: QKV, layer: int, patched: Tensor | None) -> QKV:
        """Every head's ``qkv`` at ``layer`` with the receivers' input set to ``patched``, if any."""
        if patched is None:
            return qkv
        x = self.read(qkv).clone()  # a new tensor: autograd may be watching
        x[:, :, self.heads_at[layer]] = patched
        return qkv._replace(**{self.input: x})


class PathPatchingEngine:
    """Exact path patching for many sender sets at once.

    Build it once per (model, clean dataset, corrupted dataset); then :meth:`run` any sender
    sets into any receivers. ``metric`` must be callable on logits [N, seq, vocab]; if it also
    has ``from_end_logits`` (the metrics of :mod:`ioi_anomalies.metrics` do), the engine only
    computes logits at each prompt's ``end`` position, which is much cheaper.

    Tokens are laid out as :class:`PackedTokens` describes. What the engine keeps of the clean
    run (``clean``) and how the senders' heads differ from it (``sender_dz``) sit at the active
    tokens; the clean residual stream also at every packed token, for the clean q, k and v of
    the tokens that are not computed (``clean_qkv``).

    - **Step 1, the senders' runs** (:meth:`_frozen_run`): from the senders' layer, every head
      frozen to its clean output and each run's own writes added to the residual stream; only
      MLPs recompute. The receivers' chosen input is read off at their layers.
    - **Step 2, the receivers' pass** (:meth:`_receivers_pass`): the clean run again from the
      lowest receiver layer that step 1 changed, with the receivers' input set to step 1's, up to
      the metric.

    :meth:`run` (exact) and :meth:`attribute` (first order) are the two ways through them.
    """

    def __init__(self, model, orig, new, metric: Callable, memory_budget_mb: float = 128.0):
        assert_no_hooks(model, "PathPatchingEngine")
        if orig.toks.shape != new.toks.shape:
            raise ValueError(f"clean and corrupted tokens differ in shape: {tuple(orig.toks.shape)} vs {tuple(new.toks.shape)}.")
        self.model, self.metric, self.memory_budget_mb = model, metric, memory_budget_mb
        self.w = Weights.of(model)
        self.full_metric = not hasattr(metric, "from_end_logits")
        self.orig_toks = orig.toks
        device = self.w.W_E.device
        end = orig.word_idx["end"].to(device)
        # positions after the last END never influence any END (causal attention): drop them,
        # unless the metric reads every logit
        seq_len = orig.toks.shape[1] if self.full_metric else int(end.max()) + 1
        clean_toks, new_toks = orig.toks[:, :seq_len].to(device), new.toks[:, :seq_len].to(device)
        clean = forward_clean(self.w, clean_toks)
        self._check_matches_model(clean, end)
        self.tokens = PackedTokens.build(clean_toks, new_toks, end, every_position=self.full_metric)
        active = self.tokens.active
        self._clean_resid_pre_packed = [self.tokens.pack(r) for r in clean.resid_pre]
        self.clean = CleanRun(
            [r[active] for r in self._clean_resid_pre_packed],
            [self.tokens.pack(a)[active] for a in clean.attn_out],
            [self.tokens.pack(z)[active] for z in clean.z],
            self.tokens.pack(clean.resid_final)[active],
        )
        new_z = forward_clean(self.w, new_toks).z
        self.sender_dz = [self.tokens.pack(nz)[active] - cz for nz, cz in zip(new_z, self.clean.z)]
        self._clean_qkv: dict[int, QKV] = {}

    def _check_matches_model(self, clean: CleanRun, end: Tensor) -> None:
        """The engine redoes the model's arithmetic; refuse a model whose forward differs
        (e.g. LayerNorms not folded, or an unsupported architecture)."""
        with torch.no_grad():
            rows = torch.arange(len(end), device=end.device)
            ours = self.w.logits(clean.resid_final[rows, end])
            theirs = self.model(self.orig_toks)[rows, end.to(self.orig_toks.device)].to(ours.device)
        gap = (ours - theirs).abs().max().item()
        if gap > 1e-3 * max(1.0, theirs.abs().max().item()):
            raise ValueError(
                f"the path-patching engine does not reproduce this model's logits (max gap {gap:.3g}); "
                "load the model with ioi_anomalies.load_model (compatibility mode, LayerNorm folded) "
                "or path patch it with hooks, as in notebook 01."
            )

    def clean_qkv(self, layer: int) -> QKV:
        """Clean q, k, v of every head at ``layer`` on every packed token (cached)."""
        if layer not in self._clean_qkv:
            self._clean_qkv[layer] = self.w.qkv(layer, self._clean_resid_pre_packed[layer])
        return self._clean_qkv[layer]

    # ----------------------------------------------------------- step 1: the senders' runs
    def _head_write(self, layer: int, heads: list[int]) -> Tensor:
        """What ``heads`` at ``layer`` write into the residual stream beyond their clean output,
        ``(z_new - z_clean) @ W_O``: [active token, d_model]."""
        return self.w.attn_out(layer, self.sender_dz[layer][:, heads], heads)

    def _sender_writes(self, sets: list[list[Head]], layer: int) -> Tensor | None:
        """Per sender set, what its heads at ``layer`` write: [set, active token, d_model], or
        None when no set has a head there."""
        heads_per_set = [[h for l, h in s if l == layer] for s in sets]
        if not any(heads_per_set):
            return None
        nothing = torch.zeros_like(self.clean.resid_pre[0])
        return torch.stack([self._head_write(layer, heads) if heads else nothing for heads in heads_per_set])

    def _frozen_run(self, start: int, n_runs: int, writes: Callable[[int], Tensor | None], receivers: Receivers) -> dict[int, Tensor]:
        """Step 1 for ``n_runs`` runs at once, from layer ``start``: every head frozen to its clean
        output, ``writes(layer)`` ([run, active token, d_model] or None) added after the heads of
        ``layer``, MLPs recomputed. Returns the receivers' input at each receiver layer above
        ``start`` (those at or below keep their clean input): {layer: [run, active token, head, d_head]}."""
        resid = self.clean.resid_pre[start].expand(n_runs, -1, -1)
        inputs = {}
        for layer in range(start, receivers.top_layer):
            mid = resid + self.clean.attn_out[layer]
            write = writes(layer)
            if write is not None:
                mid = mid + write
            resid = mid + self.w.mlp(layer, mid)
            if layer + 1 in receivers.heads_at:
                inputs[layer + 1] = receivers.read(self.w.qkv(layer + 1, resid, receivers.heads_at[layer + 1]))
        return inputs

    def _clean_receiver_input(self, layer: int, receivers: Receivers) -> Tensor:
        """The receivers' input at ``layer`` in the clean run, as one run: [1, active token, head, d_head]."""
        return receivers.read(self.w.qkv(layer, self.clean.resid_pre[layer], receivers.heads_at[layer]))[None]

    # -------------------------------------------------------- step 2: the receivers' pass
    def _receivers_pass(self, inputs: dict[int, Tensor], receivers: Receivers) -> Tensor:
        """Step 2: the clean run from the lowest layer in ``inputs``, with the receivers' input
        at each layer set to ``inputs[layer]`` ([run, active token, head, d_head]); the metric
        of each run: [run]."""
        first, last = min(inputs), self.w.n_layers - 1
        resid = self._first_receivers_layer(first, inputs[first], receivers)
        if self.full_metric:  # every logit is read: every layer at every (active) token
            for layer in range(first + 1, last + 1):
                resid = self._patched_layer(layer, resid, inputs.get(layer), receivers)
            return self._metric_of_all_logits(resid)
        for layer in range(first + 1, last):
            resid = self._patched_layer(layer, resid, inputs.get(layer), receivers)
        if first == last:
            ends = resid[:, self.tokens.end_active]
        else:  # the last layer: only the ENDs' queries reach the metric
            ends = self._patched_layer(last, resid, inputs.get(last), receivers, ends_only=True)
        return self.metric.from_end_logits(self.w.logits(ends[:, self.tokens.unorder]))

    def _first_receivers_layer(self, layer: int, patched: Tensor, receivers: Receivers) -> Tensor:
        """The lowest patched layer: only its receiver heads see anything new, every other head
        keeps its clean output. Returns the residual stream after the layer: [run, active token, d_model]."""
        heads = receivers.heads_at[layer]
        resid = self.clean.resid_pre[layer].expand(patched.shape[0], -1, -1)
        qkv = self.w.qkv(layer, resid, heads)._replace(**{receivers.input: patched})
        q, k, v = (self.tokens.fill(clean[:, heads], x) for clean, x in zip(self.clean_qkv(layer), qkv))
        z = self.tokens.only_active(self.tokens.attend(q, k, v))
        out = self.clean.attn_out[layer] + self.w.attn_out(layer, z - self.clean.z[layer][:, heads], heads)
        mid = resid + out
        return mid + self.w.mlp(layer, mid)

    def _patched_layer(self, layer: int, resid: Tensor, patched: Tensor | None, receivers: Receivers, ends_only: bool = False) -> Tensor:
        """A layer above the first patched one: every head recomputed, the receivers' input set
        to ``patched`` (if any here). [run, active token, d_model] -> the same, or with
        ``ends_only`` each prompt's END only: [run, prompt, d_model], in packed prompt order."""
        q, k, v = receivers.patch(self.w.qkv(layer, resid), layer, patched)
        clean_q, clean_k, clean_v = self.clean_qkv(layer)
        k, v = self.tokens.fill(clean_k, k), self.tokens.fill(clean_v, v)
        if ends_only:
            z = self.tokens.attend_ends(q[:, self.tokens.end_active], k, v)
            resid = resid[:, self.tokens.end_active]
        else:
            z = self.tokens.only_active(self.tokens.attend(self.tokens.fill(clean_q, q), k, v))
        mid = resid + self.w.attn_out(layer, z) + self.w.b_O[layer]
        return mid + self.w.mlp(layer, mid)

    def _metric_of_all_logits(self, resid: Tensor) -> Tensor:
        """The metric of each run from its full logits (every token is active then, and the
        prompts are all equally long, in the caller's order)."""
        logits = self.w.logits(resid).unflatten(1, (self.tokens.n_prompts, self.tokens.seq_len))[:, self.tokens.unorder]
        return torch.stack([torch.as_tensor(self.metric(lg)) for lg in logits])

    # -------------------------------------------------------------------- the two ways through
    def chunk_size(self) -> int:
        """How many sender sets run together within the memory budget."""
        return max(1, int(self.memory_budget_mb // max(self._per_set_mb(), 1e-6)))

    def _per_set_mb(self) -> float:
        """The size of one sender set's working memory, in MB (generous: temporaries included)."""
        w, n_tokens = self.w, self.tokens.n_tokens
        d_model, d_mlp = w.W_E.shape[1], w.W_in.shape[-1]
        floats = n_tokens * (6 * d_model + 2 * d_mlp) + 3 * w.n_heads * sum(n * length * length for _, n, length in self.tokens.groups)
        floats += (n_tokens if self.full_metric else self.tokens.n_prompts) * w.W_U.shape[1]
        return 4 * floats / 2**20

    def run(
        self,
        sender_sets: Sequence[Sequence[Head]],
        receivers: Sequence[Head],
        receiver_input: ReceiverInput,
        progress: bool = True,
    ) -> Tensor:
        """The metric after path patching each sender set (all its heads together). [n_sets]"""
        recv = Receivers.of(self.model, receivers, receiver_input)
        sets = [check_senders(self.model, s) for s in sender_sets]
        results = torch.empty(len(sets))
        # sender sets that reach no receiver give the clean metric, as the plain implementation
        # does; it is computed once
        reach = [i for i, s in enumerate(sets) if any(l < recv.top_layer for l, _ in s)]
        blind = [i for i in range(len(sets)) if i not in reach]
        if blind:
            with torch.no_grad():
                results[blind] = float(self.metric(self.model(self.orig_toks)))
        # a chunk holds sets of one lowest sender layer: its step 1 starts there
        size = self.chunk_size()
        by_layer: dict[int, list[int]] = {}
        for i in reach:
            by_layer.setdefault(min(l for l, _ in sets[i]), []).append(i)
        chunks = [(layer, g[i : i + size]) for layer, g in sorted(by_layer.items()) for i in range(0, len(g), size)]
        desc = f"path patching -> {receiver_input} ({len(reach)} senders)"
        for start, chunk in tqdm(chunks, desc=desc, disable=not progress):
            chunk_sets = [sets[i] for i in chunk]
            with torch.no_grad():
                inputs = self._frozen_run(start, len(chunk), lambda layer: self._sender_writes(chunk_sets, layer), recv)
                results[chunk] = self._receivers_pass(inputs, recv).float().cpu()
        return results

    def attribute(self, receivers: Sequence[Head], receiver_input: ReceiverInput) -> Float[Tensor, "sender_layer sender_head"]:
        """First-order estimate of :meth:`run` for every single head below the receivers:
        [top receiver layer, n_heads].

        Step 1 runs once from layer 0 with a zero *tap* added at every layer where a sender's
        write would go; step 2 measures the metric; one backward pass gives its gradient at every
        tap. A head's estimate is the clean metric plus its write dotted with the gradient at its
        layer.
        """
        if not hasattr(self.metric, "from_end_logits"):
            raise ValueError("attribution_path_patching needs a metric with from_end_logits (see make_ioi_metric).")
        recv = Receivers.of(self.model, receivers, receiver_input)
        sender_layers = recv.top_layer
        estimate = torch.zeros(sender_layers, self.w.n_heads)
        if sender_layers == 0:  # receivers in layer 0 only: no head can send to them
            return estimate
        with torch.enable_grad():
            taps = [torch.zeros_like(self.clean.resid_pre[0], requires_grad=True) for _ in range(sender_layers)]
            inputs = self._frozen_run(0, 1, lambda layer: taps[layer], recv)
            if 0 in recv.heads_at:
                inputs[0] = self._clean_receiver_input(0, recv)
            grads = torch.autograd.grad(self._receivers_pass(inputs, recv)[0], taps)
        for layer in range(sender_layers):
            for head in range(self.w.n_heads):
                estimate[layer, head] = (self._head_write(layer, [head]) * grads[layer]).sum().item()
        return estimate + self.clean_metric(receivers, receiver_input)

    def clean_metric(self, receivers: Sequence[Head], receiver_input: ReceiverInput) -> float:
        """The metric of the clean run, computed by the engine's own arithmetic."""
        recv = Receivers.of(self.model, receivers, receiver_input)
        with torch.no_grad():
            layer = recv.lowest_layer
            return float(self._receivers_pass({layer: self._clean_receiver_input(layer, recv)}, recv)[0])


# -------------------------------------------------------------------------------- the faces
def path_patch_heads_to_heads(
    model,
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    metric: Callable,
    orig,
    new,
    progress: bool = True,
    memory_budget_mb: float = 128.0,
) -> Float[Tensor, "sender_layer sender_head"]:
    """Path patching from every single head below the receivers into their ``receiver_input``.

    Same result as the plain two-passes-per-sender implementation (notebook 01 has students
    write it), computed by the engine. Returns [max receiver layer, n_heads].
    """
    receivers = check_receivers(model, receivers, receiver_input)
    max_layer = max(l for l, _ in receivers)
    engine = PathPatchingEngine(model, orig, new, metric, memory_budget_mb)
    senders = [[(l, h)] for l in range(max_layer) for h in range(model.cfg.n_heads)]
    return engine.run(senders, receivers, receiver_input, progress).view(max_layer, model.cfg.n_heads)


def path_patch_senders(
    model,
    senders: Iterable[Head],
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    metric: Callable,
    orig,
    new,
) -> float:
    """The metric after patching the path from all ``senders`` together into the receivers.

    Several senders together need not do the sum of what each does alone: their changes to a
    receiver's keys meet inside one softmax.
    """
    receivers = check_receivers(model, receivers, receiver_input)
    senders = check_senders(model, senders)
    engine = PathPatchingEngine(model, orig, new, metric)
    return float(engine.run([senders], receivers, receiver_input, progress=False)[0])


def attribution_path_patching(
    model,
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    metric: Callable,
    orig,
    new,
) -> Float[Tensor, "sender_layer sender_head"]:
    """First-order (attribution patching) estimate of :func:`path_patch_heads_to_heads`.

    One forward and one backward pass: the gradient of the metric with respect to the residual
    stream, along the frozen-head path into the receivers, dotted with each sender's change
    ``(z_new - z_clean) @ W_O``, plus the clean metric. Exact for tiny changes; softmax
    saturation and MLP nonlinearity make it drift for big ones.
    """
    receivers = check_receivers(model, receivers, receiver_input)
    if not hasattr(metric, "from_end_logits"):
        raise ValueError("attribution_path_patching needs a metric with from_end_logits (see make_ioi_metric).")
    return PathPatchingEngine(model, orig, new, metric).attribute(receivers, receiver_input)


def compare_with_exact(exact: Tensor, approx: Tensor) -> dict[str, float]:
    """Pearson correlation and largest gap between an exact and an approximate result."""
    a, b = exact.flatten().double(), approx.flatten().double()
    a0, b0 = a - a.mean(), b - b.mean()
    corr = float((a0 @ b0) / (a0.norm() * b0.norm() + 1e-12))
    return {"pearson": corr, "max_abs_diff": float((a - b).abs().max())}
