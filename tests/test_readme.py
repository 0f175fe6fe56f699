"""The README's points table says what the notebooks grade."""

from __future__ import annotations

import re

import nbformat

from grader.course import ROOT

ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())


def _readme_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
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
