"""A throwaway nbgrader course to release assignments into.

Used by the tests of the series to check that ``make release`` reproduces ``notebooks/``; grading
itself is the rest of ``grader/``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .config import ROOT, venv_env


def nbgrader_env(extra: dict | None = None) -> dict:
    env = venv_env()
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("IOI_ANOMALIES_MODEL", "embedded")
    env.setdefault("PYTHONHASHSEED", "0")
    if extra:
        env.update(extra)
    return env


def write_config(root: Path) -> None:
    """A course's nbgrader_config.py, with the project's execution settings (``ioi_anomalies.validate.EXECUTION``)."""
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "from ioi_anomalies.validate import apply_execution_settings\n"
        "apply_execution_settings(c)\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{root}/gradebook.db'\n"
        "c.ClearSolutions.code_stub = {'python': '# YOUR CODE HERE\\nraise NotImplementedError()'}\n"
        "c.ClearSolutions.enforce_metadata = True\n"
    )


def run_nbgrader(root: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"]
    r = subprocess.run(cmd, cwd=root, env=nbgrader_env(env), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def release_into(root: Path, assignment: str) -> Path:
    """Copy solutions/<assignment> into a course at ``root`` and generate the student version."""
    src = root / "source" / assignment
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "solutions" / assignment, src)
    write_config(root)
    run_nbgrader(root, "generate_assignment", assignment, "--force")
    return root / "release" / assignment
