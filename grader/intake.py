"""Reading submissions without trusting them: find the notebook, parse it, line it up with the source.

The solution notebook (``solutions/<assignment>/<assignment>.ipynb``) is the only trusted copy of
every locked cell, test and point value. A submission contributes its answers only:

- the notebook is found by name, or else by content (a renamed ``A-Copy1.ipynb`` still counts);
- each solution cell is taken from the submission by its ``grade_id``; duplicated cells keep the
  first copy, extra cells run where the student put them;
- locked cells and tests always come from the source (edits are undone and noted), and a test
  whose cell was deleted or stripped of its metadata is graded as failed and noted;
- manual answers are read out for the human grader.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[ \t]*\n?", re.S | re.M)


class IntakeError(Exception):
    """A submission that cannot be graded: ``status`` says which kind, the message says why."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class SourceCell:
    index: int
    kind: str  # setup | solution | test | manual | free | markdown
    cell_id: str
    grade_id: str | None
    source: str
    points: float = 0.0

    @property
    def visible(self) -> str:
        """The test as students see it: hidden tests removed."""
        return HIDDEN.sub("", self.source).rstrip()


def _kind(cell) -> str:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if meta.get("grade") and meta.get("solution"):
        return "manual"
    if cell.cell_type != "code":
        return "markdown"
    if meta.get("grade"):
        return "test"
    if meta.get("solution"):
        return "solution"
    if meta.get("locked") or meta.get("grade_id"):
        return "setup"
    return "free"


@dataclass
class Source:
    assignment: str
    path: Path
    cells: list[SourceCell]

    @classmethod
    def load(cls, path: Path, assignment: str | None = None) -> "Source":
        nb = nbformat.read(path, as_version=4)
        cells = []
        for i, c in enumerate(nb.cells):
            meta = c.get("metadata", {}).get("nbgrader", {})
            cells.append(SourceCell(i, _kind(c), c.get("id", f"cell-{i}"), meta.get("grade_id"), c.source, float(meta.get("points", 0) or 0)))
        return cls(assignment or path.parent.name, path, cells)

    @property
    def tests(self) -> list[SourceCell]:
        return [c for c in self.cells if c.kind == "test"]

    @property
    def manual(self) -> list[SourceCell]:
        return [c for c in self.cells if c.kind == "manual"]

    @property
    def grade_ids(self) -> set[str]:
        return {c.grade_id for c in self.cells if c.grade_id}

    def heading(self, name: str) -> str:
        """The exercise heading a student sees above the cell ``name`` (a grade id or a cell id), else ``name``."""
        idx = next((c.index for c in self.cells if name in (c.grade_id, c.cell_id)), None)
        if idx is None:
            return name
        for c in reversed(self.cells[:idx]):
            if c.kind in ("markdown", "manual"):
                heads = [ln.lstrip("#").strip() for ln in c.source.splitlines() if re.match(r"^#{1,6}\s", ln)]
                if heads:
                    return heads[-1]
        return name

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass
class Step:
    """One cell of the run: ``trusted`` (source code, locked), ``student`` (their code) or ``test``."""

    kind: str
    name: str
    code: str
    points: float = 0.0
    visible: str = ""
    deleted: bool = False


@dataclass
class Plan:
    source: Source
    steps: list[Step]
    answers: dict[str, str]  # manual grade_id -> the student's text
    notes: list[str] = field(default_factory=list)
    tampered: list[str] = field(default_factory=list)
    notebook_name: str = ""
    extras: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # source index -> (position, code) of extra cells after it


def lined_up_notebook(p: Plan) -> nbformat.NotebookNode:
    """The submission as nbgrader's autograde reads it: the source notebook with the student's answers.

    Locked cells, tests (their visible part) and markdown come from the source; each answer cell holds the copy that was
    graded (the first, for a duplicated cell), so nbgrader's ``DeduplicateIds`` finds nothing to
    choose and the gradebook records the same copy the sandbox ran; a deleted test is back in its
    place (its verdict says it failed); extra cells follow the cell they followed, without nbgrader
    metadata.
    """
    nb = nbformat.read(p.source.path, as_version=4)
    student = {s.name: s.code for s in p.steps if s.kind == "student"}

    def extra(after: int) -> list:
        return [nbformat.v4.new_code_cell(code, id=f"extra-cell-{pos + 1}") for pos, code in p.extras.get(after, [])]

    cells = extra(-1)
    for sc, cell in zip(p.source.cells, nb.cells):
        if sc.kind == "solution" or sc.kind == "free":
            cell.source = student.get(sc.grade_id if sc.kind == "solution" else sc.cell_id, "" if sc.kind == "solution" else cell.source)
        elif sc.kind == "manual":
            cell.source = p.answers.get(sc.grade_id, "")
        elif sc.kind == "test":
            cell.source = sc.visible  # nbgrader restores the whole test from its gradebook; this copy may reach the sandbox
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
        cells += extra(sc.index)
    nb.cells = cells
    return nb


def _norm(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip().splitlines())


def read_notebook(path: Path):
    """Parse a submitted notebook or raise ``IntakeError('invalid_notebook', why)``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IntakeError("invalid_notebook", f"{path.name}: cannot be read ({e.strerror})") from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntakeError("invalid_notebook", f"{path.name} is not valid notebook JSON ({e}); re-download it from JupyterLab and resubmit") from e
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise IntakeError("invalid_notebook", f"{path.name} has no list of cells: it is not a Jupyter notebook")
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
    except Exception as e:  # noqa: BLE001 - nbformat raises many kinds
        raise IntakeError("invalid_notebook", f"{path.name} could not be read as a notebook ({type(e).__name__}: {e})") from e
    for c in nb.cells:
        src = c.get("source", "")
        if not isinstance(src, str):
            c.source = "".join(x for x in src if isinstance(x, str)) if isinstance(src, list) else ""
        if not isinstance(c.get("metadata"), dict):
            c.metadata = nbformat.NotebookNode()
        meta = c.metadata.get("nbgrader")
        if meta is not None and not (isinstance(meta, dict) and isinstance(meta.get("grade_id", ""), str)):
            del c.metadata["nbgrader"]  # metadata of the wrong shape counts as none (like a stripped cell)
        if not isinstance(c.get("id", ""), str):
            c.id = ""
    return nb


def _overlap(nb, source: Source) -> int:
    ids = {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.cells}
    cell_ids = {c.get("id") for c in nb.cells}
    return len(ids & source.grade_ids) + len(cell_ids & {c.cell_id for c in source.cells})


MAX_DEPTH = 32
MAX_FILES = 10_000


def list_files(folder: Path) -> tuple[list[tuple[str, Path]], list[bytes]]:
    """Regular files under ``folder``: ``([(relative name, path)], [relative names that are not UTF-8])``.

    Names stay bytes until they decode as UTF-8; symbolic links are not followed; the walk is
    iterative and stops at ``MAX_DEPTH`` levels and ``MAX_FILES`` files, so no tree a student
    sends can exhaust the grader.
    """
    import os
    import stat

    good: list[tuple[str, Path]] = []
    bad: list[bytes] = []
    stack: list[tuple[bytes, int]] = [(b"", 0)]
    root = os.fsencode(folder)
    while stack and len(good) + len(bad) < MAX_FILES:
        rel, depth = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, rel) if rel else root), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            name = os.path.join(rel, e.name) if rel else e.name
            try:
                mode = e.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                if depth + 1 < MAX_DEPTH:
                    stack.append((name, depth + 1))
            elif stat.S_ISREG(mode):
                try:
                    text = name.decode("utf-8")
                except UnicodeDecodeError:
                    bad.append(name)
                    continue
                good.append((text, folder / text))
    return sorted(good), sorted(bad)


def find_notebook(folder: Path, source: Source):
    """The submitted notebook for ``source`` in ``folder``: by name, else the best match by content."""
    if not folder.is_dir():
        raise IntakeError("missing", "no submission folder")
    files, undecodable = list_files(folder)
    candidates = [p for rel, p in files if rel.endswith(".ipynb") and ".ipynb_checkpoints" not in Path(rel).parts]
    if not candidates:
        if any(n.endswith(b".ipynb") for n in undecodable):
            shown = undecodable[0].decode("utf-8", "backslashreplace")
            raise IntakeError("invalid_notebook", f"the notebook's file name is not valid UTF-8 ({shown}); rename it and resubmit")
        raise IntakeError("missing", "the submission folder has no notebook")
    expected = source.path.name
    parsed, problems = [], []
    for p in candidates:
        try:
            parsed.append((p, read_notebook(p)))
        except IntakeError as e:
            problems.append(e)
    exact = [(p, nb) for p, nb in parsed if p.name == expected]
    if exact:
        return exact[0][0], exact[0][1], []
    scored = sorted(((_overlap(nb, source), p, nb) for p, nb in parsed), key=lambda t: (-t[0], str(t[1])))
    if scored and scored[0][0] > 0:
        _, p, nb = scored[0]
        return p, nb, [f"graded {p.relative_to(folder)} (expected {expected}; matched by content)"]
    if problems:
        raise IntakeError("invalid_notebook", "; ".join(e.reason for e in problems))
    raise IntakeError("missing", f"no notebook in the submission matches {expected} ({len(candidates)} other notebook(s) found)")


def defined_names(code: str) -> set[str]:
    """Top-level names a cell binds (assignments, imports, defs)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    out: set[str] = set()
    for node in tree.body:
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else [node]:
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(sub.name)
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                out.add(sub.id)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                out.update((a.asname or a.name).split(".")[0] for a in sub.names if a.name != "*")
    return out


def used_names(code: str) -> set[str]:
    """Every name a cell reads, at any depth (builtins excluded)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - set(dir(builtins))


def plan(source: Source, nb, notebook_name: str = "") -> Plan:
    """Line the submission up with the source; see the module docstring for the rules."""
    by_grade: dict[str, list] = {}
    by_id: dict[str, list] = {}
    for pos, c in enumerate(nb.cells):
        gid = c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid:
            by_grade.setdefault(gid, []).append((pos, c))
        by_id.setdefault(c.get("id"), []).append((pos, c))
    notes: list[str] = []
    tampered: list[str] = []
    matched: dict[int, int] = {}  # student position -> source index
    answers: dict[str, str] = {}
    chosen: dict[int, object] = {}
    for sc in source.cells:
        hit = None
        if sc.grade_id and sc.grade_id in by_grade:
            hits = by_grade[sc.grade_id]
            if len(hits) > 1:
                notes.append(f"cell {sc.grade_id} appears {len(hits)} times; the first copy was graded")
            hit = hits[0]
            for pos, _ in hits[1:]:
                matched[pos] = sc.index
        elif sc.kind in ("free", "markdown") and sc.cell_id in by_id:
            hit = by_id[sc.cell_id][0]
        if hit is not None:
            matched.setdefault(hit[0], sc.index)
            chosen[sc.index] = hit[1]
    extras: dict[int, list] = {}
    last = -1
    for pos, c in enumerate(nb.cells):
        if pos in matched:
            last = max(last, matched[pos])
        elif c.cell_type == "code" and c.source.strip():
            extras.setdefault(last, []).append((pos, c))
    extras_code = {k: [(pos, c.source) for pos, c in v] for k, v in extras.items()}
    steps: list[Step] = []

    def add_extras(after: int):
        for pos, c in extras.get(after, []):
            steps.append(Step("student", f"extra cell {pos + 1}", c.source))

    add_extras(-1)
    for sc in source.cells:
        got = chosen.get(sc.index)
        if sc.kind == "setup":
            if got is not None and _norm(got.source) != _norm(sc.source):
                tampered.append(f"locked cell {sc.grade_id} was edited (restored from the source)")
            steps.append(Step("trusted", sc.grade_id or sc.cell_id, sc.source))
        elif sc.kind == "solution":
            if got is None:
                notes.append(f"answer cell {sc.grade_id} is missing from the notebook")
            elif got.cell_type != "code":
                notes.append(f"answer cell {sc.grade_id} is not a code cell; it was not run")
            else:
                steps.append(Step("student", sc.grade_id, got.source))
        elif sc.kind == "free":
            if got is not None and got.cell_type == "code":
                steps.append(Step("student", sc.cell_id, got.source))
        elif sc.kind == "test":
            deleted = got is None or not got.get("metadata", {}).get("nbgrader", {}).get("grade")
            if deleted:
                tampered.append(f"test cell {sc.grade_id} was deleted or its metadata removed (graded as failed)")
            elif _norm(got.source) not in (_norm(sc.source), _norm(sc.visible)):
                tampered.append(f"test cell {sc.grade_id} was edited (restored from the source)")
            steps.append(Step("test", sc.grade_id, sc.source, sc.points, sc.visible, deleted=deleted))
        elif sc.kind == "manual":
            answers[sc.grade_id] = got.source if got is not None else ""
            if got is None:
                notes.append(f"written answer {sc.grade_id} is missing")
        add_extras(sc.index)
    return Plan(source, steps, answers, notes, tampered, notebook_name, extras_code)
