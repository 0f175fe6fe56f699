"""The student's self-check (``ioi_anomalies.validate``; ``make validate``, ``python -m grader validate``).

It runs a notebook with the project's execution settings and reports each visible test in plain
text. The real-notebook test runs on a deliberately slow kernel (slow to start, late with its
output), the case where nbgrader's defaults failed on a busy machine; a control shows that kernel
does break those defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from grader.config import ROOT

A = "01_early_induction_heads"
SLOW_KERNEL = '''
import os, sys, time
time.sleep(float(os.environ.get("SLOW_KERNEL_START", "0")))
from jupyter_client.session import Session
_send, _left = Session.send, [int(os.environ.get("SLOW_KERNEL_CELLS", "1"))]
def send(self, stream, msg_or_type, content=None, parent=None, *args, **kwargs):
    # late output: the "idle" that ends a cell comes SLOW_KERNEL_IDLE seconds after its reply
    if (msg_or_type == "status" and (content or {}).get("execution_state") == "idle" and _left[0] > 0
            and (parent or {}).get("header", {}).get("msg_type") == "execute_request"):
        _left[0] -= 1
        time.sleep(float(os.environ.get("SLOW_KERNEL_IDLE", "0")))
    return _send(self, stream, msg_or_type, content, parent, *args, **kwargs)
Session.send = send
from ipykernel import kernelapp
kernelapp.launch_new_instance()
'''


@pytest.fixture(scope="module")
def slow_kernel(tmp_path_factory):
    """A JUPYTER_PATH whose 'ioi-anomalies' kernel starts 1 s late and sends its first 2 cells' 'idle' 6 s late."""
    d = tmp_path_factory.mktemp("slow-kernel")
    (d / "slow_kernel.py").write_text(SLOW_KERNEL)
    spec = d / "kernels" / "ioi-anomalies"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(d / "slow_kernel.py"), "-f", "{connection_file}"],
        "display_name": "slow", "language": "python"}))
    return {"JUPYTER_PATH": str(d), "SLOW_KERNEL_START": "1", "SLOW_KERNEL_IDLE": "6", "SLOW_KERNEL_CELLS": "2"}


def _run(path: Path, env: dict | None = None, via_grader: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "grader", "validate", str(path)] if via_grader else [sys.executable, "-m", "ioi_anomalies.validate", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "IOI_ANOMALIES_MODEL": "embedded", **(env or {})})


def _small(cells: list[tuple[str, dict]]) -> nbformat.NotebookNode:
    """A notebook of (source, nbgrader metadata) code cells under an exercise heading."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "ioi-anomalies", "display_name": "Python (ioi-anomalies)", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("## Exercise 1: adding"))
    for src, meta in cells:
        cell = nbformat.v4.new_code_cell(textwrap.dedent(src))
        if meta:
            cell.metadata["nbgrader"] = {"schema_version": 3, "locked": True, "solution": False, **meta}
        nb.cells.append(cell)
    return nb


def _headings(nb) -> dict[str, str]:
    """grade_id -> the last markdown heading above it."""
    out, heading = {}, None
    for c in nb.cells:
        if c.cell_type == "markdown":
            heading = next((line.lstrip("#").strip() for line in c.source.splitlines() if line.startswith("#")), heading)
        elif c.metadata.get("nbgrader", {}).get("grade"):
            out[c.metadata["nbgrader"]["grade_id"]] = heading
    return out


def test_the_slow_kernel_breaks_plain_nbclient_defaults(slow_kernel, tmp_path, monkeypatch):
    """Control: the slow kernel is slow enough to fail a run with nbgrader's 4-second output wait."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    for k, v in slow_kernel.items():
        monkeypatch.setenv(k, v)
    nb = _small([("print(1)", {})])
    with pytest.raises(CellTimeoutError):
        NotebookClient(nb, kernel_name="ioi-anomalies", timeout=30, iopub_timeout=4, raise_on_iopub_timeout=True,
                       resources={"metadata": {"path": str(tmp_path)}}).execute()


@pytest.mark.slow
def test_one_right_and_one_wrong_exercise_on_a_slow_kernel(slow_kernel, tmp_path):
    from grader.examples import WRONG_EDITS

    nb = nbformat.read(ROOT / "solutions" / A / f"{A}.ipynb", as_version=4)
    old, new = WRONG_EDITS[0]  # induction_score off by one: exercise 1 wrong, the others right
    (cell,) = [c for c in nb.cells if old in c.source]
    cell.source = cell.source.replace(old, new)
    path = tmp_path / f"{A}.ipynb"
    nbformat.write(nb, path)
    r = _run(path, slow_kernel, via_grader=True)
    out = r.stdout
    assert r.returncode == 1, out[-3000:] + r.stderr[-3000:]
    assert "\x1b[" not in out and "<div" not in out, "plain text"
    tests = _headings(nb)
    assert "FAILED  test_induction_score" in out and "induction_score of a perfect pattern" in out, out
    for gid in set(tests) - {"test_induction_score"}:
        assert f"passed  {gid}" in out, (gid, out)
    assert tests["test_induction_score"] in out, "the failure is listed under its exercise heading"
    assert f"{len(tests) - 1} of {len(tests)} visible tests passed" in out
    assert "CellTimeoutError" not in out and "NameError" not in out


def test_the_untouched_student_notebook_fails_every_test(tmp_path):
    path = ROOT / "notebooks" / A / f"{A}.ipynb"
    before = path.read_bytes()
    r = _run(path)
    out = r.stdout
    assert r.returncode == 1, out[-3000:] + r.stderr[-3000:]
    tests = _headings(nbformat.read(path, as_version=4))
    for gid, heading in tests.items():
        assert f"FAILED  {gid}" in out and heading in out, (gid, out)
    assert "NotImplementedError" in out and f"0 of {len(tests)} visible tests passed" in out
    assert path.read_bytes() == before, "validating never writes the notebook"


def test_exit_code_follows_tests_and_cell_errors(tmp_path):
    """0 when every visible test passes; 1 when a test fails or any other cell raises."""
    right = _small([("def add(a, b):\n    return a + b", {}), ("assert add(2, 3) == 5, 'add adds'", {"grade": True, "grade_id": "test_add", "points": 1})])
    wrong = _small([("def add(a, b):\n    return a - b", {}), ("assert add(2, 3) == 5, 'add adds'", {"grade": True, "grade_id": "test_add", "points": 1})])
    broken = _small([("def add(a, b):\n    return a + b", {}), ("1 / 0", {}),
                     ("assert add(2, 3) == 5, 'add adds'", {"grade": True, "grade_id": "test_add", "points": 1})])
    from concurrent.futures import ThreadPoolExecutor

    notebooks = {"right": right, "wrong": wrong, "broken": broken}
    for name, nb in notebooks.items():
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    with ThreadPoolExecutor(len(notebooks)) as pool:  # three commands side by side, each with its own kernel
        results = dict(zip(notebooks, pool.map(_run, [tmp_path / f"{name}.ipynb" for name in notebooks])))
    assert results["right"].returncode == 0 and "passed  test_add" in results["right"].stdout, results["right"].stdout
    assert "All visible tests pass" in results["right"].stdout
    assert results["wrong"].returncode == 1 and "FAILED  test_add" in results["wrong"].stdout
    assert "AssertionError: add adds" in results["wrong"].stdout and "Exercise 1: adding" in results["wrong"].stdout
    assert results["broken"].returncode == 1 and "ZeroDivisionError" in results["broken"].stdout
    assert "passed  test_add" in results["broken"].stdout


def test_a_missing_or_unreadable_notebook_says_so(tmp_path):
    r = _run(tmp_path / "nope.ipynb")
    assert r.returncode == 2 and "no such notebook" in r.stderr
    (tmp_path / "cut.ipynb").write_text('{"cells": [')
    r = _run(tmp_path / "cut.ipynb")
    assert r.returncode == 1 and "invalid JSON" in r.stdout, r.stdout


def test_nbgrader_config_carries_the_execution_settings():
    """The Validate button and nbgrader's commands read nbgrader_config.py: it applies ``EXECUTION``."""
    from traitlets.config import Config

    from ioi_anomalies.validate import EXECUTION

    c = Config()
    code = (ROOT / "nbgrader_config.py").read_text()
    exec(compile(code, "nbgrader_config.py", "exec"), {"get_config": lambda: c, "__file__": str(ROOT / "nbgrader_config.py")})
    assert {k: c.Execute[k] for k in EXECUTION} == EXECUTION
