"""``python -m tools.lab`` (``make lab``): the student's JupyterLab, on the student's own copy of the assignments.

The first run copies ``notebooks/`` into the workspace (``work/`` by default, ignored by git); later
runs add assignments that are new and never overwrite a notebook already there, so the tracked
``notebooks/`` stay as released however the student works. The expected-output pages
(``build/report/``, made by ``make demo``) are copied next to them, so the notebooks' "expected
output" links open.

The server gets its own Jupyter configuration (``<workspace>/.jupyter/``): the student's Validate
button (nbgrader's validate extension, with the project's execution settings) stays; the
instructor's nbgrader tools (Create Assignment, Formgrader, Course List and the Nbgrader menu) are
switched off for this server only. ``make formgrader`` is the instructor's Lab, with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .paths import ROOT

WORK = ROOT / "work"
# nbgrader's instructor tools: off in the student's Lab (the validate extension stays on)
INSTRUCTOR_LAB_PLUGINS = ("@jupyter/nbgrader:create-assignment", "@jupyter/nbgrader:formgrader",
                          "@jupyter/nbgrader:course-list", "@jupyter/nbgrader:menu")
INSTRUCTOR_SERVER_EXTENSIONS = ("nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list")
NBGRADER_CONFIG = """# The student's nbgrader settings: the project's execution settings for the Validate button.
from ioi_anomalies.validate import apply_execution_settings

apply_execution_settings(get_config())  # noqa: F821
"""


def prepare(work: Path = WORK, notebooks: Path = ROOT / "notebooks", pages: Path = ROOT / "build" / "report") -> list[Path]:
    """Copy the assignments into ``work`` (never overwriting the student's notebooks) and write the server's config."""
    created = []
    for folder in sorted(p for p in notebooks.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for src in sorted(folder.rglob("*")):
            if not src.is_file() or ".ipynb_checkpoints" in src.parts:
                continue
            dst = work / src.relative_to(notebooks)
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                created.append(dst)
    if pages.is_dir():
        target = work / "build" / "report"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(pages, target)
    write_config(work / ".jupyter")
    return created


def write_config(conf: Path) -> None:
    """The student server's Jupyter config folder (use it as JUPYTER_CONFIG_DIR)."""
    (conf / "labconfig").mkdir(parents=True, exist_ok=True)
    (conf / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {p: True for p in INSTRUCTOR_LAB_PLUGINS}}, indent=1) + "\n")
    (conf / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {e: False for e in INSTRUCTOR_SERVER_EXTENSIONS}}}, indent=1) + "\n")
    (conf / "nbgrader_config.py").write_text(NBGRADER_CONFIG)


def command(work: Path, port: int | None = None, headless: bool = False, token: str | None = None) -> tuple[list[str], dict]:
    """The ``jupyter lab`` command line and environment for the student's server (run it with cwd=work)."""
    args = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={work}", "--LabApp.default_url=/lab/tree"]
    if port:
        args += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if headless:
        args.append("--ServerApp.open_browser=False")
    if token is not None:
        args.append(f"--IdentityProvider.token={token}")
    if os.getuid() == 0:
        args.append("--allow-root")
    env = dict(os.environ)
    env["JUPYTER_CONFIG_DIR"] = str(work / ".jupyter")  # this server's own config, on top of the environment's
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("IOI_ANOMALIES_MODEL", "embedded")
    return args, env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=WORK, help="the student's workspace (default: work/, ignored by git)")
    p.add_argument("--port", type=int, help="port to serve on (default: 8888, or the next free one)")
    p.add_argument("--headless", action="store_true", help="do not open a browser; open the URL the server prints")
    a = p.parse_args(argv)
    work = a.work.resolve()
    created = prepare(work)
    if created:
        print(f"your copy of the assignments: {work} ({len(created)} file(s) copied from notebooks/)")
    print(f"your work lives in {work}; hand in work/<assignment>/<assignment>.ipynb (see the README)")
    if not (ROOT / "build" / "report").is_dir():
        print("note: the expected-output pages are not built yet: run `make demo` (or `make report`)")
    args, env = command(work, a.port, a.headless)
    return subprocess.call(args, cwd=work, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
