"""The Indirect Object Identification (IOI) dataset, reference-compatible draw for draw.

An IOI prompt names two people and ends where a model should predict the *indirect object*:

    "When Mary and John went to the store, John gave a drink to" -> " Mary"

Mary is the indirect object (IO), John the subject (S): S appears twice (S1 in the first clause,
S2 in the second), IO once. ``BABA`` templates put S first in the opening clause, ``ABBA``
templates put IO first. ABC/BAC templates use three distinct names and serve as the *corrupted*
distribution: nothing in them says which name comes next.

:class:`IOIDataset` reproduces the generator of the reference material (Wang et al. 2022, as used
by the ARENA exercises): the same constructor arguments, the same calls on Python's ``random`` and
numpy's global RNG in the same order, hence the same sentences for the same seed. It differs
where the reference is wrong, and only there:

- name ids come from the tokenizer with no special tokens (a TransformerLens bridge's tokenizer
  prepends BOS on ``encode``; the reference then takes ``<|endoftext|>`` as every name's id and
  reports a logit difference of exactly 0);
- tokens are right-padded by the dataset itself (whatever the tokenizer's padding habits), and
  ``word_idx["end"]`` is checked so that ``toks[i, end + 1]`` is the final IO token;
- ``copy()`` and slicing keep the dataset's device (the reference falls back to "cuda");
- ``word_idx["punct"]`` is shifted by one when ``prepend_bos`` like every other position;
- ABBA/BABA is decided by word position, not by substring search ("Andre" inside "Andrew");
- bad arguments raise ``ValueError`` with a message that says what to do.
"""

from __future__ import annotations

import copy as _copy
import random
import re
import warnings
from typing import Sequence

import numpy as np
import torch

from .tokenizer import encode_plain

NAMES = [
    "Aaron", "Adam", "Alan", "Alex", "Alice", "Amy", "Anderson", "Andre", "Andrew", "Andy",
    "Anna", "Anthony", "Arthur", "Austin", "Blake", "Brandon", "Brian", "Carter", "Charles",
    "Charlie", "Christian", "Christopher", "Clark", "Cole", "Collins", "Connor", "Crew",
    "Crystal", "Daniel", "David", "Dean", "Edward", "Elizabeth", "Emily", "Eric", "Eva", "Ford",
    "Frank", "George", "Georgia", "Graham", "Grant", "Henry", "Ian", "Jack", "Jacob", "Jake",
    "James", "Jamie", "Jane", "Jason", "Jay", "Jennifer", "Jeremy", "Jessica", "John",
    "Jonathan", "Jordan", "Joseph", "Joshua", "Justin", "Kate", "Kelly", "Kevin", "Kyle",
    "Laura", "Leon", "Lewis", "Lisa", "Louis", "Luke", "Madison", "Marco", "Marcus", "Maria",
    "Mark", "Martin", "Mary", "Matthew", "Max", "Michael", "Michelle", "Morgan", "Patrick",
    "Paul", "Peter", "Prince", "Rachel", "Richard", "River", "Robert", "Roman", "Rose", "Ruby",
    "Russell", "Ryan", "Sarah", "Scott", "Sean", "Simon", "Stephen", "Steven", "Sullivan",
    "Taylor", "Thomas", "Tyler", "Victoria", "Warren", "William",
]

BABA_TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
]


def _baba_to_abba(template: str) -> str:
    """Swap the two names of the first clause: "[B] and [A] ..., [B] ... [A]" -> "[A] and [B] ..."."""
    first = template.index("[B]")
    second = template.index("[A]")
    chars = list(template)
    chars[first + 1] = "A"
    chars[second + 1] = "B"
    return "".join(chars)


ABBA_TEMPLATES = [_baba_to_abba(t) for t in BABA_TEMPLATES]

ABC_TEMPLATES = [
    "Then, [A], [B] and [C] went to the [PLACE]. [B] and [C] gave a [OBJECT] to [A]",
    "Afterwards [A], [B] and [C] went to the [PLACE]. [B] and [C] gave a [OBJECT] to [A]",
    "When [A], [B] and [C] arrived at the [PLACE], [B] and [C] gave a [OBJECT] to [A]",
    "Friends [A], [B] and [C] went to the [PLACE]. [B] and [C] gave a [OBJECT] to [A]",
]
BAC_TEMPLATES = [t.replace("[B]", "[A]", 1).replace("[A]", "[B]", 1) for t in ABC_TEMPLATES]

PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]

PROMPT_TYPES = ("ABBA", "BABA", "mixed", "ABC", "BAC", "ABC mixed")

#: The flip strings of the positional-vs-token grid, keyed by (token row, position column):
#: rows = token signal original / random / inverted, columns = positional signal original / inverted.
FLIP_GRID: dict[tuple[int, int], str | None] = {
    (0, 0): None,
    (1, 0): "ABB->CDD, BAB->DCD",
    (2, 0): "ABB->BAA, BAB->ABA",
    (0, 1): "ABB->BAB, BAB->ABB",
    (1, 1): "ABB->DCD, BAB->CDD",
    (2, 1): "ABB->ABA, BAB->BAA",
}
#: The flip that turns IOI prompts into the corrupted (ABC-style) distribution for path patching.
ABC_FLIP = "ABB->XYZ, BAB->XYZ"

_FLIP_RE = re.compile(r"^\s*(ABB)\s*->\s*([A-Z]{3})\s*,\s*(BAB)\s*->\s*([A-Z]{3})\s*$")


def gen_prompt_uniform(templates, names, nouns_dict, N, symmetric, prefixes=None, abc=False):
    """Draw ``N`` prompts: a template, three distinct names, then one word per noun slot."""
    prompts: list[dict] = []
    while len(prompts) < N:
        temp = random.choice(templates)
        temp_id = templates.index(temp)
        name_1 = name_2 = name_3 = ""
        while len({name_1, name_2, name_3}) < 3:
            name_1 = random.choice(names)
            name_2 = random.choice(names)
            name_3 = random.choice(names)
        prompt_dict: dict = {}
        text = temp
        for key, options in nouns_dict.items():
            prompt_dict[key] = random.choice(options)
        for key in nouns_dict:
            text = text.replace(key, prompt_dict[key])
        if prefixes is not None:
            length = random.randint(30, 40)
            pref = ".".join(random.choice(prefixes).split(".")[:length]) + "<|endoftext|>"
        else:
            pref = ""
        first = text.replace("[A]", name_1).replace("[B]", name_2)
        if abc:
            first = first.replace("[C]", name_3)
        prompt_dict.update(text=pref + first, IO=name_1, S=name_2, TEMPLATE_IDX=temp_id)
        if abc:
            prompt_dict["C"] = name_3
        prompts.append(prompt_dict)
        if symmetric and len(prompts) < N:
            second = text.replace("[A]", name_2).replace("[B]", name_1)
            prompts.append({"text": pref + second, "IO": name_2, "S": name_1, "TEMPLATE_IDX": temp_id})
    return prompts


def parse_flip(flip: str) -> dict[str, tuple[str, str]]:
    """Parse ``"ABB->CDD, BAB->DCD"`` into ``{"ABB": ("ABB", "CDD"), "BAB": ("BAB", "DCD")}``."""
    if not isinstance(flip, str) or not _FLIP_RE.match(flip):
        raise ValueError(
            f"malformed flip string {flip!r}: expected 'ABB->XYZ, BAB->XYZ', the ABBA part then "
            "the BABA part, each three capital letters (e.g. 'ABB->CDD, BAB->DCD')."
        )
    abba, baba = flip.split(",")
    left = [s.strip() for s in abba.split("->")]
    right = [s.strip() for s in baba.split("->")]
    return {"ABB": (left[0], left[1]), "BAB": (right[0], right[1])}


def gen_flipped_prompts(prompts, templates_by_prompt, flip, names, seed) -> list[dict]:
    """Rewrite the first three names of each prompt as ``flip`` says (the final IO is kept).

    Letters on the right that appear on the left keep their names; new letters get a name drawn
    (numpy's RNG, seeded by ``seed``) from the names not in the prompt. The returned prompts'
    ``S`` is the name of the last letter; ``IO`` is the non-repeated one of the first two letters
    (the second letter when that is ambiguous).
    """
    flip_dict = parse_flip(flip)
    random.seed(seed)
    np.random.seed(seed)
    new_prompts = []
    for prompt, template in zip(prompts, templates_by_prompt):
        flip_orig, flip_new = flip_dict[template[:-1]]
        prompt = _copy.copy(prompt)
        words = prompt["text"].split(" ")
        found = [(i, w) for i, w in enumerate(words) if w in names][:3]
        orig_names = [w for _, w in found]
        orig_key = {letter: w for w, letter in zip(orig_names, flip_orig)}
        if len(orig_key) != len(set(flip_orig)):
            raise ValueError(
                f"flip {flip!r} does not fit prompt {prompt['text']!r}: its names "
                f"{orig_names} do not follow the pattern {flip_orig}."
            )
        kept = {k: v for k, v in orig_key.items() if k in flip_new}
        free_names = sorted(set(names) - set(orig_names), key=names.index)
        new_letters = sorted(set(flip_new) - set(flip_orig), key=flip_new.index)
        fresh = {letter: str(np.random.choice(free_names)) for letter in new_letters}
        mapping = {**kept, **fresh}
        for (i, _), letter in zip(found, flip_new):
            words[i] = mapping[letter]
        prompt["text"] = " ".join(words)
        prompt["S"] = mapping[flip_new[-1]]
        unique_first = [mapping[c] for c in flip_new[:2] if flip_new.count(c) == 1]
        prompt["IO"] = unique_first[0] if len(unique_first) == 1 else mapping[flip_new[1]]
        new_prompts.append(prompt)
    return new_prompts


def _word_order(text: str, io: str, s: str) -> str:
    words = [w.strip(",.") for w in text.split(" ")]
    try:
        return "ABBA" if words.index(io) < words.index(s) else "BABA"
    except ValueError:  # a name glued to other text: fall back to the character position
        return "ABBA" if text.index(io) < text.index(s) else "BABA"


class IOIDataset:
    """IOI prompts, their tokens and the positions of every role.

    Args:
        prompt_type: "ABBA", "BABA", "mixed" (the first ``nb_templates // 2`` of each, shuffled),
            "ABC", "BAC", "ABC mixed", or a list of templates.
        N: number of prompts.
        tokenizer: a GPT-2 tokenizer (``model.tokenizer`` is fine, BOS habits included);
            defaults to :func:`ioi_anomalies.load_tokenizer`.
        prompts: prompt dicts to use instead of drawing new ones (``len(prompts) == N``).
        symmetric: draw prompts in pairs with IO and S swapped (N must be even).
        prefixes: texts to draw a prefix from, as the reference does.
        nb_templates: how many templates to use (default: all 15).
        prepend_bos: put ``<|endoftext|>`` before every prompt (positions shift by one).
        manual_word_idx: positions to use instead of computing them (flipped datasets keep the
            original positions).
        has_been_flipped: set by :meth:`gen_flipped_prompts`.
        seed: seeds Python's ``random`` and numpy's global RNG, as the reference does.
        device: where ``toks`` and ``word_idx`` live (default "cpu").

    Attributes:
        sentences, toks [N, max_len + prepend_bos] (right-padded with ``<|endoftext|>``, final IO
        included), word_idx (IO, IO-1, IO+1, S1, S1-1, S1+1, S2, end, starts, punct: LongTensor
        [N]; ``end`` is the position just before the final IO), io_tokenIDs, s_tokenIDs, groups
        (prompt indices per template), templates_by_prompt ("ABBA"/"BABA"), N, max_len,
        prepend_bos, seed, ioi_prompts.
    """

    def __init__(
        self,
        prompt_type="mixed",
        N: int = 500,
        tokenizer=None,
        prompts: Sequence[dict] | None = None,
        symmetric: bool = False,
        prefixes=None,
        nb_templates: int | None = None,
        prepend_bos: bool = False,
        manual_word_idx: dict | None = None,
        has_been_flipped: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        if not isinstance(N, (int, np.integer)) or isinstance(N, bool) or N < 1:
            raise ValueError(f"N must be a positive integer (the number of prompts), got {N!r}.")
        N = int(N)
        if isinstance(prompt_type, str) and prompt_type not in PROMPT_TYPES:
            raise ValueError(
                f"unknown prompt_type {prompt_type!r}: use one of {', '.join(PROMPT_TYPES)}, "
                "or a list of templates."
            )
        if not isinstance(prompt_type, (str, list)):
            raise ValueError(f"prompt_type must be a string or a list of templates, got {type(prompt_type).__name__}.")
        if symmetric and prompt_type == "ABC":
            raise ValueError("symmetric=True makes no sense for ABC prompts (no name repeats).")
        if prompts is None and symmetric and N % 2:
            raise ValueError(f"symmetric=True draws prompts in pairs: N must be even, got {N}.")
        if prompts is not None and len(prompts) != N:
            raise ValueError(f"N={N} but {len(prompts)} prompts were given.")

        self.seed = seed
        random.seed(seed)
        np.random.seed(seed)
        self.has_been_flipped = has_been_flipped
        self.prompt_type = prompt_type
        self.prefixes = prefixes
        self.symmetric = symmetric
        self.nb_templates = nb_templates
        nb = len(BABA_TEMPLATES) if nb_templates is None else nb_templates

        if prompt_type == "ABBA":
            self.templates = ABBA_TEMPLATES[:nb].copy()
        elif prompt_type == "BABA":
            self.templates = BABA_TEMPLATES[:nb].copy()
        elif prompt_type == "mixed":
            self.templates = BABA_TEMPLATES[: nb // 2].copy() + ABBA_TEMPLATES[: nb // 2].copy()
            random.shuffle(self.templates)
        elif prompt_type == "ABC":
            self.templates = ABC_TEMPLATES[:nb].copy()
        elif prompt_type == "BAC":
            self.templates = BAC_TEMPLATES[:nb].copy()
        elif prompt_type == "ABC mixed":
            self.templates = ABC_TEMPLATES[: nb // 2].copy() + BAC_TEMPLATES[: nb // 2].copy()
            random.shuffle(self.templates)
        else:
            self.templates = list(prompt_type)
        if not self.templates:
            raise ValueError(f"no templates to draw from (prompt_type={prompt_type!r}, nb_templates={nb_templates}).")

        if tokenizer is None:
            from .tokenizer import load_tokenizer

            tokenizer = load_tokenizer()
        self.tokenizer = tokenizer

        if prompts is None:
            prompts = gen_prompt_uniform(
                self.templates,
                NAMES,
                nouns_dict={"[PLACE]": PLACES, "[OBJECT]": OBJECTS},
                N=N,
                symmetric=symmetric,
                prefixes=prefixes,
                # the reference only fills [C] for the named ABC types; a template list with [C] needs it too
                abc=prompt_type in ("ABC", "ABC mixed", "BAC") or any("[C]" in t for t in self.templates),
            )
        self.ioi_prompts = [dict(p) for p in prompts]
        self.N = N

        ids = np.array([p["TEMPLATE_IDX"] for p in self.ioi_prompts])
        self.groups = [np.where(ids == i)[0] for i in sorted(set(ids.tolist()))]
        self.sentences = [p["text"] for p in self.ioi_prompts]
        self.templates_by_prompt = [_word_order(p["text"], p["IO"], p["S"]) for p in self.ioi_prompts]

        self.prepend_bos = prepend_bos
        self.io_tokenIDs = [self._name_id(p["IO"]) for p in self.ioi_prompts]
        self.s_tokenIDs = [self._name_id(p["S"]) for p in self.ioi_prompts]

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        bos = [tokenizer.bos_token_id] if prepend_bos else []
        rows = [bos + encode_plain(tokenizer, s) for s in self.sentences]
        self.max_len = max(len(r) for r in rows) - len(bos)
        width = max(len(r) for r in rows)
        self.toks = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        self._lengths = [len(r) for r in rows]

        if manual_word_idx is not None:
            self.word_idx = {k: v.clone() for k, v in manual_word_idx.items()}
        else:
            self.word_idx = self._compute_word_idx(rows)

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.to(self.device)

    # ------------------------------------------------------------------ helpers
    def _name_id(self, name: str) -> int:
        ids = encode_plain(self.tokenizer, " " + name)
        if len(ids) != 1:
            raise ValueError(
                f"the tokenizer splits the name {name!r} into {len(ids)} tokens {ids}; IOI needs "
                "single-token names. Use the GPT-2 tokenizer (ioi_anomalies.load_tokenizer() or "
                "model.tokenizer of a GPT-2 model)."
            )
        return ids[0]

    def _compute_word_idx(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        off = int(self.prepend_bos)
        io_idx, s1_idx, s2_idx, end_idx, punct_idx = [], [], [], [], []
        comma = encode_plain(self.tokenizer, ",")
        period = encode_plain(self.tokenizer, ".")
        for i, p in enumerate(self.ioi_prompts):
            # positions among the tokens of the prompt without its last word (the final IO)
            head = encode_plain(self.tokenizer, " ".join(p["text"].split(" ")[:-1]))
            io_id, s_id = self.io_tokenIDs[i], self.s_tokenIDs[i]
            if io_id not in head or s_id not in head:
                raise ValueError(f"prompt {i} ({p['text']!r}) does not contain IO {p['IO']!r} and S {p['S']!r} before its last word.")
            io_idx.append(head.index(io_id) + off)
            s1_idx.append(head.index(s_id) + off)
            s2_idx.append(len(head) - 1 - head[::-1].index(s_id) + off)
            end = len(rows[i]) - 2
            end_idx.append(end)
            full = encode_plain(self.tokenizer, p["text"])
            # the last "." if the prompt has one, else the last ","
            pos = None
            for mark in (comma, period):
                if len(mark) == 1 and mark[0] in full:
                    pos = len(full) - 1 - full[::-1].index(mark[0])
            if pos is None:
                raise ValueError(f"prompt {i} ({p['text']!r}) has no ',' or '.' to mark as punct.")
            punct_idx.append(pos + off)
            if not self.has_been_flipped and rows[i][end + 1] != io_id:
                raise ValueError(
                    f"prompt {i} ({p['text']!r}) does not end with its IO {p['IO']!r}: the "
                    "token after 'end' must be the indirect object."
                )
        io_t, s1_t = torch.tensor(io_idx), torch.tensor(s1_idx)
        end_t = torch.tensor(end_idx)
        return {
            "IO": io_t,
            "IO-1": io_t - 1,
            "IO+1": io_t + 1,
            "S1": s1_t,
            "S1-1": s1_t - 1,
            "S1+1": s1_t + 1,
            "S2": torch.tensor(s2_idx),
            "end": end_t,
            "starts": torch.zeros_like(end_t),
            "punct": torch.tensor(punct_idx),
        }

    # ------------------------------------------------------------------ API
    def gen_flipped_prompts(self, flip: str) -> "IOIDataset":
        """A dataset whose first three names are rewritten as ``flip`` says; positions kept.

        ``flip`` is "<ABBA rule>, <BABA rule>", e.g. "ABB->CDD, BAB->DCD". The RNG seed is
        ``seed + sum(ord(c) for c in flip)`` so each flip draws its own fresh names.
        """
        parse_flip(flip)
        if self.has_been_flipped:
            warnings.warn(
                "This dataset has already been flipped; apply flips in one step from the original.",
                stacklevel=2,
            )
        seed = self.seed + sum(map(ord, flip))
        flipped = gen_flipped_prompts(self.ioi_prompts, self.templates_by_prompt, flip, NAMES, seed)
        return IOIDataset(
            prompt_type=self.prompt_type,
            N=self.N,
            tokenizer=self.tokenizer,
            prompts=flipped,
            prefixes=self.prefixes,
            nb_templates=self.nb_templates,
            prepend_bos=self.prepend_bos,
            manual_word_idx=self.word_idx,
            has_been_flipped=True,
            seed=self.seed,
            device=self.device,
        )

    def to(self, device) -> "IOIDataset":
        self.device = torch.device(device)
        self.toks = self.toks.to(self.device)
        self.word_idx = {k: v.to(self.device) for k, v in self.word_idx.items()}
        return self

    def copy(self) -> "IOIDataset":
        return IOIDataset(
            prompt_type=self.prompt_type,
            N=self.N,
            tokenizer=self.tokenizer,
            prompts=_copy.deepcopy(self.ioi_prompts),
            prefixes=self.prefixes,
            nb_templates=self.nb_templates,
            prepend_bos=self.prepend_bos,
            manual_word_idx=self.word_idx if self.has_been_flipped else None,
            has_been_flipped=self.has_been_flipped,
            seed=self.seed,
            device=self.device,
        )

    def __getitem__(self, key) -> "IOIDataset":
        if isinstance(key, (int, np.integer)):
            key = slice(key, key + 1 if key != -1 else None)
        picked = self.ioi_prompts[key]
        index = list(range(self.N))[key]
        return IOIDataset(
            prompt_type=self.prompt_type,
            N=len(picked),
            tokenizer=self.tokenizer,
            prompts=picked,
            prefixes=self.prefixes,
            nb_templates=self.nb_templates,
            prepend_bos=self.prepend_bos,
            manual_word_idx={k: v[index] for k, v in self.word_idx.items()},
            has_been_flipped=self.has_been_flipped,
            seed=self.seed,
            device=self.device,
        )

    def __len__(self) -> int:
        return self.N

    def __repr__(self) -> str:
        return f"IOIDataset(prompt_type={self.prompt_type!r}, N={self.N}, seed={self.seed}, prepend_bos={self.prepend_bos})"
