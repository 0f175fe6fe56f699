"""Shared fixtures: a small random GPT-2 saved as a Hugging Face directory and booted through the
same loader path as GPT-2 small (the embedded trained model has its own tests)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ioi_anomalies import ABC_FLIP, IOIDataset, load_model
from ioi_anomalies.tokenizer import save_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=128, n_inner=128)
    model = GPT2LMHeadModel(cfg)
    # a larger init than GPT-2's makes attention patterns and effects far from uniform/zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "wte" not in name and "wpe" not in name:
                p.mul_(8.0)
            elif "ln" in name:  # non-trivial LayerNorm weights, so folding them matters
                p.add_(0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu", verbose=False)


@pytest.fixture()
def model(tiny_model):
    """The tiny model, checked free of hooks before and after each test."""
    tiny_model.reset_hooks()
    yield tiny_model
    from ioi_anomalies import count_user_hooks

    assert count_user_hooks(tiny_model) == 0, "a test left hooks on the shared model"
    tiny_model.reset_hooks()


@pytest.fixture(scope="session")
def ioi(tiny_model):
    return IOIDataset("mixed", N=12, tokenizer=tiny_model.tokenizer, seed=3)


@pytest.fixture(scope="session")
def abc(ioi):
    return ioi.gen_flipped_prompts(ABC_FLIP)
