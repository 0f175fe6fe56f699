"""The exercise series: release reproduces notebooks/, sources are clean, grading behaves.

Autograding runs the project's grader on the embedded model: the solution earns full marks and the
untouched student notebook earns 0 on every autograded cell; a prepared wrong submission loses
exactly the points of its wrong answers (checked on the session's in-process run of the solution).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from grader.course import ROOT, release_into

ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())

# Per assignment: edits that make a submission wrong in known places, and the grade ids they fail.
WRONG = {
    "01_early_induction_heads": (
        [
            ("block = pattern[:, :, seq_len : 2 * seq_len, 1 : seq_len + 1]",
             "block = pattern[:, :, seq_len : 2 * seq_len, :seq_len]"),
            ("order = results.flatten().argsort()[:k].tolist()", "order = results.flatten().argsort(descending=True)[:k].tolist()"),
        ],
        {"test_induction_score", "test_strongest_senders"},
    ),
    "02_backup_name_movers": (
        [
            ("return (clean_scale / ablated_scale).mean().item()", "return (ablated_scale / clean_scale).mean().item()"),
            ("f_m = logit_diff(model(dataset.toks), dataset).item()\n    return f_c, f_m", "f_m = logit_diff(model(dataset.toks), dataset).item()\n    return f_m, f_c"),
        ],
        {"test_ln_ratio", "test_faithfulness"},
    ),
    "03_positional_vs_token_signal": (
        [
            ('col = 0 if (s2 == flipped.toks[rows, w["S1"]]).all() else 1', 'col = 1 if (s2 == flipped.toks[rows, w["S1"]]).all() else 0'),
            ("return coef[1].item(), coef[2].item()", "return coef[2].item(), coef[1].item()"),
        ],
        {"test_classify_signals", "test_coefficients"},
    ),
}


@pytest.fixture(scope="module", autouse=True)
def project_kernel():
    """The notebooks name the kernel 'ioi-anomalies' (`make setup` installs it); make sure it exists."""
    import subprocess
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    if "ioi-anomalies" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "ioi-anomalies",
                        "--display-name", "Python (ioi-anomalies)"], check=True, capture_output=True)


def _nb(path: Path):
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_sources_carry_no_outputs_and_stable_metadata(assignment):
    nb = _nb(ROOT / "solutions" / assignment / f"{assignment}.ipynb")
    ids = set()
    for cell in nb.cells:
        assert cell.get("outputs", []) == [], f"cell {cell.id} has outputs"
        assert cell.get("execution_count") is None, f"cell {cell.id} has an execution count"
        assert cell.id not in ids
        ids.add(cell.id)
    assert nb.metadata["kernelspec"]["name"] == "ioi-anomalies"
    grade_ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(grade_ids) == len(set(grade_ids)), "duplicate grade ids"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_reproduces_the_committed_notebooks(assignment, tmp_path):
    released = release_into(tmp_path, assignment)
    committed = ROOT / "notebooks" / assignment
    names = sorted(p.name for p in released.iterdir())
    assert names == sorted(p.name for p in committed.iterdir()), "run `make release`"
    for name in names:
        assert (released / name).read_bytes() == (committed / name).read_bytes(), f"{name} is stale: run `make release`"
    student = _nb(committed / f"{assignment}.ipynb")
    text = json.dumps(student.cells)
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text


UNGRADED = {"04_further_directions"}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_graded_exercise_has_points(assignment):
    nb = _nb(ROOT / "solutions" / assignment / f"{assignment}.ipynb")
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    if assignment in UNGRADED:
        assert not graded, "the further directions are ungraded"
    else:
        assert graded and all(c.metadata["nbgrader"]["points"] > 0 for c in graded)


def test_every_graded_assignment_has_a_wrong_submission_test():
    assert set(WRONG) == set(ASSIGNMENTS) - UNGRADED


def _wrong_cells(run, assignment: str) -> dict[str, str]:
    """The answer cells of WRONG[assignment]'s submission, by grade id (each edit's target found once)."""
    cells: dict[str, str] = {}
    for old, new in WRONG[assignment][0]:
        hits = [g for g in run.order if old in cells.get(g, run.source[g])]
        assert len(hits) == 1, f"edit target not found once: {old!r}"
        cells[hits[0]] = cells.get(hits[0], run.source[hits[0]]).replace(old, new)
    return cells


@pytest.mark.slow
@pytest.mark.parametrize("assignment", sorted(WRONG))
def test_a_wrong_submission_loses_exactly_the_points_of_its_wrong_answers(assignment, solution_run):
    """Partial credit on the real notebooks: the wrong answers fail their own tests and no other, run
    as the judge runs them (answer cells in the student's namespace, visible and hidden tests)
    on the session's execution of the solution. The sandboxed grader's partial scores are checked
    end to end on notebook 01 (test_grader's demo test)."""
    from tests.mutation import Mutant

    run = solution_run(assignment)
    failing = WRONG[assignment][1]
    assert failing < set(run.test_ids), "the wrong answers fail some tests, not all"
    passing = run.survivors(Mutant(f"{assignment}: wrong", _wrong_cells(run, assignment), run.test_ids))
    assert set(passing) == set(run.test_ids) - failing, {"fail but should pass": sorted(set(run.test_ids) - failing - set(passing)),
                                                          "pass but should fail": sorted(failing & set(passing))}


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("bwrap") is None, reason="bubblewrap is not installed (`make setup` installs it)")
@pytest.mark.parametrize("assignment", sorted(set(WRONG) - {"01_early_induction_heads"}))  # 01: test_grader's demo test
def test_autograding_full_and_zero(assignment, tmp_path, series_judge):
    """The project's grader (sandboxed, tests judged outside the student's process) on the real notebooks:
    the solution earns full marks, the untouched student notebook 0 on every test."""
    from grader.autograde import autograde as grade_class
    from grader.config import Config

    solution = ROOT / "solutions" / assignment / f"{assignment}.ipynb"
    cfg = Config(submitted=tmp_path / "submitted", results=tmp_path / "results", course=tmp_path / "course",
                 grades=tmp_path / "grades.csv", roster=tmp_path / "roster.csv", jobs=2)
    for student, nb in {"correct": _nb(solution), "untouched": _nb(ROOT / "notebooks" / assignment / f"{assignment}.ipynb")}.items():
        (cfg.submitted / student / assignment).mkdir(parents=True)
        nbformat.write(nb, cfg.submitted / student / assignment / f"{assignment}.ipynb")
    results = {r["student"]: r for r in grade_class(cfg, [assignment], progress=False, record=False)}
    tests = results["correct"]["tests"]
    assert tests and all(t["state"] == "passed" for t in tests.values()), {k: t["message"] for k, t in tests.items()}
    assert results["correct"]["status"] == results["untouched"]["status"] == "graded"
    assert set(results["untouched"]["tests"]) == set(tests)
    assert all(t["score"] == 0 for t in results["untouched"]["tests"].values()), results["untouched"]["tests"]
    assert results["correct"]["score"] == results["correct"]["max_score"] > 0
