"""``python -m tools.handout`` (``make handout``): what a graded course gives its students.

``build/handout/ioi-anomalies-handout/`` and ``build/handout/ioi-anomalies-handout.tar.gz`` hold:

- ``notebooks/``: the released notebooks (answer cells empty, visible tests only);
- ``ioi_anomalies/`` and a ``pyproject.toml`` that installs it: the helper package, with the
  self-check ``python -m ioi_anomalies.validate``;
- ``build/report/``: the expected-output pages (outputs, figures and visible tests; no solution
  code, no hidden test), where the notebooks' "expected output" links point;
- ``.jupyter/``: the student's JupyterLab settings (Validate button on, instructor's tools off);
- ``README.md``: how to install, work, check and hand in.

Nothing from ``solutions/``, ``grader/`` or ``tests/`` goes in. Publish the directory through
nbgrader's exchange or an LMS, or hand out the archive.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tomllib
from pathlib import Path

from .paths import ROOT

NAME = "ioi-anomalies-handout"
OUT = ROOT / "build" / "handout"
TOOLING = {"pytest", "selenium"}  # the project's test tools, not needed by students

README = """# IOI anomalies: the assignments

A graded series of Jupyter exercises on the anomalies of GPT-2 small's IOI circuit.

## Set up (once)

With Python 3.11:

```bash
python3.11 -m venv .venv
.venv/bin/pip install torch=={torch}     # first, pinned: avoids a multi-GB CUDA build
.venv/bin/pip install -e .
.venv/bin/python -m ipykernel install --sys-prefix --name ioi-anomalies --display-name "Python (ioi-anomalies)"
```

## Work

```bash
JUPYTER_CONFIG_DIR=.jupyter .venv/bin/jupyter lab    # from this folder: Validate button on, instructor tools off
```

Your work lives in `notebooks/<assignment>/<assignment>.ipynb` of this folder: keep a copy. Each
notebook links its expected output (`build/report/`): outputs and figures as they should look once
solved. Fill in the cells marked `# YOUR CODE HERE` and the written answers marked `YOUR ANSWER HERE`;
do not edit the test cells (they are restored at grading).

## Check

Click **Validate** in JupyterLab, or:

```bash
.venv/bin/python -m ioi_anomalies.validate notebooks/01_early_induction_heads/01_early_induction_heads.ipynb
```

It runs the notebook top to bottom in a fresh kernel and prints each visible test, passed or failed,
under its exercise heading; it exits 1 while a visible test fails. Hidden tests (other inputs,
other models) run when your notebook is graded.

## Hand in

Hand in `notebooks/<assignment>/<assignment>.ipynb` the way your course says (nbgrader's
Assignments tab, or an upload to your course's site), keeping its file name.
"""


def _pyproject() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    proj = data["project"]
    deps = [d for d in proj["dependencies"] if d.split("=")[0].split("[")[0].strip() not in TOOLING]
    data_globs = data["tool"]["setuptools"]["package-data"]["ioi_anomalies"]
    q = lambda items: "[\n" + "".join(f"    {json.dumps(x)},\n" for x in items) + "]"  # noqa: E731
    return (
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{proj["name"]}"\nversion = "{proj["version"]}"\n'
        'description = "The helper package of the IOI anomalies exercises"\nreadme = "README.md"\n'
        f'requires-python = "{proj["requires-python"]}"\nlicense = "{proj["license"]}"\n'
        f"dependencies = {q(deps)}\n\n"
        '[tool.setuptools.packages.find]\ninclude = ["ioi_anomalies*"]\n\n'
        f"[tool.setuptools.package-data]\nioi_anomalies = {q(data_globs)}\n"
    )


def _torch_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.startswith("torch=="))


def build(out: Path = OUT, pages: Path = ROOT / "build" / "report") -> tuple[Path, Path]:
    """Write the hand-out directory and its archive under ``out``; ``pages`` are the expected-output pages."""
    from .lab import write_config

    if not (pages / "index.html").exists():
        raise SystemExit(f"no expected-output pages in {pages}: run `make report` (or `make demo`) first")
    folder = out / NAME
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info", "screenshots")
    shutil.copytree(ROOT / "notebooks", folder / "notebooks", ignore=skip)
    shutil.copytree(ROOT / "ioi_anomalies", folder / "ioi_anomalies", ignore=skip)
    shutil.copytree(pages, folder / "build" / "report", ignore=skip)
    write_config(folder / ".jupyter")
    (folder / "pyproject.toml").write_text(_pyproject())
    (folder / "README.md").write_text(README.format(torch=_torch_pin()))
    archive = out / f"{NAME}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=NAME)
    return folder, archive


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.handout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help="output folder (default: build/handout)")
    p.add_argument("--pages", type=Path, default=ROOT / "build" / "report",
                   help="the expected-output pages to include (default: build/report, made by `make report`)")
    a = p.parse_args(argv)
    folder, archive = build(a.out, a.pages)
    print(f"hand-out: {folder}\narchive:  {archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
