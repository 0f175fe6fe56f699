"""The grader's steps around nbgrader, without the sandbox: typed results, the verdict as nbgrader's
execute step, the feedback's view, the lined-up notebook, the one configuration and the manual import.

Each step is checked against nbgrader's own code where nbgrader reads what it produces
(``determine_grade``, ``DeduplicateIds``), and with a wrong input it must refuse.
"""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys

import nbformat
import pytest
from nbgrader.preprocessors import DeduplicateIds
from nbgrader.utils import determine_grade

from grader.autograde import store_result
from grader.config import ROOT, Config
from grader.intake import Source, lined_up_notebook, plan
from grader.preprocessors import hide_hidden_tests, verdict_outputs, write_verdicts
from grader.results import VERSION, ResultFormatError, Status, SubmissionResult, TestResult, TestState
from conftest import nbgrader_meta

TEST = ('check_close(double(X), 2 * X, "double of X")\n### BEGIN HIDDEN TESTS\nY = torch.randn(4)  # HIDDEN-INPUT\n'
        'check_close(double(Y), 2 * Y, "double of a random tensor")\n### END HIDDEN TESTS')


def _source_nb():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Doubling", id="c0"),
        nbformat.v4.new_code_cell("import torch\nX = torch.ones(3)", id="c1", metadata=nbgrader_meta("setup", locked=True)),
        nbformat.v4.new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", id="c2",
                                  metadata=nbgrader_meta("double", solution=True)),
        nbformat.v4.new_code_cell(TEST, id="c3", metadata=nbgrader_meta("test_double", grade=True, locked=True, points=2)),
        nbformat.v4.new_markdown_cell("Why?", id="c4", metadata=nbgrader_meta("explain", grade=True, solution=True, points=1)),
    ]
    return nb


@pytest.fixture()
def source(tmp_path) -> Source:
    path = tmp_path / "solutions" / "dbl" / "dbl.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(_source_nb(), path)
    return Source.load(path, "dbl")


def _result(**kw) -> SubmissionResult:
    base = dict(student="s", assignment="dbl", status=Status.GRADED, reason="a note", score=1.5, max_score=2.0, manual_max=1.0,
                tests={"test_double": TestResult(points=2.0, score=1.5, state=TestState.PASSED, message="passed", hidden_part=True)},
                answers={"explain": "because"}, cell_errors=[{"cell": "extra cell 3", "ename": "ValueError", "evalue": "no", "traceback": ""}],
                notebook="dbl.ipynb", submission_sha256="ab" * 32, source_sha256="cd" * 32, config="model=embedded",
                graded_at="2026-01-01T00:00:00+0000", duration_s=1.25, judge_peak_rss_mb=300.0)
    base.update(kw)
    return SubmissionResult(**base)


# ---- typed results


def test_a_result_round_trips_through_its_json_form():
    r = _result()
    data = json.loads(r.dumps())
    assert data["version"] == VERSION and data["status"] == "graded" and data["tests"]["test_double"]["state"] == "passed"
    assert SubmissionResult.loads(r.dumps()) == r
    assert SubmissionResult.from_json(r.to_json()).to_json() == r.to_json()
    other = _result(tests={"test_double": TestResult(points=2.0, score=0.0, state=TestState.FAILED, message="m", failed_in="hidden")})
    assert SubmissionResult.loads(other.dumps()) != r, "a different result does not read back as this one"


def test_a_result_written_before_versions_still_reads():
    data = _result().to_json()
    del data["version"]
    assert SubmissionResult.from_json(data) == _result()


@pytest.mark.parametrize("edit, why", [
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(status="passed-ish"), "unknown status"),
    (lambda d: d.update(score="3"), "score must be a finite number"),
    (lambda d: d.update(score=float("nan")), "score must be a finite number"),
    (lambda d: d["tests"]["test_double"].update(state="great"), "unknown test state"),
    (lambda d: d["tests"]["test_double"].update(failed_in="elsewhere"), "failed_in"),
    (lambda d: d.update(tests=[]), "tests and answers must be objects"),
    (lambda d: d.update(answers={"explain": 3}), "an answer must be text"),
])
def test_a_result_of_the_wrong_shape_is_refused(edit, why):
    data = copy.deepcopy(_result().to_json())
    edit(data)
    with pytest.raises(ResultFormatError, match=why):
        SubmissionResult.from_json(data)


def test_the_judges_reply_becomes_a_result_at_one_boundary(source):
    base = SubmissionResult.blank("s", "dbl", source)
    assert base.tests["test_double"] == TestResult(points=2.0) and base.max_score == 2.0 and base.manual_max == 1.0
    out = {"status": "crashed", "reason": "SIGSEGV", "tests": {"test_double": {"points": 2.0, "score": 2.0, "state": "passed",
                                                                              "message": "passed", "hidden_part": True}},
           "cell_errors": [{"cell": "double", "ename": "E", "evalue": "v", "traceback": "t"}], "duration_s": 2.0, "worker_log": "log"}
    r = base.with_judgement(out)
    assert (r.status, r.score, r.reason, r.worker_log) == (Status.CRASHED, 2.0, "SIGSEGV", "log")
    with pytest.raises(ResultFormatError):
        base.with_judgement({**out, "tests": {"test_double": {"score": "all"}}})


def test_stored_results_read_by_key_give_the_json_form():
    r = _result()
    assert r["status"] == "graded" and r["tests"]["test_double"]["score"] == 1.5 and r.get("last_error") is None


# ---- the verdict as nbgrader's execute step


@pytest.mark.parametrize("test, points, expected", [
    (TestResult(points=2, score=2, state=TestState.PASSED, message="passed"), 2, 2),
    (TestResult(points=2, score=0.5, state=TestState.PASSED, message="passed"), 2, 0.5),  # partial credit, nbgrader's way
    (TestResult(points=2, score=0, state=TestState.FAILED, message="hidden test failed: x", failed_in="hidden"), 2, 0),
    (TestResult(points=2), 2, 0),  # not graded
    (None, 2, 0),  # no verdict for this test at all
])
def test_nbgrader_scores_each_verdict_as_the_judge_did(test, points, expected):
    cell = nbformat.v4.new_code_cell(TEST, metadata=nbgrader_meta("test_double", grade=True, locked=True, points=points))
    cell.outputs = verdict_outputs(test, points)
    assert determine_grade(cell) == (expected, points)


def test_verdicts_go_to_test_cells_only(source):
    nb = _source_nb()
    r = _result(tests={"test_double": TestResult(points=2, state=TestState.FAILED, message="double of X", failed_in="visible",
                                                 traceback="Traceback\nAssertionError: double of X")})
    write_verdicts(nb, r)
    outs = {c.get("id"): c.get("outputs") for c in nb.cells if c.cell_type == "code"}
    assert outs["c1"] == [] and outs["c2"] == []
    (err,) = outs["c3"]
    assert (err.output_type, err.ename, err.evalue) == ("error", "TestFailed", "double of X")
    assert err.traceback == ["Traceback", "AssertionError: double of X"], "a visible failure keeps its traceback"


# ---- feedback


def test_feedback_keeps_hidden_tests_and_their_inputs_out():
    nb = _source_nb()
    r = _result(status=Status.TAMPERED, tests={"test_double": TestResult(points=2, state=TestState.FAILED, failed_in="hidden",
                                                                         message="hidden test failed: double of a random tensor")})
    write_verdicts(nb, r)
    nb.cells[3].outputs[0]["traceback"] = ["line 3: check_close(double(Y), 2 * Y)  # HIDDEN-INPUT"]  # as a plain kernel would write it
    hide_hidden_tests(nb, r, {"test_double": "Doubling"})
    text = json.dumps(nb)
    assert "HIDDEN-INPUT" not in text and "BEGIN HIDDEN" not in text and "torch.randn" not in text
    test = next(c for c in nb.cells if c.get("id") == "c3")
    assert test.source == 'check_close(double(X), 2 * X, "double of X")'
    assert test.outputs[0].traceback == ["hidden test failed: double of a random tensor (failed in the hidden part)"]
    assert "Status: tampered" in nb.cells[0].source and "a note" in nb.cells[0].source and "extra cell 3" in nb.cells[0].source
    assert "*Test: Doubling (visible + hidden)*" in [c.source for c in nb.cells]


@pytest.mark.parametrize("code, shown", [
    (TEST, 'check_close(double(X), 2 * X, "double of X")'),
    ("a = 1\n### BEGIN HIDDEN TESTS\nsecret = 2  # HIDDEN-INPUT", "a = 1"),  # never closed
    ("### BEGIN HIDDEN TESTS\nsecret = 2  # HIDDEN-INPUT", ""),
])
def test_hidden_regions_leave_every_cell_even_one_that_is_no_longer_a_test(code, shown):
    nb = _source_nb()
    nb.cells.append(nbformat.v4.new_code_cell(code, id="stripped"))  # a test cell whose nbgrader metadata was removed
    hide_hidden_tests(nb, None)
    assert nb.cells[-1].source == shown and "HIDDEN-INPUT" not in json.dumps(nb)


def test_feedback_keeps_a_visible_failures_full_message():
    nb = _source_nb()
    r = _result(tests={"test_double": TestResult(points=2, state=TestState.FAILED, failed_in="visible", message="double of X",
                                                 traceback="Traceback\nCheckFailed: double of X: max abs diff 1")})
    write_verdicts(nb, r)
    hide_hidden_tests(nb, r)
    test = next(c for c in nb.cells if c.get("id") == "c3")
    assert test.outputs[0].traceback == ["Traceback", "CheckFailed: double of X: max abs diff 1"]


# ---- the lined-up notebook nbgrader reads


def _student(source_nb, edit):
    nb = copy.deepcopy(source_nb)
    edit(nb)
    return nb


def test_a_duplicated_answer_the_first_copy_is_graded_and_recorded(source):
    """nbgrader's DeduplicateIds would keep the last copy; the lined-up notebook leaves it nothing to choose."""
    def dup(nb):
        nb.cells.insert(3, nbformat.v4.new_code_cell("def double(x):\n    return 3 * x", id="dup", metadata=nbgrader_meta("double", solution=True)))

    student = _student(_source_nb(), dup)
    p = plan(source, student)
    assert "cell double appears 2 times; the first copy was graded" in p.notes
    lined = lined_up_notebook(p)
    copies = [c.source for c in lined.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "double"]
    assert len(copies) == 1 and "return 2 * x" in copies[0]
    after, _ = DeduplicateIds().preprocess(copy.deepcopy(lined), {})
    assert after == lined, "nbgrader's de-duplication finds nothing to change"
    theirs, _ = DeduplicateIds().preprocess(copy.deepcopy(student), {})
    kept = [c.source for c in theirs.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "double"]
    assert kept == ["def double(x):\n    return 3 * x"], "plain nbgrader would have kept the last copy"


def test_the_lined_up_notebook_restores_tests_and_keeps_extra_cells_in_place(source):
    def edit(nb):
        del nb.cells[3]  # the test
        nb.cells[2].source = "def double(x):\n    return x + x"
        nb.cells.insert(2, nbformat.v4.new_code_cell("scratch = 1", id="mine"))
        nb.cells[-1].source = "Because."

    lined = lined_up_notebook(plan(source, _student(_source_nb(), edit)))
    assert [c.get("id") for c in lined.cells] == ["c0", "c1", "extra-cell-3", "c2", "c3", "c4"]
    assert lined.cells[2].source == "scratch = 1" and "nbgrader" not in lined.cells[2].metadata
    assert lined.cells[3].source == "def double(x):\n    return x + x"
    assert lined.cells[4].source == 'check_close(double(X), 2 * X, "double of X")', "the test's visible part (nbgrader restores the rest)"
    assert lined.cells[5].source == "Because."


# ---- one nbgrader configuration


def test_a_plain_nbgrader_command_makes_a_new_gradebook_without_alembic_on_path(tmp_path):
    """The environment's Python run by its path, the environment not activated: nbgrader's own way to stamp a new
    gradebook runs `alembic` from PATH and fails; with the project's configuration it reads the revision itself."""
    import os
    import sqlite3

    from grader.course import alembic_head, write_config

    (tmp_path / "source" / "a1").mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), tmp_path / "source" / "a1" / "a1.ipynb")
    write_config(tmp_path, sandboxed=False)
    env = {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "a1", "--log-level=WARN"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (tmp_path / "release" / "a1" / "a1.ipynb").exists(), r.stdout[-2000:] + r.stderr[-2000:]
    with sqlite3.connect(tmp_path / "gradebook.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(alembic_head(),)]


def test_every_nbgrader_configuration_comes_from_one_function(tmp_path):
    from traitlets.config import Config as TConfig

    from grader.course import AUTOGRADE_PREPROCESSORS, configure, write_config

    write_config(tmp_path)
    written = TConfig()
    exec((tmp_path / "nbgrader_config.py").read_text(), {"get_config": lambda: written})
    direct = TConfig()
    configure(direct, root=tmp_path, sandboxed=False)
    assert written == direct and written.CourseDirectory.db_url == f"sqlite:///{tmp_path / 'gradebook.db'}"
    repo = TConfig()
    exec((ROOT / "nbgrader_config.py").read_text(), {"get_config": lambda: repo})
    assert repo.CourseDirectory.source_directory == "solutions" and repo.CourseDirectory.release_directory == "notebooks"
    assert repo.Autograde.autograde_preprocessors == AUTOGRADE_PREPROCESSORS
    assert "nbgrader.preprocessors.Execute" not in repo.Autograde.autograde_preprocessors
    assert "grader.preprocessors.HideHiddenTests" in repo.GenerateFeedback.preprocessors
    assert repo.Execute.timeout == direct.Execute.timeout, "the same execution settings everywhere"


def test_nothing_launches_nbgrader_as_a_command_to_release():
    for f in (ROOT / "grader").glob("*.py"):
        assert '"generate_assignment"' not in f.read_text(), f"{f.name} runs nbgrader's release as a command"


# ---- manual import, checked before anything is written


def test_manual_import_refuses_every_bad_row_and_writes_nothing(source, tmp_path):
    from grader.reports import ImportError_, manual_import

    cfg = Config(solutions=tmp_path / "solutions", submitted=tmp_path / "submitted", results=tmp_path / "results",
                 course=tmp_path / "course", roster=tmp_path / "roster.csv")
    store_result(cfg, _result(student="ann"))
    sheet = tmp_path / "sheet.csv"
    rows = [{"student": "ann", "assignment": "dbl", "question": "explain", "score": "2"},     # above its 1 point
            {"student": "ann", "assignment": "dbl", "question": "nope", "score": "1"},
            {"student": "bob", "assignment": "dbl", "question": "explain", "score": "1"},
            {"student": "ann", "assignment": "other", "question": "explain", "score": "1"},
            {"student": "ann", "assignment": "dbl", "question": "explain", "score": "lots"},
            {"student": "ann", "assignment": "dbl", "question": "explain", "score": ""}]       # not graded yet: skipped
    with sheet.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["student", "assignment", "question", "score"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ImportError_) as e:
        manual_import(cfg, sheet)
    msg = str(e.value)
    assert "5 problem(s)" in msg and "outside 0..1" in msg and "no written question 'nope'" in msg
    assert "no graded submission of dbl by 'bob'" in msg and "unknown assignment 'other'" in msg and "'lots' is not a number" in msg
    assert not (cfg.course / "gradebook.db").exists(), "nothing was written"
    sheet.write_text("student,assignment\nann,dbl\n")
    with pytest.raises(ImportError_, match=r"missing column\(s\) \['question', 'score'\]"):
        manual_import(cfg, sheet)


# ---- the command line


def test_cli_help_and_bad_input():
    out = subprocess.run([sys.executable, "-m", "grader", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "autograde" in out.stdout and "manual-import" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "grader", "manual-import", "/nonexistent.csv"], capture_output=True, text=True)
    assert bad.returncode == 1 and "cannot be read" in bad.stderr


def test_bundled_examples_are_current(tmp_path):
    """grader/examples/ is generated from the solution and the released notebook (`make examples`)."""
    from grader.examples import EXAMPLES, build

    build(tmp_path / "ex")
    made = sorted(p.relative_to(tmp_path / "ex") for p in (tmp_path / "ex").rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(EXAMPLES) for p in EXAMPLES.rglob("*") if p.is_file()), "run `make examples`"
    for rel in made:
        assert (tmp_path / "ex" / rel).read_bytes() == (EXAMPLES / rel).read_bytes(), f"{rel} is stale: run `make examples`"


def test_a_grader_error_is_never_recorded_as_a_score(monkeypatch):
    """nbgrader's execute step refuses a verdict the grader could not reach, so the gradebook keeps what it had."""
    import grader.autograde as ag
    from grader.preprocessors import SandboxExecute

    monkeypatch.setattr(ag, "verdict", lambda cfg, s, a: SubmissionResult.grader_error(s, a, "the judge could not start"))
    pp = SandboxExecute(grader_config=json.dumps({}))
    with pytest.raises(RuntimeError, match="the judge could not start"):
        pp.preprocess(_source_nb(), {"nbgrader": {"student": "s", "assignment": "dbl"}})
    monkeypatch.setattr(ag, "verdict", lambda cfg, s, a: _result())
    nb, _ = pp.preprocess(_source_nb(), {"nbgrader": {"student": "s", "assignment": "dbl"}})
    assert determine_grade(nb.cells[3]) == (1.5, 2.0)
