"""The grader against hostile and broken submissions, on a small assignment that grades in seconds.

One batch grades a whole class of awkward students; each test asserts one student's exact status
and score, so a fault that leaked from one submission into another would show as a wrong row.
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from grader.autograde import autograde, load_result
from grader.config import ROOT, Config
from grader.reports import ImportError_, export, manual_import, manual_sheet, write_feedback

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (`make setup` installs it)")

A = "toy"
SETUP = "import torch\nfrom ioi_anomalies.checks import check_close\nX = torch.arange(6.0).reshape(2, 3)"
DOUBLE = "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"
TEST_DOUBLE = ('check_close(double(X), 2 * X, "double of X")\n### BEGIN HIDDEN TESTS\n'
               'g = torch.Generator().manual_seed(1)\nY = torch.randn(4, 5, generator=g)\n'
               'check_close(double(Y), 2 * Y, "double of a random tensor")  # SECRET-HIDDEN-MARKER\n### END HIDDEN TESTS')
MEANS = "def row_means(x):\n    ### BEGIN SOLUTION\n    return x.mean(dim=1)\n    ### END SOLUTION"
TEST_MEANS = ('assert row_means(X).shape == (2,), "one mean per row"\n### BEGIN HIDDEN TESTS\n'
              'Y = torch.randn(3, 7, generator=torch.Generator().manual_seed(2))\n'
              'check_close(row_means(Y), Y.mean(dim=1), "row means of a random tensor")\n'
              'assert M.shape == (2,), "M (the locked cell\'s use of row_means) has one entry per row"\n### END HIDDEN TESTS')
USE_MEANS = "M = row_means(X) + 0  # a locked cell that uses the student's answer"
EXPLAIN = "Why?\n\n=== BEGIN MARK SCHEME ===\nBecause.\n=== END MARK SCHEME ==="


def _meta(grade_id, *, grade=False, solution=False, locked=False, points=None):
    m = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution, "task": False}
    if points is not None:
        m["points"] = points
    return {"nbgrader": m}


def source_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [
        nbformat.v4.new_markdown_cell("# Toy assignment", id="toy-00"),
        nbformat.v4.new_code_cell(SETUP, id="toy-01", metadata=_meta("setup", locked=True)),
        nbformat.v4.new_code_cell(DOUBLE, id="toy-02", metadata=_meta("double", solution=True)),
        nbformat.v4.new_code_cell(TEST_DOUBLE, id="toy-03", metadata=_meta("test_double", grade=True, locked=True, points=1)),
        nbformat.v4.new_code_cell(MEANS, id="toy-04", metadata=_meta("means", solution=True)),
        nbformat.v4.new_code_cell(USE_MEANS, id="toy-045", metadata=_meta("use_means", locked=True)),
        nbformat.v4.new_code_cell(TEST_MEANS, id="toy-05", metadata=_meta("test_row_means", grade=True, locked=True, points=2)),
        nbformat.v4.new_markdown_cell(EXPLAIN, id="toy-06", metadata=_meta("explain", grade=True, solution=True, points=2)),
    ]
    nb.cells = cells
    return nb


def variant(edit=None):
    nb = source_notebook()
    if edit:
        edit(nb)
    return nb


def cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def extra(after_grade_id, code):
    def edit(nb):
        i = nb.cells.index(cell(nb, after_grade_id))
        nb.cells.insert(i + 1, nbformat.v4.new_code_cell(code))
    return edit


def replace(grade_id, code):
    def edit(nb):
        cell(nb, grade_id).source = code
    return edit


def both(*edits):
    def edit(nb):
        for e in edits:
            e(nb)
    return edit


def untouched(nb):
    for gid in ("double", "means"):
        c = cell(nb, gid)
        c.source = c.source.split("### BEGIN")[0] + "raise NotImplementedError()"
    for gid in ("test_double", "test_row_means"):
        c = cell(nb, gid)
        c.source = c.source.split("### BEGIN HIDDEN")[0]
    cell(nb, "explain").source = "YOUR ANSWER HERE"


def duplicate(nb):
    nb.cells.insert(3, nbformat.v4.new_code_cell("def double(x):\n    return 3 * x", metadata=_meta("double", solution=True)))
    copy = nbformat.from_dict(json.loads(json.dumps(cell(nb, "test_double"))))
    copy.id = "toy-dup"
    nb.cells.insert(5, copy)


LISTENER = socket.socket()
LISTENER.bind(("127.0.0.1", 0))
LISTENER.listen(1)
PORT = LISTENER.getsockname()[1]


def students(tmp: Path) -> dict:
    secret = tmp / "solutions" / A / f"{A}.ipynb"
    escape = tmp / "escaped.txt"
    probe = (
        "import os, socket\n"
        f"try:\n    open({str(secret)!r}).read(); leaked = True\nexcept OSError:\n    leaked = False\n"
        f"try:\n    open({str(tmp / 'course' / 'gradebook.db')!r}, 'rb').read(1); leaked = True\nexcept OSError:\n    pass\n"
        f"try:\n    open({str(escape)!r}, 'w').write('out'); leaked = True\nexcept OSError:\n    pass\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {PORT}), timeout=2); leaked = True\nexcept OSError:\n    pass\n"
        f"try:\n    open({str(ROOT / 'solutions' / '01_early_induction_heads' / '01_early_induction_heads.ipynb')!r}).read(); leaked = True\n"
        "except OSError:\n    pass\n"
        "open('scratch.txt', 'w').write('mine')  # its own folder is writable\n"
    )
    return {
        # (notebook or raw bytes or None, filename) , expected (status, score)
        "correct": (variant(lambda nb: nb.metadata.update(kernelspec={"name": "julia-1.9", "display_name": "Julia"})), "toy.ipynb"),
        "untouched": (variant(untouched), "toy.ipynb"),
        "wrong": (variant(replace("means", "def row_means(x):\n    return x.sum(dim=1)")), "toy.ipynb"),
        "monkeypatch": (variant(both(
            replace("double", "def double(x):\n    return x"),
            extra("setup", "import torch, builtins, ioi_anomalies.checks as c\nc.check_close = lambda *a, **k: None\n"
                           "torch.testing.assert_close = lambda *a, **k: None\ntorch.allclose = lambda *a, **k: True\n"
                           "torch.Tensor.__sub__ = lambda a, b: torch.zeros(())\nbuiltins.AssertionError = type('N', (Exception,), {})"),
        )), "toy.ipynb"),
        "segfault": (variant(extra("test_double", "import ctypes\nctypes.string_at(0)")), "toy.ipynb"),
        "membomb": (variant(extra("setup", "try:\n    hog = bytearray(5 * 2**30)\nexcept MemoryError:\n    pass\n"
                                           "big = torch.empty(10**13)")), "toy.ipynb"),
        "invalid": (b'{"cells": [', "toy.ipynb"),
        "renamed": (variant(), "toy-Copy1.ipynb"),
        "nonotebook": (b"just text", "answers.txt"),
        "duplicated": (variant(duplicate), "toy.ipynb"),
        "deleted_test": (variant(lambda nb: nb.cells.remove(cell(nb, "test_row_means"))), "toy.ipynb"),
        "stripped_test": (variant(lambda nb: cell(nb, "test_row_means").metadata.pop("nbgrader")), "toy.ipynb"),
        "edited_test": (variant(both(replace("test_double", "assert True"), replace("double", "def double(x):\n    return x"))), "toy.ipynb"),
        "warns": (variant(replace("double", "import warnings, sys\ndef double(x):\n    warnings.warn('careful', UserWarning)\n"
                                            "    print('to stderr', file=sys.stderr)\n    return 2 * x")), "toy.ipynb"),
        "snoop": (variant(both(extra("setup", probe), replace("double", "def double(x):\n    return x if leaked else 2 * x"))), "toy.ipynb"),
        "returns_object": (variant(replace("means", "class Weird:\n    shape = (2,)\n    def __eq__(self, o):\n        return True\n"
                                                    "def row_means(x):\n    return Weird()")), "toy.ipynb"),
    }


EXPECTED = {
    "correct": ("graded", 3.0),
    "untouched": ("graded", 0.0),
    "wrong": ("graded", 1.0),
    "monkeypatch": ("graded", 2.0),
    "segfault": ("crashed", 1.0),
    "membomb": ("graded", 3.0),
    "invalid": ("invalid_notebook", 0.0),
    "renamed": ("graded", 3.0),
    "nonotebook": ("missing", 0.0),
    "duplicated": ("graded", 3.0),
    "deleted_test": ("tampered", 1.0),
    "stripped_test": ("tampered", 1.0),
    "edited_test": ("tampered", 2.0),
    "warns": ("graded", 3.0),
    "snoop": ("graded", 3.0),
    "returns_object": ("graded", 1.0),
    "on_roster_only": ("missing", 0.0),
}


def make_course(tmp: Path, **kw) -> Config:
    (tmp / "solutions" / A).mkdir(parents=True, exist_ok=True)
    nbformat.write(source_notebook(), tmp / "solutions" / A / f"{A}.ipynb")
    cfg = Config(solutions=tmp / "solutions", submitted=tmp / "submitted", results=tmp / "results", feedback=tmp / "feedback",
                 grades=tmp / "grades.csv", roster=tmp / "roster.csv", course=tmp / "course", jobs=2, memory_gb=4.0)
    return cfg.with_(**kw)


def submit(cfg: Config, student: str, content, name: str) -> Path:
    folder = cfg.submitted / student / A
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        nbformat.write(content, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class")
    cfg = make_course(tmp, wall_time_s=180)
    for student, (content, name) in students(tmp).items():
        submit(cfg, student, content, name)
    cfg.roster.write_text("student\n" + "\n".join(sorted(EXPECTED)) + "\n")
    results = autograde(cfg, [A], progress=False)
    return cfg, {r["student"]: r for r in results}, tmp


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_submission_gets_its_exact_status_and_score(graded, student):
    cfg, results, _ = graded
    status, score = EXPECTED[student]
    r = results[student]
    assert (r["status"], r["score"]) == (status, score), json.dumps(r, indent=1, default=str)[:3000]


def test_monkeypatching_in_the_notebook_changes_nothing(graded):
    r = graded[1]["monkeypatch"]
    assert r["tests"]["test_double"]["state"] == "failed"
    assert "double of X" in r["tests"]["test_double"]["message"]


def test_a_crash_costs_only_the_ungraded_parts(graded):
    r = graded[1]["segfault"]
    assert r["tests"]["test_double"]["state"] == "passed"
    assert r["tests"]["test_row_means"]["state"] == "not graded"
    assert "SIGSEGV" in r["reason"], r["reason"]


def test_memory_limit_fails_the_allocation_not_the_notebook(graded):
    r = graded[1]["membomb"]
    assert any(e["cell"].startswith("extra cell") for e in r["cell_errors"]), r["cell_errors"]


def test_sandbox_hides_instructor_files_network_and_discards_writes(graded):
    cfg, results, tmp = graded
    assert results["snoop"]["tests"]["test_double"]["state"] == "passed"
    assert not (tmp / "escaped.txt").exists()
    assert not (cfg.submitted / "snoop" / A / "scratch.txt").exists(), "writes in the sandbox are discarded"


def test_renamed_and_duplicated_and_tampered_are_explained(graded):
    results = graded[1]
    assert "toy-Copy1.ipynb" in results["renamed"]["reason"]
    assert "appears 2 times" in results["duplicated"]["reason"]
    assert "test_row_means was deleted" in results["deleted_test"]["reason"]
    assert results["deleted_test"]["tests"]["test_row_means"]["state"] == "failed"
    assert "test_double was edited" in results["edited_test"]["reason"]
    assert "not valid notebook JSON" in results["invalid"]["reason"]


def test_feedback_shows_messages_and_points_but_never_hidden_tests(graded):
    cfg = graded[0]
    paths = write_feedback(cfg, [A])
    assert len(paths) == len(EXPECTED)
    for p in paths:
        text = p.read_text()
        assert "SECRET-HIDDEN-MARKER" not in text and "BEGIN HIDDEN" not in text and "manual_seed(1)" not in text
    wrong = (cfg.feedback / "wrong" / A / "feedback.html").read_text()
    assert "row means of a random tensor" in wrong and "0 / 2" in wrong and "1 / 1" in wrong


def test_export_has_one_row_per_student_with_status_and_question_columns(graded):
    cfg = graded[0]
    export(cfg, [A])
    rows = list(csv.DictReader(cfg.grades.read_text().splitlines()))
    assert len(rows) == len(EXPECTED)
    by = {r["student"]: r for r in rows}
    assert by["wrong"]["test_double"] == "1.0" and by["wrong"]["test_row_means"] == "0.0"
    assert by["on_roster_only"]["status"] == "missing"
    assert by["correct"]["max_score"] == "5.0" and by["correct"]["manual_pending"] == "1"
    assert set(by["correct"]) >= {"student", "assignment", "status", "score", "max_score", "reason", "explain"}


def test_manual_round_trip_and_validation(graded):
    cfg, _, tmp = graded
    sheet = tmp / "manual.csv"
    n = manual_sheet(cfg, sheet, [A])
    rows = list(csv.DictReader(sheet.read_text().splitlines()))
    assert n == len(rows) and {r["question"] for r in rows} == {"explain"}
    assert "Because." in next(r["answer"] for r in rows if r["student"] == "correct")
    bad = [dict(r) for r in rows]
    bad[0]["score"] = "1.5"
    bad[1]["score"] = "9"  # out of range
    bad.append({**rows[0], "student": "nobody", "score": "1"})
    bad_path = tmp / "bad.csv"
    with bad_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(bad)
    with pytest.raises(ImportError_) as e:
        manual_import(cfg, bad_path)
    assert "outside 0..2" in str(e.value) and "'nobody'" in str(e.value)
    export(cfg, [A])
    by = {r["student"]: r for r in csv.DictReader(cfg.grades.read_text().splitlines())}
    assert by[bad[0]["student"]]["manual_pending"] == "1", "nothing was half-imported"
    good = [dict(r, score="1.5", comment="good") if r["student"] == "correct" else r for r in rows]
    with bad_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(good)
    assert manual_import(cfg, bad_path) == 1
    export(cfg, [A])
    by = {r["student"]: r for r in csv.DictReader(cfg.grades.read_text().splitlines())}
    assert by["correct"]["score"] == "4.5" and by["correct"]["manual_pending"] == "0" and by["correct"]["explain"] == "1.5"


def test_rerun_resumes_regrades_changes_and_keeps_old_grades_on_grader_failure(graded, monkeypatch):
    cfg, results, _ = graded
    before = {s: load_result(cfg, A, s)["graded_at"] for s in ("correct", "wrong")}
    submit(cfg, "wrong", variant(), "toy.ipynb")  # resubmitted, now correct
    time.sleep(1.1)
    again = {r["student"]: r for r in autograde(cfg, [A], only=["correct", "wrong"], progress=False)}
    assert again["correct"]["graded_at"] == before["correct"], "unchanged submissions are not regraded"
    assert again["wrong"]["score"] == 3.0 and again["wrong"]["graded_at"] != before["wrong"]
    import grader.autograde as ag

    monkeypatch.setattr(ag, "run_child", lambda cfg, s, a: {"student": s, "assignment": a, "status": "grader_error",
                                                            "reason": "boom", "score": 0.0, "tests": {}})
    kept = autograde(cfg, [A], only=["correct"], force=True, progress=False)[0]
    assert kept["status"] == "graded" and kept["score"] == 3.0 and kept["last_error"] == "boom"
    assert load_result(cfg, A, "correct")["score"] == 3.0


def test_grading_is_deterministic(graded):
    cfg, results, _ = graded
    again = autograde(cfg, [A], only=["monkeypatch"], force=True, progress=False)[0]
    keep = ("status", "score", "tests", "reason")
    assert {k: again[k] for k in keep} == {k: results["monkeypatch"][k] for k in keep}


def test_a_locked_gradebook_is_waited_for_not_corrupted(graded):
    from grader.gradebook import gradebook, record

    cfg, results, _ = graded
    db = sqlite3.connect(cfg.course / "gradebook.db", timeout=0, check_same_thread=False, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # another process holds the gradebook for a while
    threading.Timer(3.0, db.rollback).start()
    t0 = time.monotonic()
    record(cfg, results["wrong"])
    assert time.monotonic() - t0 >= 2.5, "the write waited for the lock"
    with gradebook(cfg.course) as gb:
        assert gb.find_grade("test_row_means", A, A, "wrong").auto_score == 0.0
        assert gb.find_grade("test_double", A, A, "wrong").auto_score == 1.0


def test_a_hang_times_out_with_a_clear_status(tmp_path):
    cfg = make_course(tmp_path, wall_time_s=15, jobs=1)
    submit(cfg, "hang", variant(replace("means", "while True:\n    pass")), "toy.ipynb")
    r = autograde(cfg, [A], progress=False)[0]
    assert r["status"] == "timeout" and r["score"] == 1.0, r
    assert r["tests"]["test_row_means"]["state"] == "not graded"


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


def test_demo_grades_the_example_class_as_expected(tmp_path):
    """`make demo`'s tour on the real first notebook: full, partial, broken, hostile, tampered, missing."""
    from grader.examples import ASSIGNMENT, demo

    assert demo(workdir=tmp_path / "demo") == 0
    ben = json.loads((tmp_path / "demo" / "results" / ASSIGNMENT / "ben.json").read_text())
    failed = {k for k, t in ben["tests"].items() if t["state"] != "passed"}
    assert failed == {"test_induction_score", "test_strongest_senders"}
    rows = list(csv.DictReader((tmp_path / "demo" / "grades.csv").read_text().splitlines()))
    assert {r["student"]: r["status"] for r in rows} == {
        "ada": "graded", "ben": "graded", "cy": "invalid_notebook", "dee": "graded", "eli": "tampered", "fay": "missing"}
    page = (tmp_path / "demo" / "feedback" / "ben" / ASSIGNMENT / "feedback.html").read_text()
    import html

    message = ben["tests"]["test_induction_score"]["message"]
    assert "induction_score" in message and html.escape(message) in page
    assert "BEGIN HIDDEN" not in page and "diagonal_score" not in page
