"""Every graded test of the series fails plausible wrong answers (mutation testing).

For each notebook with a ``tests/mutants/nbXX.py``, the solution is executed once in this process
on the embedded model (``tests/mutation.py``); the solution must pass every test cell, and each
mutant must fail every test it names. The mutation score (mutants caught / tried) is printed at
the end of the run (conftest adds up each test's report, from every pytest-xdist worker).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.mutation import ROOT, NotebookRun

ASSIGNMENTS = {p.name[:2]: p.name for p in (ROOT / "solutions").iterdir() if p.is_dir()}
MUTANT_FILES = sorted(p.stem for p in (Path(__file__).parent / "mutants").glob("nb[0-9][0-9].py"))
CASES = [(f, m) for f in MUTANT_FILES for m in importlib.import_module(f"tests.mutants.{f}").MUTANTS]

pytestmark = pytest.mark.slow  # whole notebooks, executed in this process


@pytest.fixture()
def run_of(solution_run):
    """The session's execution of a mutant file's solution notebook (conftest's ``solution_run``)."""

    def of(file: str) -> NotebookRun:
        return solution_run(ASSIGNMENTS[file[2:]])

    return of


@pytest.mark.parametrize("file", MUTANT_FILES)
def test_the_solution_passes_every_test(file, run_of):
    run = run_of(file)
    assert run.test_ids, "the notebook has graded tests"
    assert not run.test_errors, run.test_errors


@pytest.mark.parametrize("file", MUTANT_FILES)
def test_the_solution_passes_for_other_submission_keys(file, run_of):
    """Hidden tests draw other inputs for every submission; the right answer passes them all (the hidden
    tests run alone where they read nothing of the visible part, which draws no hidden input)."""
    run = run_of(file)
    keyed = {t: code for t in run.test_ids if (code := run.hidden_part(t))}
    assert keyed, "the notebook has hidden tests"
    for key in (b"another student",):
        failed = {t: err for t, code in keyed.items() if (err := run.run_test(t, run.ns, key, code))}
        assert not failed, (key, failed)


@pytest.mark.parametrize("file", MUTANT_FILES)
def test_every_graded_test_has_mutants(file, run_of):
    run = run_of(file)
    named = {t for f, m in CASES if f == file for t in m.fails}
    assert named == set(run.test_ids), f"tests without a mutant: {sorted(set(run.test_ids) - named)}"


@pytest.mark.parametrize("file,mutant", CASES, ids=[f"{f}: {m.label}" for f, m in CASES])
def test_mutant_is_caught(file, mutant, run_of, record_property):
    run = run_of(file)
    survivors = run.survivors(mutant)
    record_property("mutant_caught", (file, not survivors))  # conftest adds these up into the mutation score
    assert not survivors, f"{mutant.label!r} still passes {survivors}"
