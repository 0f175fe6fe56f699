"""The course: nbgrader's configuration, its folders and its API in one place.

Every nbgrader configuration of the project comes from :func:`configure`: the repository's
``nbgrader_config.py`` (``make release``, ``make formgrader``, a plain ``nbgrader autograde``), the
grader's course (:class:`Course`, built from the grader's settings) and throwaway courses
(:func:`write_config`). Release, registration in the gradebook, autograding and feedback go through
``nbgrader.apps.NbGraderAPI`` in this process; nothing launches ``nbgrader`` as a command.

With ``sandboxed=True`` nbgrader's autograde pipeline runs the project's preprocessor in place of
``Execute`` (``grader/preprocessors.py``): the submission is graded in the sandbox with the separate
judge, and each test cell gets the verdict as its output, so nbgrader's own ``SaveAutoGrades``,
gradebook, formgrader and feedback work unchanged. Feedback hides the hidden tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .config import ROOT, Config, venv_env

CODE_STUB = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
AUTOGRADE_PREPROCESSORS = [  # nbgrader 0.9.6's list, with the project's execution in place of Execute
    "grader.preprocessors.SandboxExecute",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "grader.preprocessors.HideHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]


def configure(c, *, root: Path | str, source: str = "source", release: str = "release", course: Path | str | None = None,
              feedback: Path | str | None = None, sandboxed: bool = True, grader: Config | None = None) -> None:
    """Fill a traitlets config ``c`` with the project's nbgrader settings (the one place they are written).

    ``root`` is nbgrader's course root; ``source`` and ``release`` are relative to it (or absolute);
    ``course`` holds the gradebook and nbgrader's submitted/autograded copies (default: ``root``),
    ``feedback`` the feedback pages (default: ``course/feedback``). ``sandboxed`` puts the project's
    preprocessors into autograde and feedback; ``grader`` passes the grader's settings to them.
    """
    from ioi_anomalies.validate import apply_execution_settings

    course = Path(course or root)
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.source_directory = str(source)
    c.CourseDirectory.release_directory = str(release)
    c.CourseDirectory.submitted_directory = str(course / "submitted")
    c.CourseDirectory.autograded_directory = str(course / "autograded")
    c.CourseDirectory.feedback_directory = str(feedback or course / "feedback")
    c.CourseDirectory.db_url = f"sqlite:///{course / 'gradebook.db'}"
    c.ClearSolutions.code_stub = dict(CODE_STUB)
    c.ClearSolutions.enforce_metadata = True
    apply_execution_settings(c)  # shared with `make validate` and the Validate button
    gradebook_in_process()  # in an nbgrader command too: no `alembic` to find on PATH for a new gradebook
    if sandboxed:
        c.Autograde.autograde_preprocessors = list(AUTOGRADE_PREPROCESSORS)
        c.GenerateFeedback.preprocessors = list(FEEDBACK_PREPROCESSORS)
        if grader is not None:
            from .config import config_to_json as _config_json

            c.SandboxExecute.grader_config = _config_json(grader)
            c.HideHiddenTests.grader_config = _config_json(grader)


def configure_repository(c) -> None:
    """The repository's ``nbgrader_config.py``: ``solutions/`` is the source, ``notebooks/`` the release.

    The course folder (gradebook, nbgrader's copies) is the grader's (``grader/grader_config.toml``,
    ``IOI_GRADER_COURSE`` overrides it: ``python -m grader formgrader --course`` sets it).
    """
    from .config import load

    cfg = load()
    if os.environ.get("IOI_GRADER_COURSE"):
        cfg = cfg.with_(course=Path(os.environ["IOI_GRADER_COURSE"]))
    # no grader settings passed: the preprocessors grade what nbgrader's submitted folder holds, and keep those
    # verdicts in <course>/verdicts/ (`make autograde` keeps its own in grader/results/)
    configure(c, root=ROOT, source="solutions", release="notebooks", course=cfg.course, feedback=cfg.feedback)


def write_config(root: Path, sandboxed: bool = False) -> None:
    """A throwaway course's ``nbgrader_config.py`` (for running the nbgrader command there), from :func:`configure`."""
    (root / "nbgrader_config.py").write_text(
        "c = get_config()  # noqa: F821\n"
        "from grader.course import configure\n"
        f"configure(c, root={str(root)!r}, sandboxed={sandboxed!r})\n")


def nbgrader_env(extra: dict | None = None) -> dict:
    env = venv_env()
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("IOI_ANOMALIES_MODEL", "embedded")
    env.setdefault("PYTHONHASHSEED", "0")
    if extra:
        env.update(extra)
    return env


def run_nbgrader(root: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The ``nbgrader`` command in a throwaway course (what an instructor types; the benchmark's baseline)."""
    cmd = [sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"]
    r = subprocess.run(cmd, cwd=root, env=nbgrader_env(env), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


class NbGraderError(RuntimeError):
    """An nbgrader step failed; the message carries its log."""


def alembic_head() -> str:
    """The revision nbgrader stamps on a new gradebook: the head of its own migration scripts, read in this process.

    nbgrader 0.9.6 asks for it with ``alembic heads`` in a subprocess (the ``alembic`` found on PATH, about 3 s of
    CPU for every new gradebook). Both read the scripts in ``nbgrader/alembic``, so the revision is the same."""
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    return ScriptDirectory(ALEMBIC_DIR).get_current_head()


def gradebook_in_process() -> None:
    """nbgrader's new gradebooks, made in this process, take their revision from :func:`alembic_head` (read once)."""
    import functools

    import nbgrader.api

    if getattr(nbgrader.api.get_alembic_version, "__wrapped__", None) is not alembic_head:
        nbgrader.api.get_alembic_version = functools.cache(alembic_head)


def _api(c):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    gradebook_in_process()
    db = c.CourseDirectory.db_url
    if db.startswith("sqlite:///"):
        Path(db[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return NbGraderAPI(coursedir=CourseDirectory(config=c), config=c)


def _check(result: dict, what: str) -> None:
    if not result.get("success"):
        raise NbGraderError(f"nbgrader {what} failed: {(result.get('error') or '')[-2000:]}\n{(result.get('log') or '')[-2000:]}")


def generate_assignment(c, assignment: str) -> None:
    """nbgrader's release of one assignment with the settings ``c`` (also registers it in the gradebook)."""
    with warnings_quiet():
        _check(_api(c).generate_assignment(assignment, force=True, create=True), f"generate_assignment {assignment}")


@contextlib.contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbgrader trips harmless SQLAlchemy and traitlets warnings
        yield


def release_repository(assignment: str) -> Path:
    """``make release``: ``solutions/<assignment>`` -> ``notebooks/<assignment>`` with the repository's configuration."""
    from traitlets.config import Config as TConfig

    c = TConfig()
    configure_repository(c)
    out = ROOT / "notebooks" / assignment
    if out.exists():
        shutil.rmtree(out)
    generate_assignment(c, assignment)
    return out


def release_into(root: Path, assignment: str) -> Path:
    """Copy solutions/<assignment> into a throwaway course at ``root`` and generate the student version."""
    from traitlets.config import Config as TConfig

    src = root / "source" / assignment
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "solutions" / assignment, src)
    write_config(root)
    c = TConfig()
    configure(c, root=root, sandboxed=False)
    generate_assignment(c, assignment)
    return root / "release" / assignment


def _retry(fn, attempts: int = 20):
    from sqlalchemy.exc import OperationalError

    for i in range(attempts):
        try:
            return fn()
        except OperationalError as e:  # "database is locked": someone else is writing; wait
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.25 * (i + 1))


def wait_for_gradebook(db: Path, timeout: float = 60.0) -> None:
    """Return once no other process holds the gradebook's write lock (nbgrader itself gives up after 5 s)."""
    import sqlite3

    if not db.exists():
        return
    con = sqlite3.connect(db, timeout=timeout, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
    finally:
        con.close()


class Course:
    """The grader's nbgrader course, from the grader's settings: folders, configuration and API.

    ``cfg.course`` holds the gradebook and nbgrader's ``submitted/`` (the lined-up copy of each
    submission) and ``autograded/`` folders; the source is ``cfg.solutions``; feedback pages go to
    ``cfg.feedback/<student>/<assignment>/<assignment>.html``.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = cfg.course

    def config(self):
        from traitlets.config import Config as TConfig

        c = TConfig()
        configure(c, root=self.root, source=str(self.cfg.solutions), release=str(self.root / "release"), course=self.root,
                  feedback=self.cfg.feedback, grader=self.cfg)
        c.NbGraderAPI.log_level = "ERROR"
        c.Exchange.root = str(self.root / "exchange")  # the grader uses no exchange; nbgrader only checks that one is writable
        return c

    @property
    def db(self) -> Path:
        return self.root / "gradebook.db"

    def submitted_notebook(self, student: str, assignment: str) -> Path:
        return self.root / "submitted" / student / assignment / f"{assignment}.ipynb"

    def autograded_notebook(self, student: str, assignment: str) -> Path:
        return self.root / "autograded" / student / assignment / f"{assignment}.ipynb"

    def ensure_assignment(self, assignment: str) -> None:
        """Register the assignment's cells in the gradebook (nbgrader's release into the course's own folder)."""
        from nbgrader.api import Gradebook, MissingEntry

        self.root.mkdir(parents=True, exist_ok=True)

        def known() -> bool:
            gradebook_in_process()
            with warnings_quiet(), Gradebook(f"sqlite:///{self.db}") as gb:
                try:
                    gb.find_assignment(assignment)
                    return True
                except MissingEntry:
                    return False

        if not _retry(known):
            wait_for_gradebook(self.db)
            generate_assignment(self.config(), assignment)

    def autograde(self, student: str, assignment: str) -> None:
        """nbgrader's autograde of the lined-up copy at :meth:`submitted_notebook` (the verdict is already stored)."""
        last = None
        for i in range(5):
            wait_for_gradebook(self.db)
            with warnings_quiet():
                r = _api(self.config()).autograde(assignment, student, force=True, create=True)
            if r.get("success"):
                return
            last = r
            time.sleep(0.5 * (i + 1))  # most likely the gradebook was taken between the wait and the write
        _check(last, f"autograde {assignment} for {student}")

    def generate_feedback(self, student: str, assignment: str) -> Path:
        with warnings_quiet():
            _check(_api(self.config()).generate_feedback(assignment, student, force=True), f"generate_feedback {assignment} for {student}")
        return self.cfg.feedback / student / assignment / f"{assignment}.html"


def scratch_release(assignment: str, into: Path) -> None:
    """Release one assignment of ``solutions/`` into ``into`` (a scratch folder), registered in a gradebook next to it."""
    from traitlets.config import Config as TConfig

    c = TConfig()
    configure(c, root=ROOT, source="solutions", release=str(into / "release"), course=into / "course", sandboxed=False)
    generate_assignment(c, assignment)


__all__ = ["Course", "configure", "configure_repository", "write_config", "release_into", "release_repository", "run_nbgrader",
           "nbgrader_env", "NbGraderError", "scratch_release", "alembic_head", "gradebook_in_process"]
