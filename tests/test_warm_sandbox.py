"""Warm sandboxes (grader/sandbox.py, grader/worker.py's zygote): one sandbox serves a job's submissions one
after another, and no submission can see, keep or change anything of the one before it.

Graded with one job, so every student below goes through the same sandbox, in name order. Each
student after the first answers correctly only if it ran in a warm sandbox (its parent is the
sandbox's zygote, pid 2) and found nothing left by the ones before it: a leak shows as a lost point.
"""

from __future__ import annotations

import shutil

import pytest

from test_grader import A, extra, make_course, replace, submit, variant
from grader.autograde import autograde

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (`make setup` installs it)"),
              pytest.mark.slow]

# Everything a submission could leave behind for the next one, left behind.
LEAVE = r"""
import os, subprocess, sys
for folder in ("/tmp", os.path.expanduser("~"), "/dev/shm"):
    with open(os.path.join(folder, "left.txt"), "w") as f:
        f.write("notes of the student before")
    locked = os.path.join(folder, "locked", "deeper")
    os.makedirs(locked)
    open(os.path.join(locked, "inside.txt"), "w").write("x")
    os.chmod(os.path.join(folder, "locked"), 0)
os.makedirs(os.path.expanduser("~/.ipython"), exist_ok=True)  # IPython's own folder, which the next shell makes again
open(os.path.expanduser("~/.ipython/left.txt"), "w").write("x")
subprocess.Popen(["sleep", "600"], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import time\nwhile True:\n    open('/tmp/late.txt', 'w').write('x'); time.sleep(0.05)"],
                 start_new_session=True)
subprocess.run(["ipcmk", "--shmem", "4096"], capture_output=True)
subprocess.run(["ipcmk", "--queue"], capture_output=True)
try:
    os.chmod("/tmp", 0o700)
except OSError:
    pass
"""

# What the next one looks for; `clean` is True only in a warm sandbox with nothing of the one before.
LOOK = r"""
import os
mine = {"toy.ipynb", ".ipython"}  # the submission, and what this worker's IPython made
me, zygote = os.getpid(), os.getppid()
# /tmp may hold the folders bubblewrap made for a checkout under /tmp: what the one before left, by name
leftovers = [os.path.join(d, f) for d in ("/tmp", "/dev/shm") for f in ("left.txt", "late.txt", "locked") if os.path.lexists(os.path.join(d, f))]
leftovers += [p for p in ("/dev/shm",) if os.listdir(p)] + [f for f in os.listdir(os.path.expanduser("~")) if f not in mine]
leftovers += [f for _, _, files in os.walk(os.path.expanduser("~/.ipython")) for f in files if f == "left.txt"]
others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me, zygote)]
ipc = sum(len(open(f"/proc/sysvipc/{k}").read().splitlines()) - 1 for k in ("shm", "sem", "msg"))
try:
    open(f"/proc/{zygote}/environ").read()
    zygote_readable = True
except OSError:
    zygote_readable = False
warm = zygote == 2
clean = warm and not leftovers and not others and not ipc and not zygote_readable and os.stat("/tmp").st_mode & 0o7777 == 0o1777
print("warm", warm, "leftovers", leftovers, "others", others, "ipc", ipc, "zygote readable", zygote_readable)
"""

ANSWER_IF_CLEAN = "def double(x):\n    return 2 * x if clean else x"


def test_a_warm_sandbox_gives_each_submission_a_clean_sandbox(tmp_path):
    cfg = make_course(tmp_path, wall_time_s=120, jobs=1)
    submit(cfg, "a_leaves_everything", variant(extra("setup", LEAVE)), "toy.ipynb")
    submit(cfg, "b_looks", variant(lambda nb: (extra("setup", LOOK)(nb), replace("double", ANSWER_IF_CLEAN)(nb))), "toy.ipynb")
    submit(cfg, "c_leaves_again", variant(extra("setup", LEAVE)), "toy.ipynb")
    submit(cfg, "d_looks", variant(lambda nb: (extra("setup", LOOK)(nb), replace("double", ANSWER_IF_CLEAN)(nb))), "toy.ipynb")
    results = {r.student: r for r in autograde(cfg, [A], progress=False, record=False)}
    for student, r in results.items():
        assert (r.status.value, r.score, r.cell_errors) == ("graded", 3.0, []), (student, r.dumps()[:3000])


def test_a_worker_that_kills_or_stops_its_zygote_costs_no_one_else_a_grade(tmp_path):
    """Killing the zygote ends that student's own sandbox (their worker with it); stopping it makes the judge retire the
    sandbox. Either way the next student is graded in a new one, in full."""
    stop = "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)"
    # the worker waits after the kill: its sandbox ends with the zygote and takes it along (a worker that finished its
    # few cells first would be graded, by a race with the sandbox's end)
    kill = "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(60)"
    cfg = make_course(tmp_path, wall_time_s=120, jobs=1)
    submit(cfg, "a_kills", variant(extra("setup", kill)), "toy.ipynb")
    submit(cfg, "b_looks", variant(lambda nb: (extra("setup", LOOK)(nb), replace("double", ANSWER_IF_CLEAN)(nb))), "toy.ipynb")
    submit(cfg, "c_stops", variant(extra("setup", stop)), "toy.ipynb")
    submit(cfg, "d_looks", variant(lambda nb: (extra("setup", LOOK)(nb), replace("double", ANSWER_IF_CLEAN)(nb))), "toy.ipynb")
    results = {r.student: r for r in autograde(cfg, [A], progress=False, record=False)}
    assert results["a_kills"].status.value == "crashed", results["a_kills"].dumps()[:2000]
    assert (results["c_stops"].status.value, results["c_stops"].score) == ("graded", 3.0), results["c_stops"].dumps()[:2000]
    for student in ("b_looks", "d_looks"):
        r = results[student]
        assert (r.status.value, r.score, r.cell_errors) == ("graded", 3.0, []), (student, r.dumps()[:3000])


def test_a_sandbox_that_fails_before_its_worker_starts_is_the_graders_failure(tmp_path):
    """A zygote that cannot import torch (here: too little memory) ends before it forks: the judge learns that the
    worker never started (``never_started``), which it reports as the grader's error, not the student's crash.
    A worker that was forked has started, whatever happens to it after."""
    import time

    from grader.config import Config
    from grader.sandbox import WarmSandbox

    sb = WarmSandbox(Config(memory_gb=0.25), ["import torch"])
    try:
        worker, sock = sb.start_worker(tmp_path / "worker.log")
        end = time.monotonic() + 60
        while worker.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        assert worker.poll() is not None and worker.never_started()
        assert sock.recv(1) == b"", "the student's socket ends with the sandbox"
        sock.close()
    finally:
        sb.close()

    ok = WarmSandbox(Config(), ["import json"])
    try:
        worker, sock = ok.start_worker(tmp_path / "worker2.log")
        sock.close()  # the worker reads the end of its socket and exits
        assert worker.wait(timeout=60) == 0 and not worker.never_started()
    finally:
        ok.close()


# What a worker may change in its zygote (a process of the same user), and sockets that outlive it.
CHANGE_THE_ZYGOTE = r"""
import os, resource
resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (40, 40))
os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)
os.sched_setaffinity(os.getppid(), {min(os.sched_getaffinity(0))})
"""
LEAVE_SOCKETS = r"""
import socket
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
client = socket.create_connection(server.getsockname())
conn, _ = server.accept()
client.close(); conn.close(); server.close()  # connections that linger in TIME_WAIT
"""
UNCHANGED = r"""
import os, resource
expected_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 40
clean = clean and expected_nofile and os.getpriority(os.PRIO_PROCESS, 0) == 0 and len(os.sched_getaffinity(0)) == os.cpu_count()
clean = clean and sum(len(open(f"/proc/net/{k}").read().splitlines()) - 1 for k in ("tcp", "tcp6")) == 0
"""


def test_what_a_worker_changes_in_its_zygote_never_reaches_the_next_worker(tmp_path):
    """Limits, priority and affinity of the zygote changed by the worker before, or its connections left lingering:
    the sandbox is retired, and the next student starts in a new one, with the defaults and no socket."""
    cfg = make_course(tmp_path, wall_time_s=120, jobs=1)
    looks = variant(lambda nb: (extra("setup", LOOK + UNCHANGED)(nb), replace("double", ANSWER_IF_CLEAN)(nb)))
    submit(cfg, "a_changes_the_zygote", variant(extra("setup", CHANGE_THE_ZYGOTE)), "toy.ipynb")
    submit(cfg, "b_looks", looks, "toy.ipynb")
    submit(cfg, "c_leaves_sockets", variant(extra("setup", LEAVE_SOCKETS)), "toy.ipynb")
    submit(cfg, "d_looks", looks, "toy.ipynb")
    results = {r.student: r for r in autograde(cfg, [A], progress=False, record=False)}
    for student, r in results.items():
        assert (r.status.value, r.score, r.cell_errors) == ("graded", 3.0, []), (student, r.dumps()[:3000])


def test_a_sandbox_whose_judge_never_asked_for_a_worker_is_lent_again_at_once(tmp_path):
    """A judge that ends before asking its sandbox for a worker (a missing or broken notebook) leaves it as it came:
    it is idle again at once, even while still starting, and the next judge gets it. One that was asked (in the judge's
    own forked process) is pinged first, and comes back only once it says it is ready."""
    import os

    from grader.config import config_to_json
    from grader.zygote import Sandboxes

    want = {"cfg": config_to_json(make_course(tmp_path, jobs=1)), "imports": []}
    pool = Sandboxes()
    try:
        sb = pool.lend(want)
        pool.lent[1] = sb
        pool.ended(1)  # this judge never asked
        assert pool.idle == [sb] and pool.returning == [], "idle again at once"
        assert pool.lend(want) is sb, "and lent to the next judge"
        pool.lent[2] = sb
        pid = os.fork()
        if pid == 0:  # the judge, forked: it asks for a worker
            sb.start_worker(tmp_path / "worker.log")
            os._exit(0)
        os.waitpid(pid, 0)
        pool.ended(2)
        assert pool.idle == [] and pool.returning == [sb], "asked: pinged, back once ready"
        assert sb.asked
    finally:
        pool.close()
