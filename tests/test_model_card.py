"""The model card's own ablation and patching helpers agree with the grader's references."""

from __future__ import annotations

import pytest
import torch

from grader.references import nb02, nb03
from ioi_anomalies import head_dla, logit_diff, mean_z_by_template
from tools.model_card import _end_ablation_hooks, _ln_scale_ratio, _patched_logits, dla_after_ablation


def test_ablation_helpers_match_the_references(model, ioi, abc):
    means = mean_z_by_template(model, abc)
    hooks = _end_ablation_hooks([(2, 1)], means, ioi.word_idx["end"])
    assert _ln_scale_ratio(model, ioi, hooks) == pytest.approx(nb02.final_ln_scale_ratio(model, ioi, means, (2, 1)), abs=1e-6)
    dla, ld = dla_after_ablation(model, ioi, [(2, 1)], means)
    ref_dla, _, ref_ld = nb02.dla_before_after(model, ioi, means, (2, 1))
    torch.testing.assert_close(dla, ref_dla)
    assert ld == pytest.approx(ref_ld, abs=1e-6)
    assert not torch.allclose(dla, head_dla(model, ioi))


def test_patched_logits_match_the_reference(model, ioi, abc):
    heads = [(1, 0), (1, 2), (2, 3)]
    got = logit_diff(_patched_logits(model, ioi, abc, heads), ioi).item()
    assert got == pytest.approx(nb03.patched_logit_diff(model, ioi, abc, heads), abs=1e-5)
