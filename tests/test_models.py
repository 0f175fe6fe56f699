import time

import pytest

from ioi_anomalies import EMBEDDED_MODEL, ModelUnavailableError, count_user_hooks, load_model
from ioi_anomalies.models import resolve_model_source


def test_local_directory_boots_as_a_compatibility_mode_bridge(tiny_model_dir):
    from transformer_lens.model_bridge import TransformerBridge

    model = load_model(tiny_model_dir, device="cpu", verbose=False)
    assert isinstance(model, TransformerBridge)
    assert model.compatibility_mode
    assert not model.training
    assert count_user_hooks(model) == 0
    # fold_ln: the final LayerNorm has no weight left to apply; centring: W_U columns sum to 0
    assert model.W_U.mean(0).abs().max() < 1e-5
    assert model.W_O.mean(-1).abs().max() < 1e-5
    assert model.cfg.n_layers == 3 and model.cfg.n_heads == 4


def test_gpt2_small_offline_fails_fast_with_the_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ModelUnavailableError, match=EMBEDDED_MODEL):
        load_model("gpt2-small")
    assert time.time() - t0 < 10


def test_auto_choice_falls_back_to_embedded_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("IOI_ANOMALIES_MODEL", raising=False)
    label, source = resolve_model_source(None)
    assert label == EMBEDDED_MODEL


def test_unknown_names_and_bad_dirs(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        load_model("gpt5-giant")
    with pytest.raises(ModelUnavailableError, match="config.json"):
        load_model(tmp_path)


def test_environment_variable_picks_the_model(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("IOI_ANOMALIES_MODEL", str(tiny_model_dir))
    label, source = resolve_model_source(None)
    assert source == str(tiny_model_dir)


def test_prompts_for_scales_with_the_models_size_and_device():
    from types import SimpleNamespace

    from ioi_anomalies import model_parameters, prompts_for

    def fake(n_layers, d_model, device="cpu", d_vocab=50257):
        return SimpleNamespace(cfg=SimpleNamespace(n_layers=n_layers, d_model=d_model, d_mlp=4 * d_model, d_vocab=d_vocab, device=device))

    gpt2, mini = fake(12, 768), fake(4, 128)
    assert 120e6 < model_parameters(gpt2) < 130e6 and 5e6 < model_parameters(mini) < 10e6
    assert prompts_for(mini) == 25 and prompts_for(gpt2) == 8
    assert prompts_for(fake(12, 768, device="cuda:0")) == 25  # a GPU makes the reference size cheap again
    assert prompts_for(fake(12, 768, device=None)) == 8
    attn_only = fake(4, 128)
    attn_only.cfg.attn_only = True  # no MLP weights to multiply by
    assert model_parameters(mini) - model_parameters(attn_only) == 4 * 2 * 128 * 512


def test_prompts_for_a_small_model_is_the_reference_size(model):
    from ioi_anomalies import prompts_for

    assert prompts_for(model) == 25
