"""The IOI circuit: which heads play which role, per model.

GPT-2 small's circuit is the one found by Wang et al. (2022). Other models carry their own
(the embedded model's is measured by ``python -m tools.model_card`` with this package's
helpers and stored next to its weights as ``circuit.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .models import EMBEDDED_MODEL, GPT2_SMALL, embedded_model_dir, model_label

Head = tuple[int, int]

GPT2_SMALL_CIRCUIT: dict[str, list[Head]] = {
    "name mover": [(9, 9), (10, 0), (9, 6)],
    "backup name mover": [(10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)],
    "negative name mover": [(10, 7), (11, 10)],
    "s2 inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)],
    "induction": [(5, 5), (5, 8), (5, 9), (6, 9)],
    "duplicate token": [(0, 1), (0, 10), (3, 0)],
    "previous token": [(2, 2), (4, 11)],
}

#: Where each class acts, for the faithfulness test (positions a class keeps when the rest of
#: the model is mean-ablated).
SEQ_POS_TO_KEEP: dict[str, str] = {
    "name mover": "end",
    "backup name mover": "end",
    "negative name mover": "end",
    "s2 inhibition": "end",
    "induction": "S2",
    "duplicate token": "S2",
    "previous token": "S1+1",
}

#: Heads the series talks about by role, for GPT-2 small (the reference story).
GPT2_SMALL_NAMED: dict[str, list[Head]] = {
    "fuzzy induction": [(5, 8), (5, 9)],
    "attention view": [(5, 5), (6, 9)],
}


def _load_circuit_json(path: Path, key: str = "circuit") -> dict[str, list[Head]]:
    raw = json.loads(path.read_text())
    return {k: [tuple(h) for h in v] for k, v in raw.get(key, {}).items()}


def _circuit_file(model_or_name) -> tuple[str, Path | None]:
    label = model_or_name if isinstance(model_or_name, str) else model_label(model_or_name)
    candidates = [Path(label) / "circuit.json"]
    if label in (EMBEDDED_MODEL, "embedded"):
        candidates.insert(0, embedded_model_dir() / "circuit.json")
    path = getattr(getattr(model_or_name, "tokenizer", None), "name_or_path", None)
    if path:
        candidates.append(Path(path) / "circuit.json")
    return label, next((c for c in candidates if c.exists()), None)


def get_circuit(model_or_name) -> dict[str, list[Head]]:
    """The circuit of a model (a bridge, a label like 'gpt2-small', or a model directory)."""
    label, path = _circuit_file(model_or_name)
    if label in (GPT2_SMALL, "gpt2"):
        return {k: list(v) for k, v in GPT2_SMALL_CIRCUIT.items()}
    if path is None:
        raise KeyError(
            f"no circuit is known for model {label!r}: GPT-2 small's is built in; other models need a "
            "circuit.json next to their weights (see `python -m tools.model_card`)."
        )
    return _load_circuit_json(path)


def get_named_heads(model_or_name) -> dict[str, list[Head]]:
    """Heads the series refers to by role beyond the circuit classes ('fuzzy induction',
    'attention view'): GPT-2 small's are 5.8/5.9 and 5.5/6.9; other models measure their own."""
    label, path = _circuit_file(model_or_name)
    if label in (GPT2_SMALL, "gpt2"):
        return {k: list(v) for k, v in GPT2_SMALL_NAMED.items()}
    if path is None:
        raise KeyError(f"no named heads are known for model {label!r}.")
    return _load_circuit_json(path, "named")
