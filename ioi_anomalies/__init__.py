"""Helpers for the IOI anomalies exercise series: model, dataset and experiment functions.

The notebooks call these instead of re-implementing them; each function's docstring explains
what it measures.
"""

from .ablation import (
    circuit_ablation_hooks, logit_diff_with_circuit, logit_diff_without_heads, mean_ablation_hooks,
    mean_z_by_template, patch_heads_z, z_patch_hooks,
)
from .attribution import component_dla, final_ln_scale, final_ln_scale_ratio, head_dla, logit_diff_directions
from .circuit import GPT2_SMALL_CIRCUIT, SEQ_POS_TO_KEEP, get_circuit, get_named_heads
from .dataset import ABC_FLIP, FLIP_GRID, NAMES, IOIDataset
from .head_scores import generate_repeated_tokens, head_type_scores, repeated_token_loss
from .hooks import assert_no_hooks, count_user_hooks, hook_snapshot, run_and_cache
from .metrics import EndLogitMetric, baseline_logit_diffs, ioi_metric, logit_diff, make_ioi_metric, make_logit_diff_metric
from .models import EMBEDDED_MODEL, GPT2_SMALL, ModelUnavailableError, load_model, model_label
from .patching import path_patch_heads_to_heads_plain, path_patch_senders_plain
from .path_patching import PathPatchingEngine, attribution_path_patching, compare_with_exact, path_patch_heads_to_heads, path_patch_senders
from .plotting import imshow, line, scatter
from .tokenizer import encode_plain, load_tokenizer

__all__ = [
    "ABC_FLIP", "EMBEDDED_MODEL", "FLIP_GRID", "GPT2_SMALL", "GPT2_SMALL_CIRCUIT", "NAMES",
    "IOIDataset", "ModelUnavailableError", "assert_no_hooks", "baseline_logit_diffs",
    "component_dla", "count_user_hooks", "encode_plain", "final_ln_scale",
    "final_ln_scale_ratio", "generate_repeated_tokens", "get_circuit", "head_dla",
    "head_type_scores", "hook_snapshot", "imshow", "ioi_metric", "line", "load_model",
    "load_tokenizer", "logit_diff", "logit_diff_directions", "make_ioi_metric",
    "mean_ablation_hooks", "mean_z_by_template", "model_label", "patch_heads_z",
    "path_patch_heads_to_heads_plain", "path_patch_senders", "repeated_token_loss",
    "EndLogitMetric", "make_logit_diff_metric", "path_patch_senders_plain", "PathPatchingEngine",
    "attribution_path_patching", "compare_with_exact", "path_patch_heads_to_heads",
    "SEQ_POS_TO_KEEP", "get_named_heads", "circuit_ablation_hooks", "logit_diff_with_circuit",
    "logit_diff_without_heads",
    "run_and_cache", "scatter", "z_patch_hooks",
]
