"""The shipped model: loads offline through the bridge, does IOI, has induction heads."""

from __future__ import annotations

import json

import pytest
import torch

from ioi_anomalies import (
    EMBEDDED_MODEL,
    IOIDataset,
    generate_repeated_tokens,
    get_circuit,
    head_type_scores,
    load_model,
    logit_diff,
    repeated_token_loss,
)
from ioi_anomalies.models import embedded_model_dir


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded", device="cpu", verbose=False)


def test_packaged_files_and_size():
    d = embedded_model_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "circuit.json", "MODEL_CARD.md"):
        assert (d / name).exists(), name
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size <= 30 * 2**20, f"{size / 2**20:.1f} MB"


def test_loads_as_a_bridge_by_both_names(embedded):
    from transformer_lens.model_bridge import TransformerBridge

    assert isinstance(embedded, TransformerBridge) and embedded.compatibility_mode
    assert embedded.model_label == EMBEDDED_MODEL
    again = load_model(EMBEDDED_MODEL, device="cpu", verbose=False)
    torch.testing.assert_close(again.W_U, embedded.W_U)


def test_does_ioi_on_fresh_prompts(embedded):
    ioi = IOIDataset("mixed", N=80, tokenizer=embedded.tokenizer, seed=777)
    diffs = logit_diff(embedded(ioi.toks), ioi, per_prompt=True)
    assert diffs.mean() >= 2.0, diffs.mean()
    assert (diffs > 0).float().mean() >= 0.95


def test_predicts_repeated_tokens_better_the_second_time(embedded):
    toks = generate_repeated_tokens(embedded.cfg.d_vocab, 20, 8, seed=5)
    first, second = repeated_token_loss(embedded, toks)
    assert second < 0.9 * first, (first, second)


def test_has_an_induction_head(embedded):
    toks = generate_repeated_tokens(embedded.cfg.d_vocab, 20, 8, seed=5)
    scores = head_type_scores(embedded, toks)
    assert scores["induction"].max() >= 0.5
    # K-composition needs an earlier layer: no layer-0 head can do induction
    assert scores["induction"][0].max() < 0.2
    first, second = repeated_token_loss(embedded, toks)
    assert second < 0.5 * first, (first, second)


def test_circuit_is_complete_and_consistent(embedded):
    circuit = get_circuit(embedded)
    for role in ("name mover", "s2 inhibition", "induction", "duplicate token", "previous token"):
        assert circuit[role], role
    heads = [h for hs in circuit.values() for h in hs]
    assert len(heads) == len(set(heads)), "a head has one role"
    for l, h in heads:
        assert 0 <= l < embedded.cfg.n_layers and 0 <= h < embedded.cfg.n_heads
    raw = json.loads((embedded_model_dir() / "circuit.json").read_text())
    assert raw["model"] == EMBEDDED_MODEL
