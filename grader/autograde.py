"""Autograding a class: every (student, assignment) in its own judge process, JOBS at a time.

Each grade is a JSON file, ``<results>/<assignment>/<student>.json``, written to a temporary name
and renamed into place, so a crash mid-batch never leaves half a grade and a previous grade stays
until the new one exists. A re-run skips every submission whose notebook, source and model are
unchanged (``--force`` regrades), so an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from .config import ROOT, Config, config_from_json, config_to_json
from .intake import IntakeError, Source, find_notebook, list_files, plan
from .results import ResultFormatError, Status, SubmissionResult

SUBMISSION_LIMIT = 50 << 20  # bytes copied into the sandbox per submission


def graded_assignments(cfg: Config) -> list[str]:
    out = []
    for d in sorted(p for p in cfg.solutions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        nb = d / f"{d.name}.ipynb"
        if nb.exists():
            src = Source.load(nb)
            if src.tests or src.manual:
                out.append(d.name)
    return out


def source_for(cfg: Config, assignment: str) -> Source:
    return Source.load(cfg.solutions / assignment / f"{assignment}.ipynb", assignment)


def read_roster(cfg: Config) -> list[str]:
    """Student ids from the optional roster (a CSV with a ``student`` or ``id`` column, or one id per line)."""
    import csv

    if not cfg.roster.exists():
        return []
    rows = list(csv.reader(cfg.roster.read_text().splitlines()))
    if not rows:
        return []
    head = [h.strip().lower() for h in rows[0]]
    col = next((head.index(k) for k in ("student", "id", "student_id") if k in head), None)
    body = rows[1:] if col is not None else rows
    col = col or 0
    return sorted({r[col].strip() for r in body if len(r) > col and r[col].strip()})


def students(cfg: Config) -> list[str]:
    found = {p.name for p in cfg.submitted.iterdir() if p.is_dir() and not p.name.startswith(".")} if cfg.submitted.is_dir() else set()
    return sorted(found | set(read_roster(cfg)))


def submission_digest(folder: Path) -> str:
    """SHA-256 of every file of a submission (names as bytes, contents), in a fixed order."""
    import os

    h = hashlib.sha256()
    if folder.is_dir():
        good, bad = list_files(folder)
        for rel in sorted([os.fsencode(r) for r, _ in good] + bad):
            try:
                data = Path(os.fsdecode(os.path.join(os.fsencode(folder), rel))).read_bytes()
            except OSError:
                data = b"(unreadable)"
            h.update(rel + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


SECRET_FILE = "hidden-tests.key"


def course_secret(cfg: Config) -> bytes:
    """The course's secret for hidden-test seeds: made on first use in the course folder (mode 0600), then kept.

    The course folder is not visible in the sandbox and is not committed (``.gitignore``).
    """
    import os
    import secrets

    path = cfg.course / SECRET_FILE
    if not path.exists():
        cfg.course.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cfg.course, prefix=".key.")
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
            os.link(tmp, path)  # atomic: the first writer wins, every process reads the same key
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_bytes().strip()


def submission_key(secret: bytes, digest: str) -> bytes:
    """What seeds a submission's hidden tests: HMAC-SHA256 of its content digest under the course secret."""
    import hmac

    return hmac.new(secret, bytes.fromhex(digest), hashlib.sha256).digest()


def result_path(cfg: Config, assignment: str, student: str) -> Path:
    return cfg.results / assignment / f"{student}.json"


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename; ``mode`` sets its permissions (else 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_result(cfg: Config, assignment: str, student: str) -> SubmissionResult | None:
    """The stored result, or None when there is none or it cannot be read as one (then it is regraded)."""
    p = result_path(cfg, assignment, student)
    try:
        return SubmissionResult.loads(p.read_text())
    except (OSError, ResultFormatError):
        return None


def store_result(cfg: Config, result: SubmissionResult) -> None:
    write_atomic(result_path(cfg, result.assignment, result.student), result.dumps())


def is_fresh(cfg: Config, result: SubmissionResult | None, source_digest: str | None = None) -> bool:
    """Whether ``result`` still stands: not a grader error, and the same source, settings and submitted files."""
    if result is None or result.is_grader_error:
        return False
    digest = source_digest or source_for(cfg, result.assignment).digest
    return (result.source_sha256 == digest and result.config == cfg.fingerprint()
            and result.submission_sha256 == submission_digest(cfg.submitted / result.student / result.assignment))


def verdict(cfg: Config, student: str, assignment: str) -> SubmissionResult:
    """The stored result when it is fresh, else the submission graded now (in the sandbox) and stored."""
    old = load_result(cfg, assignment, student)
    if is_fresh(cfg, old):
        return old
    if (cfg.submitted / student / assignment).is_dir():
        warm_judge(cfg, [assignment])  # nbgrader's autograde asks for one submission at a time
        new = run_child(cfg, student, assignment)
    else:
        new = missing_result(cfg, student, assignment)
    if not new.is_grader_error:
        store_result(cfg, new)
    return new


def grade_one(cfg: Config, student: str, assignment: str) -> SubmissionResult:
    """Grade one submission in this process (the batch runs this in a fresh process per submission)."""
    source = source_for(cfg, assignment)
    folder = cfg.submitted / student / assignment
    base = SubmissionResult.blank(student, assignment, source, submission_sha256=submission_digest(folder), config=cfg.fingerprint())
    try:
        nb_path, nb, notes = find_notebook(folder, source)
    except IntakeError as e:
        return replace(base, status=Status(e.status), reason=e.reason)
    try:
        p = plan(source, nb, nb_path.name)
    except Exception as e:  # noqa: BLE001 - a notebook shaped so that it cannot be lined up with the assignment
        return replace(base, status=Status.INVALID_NOTEBOOK,
                       reason=f"{nb_path.name} could not be lined up with the assignment ({type(e).__name__})")
    p.notes = notes + p.notes
    base = replace(base, notebook=str(nb_path.relative_to(folder)), answers=p.answers)
    from .judge import judge_submission

    _, undecodable = list_files(folder)
    if undecodable:
        p.notes.append(f"{len(undecodable)} file(s) with names that are not valid UTF-8 were left out")
    key = submission_key(course_secret(cfg), base.submission_sha256)
    tmp = Path(tempfile.mkdtemp(prefix="ioi-grade-"))
    try:
        workdir = tmp / "work"
        workdir.mkdir()
        size = 0
        for rel, f in list_files(folder)[0]:
            n = f.stat().st_size
            if size + n <= SUBMISSION_LIMIT:
                size += n
                (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, workdir / rel)
        out = judge_submission(p, cfg, workdir, key)
    finally:
        remove_tree(tmp)
    return base.with_judgement(out)


def remove_tree(path: Path) -> None:
    """Delete a folder whatever is in it (``rm -rf``: no recursion in Python, no failure on deep trees)."""
    subprocess.run(["rm", "-rf", "--", str(path)], check=False, stdin=subprocess.DEVNULL, capture_output=True)


def _child_main(argv: list[str]) -> int:
    """``python -m grader.autograde CONFIG_JSON STUDENT ASSIGNMENT OUT``: grade one, write JSON to OUT."""
    cfg_json, student, assignment, out = argv
    result = grade_one(config_from_json(cfg_json), student, assignment)
    import resource

    result.judge_peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # for `make bench`
    Path(out).write_text(result.dumps())
    return 0


_config_json = config_to_json


JUDGE_GRACE_S = 60  # after the wall limit, the judge process itself is stopped


def _die_with_parent():
    """For the judge's process, run before it starts: it dies with the thread that started it (a lost worker leaves nothing running)."""
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def judge_limits(mem: int):
    """Run in the judge's process before it starts (a fresh one, or one forked from the warm judge):
    an address-space limit of ``mem`` bytes, no core files, and it dies with its parent."""
    die = _die_with_parent()

    def apply():
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (mem, hard))  # the soft limit: the worker sets its own below the hard one
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if die is not None:
            die()

    return apply


# nbgrader sets these in this process while its own autograde or validate step runs, which is on another thread
# while a batch records what it has graded: a judge's environment must not depend on when it starts
NBGRADER_STEP_ENV = ("NBGRADER_EXECUTION", "NBGRADER_VALIDATING")


def judge_env() -> dict:
    """The judge's environment: this one (without nbgrader's step markers), one thread, a fixed hash seed, offline
    unless told otherwise."""
    env = {k: v for k, v in os.environ.items() if k not in NBGRADER_STEP_ENV}
    return dict(env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
                PLOTLY_RENDERER="json", TQDM_DISABLE="1")


_WORKER_IMPORTS: dict[tuple, list[str]] = {}
_WORKER_IMPORTS_LOCK = threading.Lock()


def worker_imports(cfg: Config, assignment: str) -> list[str]:
    """The import statements of the assignment's released set-up cells (``zygote.judge_imports``), read once. Under a
    lock: the batch's threads call this, and Python 3.11's ``ast.parse`` is not safe to run in two threads at once."""
    from . import zygote

    with _WORKER_IMPORTS_LOCK:
        source = source_for(cfg, assignment)
        key = (source.path, source.path.stat().st_mtime_ns) if getattr(source, "path", None) else (cfg.solutions / assignment, 0)
        if key not in _WORKER_IMPORTS:
            _WORKER_IMPORTS[key] = zygote.judge_imports([source], kinds=("setup",))
        return list(_WORKER_IMPORTS[key])


def _run_judge(cfg: Config, cmd: list[str], env: dict, err_path: Path, assignment: str | None = None) -> int:
    """Run the judge ``python -m grader.autograde ...`` to its end: forked from the warm judge
    (``grader/zygote.py``) where there is one, with a warm sandbox for its worker, else a fresh process.
    Its output goes to ``err_path``."""
    from . import zygote

    timeout = cfg.wall_time_s + JUDGE_GRACE_S
    if zygote.enabled():
        sandbox = None if assignment is None else {"cfg": config_to_json(cfg), "imports": worker_imports(cfg, assignment)}
        try:
            return zygote.zygote_for(env).run(cmd[3:], env, int(cfg.judge_memory_gb * (1 << 30)), err_path, timeout, sandbox=sandbox)
        except zygote.ZygoteGone:
            pass  # graded again from nothing, in a fresh process
    with open(err_path, "w") as err:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT, timeout=timeout,
                              preexec_fn=judge_limits(int(cfg.judge_memory_gb * (1 << 30)))).returncode


def run_child(cfg: Config, student: str, assignment: str) -> SubmissionResult:
    """Grade in a judge process of its own under its own memory and time limits.

    The judge stops itself at the wall limit; if it is still running ``JUDGE_GRACE_S`` later it is
    killed (``timeout``). Running out of its memory is the submission's doing (``crashed``); any
    other failure of the judge is the grader's (``grader_error``). The judge is forked from this
    process's warm judge (``grader/zygote.py``), or started fresh when there is none.
    """
    with tempfile.TemporaryDirectory(prefix="ioi-judge-") as tmp:
        out = Path(tmp) / "result.json"
        err_path = Path(tmp) / "judge.log"
        cmd = [sys.executable, "-m", "grader.autograde", config_to_json(cfg), student, assignment, str(out)]
        base = SubmissionResult(student=student, assignment=assignment, status=Status.GRADER_ERROR)
        try:
            returncode = _run_judge(cfg, cmd, judge_env(), err_path, assignment)
            if returncode == 0 and out.exists():
                try:
                    return SubmissionResult.loads(out.read_text())
                except ResultFormatError as e:
                    return replace(base, reason=f"the grader wrote a result it cannot read ({e}); it is not the student's fault: re-run autograde")
            err = err_path.read_text(errors="replace") if err_path.exists() else ""
            if "MemoryError" in err or "std::bad_alloc" in err or "Cannot allocate memory" in err:
                return replace(base, status=Status.CRASHED,
                               reason=f"checking this submission's answers took more than the grader's {cfg.judge_memory_gb:g} GB of memory")
            why = err.strip().splitlines()[-1:] or [f"exit status {returncode}"]
            reason = f"the grader failed on this submission ({why[0][:300]}); it is not the student's fault: re-run autograde"
        except subprocess.TimeoutExpired:
            return replace(base, status=Status.TIMEOUT, reason="the notebook ran past its time limit (while its tests were checked)")
    return replace(base, reason=reason)


def missing_result(cfg: Config, student: str, assignment: str) -> SubmissionResult:
    """The result for a student with no submission folder: recorded without starting a judge or a worker."""
    return SubmissionResult.blank(student, assignment, source_for(cfg, assignment), status=Status.MISSING, reason="no submission folder",
                                  submission_sha256=submission_digest(cfg.submitted / student / assignment), config=cfg.fingerprint())


def warm_judge(cfg: Config, assignments: list[str]) -> None:
    """Start this process's warm judge (``grader/zygote.py``) for these assignments, if it is on: it imports in
    the background what their judges need, while the caller goes on."""
    from . import zygote

    if zygote.enabled():
        zygote.zygote_for(judge_env(), zygote.judge_imports(source_for(cfg, a) for a in assignments))


def autograde(cfg: Config, assignments: list[str] | None = None, only: list[str] | None = None, force: bool = False,
              progress: bool = True, record: bool = True, cluster: str | None = None) -> list[SubmissionResult]:
    """Grade everything submitted (and every roster student) for ``assignments``; returns the results.

    Each job runs ``run_child`` on a local thread (``cfg.n_jobs`` at a time) or, with ``cluster``
    (an address, see ``grader/cluster.py``), on a Dask worker; results are stored here either way,
    then (``record``) nbgrader's autograde runs on each graded notebook with the stored verdict
    (``grader/course.py``), which fills nbgrader's gradebook and its autograded copy.
    """
    from tqdm.auto import tqdm

    assignments = assignments or graded_assignments(cfg)
    todo, results = [], []
    for a in assignments:
        src_digest = source_for(cfg, a).digest
        for s in only or students(cfg):
            old = load_result(cfg, a, s)
            if is_fresh(cfg, old, src_digest) and not force:
                results.append(old)
            else:
                todo.append((s, a))
    if not cluster and any((cfg.submitted / s / a).is_dir() for s, a in todo):
        warm_judge(cfg, assignments)  # it imports while nbgrader's course is set up
    if record:
        from .course import Course

        for a in assignments:
            Course(cfg).ensure_assignment(a)
    course_secret(cfg)  # made once, before the judges start
    bar = tqdm(total=len(todo), desc="grading", unit="submission", disable=not progress)
    if cluster:
        from .cluster import ClusterPool

        executor = ClusterPool(cluster, jobs=cfg.n_jobs)
    else:
        executor = ThreadPoolExecutor(max_workers=max(1, cfg.n_jobs))
    with executor as pool:
        futures = {}
        for s, a in todo:
            if (cfg.submitted / s / a).is_dir():
                futures[pool.submit(run_child, cfg, s, a)] = (s, a)
            else:  # nothing submitted: recorded here, no worker started
                done: concurrent.futures.Future = concurrent.futures.Future()
                done.set_result(missing_result(cfg, s, a))
                futures[done] = (s, a)
        for fut in as_completed(futures):
            s, a = futures[fut]
            res = fut.result()
            old = load_result(cfg, a, s)
            if res.is_grader_error and old is not None:
                res = replace(old, last_error=res.reason)  # keep the previous grade: the new one does not exist
            else:
                store_result(cfg, res)
                if record and res.notebook:
                    from .gradebook import record as record_grade

                    try:
                        record_grade(cfg, res)
                    except Exception as e:  # noqa: BLE001 - the result file stands; the gradebook is brought up to date next run
                        res = replace(res, reason=(res.reason + f"; gradebook not updated ({type(e).__name__}: {str(e)[:300]})").strip("; "))
            results.append(res)
            bar.set_postfix_str(f"{s}/{a}: {res.status.value}")
            bar.update()
    bar.close()
    return sorted(results, key=lambda r: (r.student, r.assignment))


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
