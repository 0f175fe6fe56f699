"""What makes grading cheaper keeps grades the same: the references' cache, the pool of hidden seeds,
and the declared protocol by which project objects cross between the judge and the worker."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from grader import hidden, refcache
from ioi_anomalies import grading


@pytest.fixture
def cache(tmp_path):
    refcache.configure(tmp_path / "refs", "source-digest")
    yield tmp_path / "refs"
    refcache.configure(None)
    hidden.use_submission(b"")


calls = []


@refcache.cached
def slow_double(x, metric=None):
    calls.append(1)
    return {"twice": 2 * x, "pair": (1, 2.5)}


def test_a_reference_is_computed_once_per_key_and_read_back_the_same(cache):
    calls.clear()
    x = torch.arange(4.0)
    first = slow_double(x)
    again = slow_double(x.clone())
    assert len(calls) == 1 and refcache.stats["hits"] == 1 and refcache.stats["misses"] == 1
    assert torch.equal(again["twice"], first["twice"]) and again["pair"] == (1, 2.5)
    slow_double(x + 1)  # other arguments: another key
    hidden.use_submission(b"another seed")  # another hidden seed: another key
    slow_double(x)
    assert len(calls) == 3


def test_the_cache_is_private_and_a_corrupt_entry_is_recomputed_not_trusted(cache):
    calls.clear()
    x = torch.ones(3)
    slow_double(x)
    (entry,) = [p for p in cache.rglob("*") if p.is_file()]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o700 for d in (cache, entry.parent))
    raw = entry.read_bytes()
    entry.write_bytes(raw[:40] + bytes([raw[40] ^ 1]) + raw[41:])  # one bit flipped
    assert torch.equal(slow_double(x)["twice"], 2 * x) and len(calls) == 2 and refcache.stats["corrupt"] == 1
    entry.write_bytes(b"garbage")
    assert torch.equal(slow_double(x)["twice"], 2 * x) and len(calls) == 3
    assert not [p for p in cache.rglob(".tmp-*")], "no temporary file is left behind"


def test_what_cannot_be_digested_is_computed_every_time(cache):
    calls.clear()

    class Opaque:  # e.g. a function from the student's notebook
        pass

    slow_double(torch.ones(1), metric=Opaque())
    slow_double(torch.ones(1), metric=Opaque())
    assert len(calls) == 2 and refcache.stats["uncached"] == 2 and not list(cache.rglob("*"))


def test_off_outside_the_judge():
    calls.clear()
    refcache.configure(None)
    slow_double(torch.ones(1))
    slow_double(torch.ones(1))
    assert len(calls) == 2


def test_closures_are_digested_by_what_they_hold():
    def make(v):
        return lambda t: t * v

    assert refcache._digest(make(torch.ones(2))) == refcache._digest(make(torch.ones(2)))
    assert refcache._digest(make(torch.ones(2))) != refcache._digest(make(torch.zeros(2)))
    ns: dict = {"__name__": "__main__"}  # a function defined in a notebook reads globals the digest cannot see
    exec("scale = 2\ndef metric(t):\n    return t * scale", ns)
    with pytest.raises(refcache.Uncacheable):
        refcache._digest(ns["metric"])


def test_hidden_keys_come_from_a_small_pool_per_assignment():
    keys = {hidden.pooled(b"secret", "01", bytes([i]) * 32) for i in range(200)}
    assert len(keys) == hidden.POOL_SIZE
    assert hidden.pooled(b"secret", "01", b"k") == hidden.pooled(b"secret", "01", b"k")
    assert hidden.pooled(b"secret", "02", b"k") != hidden.pooled(b"secret", "01", b"k")
    assert hidden.pooled(b"other", "01", b"k") != hidden.pooled(b"secret", "01", b"k")
    with pytest.raises(ValueError):
        hidden.pooled(b"secret", "01", b"k", size=0)


# ---- the declared protocol


def test_a_rebuilt_random_model_equals_the_original(tmp_path, monkeypatch):
    from ioi_anomalies import random_model
    from ioi_anomalies.models import random_model_dir

    m = random_model(n_layers=2, n_heads=2, d_model=16, seed=3)
    recipe = grading.recipe_of(m)
    assert recipe == ("random_model", {"n_layers": 2, "n_heads": 2, "d_model": 16, "seed": 3})
    files = grading.recipe_files(*recipe)
    assert "model.safetensors" in files and "config.json" in files
    toks = torch.randint(0, m.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("IOI_ANOMALIES_CACHE", str(tmp_path))  # as in another process, with an empty cache
    made = grading.rebuild(*recipe)
    assert torch.equal(m(toks), made(toks)), "made again from the recipe: the same logits"
    monkeypatch.setenv("IOI_ANOMALIES_CACHE", str(tmp_path / "other"))
    again = grading.rebuild(*recipe, files)
    assert (random_model_dir(**recipe[1]) / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert torch.equal(m(toks), again(toks)), "rebuilt from the files that travelled: the same logits"
    assert grading.recipe_of(torch.nn.Linear(2, 2)) is None


def test_only_declared_constructors_and_types_are_rebuilt():
    with pytest.raises(grading.NotRebuildable):
        grading.rebuild("load_model", {})
    with pytest.raises(grading.NotRebuildable):
        grading.rebuild("random_model", {"seed": [1]})
    with pytest.raises(grading.NotRebuildable):
        grading.rebuild("random_model", {"seed": 123456}, {"../escape": b"x"})
    with pytest.raises(grading.NotRebuildable):
        grading.data_type("os:system")
    with pytest.raises(grading.NotRebuildable):
        grading.from_state("ioi_anomalies.dataset:IOIDataset", {"not an identifier": 1})


def test_a_dataset_travels_as_its_fields():
    from ioi_anomalies import IOIDataset
    from ioi_anomalies.tokenizer import load_tokenizer

    ds = IOIDataset("mixed", N=3, tokenizer=load_tokenizer(), seed=2)
    assert grading.is_data(ds) and grading.parts(ds) == {"tokenizer": ds.tokenizer}
    copy = grading.from_state(grading.type_name(ds), grading.state_of(ds))
    assert type(copy) is IOIDataset and torch.equal(copy.toks, ds.toks) and copy.sentences == ds.sentences
    assert not grading.is_data(torch.ones(1)) and grading.parts([1]) == {} and grading.parts(3) == {}
