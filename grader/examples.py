"""The bundled example class (``grader/examples/``) and the instructor's tour that grades it.

``python -m grader.examples`` regenerates the examples from the solution notebook (a test checks
they are current); ``python -m grader demo`` (``make demo``) releases the assignments, grades the
examples in a scratch course under ``build/demo/`` and prints the grade table.

The class, all on ``01_early_induction_heads``:

- ``ada``: the solution, with its kernel renamed: full marks;
- ``ben``: two wrong answers: partial credit;
- ``cy``: a notebook cut off mid-file: ``invalid_notebook``;
- ``dee``: the untouched student notebook plus a cell that disables ``check_close`` and
  ``torch.testing.assert_close``: still 0, because the tests do not run in the student's process;
- ``eli``: the untouched student notebook saved as ``...-Copy1.ipynb``, with a failing test cell
  edited to pass: graded by content, the test restored (so it fails again), status ``tampered``;
- ``fay``: on the roster, nothing submitted: ``missing``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nbformat

from .config import ROOT

EXAMPLES = ROOT / "grader" / "examples"
ASSIGNMENT = "01_early_induction_heads"
WRONG_EDITS = [
    ("block = pattern[:, :, seq_len : 2 * seq_len, 1 : seq_len + 1]",
     "block = pattern[:, :, seq_len : 2 * seq_len, :seq_len]"),
    ("order = results.flatten().argsort()[:k].tolist()", "order = results.flatten().argsort(descending=True)[:k].tolist()"),
]
HOSTILE = """# "make the tests pass"
import torch
import ioi_anomalies.checks as checks
checks.check_close = lambda *args, **kwargs: None
check_close = checks.check_close
torch.testing.assert_close = lambda *args, **kwargs: None
"""
EXPECTED = {"ada": ("graded", 11.0), "ben": ("graded", 9.0), "cy": ("invalid_notebook", 0.0), "dee": ("graded", 0.0),
            "eli": ("tampered", 0.0), "fay": ("missing", 0.0)}


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def build(out: Path) -> None:
    solution = _read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    released = _read(ROOT / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    if out.exists():
        shutil.rmtree(out)

    def put(student: str, nb, name: str = f"{ASSIGNMENT}.ipynb") -> None:
        folder = out / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / name)

    ada = _read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    ada.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    put("ada", ada)
    ben = _read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    for old, new in WRONG_EDITS:
        (cell,) = [c for c in ben.cells if old in c.source]
        cell.source = cell.source.replace(old, new)
    put("ben", ben)
    put("cy", solution)
    cy = out / "cy" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    cy.write_text(cy.read_text()[: len(cy.read_text()) // 2])
    dee = released
    setup = next(i for i, c in enumerate(dee.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
    dee.cells.insert(setup + 1, nbformat.v4.new_code_cell(HOSTILE, id="dee-hack"))
    put("dee", dee)
    eli = _read(ROOT / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    test = next(c for c in eli.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_strongest_senders")
    test.source = "assert True  # my answer is right"
    put("eli", eli, f"{ASSIGNMENT}-Copy1.ipynb")
    (out / "roster.csv").write_text("student\n" + "\n".join(sorted(EXPECTED)) + "\n")


def demo(workdir: Path = ROOT / "build" / "demo", jobs: int | None = None) -> int:
    """Release, grade the example class, print the table; exits 1 if a status or score is not the expected one."""
    from .autograde import autograde, warm_judge
    from .config import load
    from .reports import collect, export, format_table, summary, write_feedback

    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "course").mkdir(parents=True)
    from .course import NbGraderError, scratch_release

    cfg = load().with_(submitted=EXAMPLES, roster=EXAMPLES / "roster.csv", results=workdir / "results", course=workdir / "course",
                       grades=workdir / "grades.csv", feedback=workdir / "feedback", jobs=jobs)
    warm_judge(cfg, [ASSIGNMENT])  # the judges' imports run while the assignments are released

    print("1. release: solutions/ -> student notebooks (nbgrader generate_assignment)")
    for a in sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir()):
        try:
            scratch_release(a, workdir)
            print(f"   {a}: ok")
        except NbGraderError as e:
            print(f"   {a}: FAILED {str(e)[-500:]}")
    print(f"2. autograde the example class in grader/examples/ ({cfg.n_jobs} workers, model: {cfg.model}, sandbox: {cfg.sandbox})")
    results = autograde(cfg, [ASSIGNMENT])
    print(summary(results, workdir / "score_histogram.html"))
    rows = collect(cfg, [ASSIGNMENT])
    print("3. the grade table")
    print(format_table(rows))
    export(cfg, [ASSIGNMENT])
    write_feedback(cfg, [ASSIGNMENT])
    print(f"grades: {cfg.grades}\nfeedback: {cfg.feedback}/<student>/{ASSIGNMENT}/{ASSIGNMENT}.html")
    wrong = [(r["student"], r["status"], r["auto_score"]) for r in rows if EXPECTED.get(r["student"]) != (r["status"], r["auto_score"])]
    if wrong:
        print(f"unexpected grades: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    build(EXAMPLES)
    print(json.dumps(sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*") if p.is_file()), indent=1))
