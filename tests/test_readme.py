"""The README's promises: students and instructors first, every command it shows exists, every
command-line option explains itself, and installing the project prints no warning of its own."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import subprocess
import sys

import nbformat
import pytest

from grader.config import ROOT

README = (ROOT / "README.md").read_text()
CLIS = ["grader.__main__", "ioi_anomalies.validate", "tools.report", "tools.demo", "tools.lab", "tools.handout", "tools.bench"]


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    inline = re.findall(r"`((?:make|\.venv/bin/python|python) [^`]+)`", README)
    lines = [line.split("#")[0].strip() for b in blocks for line in b.splitlines()] + inline
    return [line for line in lines if line]


def test_the_readme_opens_with_the_students_and_the_instructors_paths():
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert headings[:2] == ["For students", "For instructors"], headings[:4]
    assert "## Who receives what" in README and "Self-learners" in README and "Graded courses" in README
    assert ".venv/bin/python -m grader" in README, "says which Python runs the grader"


def test_every_make_target_and_module_in_the_readme_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    seen_make = seen_mod = 0
    for cmd in _commands():
        for target in re.findall(r"(?:^|&&\s*)make ([a-z][\w-]*)", cmd):
            assert target in targets, f"README shows `make {target}`, which the Makefile lacks"
            seen_make += 1
        for module in re.findall(r"python -m ([\w.]+)", cmd):
            if module in ("pip", "venv", "ipykernel"):
                continue
            assert importlib.util.find_spec(module) is not None, f"README shows `python -m {module}`, which does not exist"
            seen_mod += 1
        assert not re.match(r"^python3? -m (grader|tools|ioi_anomalies)", cmd), f"`{cmd}`: say which Python (.venv/bin/python)"
    assert seen_make >= 10 and seen_mod >= 3


def _options_without_help(monkeypatch) -> list:
    """Record, from now on, every argparse option added without help text."""
    missing = []
    original = argparse._ActionsContainer.add_argument

    def add_argument(self, *args, **kwargs):
        if not kwargs.get("help") and args != ("-h", "--help"):
            missing.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", add_argument)
    return missing


@pytest.mark.parametrize("module", CLIS)
def test_every_command_line_option_has_help(module, monkeypatch, capsys):
    missing = _options_without_help(monkeypatch)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    assert e.value.code == 0
    assert not missing, f"{module}: options without help text: {missing}"


def test_the_help_check_catches_an_option_without_help(monkeypatch):
    """Control for the test above."""
    missing = _options_without_help(monkeypatch)
    argparse.ArgumentParser().add_argument("--bare")
    assert missing == [("--bare",)]


def test_installing_the_project_prints_no_warning_of_its_own(tmp_path):
    """Building the project's metadata (what `pip install` does first) warns of nothing, e.g. the license table."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation", "--no-index",
                        "--ignore-installed", str(ROOT)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert not re.search(r"warning|deprecat", out, re.I), out[-3000:]


# ------------------------------------------------------------------------------ the points table
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())


def _readme_rows() -> dict[str, str]:
    text = README
    table = text.split("| notebook | graded points |", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", table, re.M)}


def _points(assignment: str) -> tuple[float, float]:
    """(all points, manually graded points) of a solution notebook."""
    nb = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    total = manual = 0.0
    for c in nb.cells:
        meta = c.metadata.get("nbgrader", {})
        if meta.get("grade"):
            total += float(meta.get("points", 0))
            if meta.get("solution"):
                manual += float(meta.get("points", 0))
    return total, manual


def test_the_points_table_lists_every_notebook():
    assert sorted(_readme_rows()) == ASSIGNMENTS


def test_the_points_table_equals_the_notebooks_points():
    for assignment, row in _readme_rows().items():
        stated = [(float(n), bool(manual)) for n, manual in re.findall(r"\((\d+(?:\.\d+)?)(, manual)?\)", row)]
        total, manual = _points(assignment)
        assert sum(n for n, _ in stated) == total, f"{assignment}: the README says {sum(n for n, _ in stated)} points, the notebook has {total}"
        assert sum(n for n, m in stated if m) == manual, f"{assignment}: manual points differ"
