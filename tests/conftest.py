"""Shared fixtures: a small random GPT-2 saved as a Hugging Face directory and booted through the
same loader path as GPT-2 small (the embedded trained model has its own tests)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from ioi_anomalies import ABC_FLIP, IOIDataset


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random 3-layer, 4-head GPT-2 (``random_model``), built in this session's own cache."""
    os.environ["IOI_ANOMALIES_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from ioi_anomalies import random_model

    return random_model(n_layers=3, n_heads=4, d_model=64, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model):
    return Path(tiny_model.tokenizer.name_or_path)


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


def pytest_terminal_summary(terminalreporter):
    """The mutation score of tests/test_mutation.py: wrong answers caught / tried, per notebook."""
    try:
        from tests.mutation import SCORES
    except ImportError:
        return
    for nb, (caught, tried) in sorted(SCORES.items()):
        terminalreporter.write_line(f"mutation score {nb}: {caught}/{tried} wrong answers caught")
