"""Helpers for the IOI anomalies exercise series: model, dataset and experiment functions.

The notebooks call these instead of re-implementing them; each function's docstring explains
what it measures.
"""

import importlib
from typing import TYPE_CHECKING

# Names resolve on first use (PEP 562), so `import ioi_anomalies.checks` does not pull in
# TransformerLens; `from ioi_anomalies import load_model` works as usual.
_EXPORTS = {
    **dict.fromkeys(['circuit_keep_masks', 'mean_z_by_template'], 'ablation'),
    **dict.fromkeys(['component_dla', 'final_ln_scale', 'head_dla', 'logit_diff_directions'], 'attribution'),
    **dict.fromkeys(['GPT2_SMALL_CIRCUIT', 'SEQ_POS_TO_KEEP', 'get_circuit', 'get_named_heads'], 'circuit'),
    **dict.fromkeys(['ABC_FLIP', 'FLIP_GRID', 'NAMES', 'IOIDataset'], 'dataset'),
    **dict.fromkeys(['generate_repeated_tokens', 'head_type_scores', 'repeated_token_loss'], 'head_scores'),
    **dict.fromkeys(['assert_no_hooks', 'count_user_hooks', 'hook_snapshot', 'run_and_cache'], 'hooks'),
    **dict.fromkeys(['EndLogitMetric', 'baseline_logit_diffs', 'ioi_metric', 'logit_diff', 'make_ioi_metric', 'make_logit_diff_metric'], 'metrics'),
    **dict.fromkeys(['EMBEDDED_MODEL', 'GPT2_SMALL', 'ModelUnavailableError', 'load_model', 'model_label', 'model_parameters', 'prompts_for', 'random_model'], 'models'),
    **dict.fromkeys(['PathPatchingEngine', 'attribution_path_patching', 'compare_with_exact', 'path_patch_heads_to_heads', 'path_patch_senders'], 'path_patching'),
    **dict.fromkeys(['imshow', 'line', 'scatter'], 'plotting'),
    **dict.fromkeys(['encode_plain', 'load_tokenizer'], 'tokenizer'),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'ioi_anomalies' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for editors and type checkers
    from .ablation import circuit_keep_masks, mean_z_by_template
    from .attribution import component_dla, final_ln_scale, head_dla, logit_diff_directions
    from .circuit import GPT2_SMALL_CIRCUIT, SEQ_POS_TO_KEEP, get_circuit, get_named_heads
    from .dataset import ABC_FLIP, FLIP_GRID, NAMES, IOIDataset
    from .head_scores import generate_repeated_tokens, head_type_scores, repeated_token_loss
    from .hooks import assert_no_hooks, count_user_hooks, hook_snapshot, run_and_cache
    from .metrics import EndLogitMetric, baseline_logit_diffs, ioi_metric, logit_diff, make_ioi_metric, make_logit_diff_metric
    from .models import EMBEDDED_MODEL, GPT2_SMALL, ModelUnavailableError, load_model, model_label, model_parameters, prompts_for, random_model
    from .path_patching import PathPatchingEngine, attribution_path_patching, compare_with_exact, path_patch_heads_to_heads, path_patch_senders
    from .plotting import imshow, line, scatter
    from .tokenizer import encode_plain, load_tokenizer
