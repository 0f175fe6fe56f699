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

The forward pass here is the model's own arithmetic in plain torch (compatibility mode: folded
LayerNorms, the bridge's weights), so no hooks are involved at all.

Next to it, :func:`attribution_path_patching` gives the first-order approximation (attribution
patching): one forward and one backward pass for all senders together. It is cheap and usually
ranks senders well, but it linearises softmaxes and MLPs; its correlation with the exact result
is reported by :func:`compare_with_exact` so users learn when to trust it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .hooks import assert_no_hooks

Head = tuple[int, int]
ReceiverInput = Literal["q", "k", "v"]


def _check_receivers(model, receivers: Sequence[Head], receiver_input: str) -> list[Head]:
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}.")
    receivers = [(int(l), int(h)) for l, h in receivers]
    if not receivers:
        raise ValueError("give at least one receiver head (layer, head).")
    for l, h in receivers:
        if not (0 <= l < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(f"receiver {l}.{h} is not a head of this {model.cfg.n_layers}x{model.cfg.n_heads} model.")
    return receivers


# ------------------------------------------------------------------------------------ model
@dataclass
class Weights:
    """The model's weights in HookedTransformer layout (compatibility mode, LNs folded)."""

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
        t = {n: getattr(model, n).detach() for n in names}
        b_U = getattr(model, "b_U", None)
        t["b_U"] = b_U.detach() if b_U is not None else torch.zeros(t["W_U"].shape[1], device=t["W_U"].device)
        return cls(**t, eps=cfg.eps, act_fn=cfg.act_fn, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_head=cfg.d_head)

    # --- pieces of the forward pass (any number of leading batch dims) ---
    def ln(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)

    def __post_init__(self):
        # fused, GEMM-friendly layouts: one matmul for q, k and v; one for the output projection
        L, H, d, e = self.W_Q.shape
        self.W_qkv = torch.cat([self.W_Q, self.W_K, self.W_V], dim=1).permute(0, 2, 1, 3).reshape(L, d, 3 * H * e).contiguous()
        self.b_qkv = torch.cat([self.b_Q, self.b_K, self.b_V], dim=1).reshape(L, 3 * H * e)
        self.W_O_flat = self.W_O.reshape(L, H * e, -1).contiguous()

    def act(self, x: Tensor) -> Tensor:
        if self.act_fn in ("gelu_new", "gelu_fast"):
            return F.gelu(x, approximate="tanh")
        if self.act_fn == "gelu":
            return F.gelu(x)
        return F.relu(x)

    def mlp(self, layer: int, resid_mid: Tensor) -> Tensor:
        h = self.act(self.ln(resid_mid) @ self.W_in[layer] + self.b_in[layer])
        return h @ self.W_out[layer] + self.b_out[layer]

    def qkv(self, layer: int, resid_pre: Tensor, which: str, heads: Sequence[int] | slice = slice(None)) -> Tensor:
        """q, k or v of ``heads`` at ``layer``: [..., seq, head, d_head]."""
        W = getattr(self, f"W_{which.upper()}")[layer, heads]
        b = getattr(self, f"b_{which.upper()}")[layer, heads]
        return einops.einsum(self.ln(resid_pre), W, "... s d, h d e -> ... s h e") + b

    def qkv_all(self, layer: int, resid_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of every head at ``layer``, each [..., seq, head, d_head], in one matmul."""
        x = self.ln(resid_pre) @ self.W_qkv[layer] + self.b_qkv[layer]
        q, k, v = x.view(*x.shape[:-1], 3, self.n_heads, self.d_head).unbind(-3)
        return q, k, v

    def attend_fast(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor | None = None) -> Tensor:
        """Causal attention with torch's fused kernel; same shapes and result as :meth:`attend`."""
        lead = q.shape[:-3]
        qt = q.reshape(-1, *q.shape[-3:]).transpose(1, 2)
        kt = k.reshape(-1, *k.shape[-3:]).transpose(1, 2)
        vt = v.reshape(-1, *v.shape[-3:]).transpose(1, 2)
        if q_pos is None:
            z = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        else:
            mask = torch.arange(k.shape[-3], device=q.device) <= q_pos[..., :, None]  # [N, q, k]
            mask = mask[:, None].expand(*lead, -1, -1, -1).reshape(-1, 1, *mask.shape[-2:])
            z = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
        return z.transpose(1, 2).reshape(*lead, *q.shape[-3:-1], self.d_head)

    def attn_out_all(self, layer: int, z: Tensor) -> Tensor:
        return z.reshape(*z.shape[:-2], -1) @ self.W_O_flat[layer]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor | None = None) -> Tensor:
        """Causal attention; ``q_pos`` gives the positions of the queries (default: all)."""
        scores = einops.einsum(q, k, "... q h e, ... k h e -> ... h q k") / math.sqrt(self.d_head)
        n_k = k.shape[-3]
        qp = torch.arange(q.shape[-3], device=q.device) if q_pos is None else q_pos
        mask = torch.arange(n_k, device=q.device) > qp[..., :, None]  # [(...), q, k]
        if mask.ndim == 3:  # per-prompt query positions: [batch, q, k] -> broadcast over heads
            mask = mask[:, None]
        scores = scores.masked_fill(mask, float("-inf"))
        pattern = scores.softmax(-1)
        return einops.einsum(pattern, v, "... h q k, ... k h e -> ... q h e")

    def attn_out(self, layer: int, z: Tensor, heads: Sequence[int] | slice = slice(None)) -> Tensor:
        return einops.einsum(z, self.W_O[layer, heads], "... s h e, h e d -> ... s d")


@dataclass
class CleanRun:
    """What the engine caches from one clean forward pass."""

    resid_pre: list[Tensor]  # per layer, [N, S, d]
    attn_out: list[Tensor]  # per layer, sum of heads + b_O, [N, S, d]
    z: list[Tensor]  # per layer, [N, S, H, d_head]
    resid_final: Tensor  # [N, S, d]


@torch.no_grad()
def forward_clean(w: Weights, toks: Tensor) -> CleanRun:
    """The model's forward pass in plain torch, caching what the engine needs."""
    S = toks.shape[1]
    resid = w.W_E[toks] + w.W_pos[:S]
    pres, outs, zs = [], [], []
    for l in range(w.n_layers):
        pres.append(resid)
        z = w.attend_fast(*w.qkv_all(l, resid))
        out = w.attn_out_all(l, z) + w.b_O[l]
        zs.append(z)
        outs.append(out)
        mid = resid + out
        resid = mid + w.mlp(l, mid)
    return CleanRun(pres, outs, zs, resid)


# ---------------------------------------------------------------------------------- metrics
def _end_logits(w: Weights, resid_end: Tensor) -> Tensor:
    return w.ln(resid_end) @ w.W_U + w.b_U


# ----------------------------------------------------------------------------------- engine
class PathPatchingEngine:
    """Exact path patching for many sender sets at once.

    Build it once per (model, clean dataset, corrupted dataset); then :meth:`run` any sender
    sets into any receivers. ``metric`` must be callable on logits [N, seq, vocab]; if it also
    has ``from_end_logits`` (the metrics of :mod:`ioi_anomalies.metrics` do), the engine only
    computes logits at each prompt's ``end`` position, which is much cheaper.

    Prompts are *packed*: each keeps only the positions up to its own ``end`` (nothing after it
    can reach the metric under causal attention), and the prompts' tokens are laid end to end
    along one token axis, sorted by length. Position-wise work (LayerNorms, q/k/v, MLPs) then
    runs on real tokens only; attention runs per group of equally long prompts. Of those tokens,
    only the *active* ones are computed: from the first token where the clean and corrupted
    prompts differ on, since before it every run is the clean run (the clean keys and values
    stand in for them in attention).
    """

    def __init__(self, model, orig, new, metric: Callable, memory_budget_mb: float = 128.0):
        assert_no_hooks(model, "PathPatchingEngine")
        self.model, self.metric = model, metric
        self.w = Weights.of(model)
        if orig.toks.shape != new.toks.shape:
            raise ValueError(f"clean and corrupted tokens differ in shape: {tuple(orig.toks.shape)} vs {tuple(new.toks.shape)}.")
        dev = self.w.W_E.device
        self.end = orig.word_idx["end"].to(dev)
        self.full_metric = not hasattr(metric, "from_end_logits")
        # positions after the last END never influence any END (causal attention): drop them,
        # unless the metric wants full logits.
        self.S = orig.toks.shape[1] if self.full_metric else int(self.end.max()) + 1
        toks_o = orig.toks[:, : self.S].to(dev)
        toks_n = new.toks[:, : self.S].to(dev)
        self.N = toks_o.shape[0]
        self.orig_toks = orig.toks
        clean = forward_clean(self.w, toks_o)
        self._check_matches_model(clean)
        self._pack_layout()
        self._active_tokens(toks_o, toks_n)
        A = self.A
        # the clean residual stream on all packed tokens (for the clean q/k/v of the tokens
        # that are not computed); everything else only at the active tokens
        self.resid_pre = [self._pack(r) for r in clean.resid_pre]
        self.act = CleanRun([r[A] for r in self.resid_pre], [self._pack(a)[A] for a in clean.attn_out],
                            [self._pack(z)[A] for z in clean.z], self._pack(clean.resid_final)[A])
        new_z = forward_clean(self.w, toks_n).z
        self.dz = [self._pack(nz)[A] - cz for nz, cz in zip(new_z, self.act.z)]  # what the senders change
        self._clean_qkv: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.budget = memory_budget_mb

    # ------------------------------------------------------------------ packed token layout
    def _pack_layout(self) -> None:
        dev = self.end.device
        lengths = torch.full((self.N,), self.S, device=dev) if self.full_metric else self.end + 1
        self.order = torch.sort(lengths, stable=True).indices  # packed prompt i is prompt order[i]
        sorted_len = lengths[self.order]
        pos = torch.arange(self.S, device=dev)
        keep = pos[None, :] < sorted_len[:, None]  # [N, S], in packed prompt order
        self.index = (self.order[:, None] * self.S + pos[None, :])[keep]  # packed token -> flat [N*S]
        self.T = int(self.index.numel())
        # groups of equally long prompts: (first token, n prompts, length)
        self.groups: list[tuple[int, int, int]] = []
        start = 0
        for length, count in zip(*torch.unique_consecutive(sorted_len, return_counts=True)):
            n, L = int(count), int(length)
            self.groups.append((start, n, L))
            start += n * L
        # the packed index of each END, in packed prompt order; and back to the caller's order
        self.end_tok = torch.cumsum(sorted_len, 0) - 1
        self.unorder = torch.empty_like(self.order)
        self.unorder[self.order] = torch.arange(self.N, device=dev)

    def _active_tokens(self, toks_o: Tensor, toks_n: Tensor) -> None:
        """Tokens before the first one where the clean and corrupted prompts differ are identical
        in every run (causal attention): only the rest, the *active* tokens, are computed."""
        differs = toks_o != toks_n
        first = torch.where(differs.any(1), differs.float().argmax(1), self.S)
        if self.full_metric:  # every position's logits are read
            first = torch.zeros_like(first)
        first = torch.minimum(first, self.end)  # END is always computed
        pos = self.index % self.S
        prompt = self.index // self.S
        self.A = (pos >= first[prompt]).nonzero().squeeze(1)  # active token -> packed token
        self.TA = int(self.A.numel())
        where = torch.full((self.T,), -1, dtype=torch.long, device=self.A.device)
        where[self.A] = torch.arange(self.TA, device=self.A.device)
        self.end_act = where[self.end_tok]  # each END among the active tokens (packed prompt order)

    def clean_qkv(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """Clean q, k, v of every head at ``layer`` on all packed tokens (cached)."""
        if layer not in self._clean_qkv:
            self._clean_qkv[layer] = self.w.qkv_all(layer, self.resid_pre[layer])
        return self._clean_qkv[layer]

    def _fill(self, clean: Tensor, active: Tensor) -> Tensor:
        """All packed tokens: ``active`` [C, TA, ...] at the active ones, ``clean`` [T, ...] elsewhere."""
        if self.TA == self.T:
            return active
        full = clean.expand(active.shape[0], *clean.shape).clone()
        full[:, self.A] = active
        return full

    def _active(self, x: Tensor) -> Tensor:
        """[C, T, ...] -> [C, TA, ...]: the active tokens of a result over all packed tokens."""
        return x[:, self.A] if self.TA < self.T else x

    def _pack(self, x: Tensor) -> Tensor:
        """[N, S, ...] -> [T, ...]"""
        return x.reshape(self.N * self.S, *x.shape[2:])[self.index]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal attention within each prompt, on packed tokens: [..., T, h, e] -> [..., T, h, e]."""
        out = []
        for start, n, L in self.groups:
            sl = slice(start, start + n * L)
            view = lambda x: x[..., sl, :, :].unflatten(-3, (n, L))  # noqa: E731
            out.append(self.w.attend_fast(view(q), view(k), view(v)).flatten(-4, -3))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-3)

    def _attend_end(self, q_end: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention of each prompt's END query only: q_end [..., N, h, e] (packed prompt order)."""
        out = []
        for g, (start, n, L) in enumerate(self.groups):
            first = sum(c for _, c, _ in self.groups[:g])
            sl = slice(start, start + n * L)
            kk = k[..., sl, :, :].unflatten(-3, (n, L))
            vv = v[..., sl, :, :].unflatten(-3, (n, L))
            qq = q_end[..., first : first + n, :, :].unsqueeze(-3)  # [..., n, 1, h, e]
            out.append(self.w.attend_fast(qq, kk, vv, q_pos=torch.full((n, 1), L - 1, device=q_end.device)).squeeze(-3))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-3)

    def _check_matches_model(self, clean: CleanRun) -> None:
        """The engine redoes the model's arithmetic; refuse a model whose forward differs
        (e.g. LayerNorms not folded, or an unsupported architecture)."""
        with torch.no_grad():
            rows = torch.arange(self.N, device=self.end.device)
            ours = _end_logits(self.w, clean.resid_final[rows, self.end])
            theirs = self.model(self.orig_toks)[rows, self.end.to(self.orig_toks.device)].to(ours.device)
        gap = (ours - theirs).abs().max().item()
        if gap > 1e-3 * max(1.0, theirs.abs().max().item()):
            raise ValueError(
                f"the path-patching engine does not reproduce this model's logits (max gap {gap:.3g}); "
                "load the model with ioi_anomalies.load_model (compatibility mode, LayerNorm folded) "
                "or path patch it with hooks, as in notebook 01."
            )

    # size of one sender set's working memory, in MB (generous: temporaries included)
    def _per_set_mb(self) -> float:
        w, T = self.w, self.T
        d, dm = w.W_E.shape[1], w.W_in.shape[-1]
        floats = T * (6 * d + 2 * dm) + 3 * w.n_heads * sum(n * L * L for _, n, L in self.groups)
        if self.full_metric:
            floats += T * w.W_U.shape[1]
        else:
            floats += self.N * w.W_U.shape[1]
        return 4 * floats / 2**20

    def chunk_size(self) -> int:
        return max(1, int(self.budget // max(self._per_set_mb(), 1e-6)))

    def _deltas(self, sets: list[list[Head]], layer: int) -> Tensor | None:
        """Per sender set, the change its heads at ``layer`` write into the residual stream."""
        w = self.w
        rows = []
        any_here = False
        for s in sets:
            heads = [h for l, h in s if l == layer]
            if heads:
                any_here = True
                rows.append(w.attn_out(layer, self.dz[layer][:, heads], heads))
            else:
                rows.append(torch.zeros_like(self.act.resid_pre[0]))
        return torch.stack(rows) if any_here else None

    def _receiver_inputs(self, sets, receivers, which) -> dict[int, Tensor]:
        """Step 1: receivers' ``which`` under each sender set's frozen-head run, at the active
        tokens. {layer: [C, TA, h, e]}"""
        w = self.w
        C = len(sets)
        recv_layers = sorted({l for l, _ in receivers})
        heads_at = {L: [h for l, h in receivers if l == L] for L in recv_layers}
        lowest_sender = min((l for s in sets for l, _ in s), default=w.n_layers)
        # receivers at or below the lowest sender keep their clean input: step 2 need not start
        # there (``run`` never passes a set that reaches no receiver)
        out = {}
        start = lowest_sender
        if start < recv_layers[-1]:
            resid = self.act.resid_pre[start].expand(C, -1, -1)
            for l in range(start, recv_layers[-1]):
                mid = resid + self.act.attn_out[l]
                delta = self._deltas(sets, l)
                if delta is not None:
                    mid = mid + delta
                resid = mid + w.mlp(l, mid)
                if l + 1 in heads_at and l + 1 > lowest_sender:
                    out[l + 1] = w.qkv(l + 1, resid, which, heads_at[l + 1])
        return out

    def _patched_metric(self, patched: dict[int, Tensor], receivers, which) -> Tensor:
        """Step 2: the clean run from the lowest receiver layer, receivers' input patched."""
        w = self.w
        C = next(iter(patched.values())).shape[0]
        L0 = min(patched)
        heads_at = {L: [h for l, h in receivers if l == L] for L in patched}
        resid = self.act.resid_pre[L0].expand(C, -1, -1)  # active tokens only
        last = w.n_layers - 1
        for l in range(L0, w.n_layers):
            only_end = (l == last) and not self.full_metric
            if l == L0:
                # only the receiver heads of this layer see anything new
                hs = heads_at[l]
                qkv = {x: w.qkv(l, resid, x, hs) for x in "qkv"}
                qkv[which] = patched[l]
                full = [self._fill(c[:, hs], qkv[x]) for c, x in zip(self.clean_qkv(l), "qkv")]
                z = self._active(self._attend(*full))
                out = self.act.attn_out[l] + w.attn_out(l, z - self.act.z[l][:, hs], hs)
                mid = resid + out
                resid = mid + w.mlp(l, mid)
                continue
            q, k, v = w.qkv_all(l, resid)
            if l in heads_at:
                {"q": q, "k": k, "v": v}[which][:, :, heads_at[l]] = patched[l]
            cq, ck, cv = self.clean_qkv(l)
            k, v = self._fill(ck, k), self._fill(cv, v)
            if only_end:
                z = self._attend_end(q[:, self.end_act], k, v)  # [C, N, H, e]
                mid = resid[:, self.end_act] + w.attn_out_all(l, z) + w.b_O[l]
                final = (mid + w.mlp(l, mid))[:, self.unorder]  # [C, N, d], the caller's prompt order
                return self.metric.from_end_logits(_end_logits(w, final))
            z = self._active(self._attend(self._fill(cq, q), k, v))
            mid = resid + w.attn_out_all(l, z) + w.b_O[l]
            resid = mid + w.mlp(l, mid)
        if self.full_metric:  # (no token is skipped then)  # one group of full-length prompts, in the caller's order
            logits = (w.ln(resid) @ w.W_U + w.b_U).unflatten(1, (self.N, self.S))[:, self.unorder]
            return torch.stack([torch.as_tensor(self.metric(lg)) for lg in logits])
        final = resid[:, self.end_act][:, self.unorder]
        return self.metric.from_end_logits(_end_logits(w, final))

    def run(
        self,
        sender_sets: Sequence[Sequence[Head]],
        receivers: Sequence[Head],
        receiver_input: ReceiverInput,
        progress: bool = True,
    ) -> Tensor:
        """The metric after path patching each sender set (all its heads together). [n_sets]"""
        receivers = _check_receivers(self.model, receivers, receiver_input)
        sets = [[(int(l), int(h)) for l, h in s] for s in sender_sets]
        results = torch.empty(len(sets))
        max_recv = max(l for l, _ in receivers)
        # sender sets that reach no receiver give the clean metric; compute it once
        reach = [i for i, s in enumerate(sets) if any(l < max_recv for l, _ in s)]
        blind = [i for i in range(len(sets)) if i not in reach]
        if blind:  # exactly the unpatched metric, as the plain implementation gives
            with torch.no_grad():
                results[blind] = float(self.metric(self.model(self.orig_toks)))
        # chunks never mix lowest sender layers: a chunk starts at its senders' layer, and skips
        # the receivers below it
        size = self.chunk_size()
        by_layer: dict[int, list[int]] = {}
        for i in reach:
            by_layer.setdefault(min(l for l, _ in sets[i]), []).append(i)
        chunks = [g[i : i + size] for _, g in sorted(by_layer.items()) for i in range(0, len(g), size)]
        order = [i for c in chunks for i in c]
        for chunk in tqdm(chunks, desc=f"path patching -> {receiver_input} ({len(order)} senders)", disable=not progress):
            results[chunk] = self._run_chunk([sets[i] for i in chunk], receivers, receiver_input).float().cpu()
        return results

    def clean_metric(self, receivers, which) -> float:
        """The metric of the clean run, computed by the engine's own arithmetic."""
        L = min(l for l, _ in receivers)
        with torch.no_grad():
            x = self.w.qkv(L, self.act.resid_pre[L], which, [h for l, h in receivers if l == L])
            return float(self._patched_metric({L: x[None]}, receivers, which)[0])

    def _run_chunk(self, sets, receivers, which) -> Tensor:
        with torch.no_grad():
            patched = self._receiver_inputs(sets, receivers, which)
            return self._patched_metric(patched, receivers, which)


# ------------------------------------------------------------------------------------ faces
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
    receivers = _check_receivers(model, receivers, receiver_input)
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
    engine = PathPatchingEngine(model, orig, new, metric)
    return float(engine.run([list(senders)], receivers, receiver_input, progress=False)[0])


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
    receivers = _check_receivers(model, receivers, receiver_input)
    if not hasattr(metric, "from_end_logits"):
        raise ValueError("attribution_path_patching needs a metric with from_end_logits (see make_ioi_metric).")
    engine = PathPatchingEngine(model, orig, new, metric)
    w, clean = engine.w, engine.act  # the active tokens: elsewhere no sender changes anything
    max_layer = max(l for l, _ in receivers)
    recv_layers = sorted({l for l, _ in receivers})
    heads_at = {L: [h for l, h in receivers if l == L] for L in recv_layers}
    with torch.enable_grad():
        taps = [torch.zeros_like(clean.resid_pre[0], requires_grad=True) for _ in range(max_layer)]
        resid = clean.resid_pre[0].clone()
        patched = {}
        for l in range(max_layer):
            mid = resid + clean.attn_out[l] + taps[l]
            resid = mid + w.mlp(l, mid)
            if l + 1 in heads_at:
                patched[l + 1] = w.qkv(l + 1, resid, receiver_input, heads_at[l + 1])[None]
        if 0 in heads_at:
            patched[0] = w.qkv(0, clean.resid_pre[0], receiver_input, heads_at[0])[None]
        value = engine._patched_metric(patched, receivers, receiver_input)[0]
        grads = torch.autograd.grad(value, taps)
    out = torch.zeros(max_layer, w.n_heads)
    for l in range(max_layer):
        for h in range(w.n_heads):
            dz = engine.dz[l][:, [h]]
            out[l, h] = (w.attn_out(l, dz, [h]) * grads[l]).sum().item()
    base = engine.clean_metric(receivers, receiver_input)
    return out + base


def compare_with_exact(exact: Tensor, approx: Tensor) -> dict[str, float]:
    """Pearson correlation and largest gap between an exact and an approximate result."""
    a, b = exact.flatten().double(), approx.flatten().double()
    a0, b0 = a - a.mean(), b - b.mean()
    corr = float((a0 @ b0) / (a0.norm() * b0.norm() + 1e-12))
    return {"pearson": corr, "max_abs_diff": float((a - b).abs().max())}
