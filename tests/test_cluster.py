"""The cluster backend (grader/cluster.py): jobs packed on the client and unpacked on a worker, lost
workers retried, and a small class graded on a LocalCluster while one of its workers is killed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="the cluster extra is not installed (pip install '.[cluster]')")

import cloudpickle  # noqa: E402
import psutil  # noqa: E402

from grader import autograde as ag  # noqa: E402
from grader import cluster  # noqa: E402
from grader.cluster import ClusterError, ClusterPool, Job, pack, parse_address, run_job, unpack  # noqa: E402
from grader.intake import Source  # noqa: E402
from grader.results import Status, SubmissionResult  # noqa: E402
from test_grader import A, make_course, replace, submit, variant  # noqa: E402  the toy assignment, graded in seconds

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job functions below travel to the workers by value


def _class(tmp: Path):
    cfg = make_course(tmp)
    nb = submit(cfg, "ann", variant(), "toy.ipynb")
    (nb.parent / "data").mkdir()
    (nb.parent / "data" / "notes.txt").write_bytes(b"\x00\x01 bytes stay bytes")
    return cfg


# ------------------------------------------------------------------ packing


def test_a_job_carries_the_source_and_the_submission_and_lays_them_out_on_a_worker(tmp_path):
    cfg = _class(tmp_path / "client")
    (cfg.submitted / "ann" / A / "link.ipynb").symlink_to(cfg.solutions / A / f"{A}.ipynb")
    job = pickle.loads(pickle.dumps(pack(cfg, "ann", A)))  # what travels is plain data
    assert dict(job.files).keys() == {"toy.ipynb", "data/notes.txt"}, "files as bytes, symbolic links never followed"
    assert job.source_sha256 == Source.load(cfg.solutions / A / f"{A}.ipynb", A).digest
    assert job.submission_sha256 == ag.submission_digest(cfg.submitted / "ann" / A)
    there = unpack(job, tmp_path / "worker")
    assert there.solutions == tmp_path / "worker" / "solutions" and there.submitted == tmp_path / "worker" / "submitted"
    assert (there.course, there.results) == (tmp_path / "worker" / "course", tmp_path / "worker" / "results"), "nothing points at the client"
    assert (there.model, there.wall_time_s, there.memory_gb) == (cfg.model, cfg.wall_time_s, cfg.memory_gb)
    assert ag.course_secret(there) == ag.course_secret(cfg), "a regrade on any worker draws the same hidden inputs"
    assert (there.course / ag.SECRET_FILE).stat().st_mode & 0o077 == 0, "the secret stays private on the worker"
    assert Source.load(there.solutions / A / f"{A}.ipynb", A).digest == job.source_sha256
    for rel, data in job.files:
        assert (there.submitted / "ann" / A / rel).read_bytes() == (cfg.submitted / "ann" / A / rel).read_bytes() == data


def test_packing_follows_the_sandbox_copy_rule_but_keeps_every_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(ag, "SUBMISSION_LIMIT", 100)
    folder = tmp_path / "submitted" / "bo" / A
    folder.mkdir(parents=True)
    for name, size in (("a.txt", 60), ("b.txt", 60), ("c.ipynb", 200), ("d.txt", 40)):
        (folder / name).write_bytes(b"x" * size)
    cfg = make_course(tmp_path)
    assert [rel for rel, _ in pack(cfg, "bo", A).files] == ["a.txt", "c.ipynb", "d.txt"]


@pytest.mark.parametrize("edit, words", [
    (dict(files=(("../escape.txt", b"x"),)), "not inside its submission folder"),
    (dict(files=(("/etc/passwd", b"x"),)), "not inside its submission folder"),
    (dict(student="../other"), "not a plain name"),
    (dict(assignment=".."), "not a plain name"),
    (dict(source_text=b"{}"), "does not match its digest"),
])
def test_unpack_refuses_a_job_that_reaches_outside_or_was_altered(tmp_path, edit, words):
    cfg = _class(tmp_path / "client")
    job = Job(**{**pack(cfg, "ann", A).__dict__, **edit})
    with pytest.raises(ValueError, match=words):
        unpack(job, tmp_path / "worker")
    assert not (tmp_path / "escape.txt").exists()


def test_addresses_and_their_errors(tmp_path):
    assert parse_address("local:3", jobs=1) == ("local", 3)
    assert parse_address("local", jobs=5) == ("local", 5)
    assert parse_address("tcp://10.0.0.5:8786", jobs=1) == ("address", "tcp://10.0.0.5:8786")
    sched = tmp_path / "scheduler.json"
    sched.write_text("{}")
    assert parse_address(str(sched), jobs=1) == ("file", str(sched))
    for bad, words in (("local:0", "at least one worker"), (str(tmp_path / "none.json"), "no such scheduler file"),
                       ("my cluster", "local:N")):
        with pytest.raises(ClusterError, match=words):
            parse_address(bad, jobs=1)


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    cfg = _class(tmp_path)
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        with ClusterPool("tcp://127.0.0.1:9", connect_timeout=1) as pool:
            pool.submit(ag.run_child, cfg, "ann", A)


def _where(cfg, student, assignment):
    """A result that reports where the worker graded (its temporary course) and what it found there, in its log."""
    folder = cfg.submitted / student / assignment
    seen = {"course": str(cfg.solutions.parent), "files": sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())}
    return SubmissionResult(student, assignment, Status.GRADED, score=1.0, submission_sha256="computed on the worker",
                            worker_log=json.dumps(seen))


def test_run_job_grades_in_a_temporary_course_and_keeps_the_clients_digest(tmp_path):
    cfg = _class(tmp_path)
    job = pack(cfg, "ann", A, environment=cluster.environment_digest())
    r = run_job(_where, job)
    seen = json.loads(r.worker_log)
    assert seen["files"] == ["data/notes.txt", "toy.ipynb"] and r.submission_sha256 == job.submission_sha256
    assert not Path(seen["course"]).exists(), "the worker's copy is removed"
    other = run_job(_where, Job(**{**job.__dict__, "environment": "0" * 64}))
    assert other["status"] == "grader_error" and "another version of the project" in other["reason"]


# ------------------------------------------------------------------ retries, on a real cluster of worker processes


@pytest.fixture(scope="module")
def local_cluster():
    import dask
    from distributed import LocalCluster

    from grader.cluster import dask_environ, restore_environ

    before = dask_environ()  # what Dask's nanny sets in this process, put back for the tests after these
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, scheduler_port=0, silence_logs=50,
                         scheduler_kwargs={"dashboard_address": ":0"})  # its health page on a free port, not 8787
    yield c
    c.close()
    restore_environ(before)


def _count(path: Path) -> int:
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def _dies_first_time(cfg, student, assignment):
    if _count(Path(cfg.extra_env["COUNTER"])) == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process is lost mid-job
    return SubmissionResult(student, assignment, Status.GRADED, score=2.0)


def _always_dies(cfg, student, assignment):
    _count(Path(cfg.extra_env["COUNTER"]))
    os.kill(os.getpid(), signal.SIGKILL)


def _raises_first_time(cfg, student, assignment):
    if _count(Path(cfg.extra_env["COUNTER"])) == 1:
        raise OSError("disk full")
    return SubmissionResult(student, assignment, Status.GRADED, score=3.0)


@pytest.mark.parametrize("fn, runs, status, score", [
    (_dies_first_time, 2, "graded", 2.0),
    (_raises_first_time, 2, "graded", 3.0),
    (_always_dies, 2, "grader_error", 0.0),  # allowed-failures=1: lost twice, then given up, the batch goes on
])
def test_a_lost_worker_or_a_failing_job_is_retried_and_reported_once(local_cluster, tmp_path, fn, runs, status, score):
    cfg = _class(tmp_path).with_(extra_env={"COUNTER": str(tmp_path / "runs")})
    with ClusterPool(local_cluster.scheduler_address) as pool:
        futures = [pool.submit(fn, cfg, "ann", A)]
        r = futures[0].result(timeout=120)
    assert (r["status"], r["score"]) == (status, score), r
    assert int((tmp_path / "runs").read_text()) == runs
    if status == "grader_error":
        assert "KilledWorker" in r["reason"] and "re-run autograde" in r["reason"]


# ------------------------------------------------------------------ a class graded on a LocalCluster, one worker killed


def _kill_a_worker_mid_job(stop: threading.Event, killed: dict) -> None:
    """Kill the first Dask worker process seen running a judge (``python -m grader.autograde``, or one forked
    from the worker's warm judge, ``grader.zygote``)."""
    me = psutil.Process()
    while not stop.is_set():
        for p in me.children(recursive=True):
            try:
                parent = psutil.Process(p.ppid())
                if "grader.zygote" in " ".join(p.cmdline()) and "grader.zygote" in " ".join(parent.cmdline()):
                    worker = psutil.Process(parent.ppid())  # the judge's parent is the worker's zygote
                elif "grader.autograde" in " ".join(p.cmdline()):
                    worker = parent
                else:
                    continue
                if worker.pid != me.pid:
                    killed.update(worker=worker, judge=p)
                    worker.send_signal(signal.SIGKILL)
                    return
            except psutil.Error:
                continue
        time.sleep(0.2)


@pytest.mark.slow  # end to end: a class graded in the sandbox, locally and on a cluster
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (`make setup` installs it)")
def test_a_class_graded_on_a_cluster_losing_a_worker_matches_local_grading(tmp_path, monkeypatch):
    from grader.zygote import _key

    judges = _key(ag.judge_env())
    cfg = make_course(tmp_path, wall_time_s=300)
    submit(cfg, "ann", variant(), "toy.ipynb")
    submit(cfg, "bob", variant(replace("means", "def row_means(x):\n    return x.sum(dim=1)")), "toy.ipynb")
    submit(cfg, "cat", variant(replace("double", "def double(x):\n    return x")), "toy.ipynb")
    local = {r["student"]: r for r in ag.autograde(cfg.with_(results=tmp_path / "local", jobs=2), [A], progress=False, record=False)}
    assert {s: r["score"] for s, r in local.items()} == {"ann": 3.0, "bob": 1.0, "cat": 2.0}

    import grader.gradebook as gb_mod

    recorded = []
    real_record = gb_mod.record
    monkeypatch.setattr(gb_mod, "record", lambda c, res: (recorded.append((res["student"], res["assignment"])), real_record(c, res)))
    stop, killed = threading.Event(), {}
    killer = threading.Thread(target=_kill_a_worker_mid_job, args=(stop, killed), daemon=True)
    killer.start()
    try:
        results = ag.autograde(cfg, [A], progress=False, cluster="local:2")
    finally:
        stop.set()
        killer.join()
    assert killed, "a worker was killed while it graded"
    def gone(p: psutil.Process) -> bool:  # is_running() tells a reused process id from the one we saw
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert gone(killed["worker"]) and gone(killed["judge"]), "the judge of the lost worker died with it"
    keep = ("status", "score", "tests", "reason")
    assert [r["student"] for r in results] == ["ann", "bob", "cat"]
    for r in results:
        assert {k: r.get(k) for k in keep} == {k: local[r["student"]].get(k) for k in keep}, json.dumps(r, default=str)[:2000]
        assert r["submission_sha256"] == ag.submission_digest(cfg.submitted / r["student"] / A)
    assert sorted(recorded) == [("ann", A), ("bob", A), ("cat", A)], "each result recorded exactly once"
    assert sorted(p.name for p in (cfg.results / A).iterdir()) == ["ann.json", "bob.json", "cat.json"]
    from grader.gradebook import gradebook

    with gradebook(cfg.course) as gb:
        subs = gb.find_assignment(A).submissions
        assert sorted(s.student.id for s in subs) == ["ann", "bob", "cat"]
        assert gb.find_submission(A, "bob").score == 1.0
    again = ag.autograde(cfg, [A], progress=False, cluster="local:2")
    assert [r["graded_at"] for r in again] == [r["graded_at"] for r in results], "a re-run finds every grade current"
    assert _key(ag.judge_env()) == judges, "the local cluster left this process's environment (and warm judge) as it found it"


def test_the_command_line_takes_a_cluster_and_explains_a_bad_one(tmp_path):
    import subprocess

    cfg = make_course(tmp_path)
    cfg.submitted.mkdir()
    toml = tmp_path / "grader.toml"
    toml.write_text("[paths]\n" + "".join(f'{k} = "{getattr(cfg, k)}"\n' for k in ("solutions", "submitted", "results", "course", "grades", "roster")))
    cmd = [sys.executable, "-m", "grader", "--config", str(toml), "autograde"]
    bad = subprocess.run(cmd + ["--cluster", "my cluster"], capture_output=True, text=True, cwd=ag.ROOT)
    assert bad.returncode == 2 and "local:N" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "--cluster" in subprocess.run(cmd + ["--help"], capture_output=True, text=True).stdout
