"""nbgrader's gradebook, kept in step with the grader's results, and home of the manual grades.

The automatic grades live in the result files (``grader/autograde.py``); nbgrader's gradebook
(``grader/course/gradebook.db``) mirrors them so that nbgrader's formgrader can show each
submission, and it stores what humans add: manual scores and comments, from the formgrader or from
``make manual-import``. Every write is one transaction, retried while another process holds the
database, so a crash never leaves half of it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from .config import ROOT, Config, venv_env
from .intake import Source



def db_url(course: Path) -> str:
    return f"sqlite:///{course / 'gradebook.db'}"


def _retry(fn, attempts: int = 20):
    from sqlalchemy.exc import OperationalError

    for i in range(attempts):
        try:
            return fn()
        except OperationalError as e:  # "database is locked": someone else is writing; wait
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.25 * (i + 1))


@contextlib.contextmanager
def gradebook(course: Path):
    import os

    from nbgrader.api import Gradebook

    os.environ["PATH"] = venv_env()["PATH"]  # nbgrader runs alembic from the environment's bin/
    course.mkdir(parents=True, exist_ok=True)
    gb = _retry(lambda: Gradebook(db_url(course)))
    try:
        yield gb
    finally:
        gb.close()


def ensure_assignment(cfg: Config, assignment: str) -> None:
    """Register the assignment's cells in the gradebook (nbgrader generate_assignment, released aside)."""
    from nbgrader.api import MissingEntry

    def known() -> bool:
        with gradebook(cfg.course) as gb:
            try:
                gb.find_assignment(assignment)
                return True
            except MissingEntry:
                return False

    if _retry(known):
        return
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", assignment, "--force", "--log-level=ERROR",
                            f"--CourseDirectory.release_directory={tmp}", f"--CourseDirectory.db_url={db_url(cfg.course)}",
                            f"--CourseDirectory.source_directory={cfg.solutions}"], cwd=ROOT, env=venv_env(), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nbgrader could not register {assignment}: {r.stderr[-2000:]}")


def autograded_notebook(result: dict, source: Source, submitted: Path) -> nbformat.NotebookNode:
    """The student's notebook as formgrader shows it: tests restored, each with the judge's verdict."""
    nb = nbformat.read(source.path, as_version=4)
    sub = None
    if result.get("notebook"):
        with contextlib.suppress(Exception):
            sub = nbformat.read(submitted / result["student"] / result["assignment"] / result["notebook"], as_version=4)
    by_grade = {}
    if sub is not None:
        for c in sub.cells:
            gid = c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if gid and gid not in by_grade:
                by_grade[gid] = c
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        gid = meta.get("grade_id")
        sc = next((c for c in source.cells if c.grade_id == gid), None) if gid else None
        if sc is None:
            continue
        if sc.kind in ("solution", "manual"):
            cell.source = by_grade[gid].source if gid in by_grade else ""
        elif sc.kind == "test":
            cell.source = sc.visible
            t = result.get("tests", {}).get(gid, {})
            if cell.cell_type == "code":
                if t.get("state") == "passed":
                    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"passed ({t['score']:g}/{t['points']:g})\n")]
                else:
                    cell.outputs = [nbformat.v4.new_output("error", ename=t.get("state", "failed"), evalue=t.get("message", ""), traceback=[t.get("message", "")])]
    return nb


def record(cfg: Config, result: dict) -> None:
    """Mirror one result into the gradebook (automatic scores only; manual ones are left as they are)."""
    from nbgrader.api import MissingEntry

    a, s = result["assignment"], result["student"]
    source = Source.load(cfg.solutions / a / f"{a}.ipynb", a)
    nb = autograded_notebook(result, source, cfg.submitted)
    out = cfg.course / "autograded" / s / a / f"{a}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(out)

    def write():
        import warnings

        with gradebook(cfg.course) as gb, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbgrader's add_submission trips a harmless SQLAlchemy warning
            gb.update_or_create_student(s)
            try:
                gb.find_submission(a, s)
            except MissingEntry:
                gb.add_submission(a, s)
            for gid, t in result.get("tests", {}).items():
                with contextlib.suppress(MissingEntry):
                    g = gb.find_grade(gid, a, a, s)
                    g.auto_score = float(t["score"])
                    g.needs_manual_grade = False
            for gid in result.get("answers", {}):
                with contextlib.suppress(MissingEntry):
                    g = gb.find_grade(gid, a, a, s)
                    g.needs_manual_grade = g.manual_score is None
            gb.db.commit()

    _retry(write)


def manual_grades(cfg: Config) -> dict[tuple[str, str, str], tuple[float | None, str]]:
    """``{(student, assignment, question): (manual score or None, comment)}`` for every graded cell."""
    from nbgrader.api import Grade, GradeCell, SubmittedAssignment, SubmittedNotebook

    if not (cfg.course / "gradebook.db").exists():
        return {}
    out = {}
    with gradebook(cfg.course) as gb:
        rows = (gb.db.query(Grade, GradeCell, SubmittedAssignment)
                .join(GradeCell, Grade.cell_id == GradeCell.id)
                .join(SubmittedNotebook, Grade.notebook_id == SubmittedNotebook.id)
                .join(SubmittedAssignment, SubmittedNotebook.assignment_id == SubmittedAssignment.id).all())
        for g, cell, sub in rows:
            comment = ""
            with contextlib.suppress(Exception):
                c = gb.find_comment(cell.name, cell.notebook.name, sub.assignment.name, sub.student.id)
                comment = c.manual_comment or ""
            out[(sub.student.id, sub.assignment.name, cell.name)] = (g.manual_score, comment)
    return out


def set_manual(cfg: Config, rows: list[tuple[str, str, str, float, str]]) -> None:
    """Write manual scores and comments ``(student, assignment, question, score, comment)`` in one transaction."""

    def write():
        with gradebook(cfg.course) as gb:
            try:
                for student, a, q, score, comment in rows:
                    g = gb.find_grade(q, a, a, student)
                    g.manual_score = float(score)
                    g.needs_manual_grade = False
                    c = gb.find_comment(q, a, a, student)
                    c.manual_comment = comment or None
                gb.db.commit()
            except Exception:
                gb.db.rollback()
                raise

    _retry(write)
