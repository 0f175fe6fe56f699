"""Train the embedded model: a small GPT-2 that does indirect object identification offline.

    python -m tools.train_embedded [--out DIR] [--steps 3000] [--dropout 0.0] ...

Run from the repository's root (the training script is a project tool, not part of the package
students import). The defaults are the recipe of the shipped model (its ``training.json`` records
them).

A GPT-2-architecture model (4 layers x 4 heads, d_model 128, GPT-2's tokenizer and vocabulary,
tied embeddings) trained from nothing on the CPU, deterministically (fixed seeds, a fixed number
of steps), on sequences generated here:

- IOI prompts from all 15 BABA + 15 ABBA templates and the ABC/BAC templates (the project's own
  generator, seeds from 1,000,003 up; evaluation uses small seeds). In 70% of them the names are
  replaced by random single-token capitalised words (" Paris", " Table", ...): with 10,000
  possible "names" the model cannot look the answer up from a short list and has to find and
  copy the right name from the context, which is what the IOI circuit does.
- random blocks of tokens from the whole vocabulary repeated two to four times, so induction
  heads form.
- "marker" sequences: random tokens in which, every few tokens, a marker ("," "." " and" ...) is
  followed by the token before it ("... X , X ..."). Only the token after a marker is
  predictable, and only by looking at the previous position: the task grows previous-token heads.
- optionally ("story" in ``--mix``) two or three IOI sentences in a row.

Induction needs a previous-token head first (the induction head finds its keys through it), and
on these data neither forms by itself in the budget. So training starts with ``--prev-first``
steps of the marker task alone; then the best ``--hold-prev`` previous-token heads keep the
query and key weights they have, and the positions stop learning (see ``HeldHeads``), while
the rest of the model, their values and outputs included, trains on the mix.

``--roles`` (6 layers x 4 heads) adds objectives that name heads instead: each role of GPT-2
small's IOI circuit is put on a chosen head (``ROLE_LAYOUT``) by losses on where it attends, ablation
dropout of the name mover, a hinge on the negative name mover's direct logit attribution and
interchange-intervention training of the S-inhibition heads (see ``Roles``; the model card says
what its runs reached).

The final name of an IOI prompt gets a larger loss weight (``--end-weight``). The output layer is
trained with a sampled softmax (the batch's targets plus random negatives), so a step costs a
fraction of a full 50,257-way softmax; the saved model is an ordinary GPT-2, evaluated with the
full vocabulary. Weights are stored in float16 (the loader casts them back to float32) to keep
the package small.

What was tried on the way (see the model card): six layers with dropout 0.1 and a mix of IOI
prompts, stories and repeats did not learn IOI within 15 minutes; without the name swap the model
learned IOI fast but through its first MLP (a lookup over the 109 names), with no name movers.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ioi_anomalies.dataset import ABBA_TEMPLATES, BABA_TEMPLATES, FLIP_GRID, IOIDataset, parse_flip
from ioi_anomalies.tokenizer import EOT_ID, load_tokenizer, save_tokenizer

SEQ = 64
# markers of the previous-token task: after one of these, the token before it comes again
MARKERS = (",", ".", ":", ";", "!", "?", " -", " and", " or", " then")
TRAIN_SEED_BASE = 1_000_003  # evaluation uses small seeds; training never does


def build_config(dropout: float, n_layer: int = 6, n_head: int = 8, d_model: int = 128):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=50257,
        n_positions=128,
        n_embd=d_model,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=4 * d_model,
        activation_function="gelu_new",
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        tie_word_embeddings=True,
    )


class Mixture:
    """Endless batches of IOI prompts, stories and repeated random tokens (fixed seeds).

    Each batch holds one kind of sequence, so short IOI prompts are not padded to the length of
    a story: a step costs what its sequences need.
    """

    def __init__(self, tokenizer, seed: int, mix: str = "ioi:6,story:2,repeat:3", end_weight: float = 8.0, name_swap: float = 0.0,
                 repeat_first: int = 0, block: tuple[int, int] = (4, 12), copies: tuple[int, int] = (2, 4),
                 prev_first: int = 0, filler_weight: float = 0.1, roles: bool = False, corrupt: bool = False,
                 ioi_prefix: int = 0):
        self.KINDS = tuple(k for part in mix.split(",") for k in [part.split(":")[0]] * int(part.split(":")[1]))
        self.end_weight = end_weight
        self.tok = tokenizer
        self.rng = np.random.default_rng(seed)
        self.chunk = 0
        self.pools: dict[str, list[tuple]] = {"ioi": [], "story": []}
        self.roles = roles
        self.corrupt = corrupt  # with roles: each IOI prompt also as an "XYZ" prompt (three fresh names)
        self.ioi_prefix = ioi_prefix  # IOI prompts after 0 to this many random tokens (0: none)
        self.flips = [parse_flip(f) for f in FLIP_GRID.values() if f is not None]
        self.info: dict = {}  # where the roles' targets are in the last batch (see ``batch``)
        self.templates = BABA_TEMPLATES + ABBA_TEMPLATES
        self.step = 0
        self.name_swap = name_swap
        self.repeat_first = repeat_first
        self.block, self.copies = block, copies
        self.prev_first, self.filler_weight = prev_first, filler_weight
        self.markers = [tokenizer.encode(m, add_special_tokens=False)[0] for m in MARKERS]
        # stand-in names: every single-token capitalised word (" Paris", " Table", ...), so that
        # only copying from the context works, not a lookup over 109 names
        vocab = tokenizer.get_vocab()
        self.name_pool = np.array(sorted(i for t, i in vocab.items() if re.fullmatch(r"\u0120[A-Z][a-z]{2,}", t)))

    def _swap_names(self, ids: list[int], names: list[int]) -> list[int]:
        """With probability ``name_swap``, replace each of ``names`` by a distinct stand-in."""
        if self.rng.random() >= self.name_swap:
            return ids
        new = self.rng.choice(self.name_pool, size=len(names), replace=False).tolist()
        table = dict(zip(names, new))
        return [table.get(t, t) for t in ids]

    def _names_of(self, ds, i: int) -> list[int]:
        p = ds.ioi_prompts[i]
        out = [ds.io_tokenIDs[i], ds.s_tokenIDs[i]]
        if "C" in p:
            out.append(self.tok.encode(" " + p["C"], add_special_tokens=False)[0])
        return out

    def _refill(self):
        seed = TRAIN_SEED_BASE + self.chunk
        self.chunk += 1
        state = random.getstate(), np.random.get_state()
        ioi: list[tuple] = []
        for templates, n in ((self.templates, 1024), ("ABC mixed", 0 if self.roles else 256)):
            if not n:
                continue
            ds = IOIDataset(templates, N=n, tokenizer=self.tok, seed=seed, prepend_bos=False)
            for i in range(n):
                ids = self._swap_names(ds.toks[i, : ds.word_idx["end"][i] + 2].tolist(), self._names_of(ds, i))
                where = None if templates == "ABC mixed" else tuple(int(ds.word_idx[k][i]) for k in ("IO", "S1", "S2"))
                ioi.append((ids, len(ids) - 2, where))
        # stories: two or three IOI sentences in a row, each a fresh draw
        ds = IOIDataset(self.templates, N=768, tokenizer=self.tok, seed=seed + 7, prepend_bos=False)
        sents = [self._swap_names(ds.toks[i, : ds.word_idx["end"][i] + 2].tolist(), self._names_of(ds, i)) for i in range(ds.N)]
        period = self.tok.encode(".", add_special_tokens=False)
        story: list[tuple[list[int], int]] = []
        for j in range(0, len(sents) - 2, 3):
            k = 2 + (j // 3) % 2
            ids: list[int] = []
            for sent in sents[j : j + k]:
                ids += sent + period
            ids = ids[:-1]
            if len(ids) < SEQ:  # room for an optional BOS
                story.append((ids, len(ids) - 2, None))
        random.setstate(state[0])
        np.random.set_state(state[1])
        for name, items in (("ioi", ioi), ("story", story)):
            order = self.rng.permutation(len(items))
            self.pools[name].extend(items[i] for i in order)

    def _repeated(self) -> tuple[list[int], int, tuple[int, int]]:
        """A random block (``block`` tokens long) repeated ``copies`` times, after an optional
        random prefix; also (where the block starts, its length)."""
        n = int(self.rng.integers(self.block[0], self.block[1] + 1))
        copies = int(self.rng.integers(self.copies[0], self.copies[1] + 1))
        block = self.rng.integers(0, 50257, size=n).tolist()
        prefix = self.rng.integers(0, 50257, size=int(self.rng.integers(0, 6))).tolist()
        return (prefix + block * copies)[: SEQ - 1], -1, (len(prefix), n)

    def _flipped(self, ids: list[int], where: tuple[int, int, int]) -> tuple[list[int], int, int]:
        """The prompt with its three names rewritten by one of the positional-vs-token grid's
        flips (or none), and the answer that follows the *position* of the duplicated name: the
        prompt's IO when the flipped prompt's repeated name sits in the same slot as S1, its S
        otherwise. Returns (flipped ids, target token, other token)."""
        io_pos, s1_pos, s2_pos = where
        a, b = ids[io_pos], ids[s1_pos]
        slots = sorted((io_pos, s1_pos)) + [s2_pos]
        pattern = "ABB" if io_pos < s1_pos else "BAB"
        k = int(self.rng.integers(0, len(self.flips) + 1))
        new = pattern if k == len(self.flips) else self.flips[k][pattern][1]
        pool = [t for t in self.rng.choice(self.name_pool, size=4, replace=False).tolist() if t not in (a, b)]
        letters = {"A": a, "B": b, "C": pool[0], "D": pool[1]}
        out = list(ids)
        for pos, letter in zip(slots, new):
            out[pos] = letters[letter]
        same_slot = new.index(new[2]) == pattern.index("B")
        return out, (a if same_slot else b), (b if same_slot else a)

    def _xyz(self, ids: list[int], where: tuple[int, int, int]) -> list[int]:
        """The prompt with its three name slots (IO, S1, S2) given three fresh, distinct names, as the
        series' ABC dataset ("ABB->XYZ, BAB->XYZ") does: S2 is then no repeat, so nothing that detects
        the duplicated name fires there."""
        old = {ids[p] for p in where}
        new = [t for t in self.rng.choice(self.name_pool, size=6, replace=False).tolist() if t not in old][:3]
        out = list(ids)
        for pos, t in zip(where, new):
            out[pos] = t
        return out

    def _marker(self, filler: float) -> tuple[list[int], list[float]]:
        """Random tokens in which, every few tokens, a marker is followed by the token before it:
        "... X , X ...". Only the token after a marker is predictable, and only by a head that
        looks at the previous position: the task grows previous-token heads. Loss weight 1 on
        those tokens, ``filler`` on the (unpredictable) rest."""
        n = int(self.rng.integers(32, SEQ))
        ids = self.rng.integers(0, 50257, size=n).tolist()
        weights = [filler] * (n - 1)
        i = int(self.rng.integers(0, 4))
        while i + 2 < n:
            ids[i + 1] = self.markers[int(self.rng.integers(0, len(self.markers)))]
            ids[i + 2] = ids[i]
            weights[i + 1] = 1.0  # predicting position i + 2 from the marker at i + 1
            i += int(self.rng.integers(3, 8))
        return ids, weights

    def batch(self, size: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        if self.step < self.prev_first:
            kind = "prev"  # the previous-token task alone, its filler unweighted
        elif self.step < self.prev_first + self.repeat_first:
            kind = "repeat"
        else:
            kind = self.KINDS[self.step % len(self.KINDS)]
        self.step += 1
        if kind == "ioi":
            size *= 2  # short sequences: twice the prompts for about the same cost
        seqs, ends, marked = [], [], []
        info: dict[str, list] = {"where": [], "block": [], "flipped": [], "target": [], "other": [], "xyz": []}
        for _ in range(size):
            w, where, blk = None, None, None
            if kind in ("marker", "prev"):
                ids, w = self._marker(0.0 if kind == "prev" else self.filler_weight)
                end = -1
            elif kind == "repeat":
                ids, end, blk = self._repeated()
            else:
                if not self.pools[kind]:
                    self._refill()
                ids, end, where = self.pools[kind].pop()
            flipped = None
            if self.roles and where is not None:
                flipped, target, other = self._flipped(ids, where)
                info["target"].append(target)
                info["other"].append(other)
            xyz = self._xyz(ids, where) if self.roles and self.corrupt and where is not None else None
            if kind == "ioi" and self.ioi_prefix:
                # random tokens in front, so that no name sits at a fixed position: heads that find S1 + 1 from S2
                # have to find it by what precedes it (the previous-token heads), not by where templates put it
                pre = self.rng.integers(0, 50257, size=int(self.rng.integers(0, self.ioi_prefix + 1))).tolist()
                ids = pre + ids
                flipped = None if flipped is None else pre + flipped
                xyz = None if xyz is None else pre + xyz
                end = end + len(pre)
                where = None if where is None else tuple(x + len(pre) for x in where)
            if self.rng.random() < 0.25:  # sometimes a BOS in front, as some users prepend one
                ids = [EOT_ID] + ids
                flipped = None if flipped is None else [EOT_ID] + flipped
                xyz = None if xyz is None else [EOT_ID] + xyz
                end = end + 1 if end >= 0 else end
                w = None if w is None else [0.0] + w
                where = None if where is None else tuple(x + 1 for x in where)
                blk = None if blk is None else (blk[0] + 1, blk[1])
            info["where"].append(where)
            info["block"].append(blk)
            info["flipped"].append(flipped)
            info["xyz"].append(xyz)
            seqs.append(ids[:SEQ])
            ends.append(end)
            marked.append(None if w is None else w[: SEQ - 1])
        width = max(len(s) for s in seqs)
        toks = torch.full((size, width), EOT_ID, dtype=torch.long)
        weight = torch.zeros((size, width - 1))
        for i, s in enumerate(seqs):
            toks[i, : len(s)] = torch.tensor(s)
            weight[i, : len(s) - 1] = 1 if marked[i] is None else torch.tensor(marked[i])
            if ends[i] >= 0:
                weight[i, ends[i]] = self.end_weight  # the name that needs the circuit
        info["lengths"] = [len(s) for s in seqs]
        info["ends"] = ends
        if info["target"]:
            flipped = torch.full((size, width), EOT_ID, dtype=torch.long)
            for i, f in enumerate(info["flipped"]):
                flipped[i, : len(f)] = torch.tensor(f)
            info["flipped"] = flipped
        if any(x is not None for x in info["xyz"]):
            xyz = torch.full((size, width), EOT_ID, dtype=torch.long)
            for i, x in enumerate(info["xyz"]):
                xyz[i, : len(x)] = torch.tensor(x[:SEQ])
            info["xyz"] = xyz
        self.info = info
        return kind, toks, weight


def sinusoidal_positions(n_positions: int, d_model: int, scale: float = 0.03) -> torch.Tensor:
    """Transformer sinusoids, scaled to the size of GPT-2's initial token embeddings."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10_000.0) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    out = torch.zeros(n_positions, d_model)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return scale * out


def sampled_loss(model, toks, weights, n_neg: int, gen: torch.Generator):
    return _sampled_from_hidden(model, model.transformer(toks).last_hidden_state[:, :-1], toks, weights, n_neg, gen)


@torch.no_grad()
def quick_eval(model, tokenizer, n: int = 200, seed: int = 7) -> tuple[float, float, float, float]:
    """IOI logit difference and accuracy, the best induction score, and the loss on the second
    half of repeated random tokens (HF model, no bridge)."""
    dev = model.device
    ds = IOIDataset("mixed", N=n, tokenizer=tokenizer, seed=seed)
    logits = model(ds.toks.to(dev)).logits.cpu()
    rows = torch.arange(n)
    at_end = logits[rows, ds.word_idx["end"]]
    diff = at_end[rows, torch.tensor(ds.io_tokenIDs)] - at_end[rows, torch.tensor(ds.s_tokenIDs)]
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(0, 50257, (8, 20), generator=gen)
    rep = torch.cat([half, half], 1).to(dev)
    res = model(rep, labels=rep, output_attentions=True)
    induction = max(a.diagonal(-19, dim1=-2, dim2=-1).mean(dim=(0, -1)).max().item() for a in res.attentions)
    second = torch.nn.functional.cross_entropy(res.logits[:, 20:-1].flatten(0, 1), rep[:, 21:].flatten()).item()
    return diff.mean().item(), (diff > 0).float().mean().item(), induction, second


@torch.no_grad()
def previous_token_scores(model, seed: int = 11) -> torch.Tensor:
    """[layer, head] previous-token scores of an HF GPT-2 on 20 random tokens repeated once."""
    half = torch.randint(0, 50257, (8, 20), generator=torch.Generator().manual_seed(seed)).to(model.device)
    att = model(torch.cat([half, half], 1), output_attentions=True).attentions
    return torch.stack([a.diagonal(-1, dim1=-2, dim2=-1)[..., -20:].mean(dim=(0, -1)) for a in att]).cpu()


class HeldHeads:
    """Hold the query and key weights of some heads (and the position embeddings) where they are.

    The previous-token heads grown by the marker task do not survive the rest of the mix on their
    own: copying the previous token is wrong almost everywhere else, and before any induction
    head reads them they only cost loss, so training erases their attention within a few hundred
    steps. Holding what sets their attention pattern (their W_Q, W_K and the positions) leaves
    everything else free, their values and outputs included; induction heads then form on top
    of them by K-composition.
    """

    def __init__(self, model, heads: list[tuple[int, int]]):
        self.heads = heads
        model.transformer.wpe.weight.requires_grad_(False)
        d = model.config.n_embd
        dh = d // model.config.n_head
        self.slices = []
        for layer, head in heads:
            attn = model.transformer.h[layer].attn.c_attn
            for start in (head * dh, d + head * dh):  # query, key columns of this head
                cols = slice(start, start + dh)
                self.slices.append((attn.weight, cols, attn.weight[:, cols].detach().clone()))
                self.slices.append((attn.bias, cols, attn.bias[cols].detach().clone()))

    @torch.no_grad()
    def restore(self):
        for param, cols, value in self.slices:
            param[..., cols] = value


#: Where each role of GPT-2 small's IOI circuit is put in the 6-layer x 4-head model (layer, head).
ROLE_LAYOUT: dict[str, list[tuple[int, int]]] = {
    "previous token": [(0, 0), (0, 2)],
    "duplicate token": [(0, 1)],
    "induction": [(1, 0), (1, 1)],
    "fuzzy induction": [(1, 2)],
    "s2 inhibition": [(2, 0), (3, 0)],
    "name mover": [(4, 0)],
    "backup name mover": [(5, 0)],
    "negative name mover": [(5, 1)],
    # the name mover's layer-mates attend to the first position from END, so that the name mover is the
    # top one (the head whose ablation the backup learns to make up for)
    "quiet": [(4, 1), (4, 2), (4, 3)],
}

#: ``--quiet-late``: the backup's layer-mates are quiet at END too, so that no emerged head outranks the
#: trained name mover 4.0 (an earlier run's top name mover by DLA was 5.3, which no objective named)
QUIET_LATE = [(5, 2), (5, 3)]

#: ``--quiet-mid``: the S-inhibition heads' layer-mates are quiet at END, so that no name mover emerges in the
#: S-inhibition layers (an earlier run's 3.2 moved names from below the trained S-inhibition head 3.0)
QUIET_MID = [(2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (3, 3)]


class Roles:
    """Objectives that name heads: each role of ``ROLE_LAYOUT`` gets a loss on where its head attends,
    and three objectives shape what the late heads do.

    - Attention: cross-entropy of the head's pattern against its target position. Previous-token
      heads: the position before, on every sequence. On repeated tokens: duplicate-token head ->
      the same token one copy back, induction heads -> the token after it, the fuzzy induction
      head -> the first position (so its induction score stays low). On IOI prompts: at S2 the
      duplicate-token head -> S1, the fuzzy induction head -> S1+1; at END the S-inhibition
      heads -> S2, the name mover and the negative name mover -> IO, the backup name mover -> IO
      only in prompts where the name mover is ablated (the first position otherwise).
    - Ablation dropout: in a share ``nm_dropout`` of the IOI prompts the name mover's output at
      END is replaced by its mean over the batch, and the prompt must still be answered.
    - Negative name mover: a hinge loss on its direct logit attribution (IO - S, through the
      final LayerNorm) above ``-neg_margin``.
    - Interchange intervention (IIT): the S-inhibition heads' outputs at END are patched in from a
      prompt whose names were rewritten by one of the positional-vs-token grid's flips; the
      patched run must prefer the name the flipped prompt's *position* of the repeated name points
      to (see ``Mixture._flipped``), so the signal the heads carry is positional.
    """

    def __init__(self, model, layout=None, nm_dropout: float = 0.3, neg_margin: float = 1.0, attn_weight: float = 0.3,
                 iit_weight: float = 1.0, resid_weight: float = 0.0, resid_max: float = 1.0, repeat_weight: float = 1.0,
                 quiet_late: bool = False, copy_weight: float = 0.0, nm_dla_weight: float = 0.0, nm_margin: float = 3.0,
                 sender_weight: float = 0.0, induction_ioi: bool = False, quiet_mid: bool = False,
                 quiet_senders: bool = False, prev_sender_weight: float = 0.0, prev_redundant: float = 0.0,
                 prev_sender_start: int = 0, quiet_cap: float = 0.0, query_free: float = 0.0):
        self.quiet_cap, self.query_free = quiet_cap, query_free
        self.prev_sender_weight = prev_sender_weight
        self.prev_redundant, self.prev_sender_start = prev_redundant, prev_sender_start
        self.step = 0  # the training step (set by ``train``): ``prev_sender_start`` reads it
        self.sender_weight, self.induction_ioi = sender_weight, induction_ioi
        self.copy_weight, self.nm_dla_weight, self.nm_margin = copy_weight, nm_dla_weight, nm_margin
        self.attn_weight, self.iit_weight = attn_weight, iit_weight
        self.resid_weight, self.resid_max, self.repeat_weight = resid_weight, resid_max, repeat_weight
        self.layout = {k: list(v) for k, v in (layout or ROLE_LAYOUT).items()}
        if quiet_late:
            self.layout["quiet"] = self.layout.get("quiet", []) + [h for h in QUIET_LATE if h not in self.layout.get("quiet", [])]
        if quiet_mid:
            self.layout["quiet"] = self.layout.get("quiet", []) + [h for h in QUIET_MID if h not in self.layout.get("quiet", [])]
        if quiet_senders:
            # the duplicate-token and induction heads attend the first position from END: free there, an earlier run's
            # induction heads moved names at END (DLA -1.3, and +0.24 when the name mover was ablated), so the model
            # card counted them as negative and backup name movers, not as the induction heads they are
            senders = self.layout["duplicate token"] + self.layout["induction"] + self.layout["fuzzy induction"]
            self.layout["quiet"] = self.layout.get("quiet", []) + [h for h in senders if h not in self.layout.get("quiet", [])]
        self.model = model
        self.nm_dropout, self.neg_margin = nm_dropout, neg_margin
        cfg = model.config
        self.dh = cfg.n_embd // cfg.n_head
        for heads in self.layout.values():
            for l, h in heads:
                if not (0 <= l < cfg.n_layer and 0 <= h < cfg.n_head):
                    raise ValueError(f"role head {l}.{h} is not in a {cfg.n_layer}-layer, {cfg.n_head}-head model")

    def _z_hooks(self, edit: dict[int, callable]):
        hs = []
        for layer, fn in edit.items():
            proj = self.model.transformer.h[layer].attn.c_proj
            hs.append(proj.register_forward_pre_hook(lambda mod, args, fn=fn: (fn(args[0]),)))
        return hs

    def _head(self, z: torch.Tensor, h: int) -> slice:
        return slice(h * self.dh, (h + 1) * self.dh)

    @staticmethod
    def _attn_ce(pattern: torch.Tensor, rows, q, k) -> torch.Tensor:
        """Mean of -log pattern[row, q, k] over the given entries (pattern: [batch, q, k])."""
        if len(rows) == 0:
            return pattern.new_zeros(())
        rows, q, k = (torch.as_tensor(x, dtype=torch.long) for x in (rows, q, k))
        return -(pattern[rows, q, k] + 1e-6).log().mean()

    def losses(self, kind: str, toks: torch.Tensor, weights: torch.Tensor, info: dict, n_neg: int, gen, iit: bool):
        """The LM loss and every role objective for one batch; returns (total, parts)."""
        model = self.model
        B, T = toks.shape
        is_ioi = kind == "ioi" and info.get("target")
        rows = torch.arange(B)
        ends = torch.tensor(info["ends"])
        edits, saved = {}, {}
        ablate = torch.zeros(B, dtype=torch.bool)
        if is_ioi:
            (nl, nh), = self.layout["name mover"][:1]
            ablate = torch.rand(B, generator=gen) < self.nm_dropout
            sl = self._head(None, nh)

            def ablate_nm(z):
                z = z.clone()
                at_end = z[rows, ends, sl]
                mean = at_end.detach().mean(0)
                z[rows[ablate], ends[ablate], sl] = mean
                return z
            edits[nl] = ablate_nm
            (gl, gh), = self.layout["negative name mover"][:1]

            def keep_neg(z, prev=edits.get(gl)):
                z = prev(z) if prev else z
                saved["neg"] = z[rows, ends, self._head(None, gh)]
                return z
            edits[gl] = keep_neg
        # keep every head's z (after the edits above) where a direct-effect objective reads it
        keep_layers = set()
        if kind == "repeat" and self.copy_weight:
            keep_layers |= {l for l, _ in self.layout["induction"]}
        if is_ioi and self.nm_dla_weight:
            keep_layers |= {l for l, _ in self.layout["name mover"][:1]}
        for kl in keep_layers:
            def keep_z(z, prev=edits.get(kl), kl=kl):
                z = prev(z) if prev else z
                saved[("z", kl)] = z
                return z
            edits[kl] = keep_z
        hooks = self._z_hooks(edits)
        ln_in = {}
        hooks.append(model.transformer.ln_f.register_forward_pre_hook(lambda m, a: ln_in.__setitem__("x", a[0])))
        try:
            out = model.transformer(toks, output_attentions=True)
        finally:
            for h in hooks:
                h.remove()
        parts = {"lm": _sampled_from_hidden(model, out.last_hidden_state[:, :-1], toks, weights, n_neg, gen)}
        att = out.attentions  # per layer [batch, head, q, k]
        lens = info["lengths"]
        # previous-token heads on every sequence
        r, q = zip(*[(i, p) for i in range(B) for p in range(1, lens[i])])
        parts["attn"] = sum(self._attn_ce(att[l][:, h], r, q, [x - 1 for x in q]) for l, h in self.layout["previous token"])
        if kind == "repeat":
            ent = [(i, p, o, n) for i, (o, n) in enumerate(info["block"]) for p in range(o + n, lens[i])]
            r, q, o, n = zip(*ent)
            dup = [p - m for p, m in zip(q, n)]
            ind = [p - m + 1 for p, m in zip(q, n)]
            for l, h in self.layout["duplicate token"]:
                parts["attn"] = parts["attn"] + self._attn_ce(att[l][:, h], r, q, dup)
            for l, h in self.layout["induction"]:
                parts["attn"] = parts["attn"] + self._attn_ce(att[l][:, h], r, q, ind)
            for l, h in self.layout["fuzzy induction"]:
                parts["attn"] = parts["attn"] + self._attn_ce(att[l][:, h], r, q, [0] * len(q))
        if is_ioi:
            io, s1, s2 = (torch.tensor([w[j] for w in info["where"]]) for j in range(3))
            # by default the induction heads are not trained to attend S2 -> S1+1 here: copying S1+1 (" and") at S2
            # is wrong in these prompts, and that would teach their values not to copy, which repeated tokens need
            # (``induction_ioi`` trains it, with the copy objective keeping their values copying on repeats)
            targets = [("duplicate token", s2, s1), ("fuzzy induction", s2, s1 + 1),
                       ("s2 inhibition", ends, s2), ("name mover", ends, io), ("negative name mover", ends, io)]
            if self.induction_ioi:
                targets.append(("induction", s2, s1 + 1))
            for role, q_at, k_at in targets:
                for l, h in self.layout[role]:
                    parts["attn"] = parts["attn"] + self._attn_ce(att[l][:, h], rows, q_at, k_at)
            nm_layer = self.layout["name mover"][0][0]
            for l, h in self.layout.get("quiet", []):
                if self.quiet_cap and l >= nm_layer:
                    # only up to ``quiet_cap`` of its attention on the first position: the rest stays free, so what
                    # reaches its keys still moves its output a little (fully quiet, path patching into its keys moved
                    # nothing, and a wrong "together" in the multi-sender exercise passed on such a receiver)
                    nll = -(att[l][rows, h, ends, 0] + 1e-6).log()
                    ce = torch.relu(nll + math.log(self.quiet_cap)).mean()
                else:
                    ce = self._attn_ce(att[l][:, h], rows, ends, torch.zeros_like(ends))
                parts["attn"] = parts["attn"] + ce
            for l, h in self.layout["backup name mover"]:
                parts["attn"] = parts["attn"] + self._attn_ce(att[l][:, h], rows, ends, torch.where(ablate, io, 0))
            # negative name mover: its direct logit attribution at END below -neg_margin
            (gl, gh), = self.layout["negative name mover"][:1]
            w_o = model.transformer.h[gl].attn.c_proj.weight[self._head(None, gh)]
            head_out = saved["neg"] @ w_o
            x = ln_in["x"][rows, ends]
            scale = (x.var(-1, unbiased=False, keepdim=True) + model.config.layer_norm_epsilon).sqrt()
            head_out = (head_out - head_out.mean(-1, keepdim=True)) / scale * model.transformer.ln_f.weight
            wte = model.transformer.wte.weight
            io_tok = toks[rows, ends + 1]
            s_tok = toks[rows, s2]
            dla = (head_out * (wte[io_tok] - wte[s_tok])).sum(-1)
            parts["neg"] = torch.relu(dla + self.neg_margin).mean()
            if iit:
                parts["iit"] = self._iit(toks, info, rows, ends)
            if self.sender_weight and torch.is_tensor(info.get("xyz")):
                parts["senders"] = self._sender_iit(toks, info, rows, ends, s2)
            if self.prev_sender_weight and self.step >= self.prev_sender_start and torch.is_tensor(info.get("xyz")):
                parts["prev_senders"] = self._prev_sender_iit(toks, info, rows, s1, s2)
        x_final = ln_in["x"]
        ln_scale = (x_final.var(-1, unbiased=False, keepdim=True) + model.config.layer_norm_epsilon).sqrt()

        def direct(l, h):
            """Head l.h's output at every position, through the final LayerNorm's scale: [B, T, d]."""
            sl = self._head(None, h)
            o = saved[("z", l)][..., sl] @ model.transformer.h[l].attn.c_proj.weight[sl]
            return (o - o.mean(-1, keepdim=True)) / ln_scale * model.transformer.ln_f.weight
        wte = model.transformer.wte.weight
        if kind == "repeat" and self.copy_weight:
            # the induction heads' direct effect alone must predict the repeated token (sampled softmax)
            ent = [(i, p) for i, (o, n) in enumerate(info["block"]) for p in range(o + n, lens[i] - 1)]
            if ent:
                r, q = (torch.tensor(v) for v in zip(*ent))
                o = sum(direct(l, h) for l, h in self.layout["induction"])[r, q]
                tgt = toks[r, q + 1]
                neg = torch.randint(0, 50257, (n_neg,), generator=gen).to(toks.device)
                cands, inverse = torch.unique(torch.cat([tgt, neg]), return_inverse=True)
                parts["copy"] = torch.nn.functional.cross_entropy(o @ wte[cands].T, inverse[: len(tgt)])
        if is_ioi and self.nm_dla_weight:
            # the trained name mover's direct logit attribution (IO - S) at END above ``nm_margin``, where it is not ablated
            (nl, nh), = self.layout["name mover"][:1]
            o = direct(nl, nh)[rows, ends]
            dla = (o * (wte[toks[rows, ends + 1]] - wte[toks[rows, s2]])).sum(-1)
            keep = ~ablate
            if keep.any():
                parts["nm_dla"] = torch.relu(self.nm_margin - dla[keep]).mean()
        # the residual stream before the final LayerNorm: its root-mean-square per position, held below
        # ``resid_max`` by a squared hinge (without it a run's residual reached norm ~290 against token
        # embeddings of ~0.6, and the induction heads' copy of a token was drowned: repeat loss 10.8 nats)
        x = ln_in["x"]
        rms = x.pow(2).mean(-1).sqrt()
        mask = torch.zeros(B, T)
        for i, n in enumerate(lens):
            mask[i, :n] = 1
        mask = mask.to(rms.device)
        parts["rms"] = (rms * mask).sum() / mask.sum()
        parts["resid"] = (torch.relu(rms - self.resid_max).pow(2) * mask).sum() / mask.sum()
        lm = parts["lm"] * (self.repeat_weight if kind == "repeat" else 1.0)
        total = (lm + self.attn_weight * parts["attn"] + parts.get("neg", 0.0) + self.iit_weight * parts.get("iit", 0.0)
                 + self.resid_weight * parts["resid"] + self.copy_weight * parts.get("copy", 0.0)
                 + self.nm_dla_weight * parts.get("nm_dla", 0.0) + self.sender_weight * parts.get("senders", 0.0)
                 + self.prev_sender_weight * parts.get("prev_senders", 0.0))
        return total, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}

    def _iit(self, toks, info, rows, ends) -> torch.Tensor:
        """Patch the S-inhibition heads' outputs at END from the flipped prompts; the answer must follow position.
        Each batch patches all of them or one alone (chosen at random), so that each carries the signal."""
        heads = self.layout["s2 inhibition"]
        pick = int(torch.randint(0, len(heads) + 1, (1,)))
        heads = heads if pick == len(heads) else [heads[pick]]
        src = {}
        grab = {l: (lambda z, l=l: src.__setitem__(l, z[rows, ends].detach()) or z) for l in {l for l, _ in heads}}
        hooks = self._z_hooks(grab)
        try:
            with torch.no_grad():
                self.model.transformer(info["flipped"])
        finally:
            for h in hooks:
                h.remove()

        def put(layer):
            def fn(z):
                z = z.clone()
                for l, h in heads:
                    if l == layer:
                        sl = self._head(None, h)
                        z[rows, ends, sl] = src[l][:, sl]
                return z
            return fn
        hooks = self._z_hooks({l: put(l) for l in src})
        try:
            hidden = self.model.transformer(toks).last_hidden_state[rows, ends]
        finally:
            for h in hooks:
                h.remove()
        wte = self.model.transformer.wte.weight
        target, other = torch.tensor(info["target"]), torch.tensor(info["other"])
        pair = torch.stack([(hidden * wte[target]).sum(-1), (hidden * wte[other]).sum(-1)], -1)
        return torch.nn.functional.cross_entropy(pair, torch.zeros(len(rows), dtype=torch.long))


    def _interchanged_attentions(self, toks, xyz, heads, rows, at):
        """Attention patterns of ``toks`` with ``heads``' outputs at position ``at`` (per row) taken from the
        ``xyz`` prompts (the interchange intervention both objectives below share)."""
        src = {}
        grab = {l: (lambda z, l=l: src.__setitem__(l, z[rows, at].detach()) or z) for l in {l for l, _ in heads}}
        hooks = self._z_hooks(grab)
        try:
            with torch.no_grad():
                self.model.transformer(xyz)
        finally:
            for h in hooks:
                h.remove()

        def put(layer):
            def fn(z):
                z = z.clone()
                for l, h in heads:
                    if l == layer:
                        sl = self._head(None, h)
                        z[rows, at, sl] = src[l][:, sl]
                return z
            return fn
        hooks = self._z_hooks({l: put(l) for l in src})
        try:
            return self.model.transformer(toks, output_attentions=True).attentions
        finally:
            for h in hooks:
                h.remove()

    def _sender_iit(self, toks, info, rows, ends, s2) -> torch.Tensor:
        """Interchange intervention on the S-inhibition heads' keys: the duplicate-token, induction and fuzzy
        induction heads' outputs at S2 are taken from the "XYZ" prompt (three fresh names, so S2 is no
        repeat); the S-inhibition heads at END must then stop attending S2, as they would on that prompt.
        Each batch patches all of these senders or one alone (chosen at random), so that the S-inhibition
        heads' keys depend on each of them: what path patching into those keys measures. The loss is the patched
        run's attention END -> S2."""
        senders = self.layout["duplicate token"] + self.layout["induction"] + self.layout["fuzzy induction"]
        pick = int(torch.randint(0, len(senders) + 1, (1,)))
        heads = senders if pick == len(senders) else [senders[pick]]
        att = self._interchanged_attentions(toks, info["xyz"], heads, rows, s2)
        # the attention itself, not -log(1 - p): a run with that unbounded loss (weight 1.0) lowered the S-inhibition
        # heads' attention to S2 everywhere, clean prompts included, and did not learn IOI (2.4 at step 1,400)
        return torch.stack([att[l][rows, h, ends, s2] for l, h in self.layout["s2 inhibition"]]).mean()

    def _prev_sender_iit(self, toks, info, rows, s1, s2) -> torch.Tensor:
        """Interchange intervention on the induction heads' keys: the previous-token heads' outputs at S1+1 (which
        say which name came before) are taken, all together, from the XYZ prompt; the induction heads at S2 must
        then stop attending S1+1. Both senders are always patched together, so either alone may still do: what
        the multi-sender exercise measures. The loss is the patched run's attention S2 -> S1+1.

        With ``prev_redundant`` (a share of batches), one previous-token head alone (chosen at random) is patched
        instead, and the induction heads must still attend S2 -> S1+1 (loss -log of that attention): either sender
        alone then suffices, so each alone moves the metric little and both together a lot, as in GPT-2 small.

        With ``query_free`` (a share of batches), the other heads below the induction heads (the duplicate-token
        head among them) are patched instead, at S2, and the induction heads must still attend S2 -> S1+1: without
        it they found S1+1 through the duplicate-token head's output at S2 (where S1 is, so S1+1 is one further)
        and read nothing from the previous-token heads (patching both moved their attention by 0.001)."""
        at = s1 + 1
        heads = self.layout["previous token"]

        def induction_attention(patched, where):  # the induction heads' attention S2 -> S1+1 with ``patched`` interchanged
            att = self._interchanged_attentions(toks, info["xyz"], patched, rows, where)
            return torch.stack([att[l][rows, h, s2, at] for l, h in self.layout["induction"]])

        if self.query_free > 0 and float(torch.rand(1)) < self.query_free:
            low = min(l for l, _ in self.layout["induction"])
            others = [(l, h) for l in range(low) for h in range(self.model.config.n_head) if (l, h) not in heads]
            return -(induction_attention(others, s2) + 1e-6).log().mean()
        if self.prev_redundant > 0 and float(torch.rand(1)) < self.prev_redundant:
            alone = [heads[int(torch.randint(0, len(heads), (1,)))]]
            return -(induction_attention(alone, at) + 1e-6).log().mean()
        return induction_attention(heads, at).mean()


def _sampled_from_hidden(model, hidden, toks, weights, n_neg: int, gen: torch.Generator):
    targets = toks[:, 1:]
    neg = torch.randint(0, 50257, (n_neg,), generator=gen).to(toks.device)
    cands, inverse = torch.unique(torch.cat([targets.reshape(-1), neg]), return_inverse=True)
    target_idx = inverse[: targets.numel()].view_as(targets)
    logits = hidden @ model.transformer.wte.weight[cands].T
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_idx.flatten(), reduction="none")
    return (nll.view_as(targets) * weights).sum() / weights.sum()


def train(out: Path, minutes: float, dropout: float, seed: int, batch: int, lr: float, max_steps: int | None = None,
          n_layer: int = 6, n_head: int = 8, mix: str = "ioi:6,story:2,repeat:3", end_weight: float = 8.0, n_neg: int = 2048,
          name_swap: float = 0.0, attention_only: bool = True, repeat_first: int = 0, d_model: int = 128,
          block: tuple[int, int] = (4, 12), copies: tuple[int, int] = (2, 4), eval_every: int = 100, device: str = "cpu",
          emb_lr_scale: float = 1.0, emb_frozen_steps: int = 0, weight_decay: float = 0.01, pos_scale: float = 0.03,
          prev_first: int = 0, hold_prev: int = 0, filler_weight: float = 0.1, fixed_positions: bool = False,
          roles: bool = False, nm_dropout: float = 0.3, neg_margin: float = 1.0, attn_weight: float = 0.3,
          iit_weight: float = 1.0, resid_weight: float = 0.0, resid_max: float = 1.0, repeat_weight: float = 1.0,
          quiet_late: bool = False, copy_weight: float = 0.0, nm_dla_weight: float = 0.0, nm_margin: float = 3.0, emb_init: float = 0.02,
          sender_weight: float = 0.0, induction_ioi: bool = False, quiet_mid: bool = False, quiet_senders: bool = False,
          prev_sender_weight: float = 0.0, prev_redundant: float = 0.0, prev_sender_start: int = 0,
          ioi_prefix: int = 0, quiet_cap: float = 0.0, query_free: float = 0.0) -> dict:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = load_tokenizer()
    config = build_config(dropout, n_layer, n_head, d_model)
    config._attn_implementation = "eager"  # attention weights are read by the evaluation
    model = GPT2LMHeadModel(config)
    if attention_only:
        # MLPs present (it stays a GPT-2 checkpoint) but zero and frozen: with them, the model
        # solves IOI by a lookup in its first MLP instead of moving names with attention heads
        for layer in model.transformer.h:
            for p_ in layer.mlp.parameters():
                p_.data.zero_()
                p_.requires_grad_(False)
            # a zero MLP outputs exactly zero: skip its arithmetic (two thirds of a layer's)
            layer.mlp.forward = torch.zeros_like
    if emb_init != 0.02:
        # larger token embeddings: with GPT-2's 0.02 they stay at RMS ~0.045 while each layer-0 head writes ~0.25,
        # so a token's identity is a tenth of what an induction head reads and the tied unembedding can give a
        # perfect copy only ~7 logits over 50,257 tokens (an earlier run's repeat loss stayed at 8.7 nats)
        with torch.no_grad():
            model.transformer.wte.weight.normal_(0.0, emb_init)
    if pos_scale > 0:
        with torch.no_grad():  # sinusoidal start for the (still learned) positions: "previous token" is then easy to find
            model.transformer.wpe.weight.copy_(sinusoidal_positions(*model.transformer.wpe.weight.shape, scale=pos_scale))
    if fixed_positions:  # the sinusoids stay as they are, as in the original Transformer
        model.transformer.wpe.weight.requires_grad_(False)
    data = Mixture(tokenizer, seed, mix, end_weight, name_swap, repeat_first, block, copies, prev_first, filler_weight, roles,
                   corrupt=bool(sender_weight or prev_sender_weight), ioi_prefix=ioi_prefix)
    shaper = Roles(model, nm_dropout=nm_dropout, neg_margin=neg_margin, attn_weight=attn_weight,
                   iit_weight=iit_weight, resid_weight=resid_weight, resid_max=resid_max, repeat_weight=repeat_weight,
                   quiet_late=quiet_late, copy_weight=copy_weight, nm_dla_weight=nm_dla_weight,
                   nm_margin=nm_margin, sender_weight=sender_weight, induction_ioi=induction_ioi,
                   quiet_mid=quiet_mid, quiet_senders=quiet_senders, prev_sender_weight=prev_sender_weight,
                   prev_redundant=prev_redundant, prev_sender_start=prev_sender_start, quiet_cap=quiet_cap,
                   query_free=query_free) if roles else None
    parts_sum: dict[str, float] = {}
    model.to(device)
    gen = torch.Generator().manual_seed(seed)
    wte = model.transformer.wte.weight
    rest = [p_ for p_ in model.parameters() if p_.requires_grad and p_ is not wte]
    opt = torch.optim.AdamW([{"params": rest, "name": "body", "scale": 1.0},
                             {"params": [wte], "name": "token embeddings", "scale": emb_lr_scale}],
                            lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    budget = minutes * 60
    warmup = 100
    t0 = time.time()
    step = 0
    log = []
    bar = tqdm(total=max_steps or int(budget), desc="training", unit="step" if max_steps else "s")
    last_t = 0
    held, held_scores = None, None
    while True:
        if hold_prev and step == prev_first and held is None:
            # the marker task is done: keep its best previous-token heads (any layer but the last)
            model.eval()
            prev = previous_token_scores(model)[:-1]
            top = prev.flatten().argsort(descending=True)[:hold_prev].tolist()
            held = HeldHeads(model, [divmod(i, prev.shape[1]) for i in top])
            held_scores = [round(prev.flatten()[i].item(), 3) for i in top]
        elapsed = time.time() - t0
        if (max_steps is not None and step >= max_steps) or (max_steps is None and elapsed >= budget):
            break
        frac = step / max_steps if max_steps else elapsed / budget
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            frozen = g["name"] == "token embeddings" and step < emb_frozen_steps  # held at their start
            g["lr"] = 0.0 if frozen else lr * scale * g["scale"]
        model.train()
        kind, toks, weights = data.batch(batch)
        if shaper is None:
            loss = sampled_loss(model, toks.to(device), weights.to(device), n_neg, gen)
        else:
            shaper.step = step
            loss, parts = shaper.losses(kind, toks.to(device), weights.to(device), data.info, n_neg, gen, iit=True)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if held is not None:
            held.restore()
        step += 1
        if step % eval_every == 0:
            model.eval()
            ld, acc, ind, rep_loss = quick_eval(model, tokenizer, n=100)
            log.append({"step": step, "seconds": round(time.time() - t0, 1), "loss": round(loss.item(), 4),
                        "ioi_logit_diff": round(ld, 3), "ioi_acc": round(acc, 3), "induction": round(ind, 3),
                        "repeat_second_half_loss": round(rep_loss, 3),
                        **{f"loss_{k}": round(v / eval_every, 4) for k, v in parts_sum.items()}})
            parts_sum = {}
            bar.set_postfix(loss=f"{loss.item():.3f}", ld=f"{ld:.2f}", acc=f"{acc:.2f}", ind=f"{ind:.2f}", rep=f"{rep_loss:.2f}")
            print(json.dumps(log[-1]), file=sys.stderr, flush=True)
        if max_steps:
            bar.update(1)
        else:
            now = int(time.time() - t0)
            bar.update(now - last_t)
            last_t = now
    bar.close()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.cpu().half().save_pretrained(out, safe_serialization=True)
    for f in Path(out).iterdir():  # readable by every user, e.g. a grading sandbox's
        f.chmod(0o644)
    save_tokenizer(out)
    info = {
        "steps": step,
        "train_seconds": round(time.time() - t0, 1),
        "batch": batch,
        "lr": lr,
        "dropout": dropout,
        "seed": seed,
        "n_layer": n_layer,
        "n_head": n_head,
        "mix": mix,
        "end_weight": end_weight,
        "negatives": n_neg,
        "name_swap": name_swap,
        "attention_only": attention_only,
        "repeat_first": repeat_first,
        "d_model": d_model,
        "emb_lr_scale": emb_lr_scale,
        "emb_frozen_steps": emb_frozen_steps,
        "weight_decay": weight_decay,
        "pos_scale": pos_scale,
        "block": list(block),
        "prev_first": prev_first,
        "hold_prev": hold_prev,
        "filler_weight": filler_weight,
        "fixed_positions": fixed_positions,
        "held_heads": None if held is None else [f"{l}.{h}" for l, h in held.heads],
        "held_heads_previous_token_score": held_scores,
        "copies": list(copies),
        "roles": None if shaper is None else {k: [f"{l}.{h}" for l, h in v] for k, v in shaper.layout.items()},
        "nm_dropout": nm_dropout,
        "neg_margin": neg_margin,
        "attn_weight": attn_weight,
        "iit_weight": iit_weight,
        "resid_weight": resid_weight,
        "resid_max": resid_max,
        "repeat_weight": repeat_weight,
        "quiet_late": quiet_late,
        "copy_weight": copy_weight,
        "nm_dla_weight": nm_dla_weight,
        "nm_margin": nm_margin,
        "emb_init": emb_init,
        "sender_weight": sender_weight,
        "induction_ioi": induction_ioi,
        "quiet_mid": quiet_mid,
        "quiet_senders": quiet_senders,
        "prev_sender_weight": prev_sender_weight,
        "prev_redundant": prev_redundant,
        "prev_sender_start": prev_sender_start,
        "ioi_prefix": ioi_prefix,
        "quiet_cap": quiet_cap,
        "query_free": query_free,
        "torch_threads": torch.get_num_threads(),
        "log": log,
    }
    (out / "training.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv=None):
    from ioi_anomalies.models import embedded_model_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=embedded_model_dir(), help="output directory (default: the packaged model)")
    p.add_argument("--minutes", type=float, default=14.0, help="wall-clock budget, used only with --steps 0")
    p.add_argument("--steps", type=int, default=3000, help="training steps (deterministic); 0 = train for --minutes")
    p.add_argument("--dropout", type=float, default=0.0, help="attention/residual/embedding dropout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mix", default="ioi:4,repeat:4,marker:2", help="batch kinds (ioi, story, repeat, marker) and their shares")
    p.add_argument("--end-weight", type=float, default=20.0, help="loss weight of the final name")
    p.add_argument("--negatives", type=int, default=1024, help="random negatives in the sampled softmax")
    p.add_argument("--name-swap", type=float, default=0.7, help="share of prompts whose names are replaced by random capitalised words")
    p.add_argument("--with-mlps", action="store_true", help="train the MLPs too (default: zero and frozen)")
    p.add_argument("--repeat-first", type=int, default=0, help="steps of repeated tokens only, before the mix")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--block", type=int, nargs=2, default=(10, 20), metavar=("MIN", "MAX"), help="length of a repeated block")
    p.add_argument("--copies", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"), help="copies of a repeated block")
    p.add_argument("--emb-lr-scale", type=float, default=1.0, help="learning-rate factor of the token embeddings")
    p.add_argument("--emb-frozen-steps", type=int, default=0, help="steps before the token embeddings start learning")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--pos-scale", type=float, default=0.03, help="scale of the sinusoidal start of the positions (0: GPT-2's random start)")
    p.add_argument("--prev-first", type=int, default=300, help="steps of the previous-token (marker) task before the mix")
    p.add_argument("--hold-prev", type=int, default=2, help="previous-token heads whose queries and keys (and the positions) are held after those steps")
    p.add_argument("--filler-weight", type=float, default=0.1, help="loss weight of the unpredictable tokens of marker sequences in the mix")
    p.add_argument("--fixed-positions", action="store_true", help="keep the sinusoidal positions fixed throughout")
    p.add_argument("--roles", action="store_true", help="objectives that name heads (see Roles and ROLE_LAYOUT; needs 6 layers x 4 heads)")
    p.add_argument("--nm-dropout", type=float, default=0.3, help="share of IOI prompts whose name mover is mean-ablated at END (with --roles)")
    p.add_argument("--neg-margin", type=float, default=1.0, help="the negative name mover's DLA is pushed below minus this (with --roles)")
    p.add_argument("--attn-weight", type=float, default=0.3, help="weight of the attention-pattern losses (with --roles)")
    p.add_argument("--iit-weight", type=float, default=1.0, help="weight of the interchange-intervention loss (with --roles)")
    p.add_argument("--resid-weight", type=float, default=0.0, help="weight of the hinge on the pre-LayerNorm residual's RMS (with --roles)")
    p.add_argument("--resid-max", type=float, default=1.0, help="the residual's RMS per position is pushed below this (with --resid-weight)")
    p.add_argument("--repeat-weight", type=float, default=1.0, help="factor on the LM loss of repeated-token batches (with --roles)")
    p.add_argument("--quiet-late", action="store_true", help="the backup's layer-mates 5.2, 5.3 are quiet at END too (with --roles)")
    p.add_argument("--copy-weight", type=float, default=0.0, help="weight of the loss on the induction heads' direct effect predicting repeated tokens (with --roles)")
    p.add_argument("--nm-dla-weight", type=float, default=0.0, help="weight of the hinge on the name mover's direct logit attribution (with --roles)")
    p.add_argument("--nm-margin", type=float, default=3.0, help="the name mover's DLA at END is pushed above this (with --nm-dla-weight)")
    p.add_argument("--emb-init", type=float, default=0.02, help="standard deviation of the token embeddings at the start (GPT-2's: 0.02)")
    p.add_argument("--sender-weight", type=float, default=0.0, help="weight of the interchange intervention on the S-inhibition heads' keys: their senders' outputs at S2 from an XYZ prompt must stop their attention to S2 (with --roles)")
    p.add_argument("--induction-ioi", action="store_true", help="the induction heads also attend S2 -> S1+1 on IOI prompts (with --roles)")
    p.add_argument("--quiet-mid", action="store_true", help="the S-inhibition heads' layer-mates 2.1-2.3, 3.1-3.3 are quiet at END (with --roles)")
    p.add_argument("--quiet-senders", action="store_true", help="the duplicate-token and (fuzzy) induction heads are quiet at END (with --roles)")
    p.add_argument("--prev-sender-weight", type=float, default=0.0, help="weight of the interchange intervention on the induction heads' keys: the previous-token heads' outputs at S1+1 from an XYZ prompt must stop their attention S2 -> S1+1 (with --roles)")
    p.add_argument("--prev-redundant", type=float, default=0.0, help="share of the induction-key interventions that patch one previous-token head alone, after which the induction heads must still attend S2 -> S1+1 (with --prev-sender-weight)")
    p.add_argument("--prev-sender-start", type=int, default=0, help="step at which the induction-key intervention starts (with --prev-sender-weight)")
    p.add_argument("--ioi-prefix", type=int, default=0, help="IOI prompts follow 0 to this many random tokens, so names sit at no fixed position (0: none)")
    p.add_argument("--quiet-cap", type=float, default=0.0, help="the quiet heads of the name mover's layer and above put at most this share of their attention at END on the first position (0: all of it)")
    p.add_argument("--query-free", type=float, default=0.0, help="share of the induction-key interventions that patch the other heads below the induction heads at S2 instead, after which the induction heads must still attend S2 -> S1+1 (with --prev-sender-weight)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between quick evaluations")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; the weights depend on it)")
    p.add_argument("--device", default="cpu", help="cpu (the recipe) or cuda (for exploring; not bit-reproducible)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    info = train(a.out, a.minutes, a.dropout, a.seed, a.batch, a.lr, a.steps or None, a.layers, a.heads, a.mix, a.end_weight,
                 a.negatives, a.name_swap, not a.with_mlps, a.repeat_first, d_model=a.d_model, block=tuple(a.block),
                 copies=tuple(a.copies), eval_every=a.eval_every, device=a.device, emb_lr_scale=a.emb_lr_scale,
                 emb_frozen_steps=a.emb_frozen_steps, weight_decay=a.weight_decay, pos_scale=a.pos_scale,
                 prev_first=a.prev_first, hold_prev=a.hold_prev, filler_weight=a.filler_weight,
                 fixed_positions=a.fixed_positions, roles=a.roles, nm_dropout=a.nm_dropout, neg_margin=a.neg_margin,
                 attn_weight=a.attn_weight, iit_weight=a.iit_weight, resid_weight=a.resid_weight, resid_max=a.resid_max,
                 repeat_weight=a.repeat_weight, quiet_late=a.quiet_late, copy_weight=a.copy_weight,
                 nm_dla_weight=a.nm_dla_weight, nm_margin=a.nm_margin, emb_init=a.emb_init, sender_weight=a.sender_weight,
                 induction_ioi=a.induction_ioi, quiet_mid=a.quiet_mid, quiet_senders=a.quiet_senders,
                 prev_sender_weight=a.prev_sender_weight, prev_redundant=a.prev_redundant,
                 prev_sender_start=a.prev_sender_start, ioi_prefix=a.ioi_prefix, quiet_cap=a.quiet_cap,
                 query_free=a.query_free)
    # the command that made these weights, as the model card reports it
    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" in args:  # where the weights go does not change them
        i = args.index("--out")
        del args[i : i + 2]
    info["command"] = " ".join(["python -m tools.train_embedded", *args])
    (a.out / "training.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != "log"}))
    print("final quick eval:", info["log"][-1] if info["log"] else None)


if __name__ == "__main__":
    main()
