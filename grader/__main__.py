"""python -m grader COMMAND ... : the instructor's tools for the IOI anomalies series (see --help)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import config as config_mod

ROOT = config_mod.ROOT
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and not p.name.startswith("."))


def release(assignments: list[str]) -> int:
    """Regenerate notebooks/<assignment>/ from solutions/<assignment>/ with nbgrader (the repository's nbgrader_config.py)."""
    from .course import NbGraderError, release_repository

    for a in assignments or ASSIGNMENTS:
        if not (ROOT / "solutions" / a).is_dir():
            print(f"no assignment {a!r} in solutions/ (have: {', '.join(ASSIGNMENTS)})", file=sys.stderr)
            return 2
        try:
            out = release_repository(a)
        except NbGraderError as e:
            print(f"release of {a} failed: {e}", file=sys.stderr)
            return 1
        print(f"released {a} -> {out.relative_to(ROOT)}")
    return 0


def validate(path: str, kernel: str | None = None) -> int:
    """The student's self-check (``ioi_anomalies.validate``): visible tests, plain-text report, exit 1 on failure."""
    from ioi_anomalies.validate import main as validate_main

    return validate_main([path] + (["--kernel", kernel] if kernel else []))


def _cfg(a) -> config_mod.Config:
    cfg = config_mod.load(a.config)
    over = {"jobs": getattr(a, "jobs", None), "model": getattr(a, "model", None)}
    for k in ("submitted", "results", "feedback", "grades", "course", "roster"):
        v = getattr(a, k, None)
        if v:
            over[k] = Path(v).resolve()
    if over.get("model") and over["model"] not in config_mod.MODELS:
        raise SystemExit(f"--model must be one of {config_mod.MODELS}")
    return cfg.with_(**over)


def _assignments(a, cfg) -> list[str]:
    from .autograde import graded_assignments

    have = graded_assignments(cfg)
    for x in a.assignments:
        if x not in have:
            raise SystemExit(f"no graded assignment {x!r} (have: {', '.join(have)})")
    return a.assignments or have


def cmd_autograde(a) -> int:
    from .autograde import autograde
    from .cluster import ClusterError, parse_address
    from .reports import collect, export, format_table, summary

    cfg = _cfg(a)
    try:
        if a.cluster:
            parse_address(a.cluster, cfg.n_jobs)  # a mistyped address fails before anything is prepared
    except ClusterError as e:
        print(f"autograde: {e}", file=sys.stderr)
        return 2
    if not cfg.submitted.is_dir():
        print(f"nothing to grade: {cfg.submitted} does not exist (submissions go to {cfg.submitted}/<student>/<assignment>/<notebook>.ipynb)",
              file=sys.stderr)
        return 2
    try:
        results = autograde(cfg, _assignments(a, cfg), only=a.student or None, force=a.force, cluster=a.cluster)
    except ClusterError as e:
        print(f"autograde: {e}", file=sys.stderr)
        return 2
    print(summary(results, cfg.results / "score_histogram.html"))
    path = export(cfg, _assignments(a, cfg))
    rows = [r for r in collect(cfg, _assignments(a, cfg)) if not a.student or r["student"] in a.student]
    print(format_table(rows))
    print(f"grades: {path}")
    return 0


def cmd_export(a) -> int:
    from .reports import export

    cfg = _cfg(a)
    print(f"grades: {export(cfg, _assignments(a, cfg))}")
    return 0


def cmd_feedback(a) -> int:
    from .reports import write_feedback

    cfg = _cfg(a)
    paths = write_feedback(cfg, _assignments(a, cfg))
    print(f"{len(paths)} feedback page(s) under {cfg.feedback}")
    return 0


def cmd_manual_sheet(a) -> int:
    from .reports import manual_sheet

    cfg = _cfg(a)
    out = Path(a.out)
    n = manual_sheet(cfg, out, _assignments(a, cfg))
    print(f"{n} answer(s) to grade in {out}: fill in 'score' (and 'comment'), then `make manual-import FILE={out}`")
    return 0


def cmd_manual_import(a) -> int:
    from .reports import ImportError_, manual_import

    cfg = _cfg(a)
    try:
        n = manual_import(cfg, Path(a.file))
    except ImportError_ as e:
        print(e, file=sys.stderr)
        return 1
    print(f"imported {n} manual grade(s); `make export` shows them")
    return 0


def cmd_formgrader(a) -> int:
    cfg = _cfg(a)
    args = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={ROOT}", "--ServerApp.open_browser=False"]
    if a.port:
        args.append(f"--ServerApp.port={a.port}")
    if os.getuid() == 0:
        args.append("--allow-root")
    print("formgrader: open the URL below, then Nbgrader -> Formgrader (Manage Assignments / Manual Grading)")
    return subprocess.call(args, cwd=ROOT, env={**config_mod.venv_env(), "IOI_GRADER_COURSE": str(cfg.course)})


def main(argv=None) -> int:
    try:
        import nbformat  # noqa: F401
    except ModuleNotFoundError:
        print("python -m grader needs the project's environment: run `make setup`, then `.venv/bin/python -m grader ...` "
              "(or the make targets, which use it)", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="python -m grader", description="The instructor's tools for the IOI anomalies series.")
    p.add_argument("--config", help="grader settings (default: grader/grader_config.toml)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="regenerate notebooks/ from solutions/ (nbgrader generate_assignment)")
    r.add_argument("assignments", nargs="*", help=f"default: all ({', '.join(ASSIGNMENTS)})")
    v = sub.add_parser("validate", help="run one notebook and check its visible tests; exits 1 on failure")
    v.add_argument("notebook", help="the notebook to run, e.g. notebooks/01_early_induction_heads/01_early_induction_heads.ipynb")
    v.add_argument("--kernel", help="Jupyter kernel to run it with (default: the notebook's own, ioi-anomalies)")

    def common(sp, paths=("submitted", "results", "grades", "course", "roster")):
        sp.add_argument("assignments", nargs="*", help="default: every graded assignment")
        for k in paths:
            sp.add_argument(f"--{k}", help=f"override the {k} path of the config")
        return sp

    ag = common(sub.add_parser("autograde", help="grade every submission (sandboxed, resumable); writes grades.csv"))
    ag.add_argument("--jobs", type=int, help="submissions graded at a time (default: config; 0 = one more than the cores, as memory allows)")
    ag.add_argument("--model", help="embedded or gpt2-small (default: config)")
    ag.add_argument("--student", action="append", help="grade only this student (repeatable)")
    ag.add_argument("--force", action="store_true", help="regrade even when nothing changed")
    ag.add_argument("--cluster", metavar="ADDRESS", help="grade on a Dask cluster: a scheduler address (tcp://host:8786), a "
                    "scheduler file (.json), or local:N for N worker processes here (needs pip install '.[cluster]')")
    common(sub.add_parser("export", help="write grades.csv: one row per student and assignment, with statuses"))
    common(sub.add_parser("feedback", help="nbgrader's feedback, hidden tests left out: one HTML page per graded notebook"),
           paths=("submitted", "results", "feedback", "course", "roster"))
    ms = common(sub.add_parser("manual-sheet", help="write a CSV of every written answer that needs a human"))
    ms.add_argument("--out", default=str(ROOT / "grader" / "manual_grades.csv"), help="the CSV to write (default: grader/manual_grades.csv)")
    mi = sub.add_parser("manual-import", help="read manual scores and comments back from a CSV (all rows or none)")
    mi.add_argument("file", help="the filled-in sheet written by manual-sheet")
    for k in ("submitted", "results", "course", "roster"):
        mi.add_argument(f"--{k}", help=f"override the {k} path of the config")
    dm = sub.add_parser("demo", help="the instructor's tour: release, grade the example class in grader/examples/, print the table")
    dm.add_argument("--jobs", type=int, help="submissions graded at a time (default: config; 0 = one more than the cores, as memory allows)")
    fg = sub.add_parser("formgrader", help="serve nbgrader's formgrader in JupyterLab (the instructor's Lab, with nbgrader's tools)")
    fg.add_argument("--course", help="nbgrader course folder: gradebook and autograded notebooks (default: grader/course)")
    fg.add_argument("--port", type=int, help="port to serve on (default: Jupyter's, 8888 or the next free one)")
    a = p.parse_args(argv)
    if a.cmd == "release":
        return release(a.assignments)
    if a.cmd == "validate":
        return validate(a.notebook, a.kernel)
    if a.cmd == "demo":
        from .examples import demo

        return demo(jobs=a.jobs)
    return {"autograde": cmd_autograde, "export": cmd_export, "feedback": cmd_feedback, "manual-sheet": cmd_manual_sheet,
            "manual-import": cmd_manual_import, "formgrader": cmd_formgrader}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main())
