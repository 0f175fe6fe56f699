"""The student hand-out (``tools.handout``, ``make handout``): everything a student needs, nothing more.

It is built from the session's expected-output pages; nothing in it (notebooks, package, pages,
archive) holds a line of a solution region or of a hidden test. The package installs from it
(``pip install --no-deps`` into a folder, the project environment supplying the dependencies) and
a released notebook's visible tests run against that installed copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

import nbformat
import pytest

from grader.config import ROOT

A = "01_early_induction_heads"


@pytest.fixture(scope="module")
def handout(report, tmp_path_factory):
    from tools.handout import NAME, build

    pages, _ = report
    folder, archive = build(tmp_path_factory.mktemp("handout"), pages)
    assert folder.name == NAME
    return folder, archive


@pytest.mark.slow  # built from the session's report
def test_the_handout_holds_notebooks_package_and_pages_only(handout):
    folder, archive = handout
    top = sorted(p.name for p in folder.iterdir())
    assert top == sorted([".jupyter", "README.md", "build", "ioi_anomalies", "notebooks", "pyproject.toml"]), top
    for a in sorted(p.name for p in (ROOT / "notebooks").iterdir() if p.is_dir()):
        assert (folder / "notebooks" / a / f"{a}.ipynb").read_bytes() == (ROOT / "notebooks" / a / f"{a}.ipynb").read_bytes()
        assert (folder / "build" / "report" / f"{a}.html").exists()
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert not [f for f in files if f.startswith(("grader/", "solutions/", "tests/")) or "__pycache__" in f]
    with tarfile.open(archive) as tar:
        members = sorted(m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile())
    assert members == files, "the archive holds the directory"


@pytest.mark.slow  # built from the session's report
def test_nothing_in_the_handout_gives_a_solution_or_a_hidden_test_away(handout, secret_lines):
    from conftest import leaked

    folder, archive = handout
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # weights and other binary data
        hits = leaked(text, secret_lines)
        if hits:
            found[path.relative_to(folder).as_posix()] = hits[:3]
    assert not found, found


@pytest.mark.slow
def test_the_package_installs_from_the_handout_and_a_notebook_runs_its_visible_tests(handout, tmp_path):
    folder = tmp_path / "handout"
    shutil.copytree(handout[0], folder)  # pip builds in the folder it installs from: leave the fixture's as built
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                        "--target", str(site), str(folder)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "warning" not in r.stderr.lower(), r.stderr
    assert (site / "ioi_anomalies" / "models").is_dir() and not (site / "grader").exists()
    # the released notebook, plus one test cell that checks it runs on the installed copy
    nb = nbformat.read(folder / "notebooks" / A / f"{A}.ipynb", as_version=4)
    check = nbformat.v4.new_code_cell(f"import ioi_anomalies\nassert ioi_anomalies.__file__.startswith({str(site)!r}), 'from the hand-out'")
    check.metadata["nbgrader"] = {"schema_version": 3, "grade": True, "grade_id": "test_installed_copy", "locked": True,
                                  "points": 0, "solution": False}
    nb.cells.append(check)
    work = tmp_path / "work" / A
    work.mkdir(parents=True)
    nbformat.write(nb, work / f"{A}.ipynb")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "IOI_ANOMALIES_MODEL": "embedded"}
    r = subprocess.run([sys.executable, "-m", "ioi_anomalies.validate", str(work / f"{A}.ipynb")], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=900)
    out = r.stdout
    assert r.returncode == 1, out[-3000:] + r.stderr[-3000:]
    assert "passed  test_installed_copy" in out, out
    tests = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells  # autograded tests (manually graded answers are not run)
             if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata["nbgrader"].get("solution")]
    assert all(f"FAILED  {t}" in out for t in tests if t != "test_installed_copy"), out
    assert "NotImplementedError" in out
