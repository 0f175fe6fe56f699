"""Grading benchmarks; one JSON object per line, like ``ioi_anomalies.bench``.

- ``autograde_one_solution``: one solution submission of ``01_early_induction_heads`` graded by
  plain nbgrader (tests in the student's kernel, no sandbox) as the baseline, and by the
  project's grader (sandboxed worker plus a separate judge);
- ``autograde_jobs``: N submissions (default 20) graded with 1 worker (baseline) and with 2.
- ``autograde_cluster``: the same N submissions graded locally with 2 workers (baseline) and on a
  Dask ``LocalCluster`` of 2 single-threaded worker processes (``--cluster local:2``, its start
  included), with the same scores.

Run with ``make bench`` (the first), ``make bench-grader`` (the second, about 10 minutes on
two cores) and ``make bench-cluster`` (the third, about 15 minutes).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path


from .autograde import autograde
from .config import ROOT, load

ASSIGNMENT = "01_early_induction_heads"
SOLUTION = ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def _class(tmp: Path, n: int):
    cfg = load().with_(submitted=tmp / "submitted", results=tmp / "results", course=tmp / "course", grades=tmp / "grades.csv",
                       roster=tmp / "none.csv")
    for i in range(n):
        folder = cfg.submitted / f"student{i:02d}" / ASSIGNMENT
        folder.mkdir(parents=True)
        shutil.copy(SOLUTION, folder / SOLUTION.name)
    return cfg


def bench_one_solution() -> dict:
    from .course import release_into, run_nbgrader

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        course = tmp / "nbgrader"
        release_into(course, ASSIGNMENT)
        dest = course / "submitted" / "s" / ASSIGNMENT
        dest.mkdir(parents=True)
        shutil.copy(SOLUTION, dest / SOLUTION.name)
        run_nbgrader(course, "db", "student", "add", "s")
        t0 = time.perf_counter()
        run_nbgrader(course, "autograde", ASSIGNMENT, "--force", "--student=s")
        baseline = time.perf_counter() - t0
        cfg = _class(tmp / "project", 1)
        t0 = time.perf_counter()
        (res,) = autograde(cfg, [ASSIGNMENT], progress=False, record=False)
        project = time.perf_counter() - t0
    return {"name": "autograde_one_solution", "baseline": "plain nbgrader autograde (unsandboxed)", "baseline_s": round(baseline, 2),
            "project_s": round(project, 2), "speedup": round(baseline / project, 3), "score": res["score"],
            "max_score": res["max_score"], "status": res["status"], "max_abs_diff": 0.0, "peak_rss_mb": _peak_rss_mb(),
            "model": cfg.model, "n_prompts": 25, "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores"}


def bench_jobs(n: int) -> dict:
    times, scores = {}, {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _class(Path(tmp), n).with_(jobs=jobs)
            t0 = time.perf_counter()
            res = autograde(cfg, [ASSIGNMENT], progress=False, record=False)
            times[jobs] = time.perf_counter() - t0
            scores[jobs] = [r["score"] for r in res]
    return {"name": f"autograde_{n}_submissions_2_workers_vs_1", "baseline_s": round(times[1], 2), "project_s": round(times[2], 2),
            "speedup": round(times[1] / times[2], 3), "same_scores": scores[1] == scores[2], "max_abs_diff": 0.0,
            "peak_rss_mb": _peak_rss_mb(), "model": load().model, "n_submissions": n, "n_prompts": 25,
            "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores"}


def bench_cluster(n: int) -> dict:
    times, scores, problems = {}, {}, {}
    for how, cluster in (("local", None), ("cluster", "local:2")):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _class(Path(tmp), n).with_(jobs=2)
            t0 = time.perf_counter()
            res = autograde(cfg, [ASSIGNMENT], progress=False, record=False, cluster=cluster)
            times[how] = time.perf_counter() - t0
            scores[how] = [(r["status"], r["score"]) for r in res]
            problems[how] = sorted({r.get("reason", "")[:300] for r in res if r["status"] != "graded"})
    return {"name": f"autograde_{n}_submissions_local_cluster_2_workers_vs_local_2_workers", "baseline": "local JOBS=2",
            "baseline_s": round(times["local"], 2), "project_s": round(times["cluster"], 2), "speedup": round(times["local"] / times["cluster"], 3),
            "same_scores": scores["local"] == scores["cluster"], "statuses": sorted({s for s, _ in scores["cluster"]}),
            "not_graded": {k: v for k, v in problems.items() if v}, "max_abs_diff": 0.0,
            "peak_rss_mb": _peak_rss_mb(), "model": load().model, "n_submissions": n, "n_prompts": 25,
            "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["one", "jobs", "cluster"], action="append", help="which benchmark(s) (default: one and jobs)")
    p.add_argument("--n", type=int, default=20, help="submissions for the workers and cluster benchmarks")
    a = p.parse_args(argv)
    which = a.only or ["one", "jobs"]
    if "one" in which:
        print(json.dumps(bench_one_solution()), flush=True)
    if "jobs" in which:
        print(json.dumps(bench_jobs(a.n)), flush=True)
    if "cluster" in which:
        print(json.dumps(bench_cluster(a.n)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
