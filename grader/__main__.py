"""python -m grader {release,validate} ... (see --help)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and not p.name.startswith("."))


def _env() -> dict:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # nbgrader runs alembic from here
    return env


def release(assignments: list[str]) -> int:
    """Regenerate notebooks/<assignment>/ from solutions/<assignment>/ with nbgrader."""
    (ROOT / "grader" / "course").mkdir(parents=True, exist_ok=True)
    for a in assignments or ASSIGNMENTS:
        if not (ROOT / "solutions" / a).is_dir():
            print(f"no assignment {a!r} in solutions/ (have: {', '.join(ASSIGNMENTS)})", file=sys.stderr)
            return 2
        out = ROOT / "notebooks" / a
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "nbgrader", "generate_assignment", a, "--force", "--log-level=WARN"]
        r = subprocess.run(cmd, cwd=ROOT, env=_env())
        if r.returncode != 0 or not out.exists():
            print(f"release of {a} failed", file=sys.stderr)
            return 1
        print(f"released {a} -> {out.relative_to(ROOT)}")
    return 0


def validate(path: str) -> int:
    """Run a notebook top to bottom and report failing tests; exit 1 on any failure."""
    from nbgrader.validator import Validator

    nb = Path(path)
    if not nb.exists():
        print(f"{nb}: no such notebook", file=sys.stderr)
        return 2
    os.environ["PATH"] = _env()["PATH"]
    result = Validator().validate(str(nb))
    problems = [(key, cell) for key in ("type_changed", "changed", "failed") for cell in result.get(key, [])]
    if not problems:
        print(f"{nb}: all visible tests pass (hidden tests run when it is graded)")
        return 0
    for kind, cell in problems:
        src = cell.get("source", "")
        err = cell.get("error", "")
        print(f"--- {kind}: {src.strip().splitlines()[0] if src.strip() else ''}\n{err}\n")
    print(f"{nb}: {len(problems)} problem(s)", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m grader", description="The instructor's tools for the IOI anomalies series.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="regenerate notebooks/ from solutions/ (nbgrader generate_assignment)")
    r.add_argument("assignments", nargs="*", help=f"default: all ({', '.join(ASSIGNMENTS)})")
    v = sub.add_parser("validate", help="run one notebook and check its visible tests; exits 1 on failure")
    v.add_argument("notebook")
    a = p.parse_args(argv)
    if a.cmd == "release":
        return release(a.assignments)
    return validate(a.notebook)


if __name__ == "__main__":
    raise SystemExit(main())
