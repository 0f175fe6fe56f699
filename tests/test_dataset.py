"""IOIDataset: reference-compatible draws, correct positions, flips, and clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ioi_anomalies import ABC_FLIP, FLIP_GRID, IOIDataset, load_tokenizer
from ioi_anomalies.dataset import ABBA_TEMPLATES, ABC_TEMPLATES, BAC_TEMPLATES, BABA_TEMPLATES, NAMES, OBJECTS, PLACES


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


# --- an independent transcription of the reference draw order -------------------------------
def reference_sentences(prompt_type: str, N: int, seed: int) -> list[str]:
    random.seed(seed)
    np.random.seed(seed)
    nb = 15
    if prompt_type == "mixed":
        templates = BABA_TEMPLATES[: nb // 2] + ABBA_TEMPLATES[: nb // 2]
        random.shuffle(templates)
    elif prompt_type == "ABC mixed":
        templates = ABC_TEMPLATES[: nb // 2] + BAC_TEMPLATES[: nb // 2]
        random.shuffle(templates)
    else:
        templates = {"ABBA": ABBA_TEMPLATES, "BABA": BABA_TEMPLATES, "ABC": ABC_TEMPLATES, "BAC": BAC_TEMPLATES}[prompt_type][:nb]
    out = []
    for _ in range(N):
        t = random.choice(templates)
        names = ["", "", ""]
        while len(set(names)) < 3:
            names = [random.choice(NAMES) for _ in range(3)]
        place, obj = random.choice(PLACES), random.choice(OBJECTS)
        s = t.replace("[PLACE]", place).replace("[OBJECT]", obj)
        s = s.replace("[A]", names[0]).replace("[B]", names[1]).replace("[C]", names[2])
        out.append(s)
    return out


def test_documented_example(tok):
    ds = IOIDataset("mixed", N=25, tokenizer=tok, seed=1)
    assert ds.sentences[0] == "When Victoria and Jane got a snack at the store, Jane decided to give it to Victoria"
    flipped = ds.gen_flipped_prompts(ABC_FLIP)
    assert flipped.sentences[0] == "When Alan and Sullivan got a snack at the store, Adam decided to give it to Victoria"


@pytest.mark.parametrize("prompt_type", ["mixed", "ABBA", "BABA", "ABC", "BAC", "ABC mixed"])
@pytest.mark.parametrize("N,seed", [(1, 0), (25, 1), (60, 12345)])
def test_draws_match_reference(tok, prompt_type, N, seed):
    ds = IOIDataset(prompt_type, N=N, tokenizer=tok, seed=seed)
    assert ds.sentences == reference_sentences(prompt_type, N, seed)


@pytest.mark.parametrize("prepend_bos", [False, True])
@pytest.mark.parametrize("prompt_type,seed", [("mixed", 1), ("ABBA", 5), ("BABA", 9), ("ABC", 2)])
def test_positions_point_at_the_right_tokens(tok, prompt_type, seed, prepend_bos):
    ds = IOIDataset(prompt_type, N=40, tokenizer=tok, seed=seed, prepend_bos=prepend_bos)
    rows = torch.arange(ds.N)
    io = torch.tensor(ds.io_tokenIDs)
    s = torch.tensor(ds.s_tokenIDs)
    w = ds.word_idx
    assert torch.equal(ds.toks[rows, w["IO"]], io)
    assert torch.equal(ds.toks[rows, w["S1"]], s)
    assert torch.equal(ds.toks[rows, w["S2"]], s)
    assert torch.equal(ds.toks[rows, w["end"] + 1], io), "the token after END must be the final IO"
    assert (w["S2"] > w["S1"]).all() and (w["end"] > w["S2"]).all()
    comma, period = tok.encode(","), tok.encode(".")
    assert all(int(ds.toks[i, w["punct"][i]]) in (comma[0], period[0]) for i in range(ds.N))
    if prepend_bos:
        assert (ds.toks[:, 0] == tok.bos_token_id).all()
        plain = IOIDataset(prompt_type, N=40, tokenizer=tok, seed=seed, prepend_bos=False)
        for k in ("IO", "S1", "S2", "end", "punct"):
            assert torch.equal(w[k], plain.word_idx[k] + 1), k
        assert torch.equal(ds.toks[:, 1:], plain.toks)
    # right padding with <|endoftext|> after the final IO
    for i in range(ds.N):
        assert (ds.toks[i, w["end"][i] + 2 :] == tok.eos_token_id).all()
    assert ds.max_len == max(len(tok.encode(x)) for x in ds.sentences)


def test_same_result_with_a_bos_prepending_tokenizer(tok, tiny_model):
    # a TransformerLens 4.3 bridge's tokenizer prepends BOS on encode
    assert tiny_model.tokenizer.encode(" Mary")[0] == tok.bos_token_id
    a = IOIDataset("mixed", N=25, tokenizer=tok, seed=1)
    b = IOIDataset("mixed", N=25, tokenizer=tiny_model.tokenizer, seed=1)
    assert a.sentences == b.sentences
    assert torch.equal(a.toks, b.toks)
    assert a.io_tokenIDs == b.io_tokenIDs and a.s_tokenIDs == b.s_tokenIDs
    assert tok.bos_token_id not in a.io_tokenIDs + a.s_tokenIDs
    for k in a.word_idx:
        assert torch.equal(a.word_idx[k], b.word_idx[k])


def _letters_to_names(sentence: str, n: int = 3) -> list[str]:
    return [w for w in sentence.split(" ") if w in NAMES][:n]


@pytest.mark.parametrize("cell,flip", [(k, v) for k, v in FLIP_GRID.items() if v] + [((9, 9), ABC_FLIP)])
def test_flips_follow_their_rule(tok, cell, flip):
    ds = IOIDataset("mixed", N=30, tokenizer=tok, seed=4)
    fl = ds.gen_flipped_prompts(flip)
    rules = {p.split("->")[0].strip(): p.split("->")[1].strip() for p in flip.split(",")}
    assert fl.has_been_flipped and fl.N == ds.N
    for k in ds.word_idx:
        assert torch.equal(fl.word_idx[k], ds.word_idx[k]), "a flipped dataset keeps the original positions"
    for i in range(ds.N):
        orig_pattern = "ABB" if ds.templates_by_prompt[i] == "ABBA" else "BAB"
        new_pattern = rules[orig_pattern]
        before = _letters_to_names(ds.sentences[i])
        after = _letters_to_names(fl.sentences[i])
        letter_name = dict(zip(orig_pattern, before))
        new_names = {}
        for letter, name in zip(new_pattern, after):
            if letter in letter_name:
                assert name == letter_name[letter], (flip, i)
            else:
                assert name not in before, "a new letter must get a name not in the prompt"
            assert new_names.setdefault(letter, name) == name, "one letter, one name"
        assert fl.sentences[i].split(" ")[-1] == ds.sentences[i].split(" ")[-1], "the final IO is kept"
        assert len(fl.toks[i]) == len(ds.toks[i])
    # the flip's own seed: the same flip twice gives the same names
    assert fl.sentences == ds.gen_flipped_prompts(flip).sentences


def test_flip_seed_depends_on_the_flip_string(tok):
    ds = IOIDataset("mixed", N=30, tokenizer=tok, seed=4)
    a = ds.gen_flipped_prompts("ABB->CDD, BAB->DCD").sentences
    b = ds.gen_flipped_prompts("ABB->CDD, BAB->DCD ").sentences  # a space changes the seed
    assert a != b


def test_copy_and_slices_keep_device_and_content(tok):
    ds = IOIDataset("mixed", N=10, tokenizer=tok, seed=2, device="meta")
    assert ds[2:5].toks.device.type == "meta"
    assert ds.copy().toks.device.type == "meta"
    cpu = IOIDataset("mixed", N=10, tokenizer=tok, seed=2)
    part = cpu[2:5]
    assert part.sentences == cpu.sentences[2:5]
    assert torch.equal(part.word_idx["end"], cpu.word_idx["end"][2:5])
    assert cpu.copy().sentences == cpu.sentences


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompt_type="AB"), "unknown prompt_type"),
        (dict(prompt_type="mixed", N=0), "positive integer"),
        (dict(prompt_type="mixed", N=-3), "positive integer"),
        (dict(prompt_type="mixed", N=3, symmetric=True), "even"),
    ],
)
def test_bad_arguments(tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        IOIDataset(tokenizer=tok, **kwargs)


@pytest.mark.parametrize("flip", ["ABB->CD, BAB->DCD", "ABB->CDD", "abb->cdd, bab->dcd", "ABB=>CDD, BAB=>DCD", 42])
def test_malformed_flip(tok, flip):
    ds = IOIDataset("mixed", N=4, tokenizer=tok, seed=0)
    with pytest.raises(ValueError, match="flip"):
        ds.gen_flipped_prompts(flip)


def test_multi_token_name_is_refused(tok):
    prompts = [{"text": "Then, Zyxwvuts and Mary went home. Zyxwvuts gave a drink to Mary", "IO": "Mary", "S": "Zyxwvuts", "TEMPLATE_IDX": 0}]
    with pytest.raises(ValueError, match="single-token"):
        IOIDataset("mixed", N=1, tokenizer=tok, prompts=prompts)


def test_template_lists_with_a_third_name_get_it_filled(tok):
    from ioi_anomalies.dataset import ABC_TEMPLATES

    ds = IOIDataset(list(ABC_TEMPLATES), N=10, tokenizer=tok, seed=0)
    assert not any("[C]" in s for s in ds.sentences)
    assert ds.sentences == IOIDataset("ABC", N=10, tokenizer=tok, seed=0).sentences
