"""Grading on a Dask distributed cluster: ``python -m grader autograde --cluster ADDRESS``.

The batch loop (``grader/autograde.py``) is the same for local and cluster grading: it submits one
job per (student, assignment) to an executor and records each result as it arrives, atomically,
in the results folder and nbgrader's gradebook, both of which stay with the client. Locally the
executor is a pool of threads, each running ``run_child`` (a fresh judge process per submission);
here it is :class:`ClusterPool`, which sends the same call to a Dask worker.

A worker needs the project's environment (this package, its pinned dependencies and bubblewrap),
not the course directory: each job carries what grading reads (:class:`Job`) — the source
notebook's text and digest, the submission's files as bytes and the settings — and the worker
lays them out in a temporary folder and runs ``run_child`` there, as the local executor does.

A worker lost mid-job (its process killed, its node gone) is the scheduler's to handle: the job
is run again on another worker, up to ``distributed.scheduler.allowed-failures`` times; a job that
raises is retried ``RETRIES`` times. Only the client writes results, and Dask delivers one result
per job, so a retried job is recorded once. A job that still fails becomes a ``grader_error``
(the previous grade is kept), never a lost batch.

``ADDRESS`` is a scheduler address (``tcp://host:8786``), a scheduler file written by
``dask scheduler --scheduler-file`` (a path ending in ``.json``), or ``local:N`` for a
``LocalCluster`` of N single-threaded worker processes on this machine (``local``: ``--jobs``).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from .config import Config, restore_environ
from .results import SubmissionResult

RETRIES = 2  # a job that raises on a worker (not the student's code: that is graded) is tried this many more times
ALLOWED_FAILURES = 3  # workers a job may take down with it before it counts as failed (LocalCluster)
INSTALL_HINT = "the cluster backend needs Dask distributed: pip install '.[cluster]' (or `make setup`)"
_LOCAL = re.compile(r"^local(?::(\d+))?$")


class ClusterError(RuntimeError):
    """The cluster cannot be used; the message says what to do."""


def dask_environ() -> dict[str, str | None]:
    """What Dask's nanny sets in this process's ``os.environ`` each time it starts a local worker, and never takes
    back (its pre-spawn environment ``distributed.nanny.pre-spawn-environ``, ``PYTHONHASHSEED``,
    ``__DASK_PARENT_PID``), as it is now (None: not set). :func:`restore_environ` puts it back when a local cluster
    closes, so that judges started later in this process get the environment, and the warm judge, they would have had."""
    import dask

    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", {})) | {"PYTHONHASHSEED", "__DASK_PARENT_PID"}
    return {k: os.environ.get(k) for k in sorted(keys)}


# ---------------------------------------------------------------- the job


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to grade one submission, as plain data."""

    student: str
    assignment: str
    source_text: bytes  # solutions/<assignment>/<assignment>.ipynb, the only trusted copy
    source_sha256: str
    files: tuple[tuple[str, bytes], ...]  # the submission: (path relative to its folder, content)
    submission_sha256: str  # as the client computes it (what a re-run compares against)
    cfg: Config
    environment: str = ""  # the client's `environment_digest()`; empty: not checked
    secret: bytes = b""  # the course's hidden-test secret, so a regrade anywhere draws the same hidden inputs


def submission_files(folder: Path) -> list[tuple[str, bytes]]:
    """The files of a submission that grading reads, by the rule ``grade_one`` copies them into the sandbox.

    In sorted order, plain files (never symbolic links) while they fit in ``SUBMISSION_LIMIT``;
    notebooks always (the submission is found among them even when the sandbox copy leaves one out).
    """
    from .autograde import SUBMISSION_LIMIT

    out, size = [], 0
    if not folder.is_dir():
        return out
    for f in sorted(folder.rglob("*")):
        if f.is_symlink() or not f.is_file():
            continue
        n = f.stat().st_size
        if size + n <= SUBMISSION_LIMIT:
            size += n
        elif f.suffix != ".ipynb":
            continue
        out.append((f.relative_to(folder).as_posix(), f.read_bytes()))
    return out


def pack(cfg: Config, student: str, assignment: str, environment: str = "") -> Job:
    """The job for one submission, read on the client."""
    from .autograde import course_secret, submission_digest

    source = (cfg.solutions / assignment / f"{assignment}.ipynb").read_bytes()
    folder = cfg.submitted / student / assignment
    return Job(student=student, assignment=assignment, source_text=source, source_sha256=hashlib.sha256(source).hexdigest(),
               files=tuple(submission_files(folder)), submission_sha256=submission_digest(folder), cfg=cfg, environment=environment,
               secret=course_secret(cfg))


def _safe_name(name: str, what: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"the job's {what} {name!r} is not a plain name")
    return name


def _safe_relpath(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts) or "\0" in rel:
        raise ValueError(f"the job's file {rel!r} is not inside its submission folder")
    return p


def unpack(job: Job, root: Path) -> Config:
    """Lay the job out under ``root`` as a course (``solutions/``, ``submitted/``); returns the settings pointing there."""
    student, assignment = _safe_name(job.student, "student"), _safe_name(job.assignment, "assignment")
    if hashlib.sha256(job.source_text).hexdigest() != job.source_sha256:
        raise ValueError("the job's source notebook does not match its digest")
    src = root / "solutions" / assignment / f"{assignment}.ipynb"
    src.parent.mkdir(parents=True)
    src.write_bytes(job.source_text)
    folder = root / "submitted" / student / assignment
    folder.mkdir(parents=True)
    for rel, data in job.files:
        dest = folder / _safe_relpath(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    if job.secret:  # the client's course secret, private to this temporary course
        from .autograde import SECRET_FILE

        (root / "course").mkdir(mode=0o700)
        key = root / "course" / SECRET_FILE
        key.touch(mode=0o600)
        key.write_bytes(job.secret)
    return job.cfg.with_(solutions=root / "solutions", submitted=root / "submitted", results=root / "results", feedback=root / "feedback",
                         grades=root / "grades.csv", roster=root / "roster.csv", course=root / "course")


def grader_error(student: str, assignment: str, reason: str) -> SubmissionResult:
    return SubmissionResult.grader_error(student, assignment, reason)


_ENV_DIGEST: tuple[tuple, str] = ((), "")
_ENV_PACKAGES = ("torch", "transformer-lens", "transformers", "tokenizers", "nbgrader", "nbformat", "numpy")


def environment_digest() -> str:
    """What a grade depends on in the grading machine's install: the grader's and the package's files, the pinned libraries.

    A worker whose digest differs from the client's would grade with other references or another
    model, so it refuses the job (see the README: install the same commit on every worker). The
    files are read again whenever one of them changes on disk.
    """
    global _ENV_DIGEST
    from importlib.util import find_spec

    spec = find_spec("ioi_anomalies")  # found, not imported: a worker answers without loading torch
    pkg, grader = Path(spec.origin).resolve().parent, Path(__file__).resolve().parent
    # the grader's code only: its folder also holds course data (submitted/, results/, ...)
    files = sorted(p for p in [*pkg.rglob("*"), *grader.glob("*.py"), *(grader / "references").rglob("*.py")]
                   if p.is_file() and "__pycache__" not in p.parts)
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    if stamp != _ENV_DIGEST[0]:
        h = hashlib.sha256()
        for p in files:
            base = pkg if pkg in p.parents else grader
            h.update(f"{base.name}/{p.relative_to(base).as_posix()}".encode() + b"\0" + p.read_bytes())
        for name in _ENV_PACKAGES:
            try:
                h.update(f"{name}=={metadata.version(name)}".encode())
            except metadata.PackageNotFoundError:
                h.update(f"{name} missing".encode())
        _ENV_DIGEST = (stamp, h.hexdigest())
    return _ENV_DIGEST[1]


def run_job(fn, job: Job) -> SubmissionResult:
    """On a worker: grade ``job`` with ``fn(cfg, student, assignment)`` (``autograde.run_child``) in a temporary course."""
    if job.environment and job.environment != environment_digest():
        return grader_error(job.student, job.assignment,
                            f"the worker {_host()} runs another version of the project than the instructor's machine "
                            "(grader, ioi_anomalies or a pinned library differ); install the same commit on every worker and re-run autograde")
    with tempfile.TemporaryDirectory(prefix="ioi-cluster-job-") as tmp:
        cfg = unpack(job, Path(tmp))
        result = fn(cfg, job.student, job.assignment)
    if not result.is_grader_error:
        # the digest a re-run on the client compares against (the same files, read there)
        result.submission_sha256 = job.submission_sha256
    return result


def _host() -> str:
    import socket

    return socket.gethostname()


# ---------------------------------------------------------------- the executor


def parse_address(address: str, jobs: int) -> tuple[str, object]:
    """``("local", n_workers)``, ``("file", path)`` or ``("address", address)``; a clear error otherwise."""
    address = (address or "").strip()
    m = _LOCAL.match(address)
    if m:
        n = int(m.group(1)) if m.group(1) is not None else jobs
        if n < 1:
            raise ClusterError(f"--cluster {address}: a local cluster needs at least one worker (local:N, N >= 1)")
        return "local", n
    if address.endswith(".json"):
        if not Path(address).is_file():
            raise ClusterError(f"--cluster {address}: no such scheduler file (written by `dask scheduler --scheduler-file {address}`)")
        return "file", address
    if re.match(r"^(tcp|tls|ucx|inproc|ws|wss)://\S+$", address) or re.match(r"^[\w.\-]+:\d+$", address):
        return "address", address
    raise ClusterError(f"--cluster {address!r}: expected a scheduler address (tcp://host:8786), a scheduler file (.json) "
                       "or local:N (N worker processes on this machine)")


class ClusterPool:
    """An executor whose ``submit(fn, cfg, student, assignment)`` runs ``fn`` on a Dask worker.

    ``fn`` gets the settings pointing at the worker's copy of the job; the returned future always
    resolves to a ``SubmissionResult`` (a job the cluster could not finish becomes a ``grader_error``).
    A submission is read and sent only when the cluster has room for it (twice its worker threads,
    at least ``min_in_flight``), so the scheduler never holds a whole class in memory. Connects on
    the first job: a batch with nothing to grade starts nothing.
    """

    def __init__(self, address: str, jobs: int = 1, retries: int = RETRIES, allowed_failures: int = ALLOWED_FAILURES,
                 check_environment: bool = True, connect_timeout: float = 30.0, min_in_flight: int = 4):
        self.kind, self.target = parse_address(address, jobs)
        self.address, self.retries, self.allowed_failures = address, retries, allowed_failures
        self.check_environment, self.connect_timeout, self.min_in_flight = check_environment, connect_timeout, min_in_flight
        self.client = self.cluster = None
        self._environ: dict | None = None  # before a local cluster started (dask_environ)
        self.environment = ""
        self._queue: deque = deque()  # (fn, cfg, student, assignment, our future) not yet sent
        self._running: dict = {}  # dask future -> (student, assignment, our future); kept so the scheduler keeps the job
        self._lock = threading.RLock()
        self._n = 0

    # -- connection
    def _connect(self) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError as e:
            raise ClusterError(INSTALL_HINT) from e
        try:
            if self.kind == "local":
                self._environ = dask_environ()  # put back in close(): the nanny sets it again for each worker it restarts
                with dask.config.set({"distributed.scheduler.allowed-failures": self.allowed_failures}):
                    # no dashboard; the scheduler's health page on a free port (8787 may be taken)
                    self.cluster = LocalCluster(n_workers=self.target, threads_per_worker=1, processes=True, dashboard_address=None,
                                                scheduler_kwargs={"dashboard_address": ":0"}, scheduler_port=0, silence_logs=40)
                self.client = Client(self.cluster, set_as_default=False)
            elif self.kind == "file":
                self.client = Client(scheduler_file=self.target, timeout=self.connect_timeout, set_as_default=False)
            else:
                self.client = Client(self.target, timeout=self.connect_timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            self.close()
            raise ClusterError(f"cannot reach the Dask scheduler at {self.address} ({type(e).__name__}: {e}); start one "
                               "(`dask scheduler`, see the README's 'Grading on a cluster') or use --cluster local:N") from e
        if self.check_environment:
            self.environment = environment_digest()
            theirs = self.client.run(environment_digest)
            odd = sorted(w for w, d in theirs.items() if d != self.environment)
            if odd:
                self.close()
                raise ClusterError(f"{len(odd)} worker(s) run another version of the project than this machine ({', '.join(odd[:5])}); "
                                   "install the same commit (and `pip install '.[cluster]'`) on every worker")

    # -- the Executor protocol used by autograde()
    def submit(self, fn, cfg: Config, student: str, assignment: str) -> Future:
        if self.client is None:
            self._connect()
        ours: Future = Future()
        with self._lock:
            self._queue.append((fn, cfg, student, assignment, ours))
        self._feed()
        return ours

    def _room(self) -> int:
        try:
            threads = sum(self.client.nthreads().values())
        except Exception:  # noqa: BLE001 - the scheduler is busy or gone: send what the minimum allows
            threads = 0
        return max(self.min_in_flight, 2 * threads)

    def _feed(self) -> None:
        """Send queued jobs while the cluster has room (called on each submit and each finished job)."""
        while True:
            with self._lock:
                if not self._queue or self.client is None or len(self._running) >= self._room():
                    return
                fn, cfg, student, assignment, ours = self._queue.popleft()
                self._n += 1
                key = f"grade-{self._n}-{student}-{assignment}-{os.urandom(4).hex()}"
                try:
                    job = pack(cfg, student, assignment, self.environment)
                    fut = self.client.submit(run_job, fn, job, key=key, pure=False, retries=self.retries)
                except Exception as e:  # noqa: BLE001 - this job only: an unreadable submission, a scheduler gone
                    ours.set_result(grader_error(student, assignment, f"the job could not be sent to the cluster ({type(e).__name__}: {e}); "
                                                                      "it is not the student's fault: re-run autograde"))
                    continue
                self._running[fut] = (student, assignment, ours)
            fut.add_done_callback(self._done)

    def _done(self, fut) -> None:
        with self._lock:
            entry = self._running.pop(fut, None)
        if entry is None:
            return
        student, assignment, ours = entry
        try:
            if fut.status == "finished":
                result = fut.result()
            else:
                exc = fut.exception() if fut.status == "error" else None
                why = f"{type(exc).__name__}: {exc}" if exc is not None else f"the job was {fut.status}"
                result = grader_error(student, assignment, f"the cluster could not grade this submission ({why[:300]}); "
                                                           "it is not the student's fault: re-run autograde")
        except Exception as e:  # noqa: BLE001 - whatever the cluster raised, this job only
            result = grader_error(student, assignment, f"the cluster could not grade this submission ({type(e).__name__}: {e}); "
                                                       "re-run autograde")
        if not ours.done():
            ours.set_result(result)
        self._feed()

    def close(self) -> None:
        with self._lock:
            running, queued = list(self._running.items()), list(self._queue)
            self._running.clear()
            self._queue.clear()
        for _, _, ours in [(None, None, q[-1]) for q in queued] + [v for _, v in running]:
            ours.cancel()
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        for obj in (client, cluster):
            if obj is None:
                continue
            try:
                if obj is client and running:
                    client.cancel([f for f, _ in running])
                obj.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        before, self._environ = self._environ, None
        if before is not None:
            restore_environ(before)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
