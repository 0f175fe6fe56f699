"""Mutation testing of the notebooks' graded tests: plausible wrong answers must lose their points.

A mutant replaces answer cells of a solution notebook (by ``grade_id``) with a wrong answer and
names the test cells (by ``grade_id``) that must then fail. ``tests/mutants/nbXX.py`` lists them
for notebook XX as ``MUTANTS = [Mutant(label=..., cells={answer_id: source}, fails=[test_id, ...])]``.

:class:`NotebookRun` executes a solution notebook once, in this process, on the default (embedded)
model, as the judge does: the answer cells, the locked cells the tests and answers need, and every
test cell with its hidden tests (cells that only show results are left to the report's run).
Each mutant then re-executes only its replacement cells in a copy of that namespace and runs the
named test cells (visible and hidden code) there; each must raise. With ``reference_cache`` (a
folder), the hidden tests' references are kept there as the judge keeps them (``grader.refcache``,
on only while a test cell runs): computed once per hidden seed and arguments, not once per mutant.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n(.*?)^[ \t]*### END HIDDEN TESTS", re.S | re.M)


@dataclass
class Mutant:
    label: str
    cells: dict[str, str]
    fails: list[str] = field(default_factory=list)


class NotebookRun:
    """One in-process execution of a solution notebook, reusable by many mutants."""

    def __init__(self, assignment: str, reference_cache: Path | None = None):
        os.environ.setdefault("PLOTLY_RENDERER", "json")
        os.environ["IOI_ANOMALIES_MODEL"] = "embedded"
        self.assignment = assignment
        path = ROOT / "solutions" / assignment / f"{assignment}.ipynb"
        self.reference_cache = reference_cache
        self.cache_context = f"{assignment}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
        nb = nbformat.read(path, as_version=4)
        self.order: list[str] = []
        self.source: dict[str, str] = {}
        self.kind: dict[str, str] = {}
        self.ns: dict = {"__name__": "__main__"}
        self.test_errors: dict[str, str] = {}
        self.locked: set[str] = set()
        self.grad_mode = True  # the notebook's torch grad mode between its cells
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            meta = cell.metadata.get("nbgrader", {})
            gid = meta.get("grade_id") or f"cell-{i}"
            self.order.append(gid)
            self.source[gid] = cell.source
            self.kind[gid] = "test" if meta.get("grade") else "answer" if meta.get("solution") else "locked"
            if meta.get("locked"):
                self.locked.add(gid)
        needed = self._needed()
        for gid in self.order:
            if self.kind[gid] == "test":
                err = self.run_test(gid, self.ns)
                if err:
                    self.test_errors[gid] = err
            elif gid in needed:
                try:
                    self._exec(self.source[gid], gid, self.ns)
                except NameError:
                    if self.kind[gid] == "answer":
                        raise
                    # a locked cell that reads results of a skipped display cell: no test needs it

    def _needed(self) -> set[str]:
        """Answer cells, and the other cells whose names tests or answers read from the notebook
        (:func:`outside_names`: the judge takes those from locked cells it runs itself or from the
        student's process); cells that only show results (plots, sweeps, summaries) are skipped, also
        when a test reuses one of their names for its own (``g``, ``grid``)."""
        from grader.intake import defined_names

        need: set[str] = set()
        out: set[str] = set()
        for gid in reversed(self.order):
            kind, code = self.kind[gid], self.source[gid]
            if kind == "test":
                need |= outside_names(code)
            elif kind == "answer" or (kind == "locked" and defined_names(code) & need):
                out.add(gid)
                need |= outside_names(code)
        return out

    @property
    def answer_ids(self) -> list[str]:
        return [g for g in self.order if self.kind[g] == "answer"]

    @property
    def test_ids(self) -> list[str]:
        return [g for g in self.order if self.kind[g] == "test"]

    def _exec(self, code: str, name: str, ns: dict) -> None:
        """Run one cell. Torch's global grad mode is the notebook's while its cells run (its set-up
        cell turns gradients off) and this process's again afterwards, so later tests are unaffected."""
        import torch

        outside = torch.is_grad_enabled()
        torch.set_grad_enabled(self.grad_mode)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, f"<{self.assignment}:{name}>", "exec"), ns)
        finally:
            self.grad_mode = torch.is_grad_enabled()
            torch.set_grad_enabled(outside)

    def hidden_part(self, test_id: str) -> str:
        """What of a test cell depends on the submission key: its hidden tests alone when they read nothing
        its visible part binds (the visible part draws no hidden input), else the whole cell."""
        from grader.intake import defined_names

        import ast

        src = self.source[test_id]
        regions = list(HIDDEN.finditer(src))
        if not regions:
            return ""
        if len(regions) > 1:
            return src
        visible, hidden = src[: regions[0].start()], regions[0].group(1)
        try:
            ast.parse(hidden)
        except SyntaxError:  # hidden tests inside a block of the visible part: only the whole cell runs
            return src
        return src if outside_names(hidden) & defined_names(visible) else hidden

    def run_test(self, test_id: str, ns: dict, key: bytes = b"", code: str | None = None) -> str | None:
        """None if the test cell (or ``code`` in its place) passes in (a copy of) ``ns``, else the reason it failed.

        ``key`` is the submission key the hidden tests draw their inputs from (as the judge sets it).
        """
        from grader import refcache
        from grader.hidden import use_submission

        use_submission(key)
        refcache.configure(self.reference_cache, self.cache_context)
        try:
            self._exec(self.source[test_id] if code is None else code, test_id, dict(ns))
        except Exception as e:  # noqa: BLE001 - any failure of a test is a lost point
            return f"{type(e).__name__}: {e}".strip()[:300] or traceback.format_exc()[-300:]
        finally:
            refcache.configure(None)
            use_submission(b"")
        return None

    def survivors(self, mutant: Mutant) -> list[str]:
        """The tests named by ``mutant`` that still pass with its wrong answers."""
        unknown = (set(mutant.cells) - set(self.answer_ids)) | (set(mutant.fails) - set(self.test_ids))
        if unknown:
            raise KeyError(f"mutant {mutant.label!r} names cells that are not answer/test cells: {sorted(unknown)}")
        ns = dict(self.ns)
        for gid in self.order:
            if gid in mutant.cells:
                try:
                    self._exec(mutant.cells[gid], gid, ns)
                except Exception:  # noqa: BLE001 - a broken answer cell: its tests must still fail
                    pass
        return [t for t in mutant.fails if self.run_test(t, ns) is None]


def outside_names(code: str) -> set[str]:
    """The names a cell reads from the notebook's namespace: read at its top level before the cell binds
    them, or read as globals by its functions, classes and comprehensions (their parameters and locals
    are their own). A test cell that sets ``g = generator(...)`` and then uses ``g`` needs no earlier
    cell's ``g``; a name both read and bound by one statement (``x = x + 1``, a loop) counts as read.
    A cell that is not plain Python reads nothing that can be told (as ``grader.intake.used_names``)."""
    import ast
    import builtins
    import symtable

    from grader.intake import defined_names

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    bound: set[str] = set()
    read: set[str] = set()
    for stmt in tree.body:
        text = ast.unparse(stmt)
        try:
            top = symtable.symtable(text, "<cell>", "exec")
        except SyntaxError:  # e.g. IPython's top-level await: every name it reads counts
            read |= {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound
            bound |= defined_names(text)
            continue
        names = {s.get_name() for s in top.get_symbols() if s.is_referenced()}
        tables = list(top.get_children())
        while tables:
            t = tables.pop()
            names |= {s.get_name() for s in t.get_symbols() if s.is_referenced() and s.is_global()}
            tables.extend(t.get_children())
        read |= names - bound
        bound |= defined_names(text)
    return read - set(dir(builtins))


def solution_source(assignment: str, grade_id: str) -> str:
    nb = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    return cell.source


def edit(assignment: str, grade_id: str, *replacements: tuple[str, str]) -> dict[str, str]:
    """``{grade_id: the solution cell with each (old, new) replaced}``; each ``old`` must occur."""
    src = solution_source(assignment, grade_id)
    for old, new in replacements:
        if old not in src:
            raise ValueError(f"{old!r} is not in the solution cell {grade_id!r}")
        src = src.replace(old, new)
    return {grade_id: src}
