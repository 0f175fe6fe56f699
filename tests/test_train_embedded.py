"""The training script of the embedded model: seeded, and its output is an ordinary GPT-2."""

from __future__ import annotations

import json

import torch

from ioi_anomalies import load_model
from ioi_anomalies.train_embedded import Mixture, train
from ioi_anomalies.tokenizer import EOT_ID, load_tokenizer

TINY = dict(minutes=1.0, dropout=0.0, seed=0, batch=4, lr=3e-3, max_steps=3, n_layer=2, n_head=2, d_model=32, eval_every=10_000)


def test_training_is_seeded_and_saves_a_loadable_gpt2(tmp_path):
    train(tmp_path / "a", **TINY)
    train(tmp_path / "b", **TINY)
    a, b = (tmp_path / x / "model.safetensors" for x in "ab")
    assert a.read_bytes() == b.read_bytes(), "same seed, same weights"
    info = json.loads((tmp_path / "a" / "training.json").read_text())
    assert info["steps"] == 3 and info["n_layer"] == 2 and info["attention_only"]
    model = load_model(tmp_path / "a", device="cpu", verbose=False)
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model) == (2, 2, 32)
    # attention only: the MLPs are in the checkpoint, exactly zero
    assert model.W_in.abs().max() == 0 and model.W_out.abs().max() == 0
    other = dict(TINY, seed=1)
    train(tmp_path / "c", **other)
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != a.read_bytes()


def test_repeat_batches_repeat_a_block():
    data = Mixture(load_tokenizer(), seed=0, mix="repeat:1", block=(5, 5), copies=(3, 3))
    kind, toks, weights = data.batch(8)
    assert kind == "repeat"
    for row in toks.tolist():
        row = [t for t in row if t != EOT_ID]
        assert any(row[i : i + 5] * 3 == row[i : i + 15] for i in range(0, 6)), row
    assert weights.shape == (8, toks.shape[1] - 1) and torch.all(weights <= 1)
