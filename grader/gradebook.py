"""nbgrader's gradebook, kept in step with the grader's results, and home of the manual grades.

The automatic grades live in the result files (``grader/autograde.py``); nbgrader's own autograde
(with the project's execute step, ``grader/preprocessors.py``) writes them into its gradebook
(``grader/course/gradebook.db``) and its autograded notebooks, which the formgrader shows. The
gradebook also stores what humans add: manual scores and comments, from the formgrader or from
``make manual-import``. Every write is one transaction, retried while another process holds the
database, so a crash never leaves half of it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import nbformat

from . import course as course_mod
from .config import Config
from .course import Course
from .intake import Source, find_notebook, lined_up_notebook, plan
from .results import SubmissionResult


def db_url(course: Path) -> str:
    return f"sqlite:///{course / 'gradebook.db'}"


_retry = course_mod._retry


@contextlib.contextmanager
def gradebook(course: Path):
    from nbgrader.api import Gradebook

    course_mod.gradebook_in_process()
    course.mkdir(parents=True, exist_ok=True)
    gb = _retry(lambda: Gradebook(db_url(course)))
    try:
        yield gb
    finally:
        gb.close()


def record(cfg: Config, result: SubmissionResult) -> None:
    """Bring nbgrader's gradebook up to date with one stored result: nbgrader's own autograde, on the lined-up notebook.

    The notebook nbgrader reads (``<course>/submitted/<student>/<assignment>/<assignment>.ipynb``) is
    the submission lined up with the source (``intake.lined_up_notebook``); nbgrader's pipeline then
    restores the tests, writes each verdict as the test's output (``SandboxExecute``, from the stored
    result) and scores them with ``SaveAutoGrades``. Manual grades already given stay.
    """
    a, s = result.assignment, result.student
    source = Source.load(cfg.solutions / a / f"{a}.ipynb", a)
    folder = cfg.submitted / s / a
    nb_path, nb, _ = find_notebook(folder, source)
    course = Course(cfg)
    out = course.submitted_notebook(s, a)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".ipynb.tmp")
    nbformat.write(lined_up_notebook(plan(source, nb, nb_path.name)), tmp)
    tmp.replace(out)
    course.autograde(s, a)


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
