"""The grader against hostile and broken submissions, on a small assignment that grades in seconds.

One batch grades a whole class of awkward students; each test asserts one student's exact status
and score, so a fault that leaked from one submission into another would show as a wrong row.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import nbformat
import pytest

from grader.autograde import autograde, load_result
from grader.config import ROOT, Config
from grader.reports import ImportError_, export, manual_import, manual_sheet, write_feedback
from conftest import nbgrader_meta

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (`make setup` installs it)"),
              pytest.mark.slow]  # end-to-end: sandboxed grading; the steps around it are in test_grader_pipeline.py

A = "toy"
SETUP = "import torch\nfrom ioi_anomalies.checks import check_close\nX = torch.arange(6.0).reshape(2, 3)"
DOUBLE = "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"
TEST_DOUBLE = ('check_close(double(X), 2 * X, "double of X")\n### BEGIN HIDDEN TESTS\n'
               'from grader.hidden import generator\nY = torch.randn(4, 5, generator=generator("double"))\n'
               'check_close(double(Y), 2 * Y, "double of a random tensor")  # SECRET-HIDDEN-MARKER\n### END HIDDEN TESTS')
MEANS = "def row_means(x):\n    ### BEGIN SOLUTION\n    return x.mean(dim=1)\n    ### END SOLUTION"
TEST_MEANS = ('assert row_means(X).shape == (2,), "one mean per row"\n### BEGIN HIDDEN TESTS\n'
              'Y = torch.randn(3, 7, generator=torch.Generator().manual_seed(2))\n'
              'check_close(row_means(Y), Y.mean(dim=1), "row means of a random tensor")\n'
              'assert M.shape == (2,), "M (the locked cell\'s use of row_means) has one entry per row"\n### END HIDDEN TESTS')
USE_MEANS = "M = row_means(X) + 0  # a locked cell that uses the student's answer"
EXPLAIN = "Why?\n\n=== BEGIN MARK SCHEME ===\nBecause.\n=== END MARK SCHEME ==="


def source_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [
        nbformat.v4.new_markdown_cell("# Toy assignment", id="toy-00"),
        nbformat.v4.new_code_cell(SETUP, id="toy-01", metadata=nbgrader_meta("setup", locked=True)),
        nbformat.v4.new_code_cell(DOUBLE, id="toy-02", metadata=nbgrader_meta("double", solution=True)),
        nbformat.v4.new_code_cell(TEST_DOUBLE, id="toy-03", metadata=nbgrader_meta("test_double", grade=True, locked=True, points=1)),
        nbformat.v4.new_code_cell(MEANS, id="toy-04", metadata=nbgrader_meta("means", solution=True)),
        nbformat.v4.new_code_cell(USE_MEANS, id="toy-045", metadata=nbgrader_meta("use_means", locked=True)),
        nbformat.v4.new_code_cell(TEST_MEANS, id="toy-05", metadata=nbgrader_meta("test_row_means", grade=True, locked=True, points=2)),
        nbformat.v4.new_markdown_cell(EXPLAIN, id="toy-06", metadata=nbgrader_meta("explain", grade=True, solution=True, points=2)),
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
    nb.cells.insert(3, nbformat.v4.new_code_cell("def double(x):\n    return 3 * x", metadata=nbgrader_meta("double", solution=True)))
    copy = nbformat.from_dict(json.loads(json.dumps(cell(nb, "test_double"))))
    copy.id = "toy-dup"
    nb.cells.insert(5, copy)


def students(tmp: Path, port: int) -> dict:
    """The class: each student's notebook and file name. ``port``: a port the host listens on, which the
    network probe must not reach."""
    secret = tmp / "solutions" / A / f"{A}.ipynb"
    escape = tmp / "escaped.txt"
    probe = (
        "import os, socket\n"
        f"try:\n    open({str(secret)!r}).read(); leaked = True\nexcept OSError:\n    leaked = False\n"
        f"try:\n    open({str(tmp / 'course' / 'gradebook.db')!r}, 'rb').read(1); leaked = True\nexcept OSError:\n    pass\n"
        f"try:\n    open({str(escape)!r}, 'w').write('out'); leaked = True\nexcept OSError:\n    pass\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); leaked = True\nexcept OSError:\n    pass\n"
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
        # the student's exception text (here: the hidden input) never reaches the feedback
        "leaky_error": (variant(replace("double", "def double(x):\n    if x.shape != (2, 3):\n"
                                                  "        raise ValueError('LEAK ' + str(x.tolist()))\n    return 2 * x")), "toy.ipynb"),
        "wrong_hidden": (variant(replace("double", "def double(x):\n    return 2 * x if x.shape == (2, 3) else x")), "toy.ipynb"),
        # a live object whose methods would run student code in the judge: refused, so zeros cannot pass
        "live_mapping": (variant(replace("means", "import torch\nclass Rows(dict):\n    shape = (2,)\n"
                                                  "    def __iter__(self):\n        return iter([torch.zeros(())])\n"
                                                  "def row_means(x):\n    return Rows()")), "toy.ipynb"),
        # 4 bytes on the wire, 8 GiB if the judge materialised it
        "expanded_view": (variant(replace("means", "import torch\ndef row_means(x):\n"
                                                   "    return x.mean(dim=1) if x.shape == (2, 3) else torch.zeros(1).expand(2**31)")), "toy.ipynb"),
        "deep_answer": (variant(replace("means", "def row_means(x):\n    v = []\n    for _ in range(5000):\n        v = [v]\n"
                                                 "    return v")), "toy.ipynb"),
        # the worker's own reply writer replaced: every later reply is malformed
        "forged_replies": (variant(extra("test_double", "import gc\n"
                                                         "W = next(type(o) for o in gc.get_objects() if type(o).__name__ == 'Worker')\n"
                                                         "def send(self, obj, _orig=W.send):\n"
                                                         "    _orig(self, {'ok': 'yes', 'error': 42})\n"
                                                         "W.send = send")), "toy.ipynb"),
        "ipython": (variant(extra("setup", "%env TOY_FLAG=1\n!echo shell escape\nimport asyncio, os, tempfile\n"
                                           "await asyncio.sleep(0)\nassert os.environ['TOY_FLAG'] == '1'\n"
                                           "os.makedirs(os.path.join(tempfile.gettempdir(), 'a', 'b'))\n"
                                           "open('/tmp/scratch.txt', 'w').write('x')")), "toy.ipynb"),
        "deep_home": (variant(extra("setup", "import os\nhere = os.getcwd()\nfor _ in range(3000):\n"
                                             "    os.mkdir('d')\n    os.chdir('d')\nos.chdir(here)")), "toy.ipynb"),
        "fills_disk": (variant(extra("setup", "with open('/tmp/fill', 'wb') as f:\n    while True:\n"
                                              "        f.write(b'0' * 2**20)")), "toy.ipynb"),
        "bytes_name": (variant(), b"toy\xff.ipynb"),
        "stray_bytes_name": (variant(), "toy.ipynb"),
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
    "leaky_error": ("graded", 2.0),
    "wrong_hidden": ("graded", 2.0),
    "live_mapping": ("graded", 1.0),
    "expanded_view": ("graded", 1.0),
    "deep_answer": ("graded", 1.0),
    "forged_replies": ("crashed", 1.0),
    "ipython": ("graded", 3.0),
    "deep_home": ("graded", 3.0),
    "fills_disk": ("graded", 3.0),
    "bytes_name": ("invalid_notebook", 0.0),
    "stray_bytes_name": ("graded", 3.0),
}

# the exact message of the test each hostile submission fails
MESSAGES = {
    ("leaky_error", "test_double"): "your code raised ValueError during a hidden test",
    ("wrong_hidden", "test_double"): "hidden test failed: double of a random tensor",
    ("live_mapping", "test_row_means"): "AttributeError: 'dict' object has no attribute 'shape' "
                                        "(in: assert row_means(X).shape == (2,), \"one mean per row\")",
    ("expanded_view", "test_row_means"): "during a hidden test your code returned something that is not plain data "
                                         "(return tensors, numbers, strings, or lists, tuples, dicts or sets of them)",
    ("deep_answer", "test_row_means"): "your code returned something that is not plain data: the answer is nested more than 16 levels deep",
    ("returns_object", "test_row_means"): "your code returned something that is not plain data: a Weird object "
                                          "(return tensors, numbers, strings, or lists, tuples, dicts or sets of them)",
    ("forged_replies", "test_row_means"): "not graded: the student's process sent a malformed reply",
}


def make_course(tmp: Path, **kw) -> Config:
    (tmp / "solutions" / A).mkdir(parents=True, exist_ok=True)
    nbformat.write(source_notebook(), tmp / "solutions" / A / f"{A}.ipynb")
    cfg = Config(solutions=tmp / "solutions", submitted=tmp / "submitted", results=tmp / "results", feedback=tmp / "feedback",
                 grades=tmp / "grades.csv", roster=tmp / "roster.csv", course=tmp / "course", jobs=2, memory_gb=4.0,
                 judge_memory_gb=6.0, disk_mb=64)
    return cfg.with_(**kw)


def submit(cfg: Config, student: str, content, name: str) -> Path:
    folder = cfg.submitted / student / A
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(name, bytes):  # a file name that is not valid UTF-8
        with open(os.path.join(os.fsencode(folder), name), "w") as f:
            nbformat.write(content, f)
        return folder
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
    with socket.socket() as listener:  # listening on the host while the class is graded: the sandbox has no network
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        for student, (content, name) in students(tmp, listener.getsockname()[1]).items():
            submit(cfg, student, content, name)
        with open(os.path.join(os.fsencode(cfg.submitted / "stray_bytes_name" / A), b"notes\xfe.txt"), "w") as f:
            f.write("a stray file whose name is not UTF-8")
        cfg.roster.write_text("student\n" + "\n".join(sorted(EXPECTED)) + "\n")
        results = autograde(cfg, [A], progress=False)
    return cfg, {r.student: r.to_json() for r in results}, tmp  # each result's JSON form


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_submission_gets_its_exact_status_and_score(graded, student):
    cfg, results, _ = graded
    status, score = EXPECTED[student]
    r = results[student]
    assert (r["status"], r["score"]) == (status, score), json.dumps(r, indent=1, default=str)[:3000]


@pytest.mark.parametrize("student, test", sorted(MESSAGES))
def test_hostile_submissions_get_the_exact_message(graded, student, test):
    r = graded[1][student]
    assert r["tests"][test]["message"] == MESSAGES[student, test], r["tests"][test]
    assert r["tests"][test]["state"] in ("failed", "not graded") and "LEAK" not in json.dumps(r)


def test_failures_in_hidden_tests_show_no_inputs_or_values(graded):
    results = graded[1]
    for s in ("leaky_error", "wrong_hidden", "expanded_view"):
        t = next(t for t in results[s]["tests"].values() if t["state"] == "failed")
        assert t["failed_in"] == "hidden" and "traceback" not in t and not any(ch.isdigit() for ch in t["message"]), t
    assert results["wrong"]["tests"]["test_row_means"]["failed_in"] == "hidden"
    untouched = results["untouched"]["tests"]["test_double"]
    assert untouched["failed_in"] == "visible" and "NotImplementedError" in untouched["message"] and untouched["traceback"]


def test_ipython_syntax_and_a_private_tmp_work_as_in_jupyter(graded):
    r = graded[1]["ipython"]
    assert r["cell_errors"] == [], r["cell_errors"]


def test_what_the_sandbox_writes_is_bounded_and_never_reaches_the_host(graded):
    results = graded[1]
    assert results["deep_home"]["cell_errors"] == [] and results["deep_home"]["reason"] == ""
    errors = results["fills_disk"]["cell_errors"]
    assert [e["ename"] for e in errors] == ["OSError"] and "No space left" in errors[0]["evalue"], errors


def test_names_that_are_not_utf8_are_explained(graded):
    results = graded[1]
    assert results["bytes_name"]["reason"] == ("the notebook's file name is not valid UTF-8 (toy\\xff.ipynb); "
                                               "rename it and resubmit")
    assert "1 file(s) with names that are not valid UTF-8 were left out" in results["stray_bytes_name"]["reason"]


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


def test_nbgraders_gradebook_holds_the_judges_scores_and_the_first_copy_of_a_duplicate(graded):
    """nbgrader's own autograde (the sandboxed verdict as its execute step) fills the gradebook; a duplicated cell: the first copy."""
    from grader.course import Course
    from grader.gradebook import gradebook

    cfg, results, _ = graded
    with gradebook(cfg.course) as gb:
        for s, r in results.items():
            if r["notebook"]:
                sub = gb.find_submission_notebook(A, A, s)
                auto = {g.name: g.auto_score for g in sub.grades if g.name in r["tests"]}
                assert auto == {k: t["score"] for k, t in r["tests"].items()}, (s, auto)
    dup = nbformat.read(Course(cfg).autograded_notebook("duplicated", A), as_version=4)
    doubles = [c for c in dup.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "double"]
    assert len(doubles) == 1 and "3 * x" not in doubles[0].source and "return 2 * x" in doubles[0].source
    assert results["duplicated"]["score"] == 3.0


@pytest.fixture(scope="module")
def feedback_pages(graded):
    """The graded class's feedback (nbgrader's generate_feedback, one page per graded notebook), written once for the
    tests that read it."""
    return write_feedback(graded[0], [A])


def test_feedback_shows_messages_and_points_but_never_hidden_tests(graded, feedback_pages):
    """nbgrader's own feedback, one page per graded notebook, with the hidden tests kept out."""
    cfg, results, _ = graded
    paths = feedback_pages
    assert sorted(p.parent.parent.name for p in paths) == sorted(s for s, r in results.items() if r["notebook"])
    for p in paths:
        text = p.read_text()
        assert "SECRET-HIDDEN-MARKER" not in text and "BEGIN HIDDEN" not in text and "manual_seed(2)" not in text
        assert "LEAK [" not in text and "generator(" not in text  # the student's exception text (its own code may say LEAK)
    wrong = (cfg.feedback / "wrong" / A / f"{A}.html").read_text()
    assert "row means of a random tensor" in wrong and "Score: 0.0 / 2.0" in wrong and "Score: 1.0 / 1.0" in wrong


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
    before = {s: load_result(cfg, A, s).graded_at for s in ("correct", "wrong")}
    submit(cfg, "wrong", variant(), "toy.ipynb")  # resubmitted, now correct
    time.sleep(1.1)
    again = {r.student: r for r in autograde(cfg, [A], only=["correct", "wrong"], progress=False)}
    assert again["correct"].graded_at == before["correct"], "unchanged submissions are not regraded"
    assert again["wrong"].score == 3.0 and again["wrong"].graded_at != before["wrong"]
    import grader.autograde as ag

    from grader.results import SubmissionResult

    monkeypatch.setattr(ag, "run_child", lambda cfg, s, a: SubmissionResult.grader_error(s, a, "boom"))
    kept = autograde(cfg, [A], only=["correct"], force=True, progress=False)[0]
    assert (kept.status, kept.score, kept.last_error) == ("graded", 3.0, "boom")
    assert load_result(cfg, A, "correct").score == 3.0


def test_grading_is_deterministic(graded):
    cfg, results, _ = graded
    again = autograde(cfg, [A], only=["monkeypatch"], force=True, progress=False)[0].to_json()
    keep = ("status", "score", "tests", "reason")
    assert {k: again[k] for k in keep} == {k: results["monkeypatch"][k] for k in keep}


def test_a_locked_gradebook_is_waited_for_not_corrupted(graded):
    from grader.gradebook import gradebook, record

    cfg, results, _ = graded
    db = sqlite3.connect(cfg.course / "gradebook.db", timeout=0, check_same_thread=False, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # another process holds the gradebook for a while
    threading.Timer(3.0, db.rollback).start()
    t0 = time.monotonic()
    record(cfg, load_result(cfg, A, "wrong_hidden"))
    assert time.monotonic() - t0 >= 2.5, "the write waited for the lock"
    with gradebook(cfg.course) as gb:
        assert gb.find_grade("test_double", A, A, "wrong_hidden").auto_score == 0.0
        assert gb.find_grade("test_row_means", A, A, "wrong_hidden").auto_score == 2.0


def test_a_hang_times_out_with_a_clear_status(tmp_path):
    cfg = make_course(tmp_path, wall_time_s=10, jobs=1)
    submit(cfg, "hang", variant(replace("means", "while True:\n    pass")), "toy.ipynb")
    r = autograde(cfg, [A], progress=False)[0]
    assert (r.status, r.score) == ("timeout", 1.0), r
    assert r.tests["test_row_means"].state == "not graded"


def test_demo_grades_the_example_class_as_expected(tmp_path, series_judge):
    """`make demo`'s tour on the real first notebook: full, partial, broken, hostile, tampered, missing."""
    from grader.examples import ASSIGNMENT, demo

    assert demo(workdir=tmp_path / "demo") == 0
    ben = json.loads((tmp_path / "demo" / "results" / ASSIGNMENT / "ben.json").read_text())
    failed = {k for k, t in ben["tests"].items() if t["state"] != "passed"}
    assert failed == {"test_induction_score", "test_strongest_senders"}
    rows = list(csv.DictReader((tmp_path / "demo" / "grades.csv").read_text().splitlines()))
    assert {r["student"]: r["status"] for r in rows} == {
        "ada": "graded", "ben": "graded", "cy": "invalid_notebook", "dee": "graded", "eli": "tampered", "fay": "missing"}
    page = (tmp_path / "demo" / "feedback" / "ben" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    import html
    import re

    message = ben["tests"]["test_induction_score"]["message"]
    assert "induction_score" in message and message in html.unescape(re.sub(r"<[^>]+>", "", page))
    assert "BEGIN HIDDEN" not in page and "diagonal_score" not in page


def _with_test(grade_id: str, code: str):
    def edit(nb):
        cell(nb, grade_id).source = code
    return edit


def test_a_long_check_in_the_judge_still_ends_at_the_wall_limit(tmp_path):
    """The wall limit holds on the judge's side too: a hidden reference that runs long is stopped."""
    slow = TEST_MEANS.replace("### END HIDDEN TESTS", "import time\ntime.sleep(3600)  # a reference that runs long\n### END HIDDEN TESTS")
    limit = 10
    cfg = make_course(tmp_path, wall_time_s=limit, jobs=1)
    nbformat.write(variant(_with_test("test_row_means", slow)), cfg.solutions / A / f"{A}.ipynb")
    submit(cfg, "patient", variant(_with_test("test_row_means", slow)), "toy.ipynb")
    t0 = time.monotonic()
    r = autograde(cfg, [A], progress=False, record=False)[0]
    assert time.monotonic() - t0 < limit + 30, "the submission ended at its wall limit"
    assert (r.status, r.score) == ("timeout", 1.0), r
    assert r.tests["test_row_means"].to_json() == {"points": 2.0, "score": 0.0, "state": "not graded",
                                            "message": "not graded: the notebook ran past its time limit (while its tests were checked)"}


@pytest.mark.parametrize("pool", [0, 3])
def test_the_same_file_regraded_draws_the_same_hidden_inputs_and_other_content_others(tmp_path, pool):
    """Hidden inputs come from HMAC(course secret, submission), or with ``hidden_seed_pool = N`` from the key of
    the assignment's pool that it picks: the verdict below depends on the seed's parity."""
    from grader import hidden
    from grader.autograde import course_secret, submission_digest, submission_key

    probe = ('assert True\n### BEGIN HIDDEN TESTS\nfrom grader.hidden import seed\n'
             'assert seed("probe") % 2 == 0, "an even seed"\n### END HIDDEN TESTS')
    cfg = make_course(tmp_path, wall_time_s=60, jobs=1, hidden_seed_pool=pool)
    nbformat.write(variant(_with_test("test_double", probe)), cfg.solutions / A / f"{A}.ipynb")
    for i in range(2):
        nb = variant(_with_test("test_double", probe))
        nb.cells.append(nbformat.v4.new_markdown_cell(f"variant {i}"))
        submit(cfg, f"s{i}", nb, "toy.ipynb")
    first = {r.student: r.to_json() for r in autograde(cfg, [A], progress=False, record=False)}
    again = {r.student: r.to_json() for r in autograde(cfg, [A], progress=False, record=False, force=True)}
    for s in ("s0", "s1"):
        secret = course_secret(cfg)
        key = submission_key(secret, submission_digest(cfg.submitted / s / A))
        hidden.use_submission(hidden.pooled(secret, A, key, size=pool) if pool else key)
        even = hidden.seed("probe") % 2 == 0
        hidden.use_submission(b"")
        assert first[s]["tests"]["test_double"]["state"] == ("passed" if even else "failed"), first[s]["tests"]
        assert again[s]["tests"] == first[s]["tests"]


def test_missing_submissions_start_no_worker(tmp_path, monkeypatch):
    import grader.autograde as ag

    cfg = make_course(tmp_path)
    cfg.roster.write_text("student\nabsent\n")
    monkeypatch.setattr(ag, "run_child", lambda *a: pytest.fail("a worker was started for a missing submission"))
    r = autograde(cfg, [A], progress=False, record=False)[0]
    assert (r.status, r.score, r.reason) == ("missing", 0.0, "no submission folder")
    assert r.tests["test_double"].state == "not graded"


def test_feedback_is_world_readable_names_exercises_and_marks_hidden_tests(graded, feedback_pages):
    cfg = graded[0]
    page = cfg.feedback / "wrong_hidden" / A / f"{A}.html"
    assert page.stat().st_mode & 0o777 == 0o644 and page.parent.stat().st_mode & 0o777 == 0o755
    text = page.read_text()
    assert "Test: Toy assignment (test 1 of 2) (visible + hidden)" in text
    assert "hidden test failed: double of a random tensor (failed in the hidden part)" in text
    assert "Status: graded" in text
    crashed = (cfg.feedback / "membomb" / A / f"{A}.html").read_text()
    assert "extra cell" in crashed
    export(cfg, [A])
    rows = list(csv.DictReader(cfg.grades.read_text().splitlines()))
    for r in rows:
        for col in ("score", "max_score", "auto_score", "manual_score", "test_double", "test_row_means"):
            assert "." in r[col], (col, r[col])  # one form for every number: 0.0, never 0


def _gpt2_shaped_cache(hf_home: Path) -> None:
    pytest.importorskip("transformers")
    from grader.bench import gpt2_shaped_cache

    gpt2_shaped_cache(hf_home)


def test_gpt2_small_loads_in_the_sandbox_from_the_cache_where_hf_home_puts_it(tmp_path, monkeypatch):
    """`model = "gpt2-small"` grades with the hub cache bound read-only (here under a temporary HF_HOME)."""
    hf_home = tmp_path / "hf"
    _gpt2_shaped_cache(hf_home)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    setup = SETUP + ('\nfrom ioi_anomalies import load_model\nmodel = load_model("gpt2-small")\n'
                     'SHAPE = (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model)')
    check = ('assert SHAPE == (12, 12, 768), "GPT-2 small\'s shape"\n'
             'assert model.model_label == "gpt2-small", "loaded as GPT-2 small"\nassert double(1) == 2, "double"')
    cfg = make_course(tmp_path, wall_time_s=300, jobs=1, model="gpt2-small", memory_gb=6.0)

    def edit(nb):
        cell(nb, "setup").source = setup
        cell(nb, "test_double").source = check
    nbformat.write(variant(edit), cfg.solutions / A / f"{A}.ipynb")
    submit(cfg, "gpt", variant(edit), "toy.ipynb")
    r = autograde(cfg, [A], progress=False, record=False)[0]
    assert r.cell_errors == [], r.cell_errors  # the student's process loaded it too, not only the judge
    assert r.tests["test_double"].state == "passed", r.dumps()[:3000]
    assert (r.status, r.score) == ("graded", 3.0), r.reason


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("IOI_ANOMALIES_SLOW"), reason="grades a whole solution on a GPT-2-small-shaped model; "
                    "set IOI_ANOMALIES_SLOW=1 to run")
def test_a_whole_solution_grades_in_full_on_a_gpt2_small_shaped_model(tmp_path, monkeypatch):
    """The first notebook's solution, graded with `model = "gpt2-small"` on random weights in the hub cache layout."""
    nb = "01_early_induction_heads"
    hf_home = tmp_path / "hf"
    _gpt2_shaped_cache(hf_home)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cfg = Config(solutions=ROOT / "solutions", submitted=tmp_path / "submitted", results=tmp_path / "results",
                 feedback=tmp_path / "feedback", grades=tmp_path / "grades.csv", roster=tmp_path / "roster.csv",
                 course=tmp_path / "course", jobs=1, model="gpt2-small", wall_time_s=1800)
    (cfg.submitted / "sol" / nb).mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / nb / f"{nb}.ipynb", cfg.submitted / "sol" / nb / f"{nb}.ipynb")
    t0 = time.monotonic()
    r = autograde(cfg, [nb], progress=False, record=False)[0]
    print(f"grading {nb} on a GPT-2-small-shaped model: {time.monotonic() - t0:.0f} s, judge peak RSS {r.judge_peak_rss_mb} MB")
    assert r.status == "graded" and r.score == r.max_score, (r.reason, r.worker_log, r.cell_errors,
                                                             {k: v for k, v in r.tests.items() if v.state != "passed"})


def test_plain_nbgrader_with_the_projects_configuration_grades_in_the_sandbox(tmp_path):
    """`nbgrader autograde` and `nbgrader generate_feedback` in a course configured by `grader.course.configure`."""
    from nbgrader.api import Gradebook

    from grader.course import run_nbgrader, write_config

    root = tmp_path / "course"
    (root / "source" / A).mkdir(parents=True)
    nbformat.write(source_notebook(), root / "source" / A / f"{A}.ipynb")
    write_config(root, sandboxed=True)
    run_nbgrader(root, "generate_assignment", A, "--force")
    hostile = extra("setup", "import ioi_anomalies.checks as c\nc.check_close = lambda *a, **k: None")  # tests do not run here
    for s, nb in {"good": variant(), "bad": variant(both(replace("double", "def double(x):\n    return x"), hostile))}.items():
        (root / "submitted" / s / A).mkdir(parents=True)
        nbformat.write(nb, root / "submitted" / s / A / f"{A}.ipynb")
    run_nbgrader(root, "autograde", A, "--force")  # nbgrader adds the students it finds
    with Gradebook(f"sqlite:///{root}/gradebook.db") as gb:
        assert {s: gb.find_submission(A, s).score for s in ("good", "bad")} == {"good": 3.0, "bad": 2.0}
    assert "double of X" in json.loads((root / "verdicts" / A / "bad.json").read_text())["tests"]["test_double"]["message"]
    run_nbgrader(root, "generate_feedback", A, "--force")
    pages = sorted((root / "feedback").rglob("*.html"))
    assert [p.relative_to(root / "feedback").as_posix() for p in pages] == [f"bad/{A}/{A}.html", f"good/{A}/{A}.html"]
    assert not any("BEGIN HIDDEN" in p.read_text() or "SECRET-HIDDEN-MARKER" in p.read_text() for p in pages)
