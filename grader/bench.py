"""Grading benchmarks; one JSON object per line, like ``tools.bench``.

- ``autograde_full_submission``: one student's solutions of every graded notebook of the series
  (01, 02, 03) graded by plain nbgrader (tests in the student's kernel, no sandbox; it grades the
  notebooks one after another) as the baseline, and by the project's grader (sandboxed worker plus
  a separate judge per notebook, forked from a warm judge that each run starts afresh, ``jobs``
  notebooks at a time: the local default (one more than the cores), unless ``--jobs`` says otherwise; the line
  says how many) twice: with an empty reference cache (``cold``) and again with the references
  the first run stored (``warm``); one line each, with the judge's peak memory;
- ``autograde_jobs``: N submissions of notebook 01 (default 20) graded with 1 worker (baseline)
  and with 2;
- ``autograde_cluster``: the same N submissions graded locally with 2 workers (baseline) and on a
  Dask ``LocalCluster`` of 2 single-threaded worker processes (``--cluster local:2``, its start
  included), with the same scores;
- ``autograde_warm_sandboxes``: the same N submissions graded with 2 workers, every worker in a fresh
  sandbox (``IOI_GRADER_WARM_SANDBOX=off``, baseline) and forked in warm sandboxes, with the same scores;
- ``autograde_gpt2_shape``: each graded notebook's solution graded with ``model = "gpt2-small"`` on
  a GPT-2-small-shaped stand-in (random weights in the hub's cache layout under a temporary
  ``HF_HOME``: no download), one line per notebook with its time, score and the judge's peak memory.

Every run starts from an empty reference cache of its own (``IOI_GRADER_REFERENCE_CACHE``), which
the jobs of that run share. ``--profile`` adds, per notebook, where one submission's time went (the
judge's ``timings``: its start, the worker's cells, the judge's locked cells, tests, references).

Run with ``make bench`` (all five), ``make bench-grader`` (the first three) and ``make bench-cluster``
(the third); ``BENCH_ARGS="--n 4"`` for a short run, ``--only gpt2`` for the GPT-2-small shape.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from . import zygote
from .autograde import autograde, graded_assignments
from .config import ROOT, load, restore_environ
from .judge import REFERENCE_CACHE_ENV

ASSIGNMENT = "01_early_induction_heads"
SOLUTION = ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"


@contextlib.contextmanager
def _reference_cache(where: Path | None):
    """Every job of one run (local threads or Dask workers, which inherit the environment) shares ``where``."""
    old = os.environ.get(REFERENCE_CACHE_ENV)
    os.environ[REFERENCE_CACHE_ENV] = str(where) if where is not None else "off"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(REFERENCE_CACHE_ENV, None)
        else:
            os.environ[REFERENCE_CACHE_ENV] = old


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def _class(tmp: Path, n: int, assignments: tuple[str, ...] = (ASSIGNMENT,)):
    cfg = load().with_(submitted=tmp / "submitted", results=tmp / "results", course=tmp / "course", grades=tmp / "grades.csv",
                       roster=tmp / "none.csv")
    for a in assignments:
        sol = ROOT / "solutions" / a / f"{a}.ipynb"
        for i in range(n):
            folder = cfg.submitted / f"student{i:02d}" / a
            folder.mkdir(parents=True)
            shutil.copy(sol, folder / sol.name)
    return cfg


def _profile(results: list[dict]) -> dict:
    """Where the time of each graded notebook went (the judge's ``timings``, steps summed by kind)."""
    out = {}
    for r in results:
        t = dict(r.get("timings") or {})
        t.pop("steps", None)
        out[r["assignment"]] = t
    return out


def bench_full_submission(profile: bool = False, jobs: int | None = None) -> list[dict]:
    """Plain nbgrader against the project's grader (cold and warm reference cache) on one full submission.

    ``jobs``: notebooks graded at a time by the project's grader (default: the configured ``jobs``; 0 = one more than the cores).
    """
    from .course import release_into, run_nbgrader

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = _class(tmp / "project", 1, tuple(graded_assignments(load())))
        cfg = cfg.with_(jobs=jobs)
        assignments = graded_assignments(cfg)
        course = tmp / "nbgrader"
        for a in assignments:
            release_into(course, a)
            dest = course / "submitted" / "s" / a
            dest.mkdir(parents=True)
            shutil.copy(ROOT / "solutions" / a / f"{a}.ipynb", dest / f"{a}.ipynb")
        run_nbgrader(course, "db", "student", "add", "s")
        t0 = time.perf_counter()
        for a in assignments:
            run_nbgrader(course, "autograde", a, "--force", "--student=s")
        baseline = time.perf_counter() - t0
        with _reference_cache(cfg.course / ".cache" / "references"):
            for cache in ("cold", "warm"):
                zygote.close_all()  # each run starts its own warm judge, as `python -m grader autograde` does
                t0 = time.perf_counter()
                res = autograde(cfg, assignments, progress=False, record=False, force=True)
                project = time.perf_counter() - t0
                line = {
                    "name": f"autograde_full_submission_{cache}_cache", "baseline": "plain nbgrader autograde (unsandboxed), same notebooks",
                    "assignments": assignments, "reference_cache": cache, "baseline_s": round(baseline, 2), "project_s": round(project, 2),
                    "speedup": round(baseline / project, 3), "jobs": min(cfg.n_jobs, len(assignments)),
                    "warm_judge": zygote.enabled(), "score": sum(r["score"] for r in res), "max_score": sum(r["max_score"] for r in res),
                    "statuses": sorted({r["status"] for r in res}), "max_abs_diff": 0.0,
                    "judge_peak_rss_mb": max((r.get("judge_peak_rss_mb") or 0) for r in res), "peak_rss_mb": _peak_rss_mb(),
                    "model": cfg.model, "machine": _machine()}
                if profile:
                    line["profile"] = _profile(res)
                lines.append(line)
                print(json.dumps(line), flush=True)
    return lines


def bench_jobs(n: int) -> dict:
    times, scores, rss = {}, {}, []
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp, _reference_cache(Path(tmp) / "references"):
            cfg = _class(Path(tmp), n).with_(jobs=jobs)
            zygote.close_all()  # each run starts its own warm judge
            t0 = time.perf_counter()
            res = autograde(cfg, [ASSIGNMENT], progress=False, record=False)
            times[jobs] = time.perf_counter() - t0
            scores[jobs] = [r["score"] for r in res]
            rss += [r.get("judge_peak_rss_mb") or 0 for r in res]
    return {"name": f"autograde_{n}_submissions_2_workers_vs_1", "baseline_s": round(times[1], 2), "project_s": round(times[2], 2),
            "speedup": round(times[1] / times[2], 3), "same_scores": scores[1] == scores[2], "max_abs_diff": 0.0,
            "judge_peak_rss_mb": max(rss), "peak_rss_mb": _peak_rss_mb(), "model": load().model, "n_submissions": n, "n_prompts": 25,
            "machine": _machine()}


def bench_warm(n: int) -> dict:
    times, scores = {}, {}
    for how in ("off", "on"):
        with tempfile.TemporaryDirectory() as tmp, _reference_cache(Path(tmp) / "references"), _env(IOI_GRADER_WARM_SANDBOX=how):
            cfg = _class(Path(tmp), n).with_(jobs=2)
            zygote.close_all()  # each run starts its own warm judge, which reads the setting
            t0 = time.perf_counter()
            res = autograde(cfg, [ASSIGNMENT], progress=False, record=False)
            times[how] = time.perf_counter() - t0
            scores[how] = [(r["status"], r["score"]) for r in res]
    return {"name": f"autograde_{n}_submissions_warm_sandboxes_vs_fresh", "baseline": "every worker in a fresh sandbox (IOI_GRADER_WARM_SANDBOX=off)",
            "baseline_s": round(times["off"], 2), "project_s": round(times["on"], 2), "speedup": round(times["off"] / times["on"], 3),
            "same_scores": scores["off"] == scores["on"], "statuses": sorted({st for st, _ in scores["on"]}), "max_abs_diff": 0.0,
            "peak_rss_mb": _peak_rss_mb(), "model": load().model, "n_submissions": n, "jobs": 2, "machine": _machine()}


def bench_cluster(n: int) -> dict:
    times, scores, problems, rss = {}, {}, {}, []
    for how, cluster in (("local", None), ("cluster", "local:2")):
        with tempfile.TemporaryDirectory() as tmp, _reference_cache(Path(tmp) / "references"):
            cfg = _class(Path(tmp), n).with_(jobs=2)
            zygote.close_all()  # each run starts its own warm judge (a Dask worker starts its own)
            t0 = time.perf_counter()
            res = autograde(cfg, [ASSIGNMENT], progress=False, record=False, cluster=cluster)
            times[how] = time.perf_counter() - t0
            rss += [r.get("judge_peak_rss_mb") or 0 for r in res]
            scores[how] = [(r["status"], r["score"]) for r in res]
            problems[how] = sorted({r.get("reason", "")[:300] for r in res if r["status"] != "graded"})
    return {"name": f"autograde_{n}_submissions_local_cluster_2_workers_vs_local_2_workers", "baseline": "local JOBS=2",
            "baseline_s": round(times["local"], 2), "project_s": round(times["cluster"], 2), "speedup": round(times["local"] / times["cluster"], 3),
            "same_scores": scores["local"] == scores["cluster"], "statuses": sorted({s for s, _ in scores["cluster"]}),
            "not_graded": {k: v for k, v in problems.items() if v}, "max_abs_diff": 0.0, "judge_peak_rss_mb": max(rss),
            "peak_rss_mb": _peak_rss_mb(), "model": load().model, "n_submissions": n, "n_prompts": 25, "machine": _machine()}


def gpt2_shaped_cache(hf_home: Path) -> None:
    """A GPT-2-small-shaped model with random weights, saved in the hub cache layout as 'openai-community/gpt2'."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ioi_anomalies.tokenizer import save_tokenizer

    repo = Path(hf_home) / "hub" / "models--openai-community--gpt2"
    snap = repo / "snapshots" / ("0" * 40)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(snap)
    save_tokenizer(snap)
    for f in snap.iterdir():  # as the hub writes its cache (safetensors alone would leave the weights 0600)
        f.chmod(0o644)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        restore_environ(old)


def bench_gpt2_shape() -> list[dict]:
    """Every graded notebook's solution, graded on a GPT-2-small-shaped stand-in, one line per notebook."""
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gpt2_shaped_cache(tmp / "hf")
        assignments = tuple(graded_assignments(load()))
        cfg = _class(tmp / "class", 1, assignments).with_(model="gpt2-small", jobs=1, wall_time_s=3600.0)
        with _env(HF_HOME=str(tmp / "hf"), HF_HUB_CACHE=str(tmp / "hf" / "hub")), _reference_cache(tmp / "references"):
            for a in assignments:
                t0 = time.perf_counter()
                r = autograde(cfg, [a], progress=False, record=False, force=True)[0]
                line = {"name": f"autograde_gpt2_shape_{a}", "assignment": a, "project_s": round(time.perf_counter() - t0, 2),
                        "status": r["status"], "score": r["score"], "max_score": r["max_score"],
                        "judge_peak_rss_mb": r.get("judge_peak_rss_mb"), "peak_rss_mb": _peak_rss_mb(),
                        "model": "gpt2-small shape (12 layers x 12 heads, d_model 768, random weights)", "machine": _machine()}
                if r["status"] != "graded":
                    line["reason"] = str(r.get("reason", ""))[:300]
                lines.append(line)
                print(json.dumps(line), flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["one", "jobs", "warm", "cluster", "gpt2"], action="append",
                   help="which benchmark(s): one (a full submission), jobs, warm (warm sandboxes), cluster, gpt2 (the GPT-2-small shape) "
                        "(default: all five)")
    p.add_argument("--n", type=int, default=20, help="submissions for the workers, warm-sandbox and cluster benchmarks (default 20)")
    p.add_argument("--profile", action="store_true", help="add where one submission's time went, per notebook")
    p.add_argument("--jobs", type=int, default=None,
                   help="notebooks the project's grader grades at a time in the full-submission benchmark "
                        "(default: grader_config.toml's jobs; 0 = one more than the cores)")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error("--n must be at least 1")
    if a.jobs is not None and a.jobs < 1:
        p.error("--jobs must be at least 1")
    which = a.only or ["one", "jobs", "warm", "cluster", "gpt2"]
    if "one" in which:
        bench_full_submission(a.profile, a.jobs)
    if "jobs" in which:
        print(json.dumps(bench_jobs(a.n)), flush=True)
    if "warm" in which:
        print(json.dumps(bench_warm(a.n)), flush=True)
    if "cluster" in which:
        print(json.dumps(bench_cluster(a.n)), flush=True)
    if "gpt2" in which:
        bench_gpt2_shape()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
