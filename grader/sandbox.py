"""Starting a student's process with limits, inside bubblewrap: a fresh sandbox per worker (``start_worker``), or a
worker forked in a warm sandbox that serves a grading job's submissions one after another (``WarmSandbox``, below).

What is enforced on Linux (see the README's grader section):

- files: the sandbox sees the system (``/usr``, ``/etc``, ...), the Python install and the
  ``ioi_anomalies`` package read-only, the Hugging Face hub cache read-only at ``/opt/hf-hub``
  when GPT-2 grades (from wherever ``HF_HUB_CACHE``/``HF_HOME``/the default puts it, passed as
  ``HF_HUB_CACHE``), and the submission read-only. The
  repository, solutions, hidden tests, the gradebook and other submissions are not there.
- disk: everything it can write is memory that vanishes with it: its home (a copy of the
  submission) and its private ``/tmp`` (``TMPDIR``) are tmpfs of ``disk_mb`` each; ``/dev/shm``
  is a tmpfs of 64 MiB. Nothing lands on the host's disk.
- network: none (a new, empty network namespace); also new PID, IPC and UTS namespaces, and the
  process dies with the grader.
- memory: ``RLIMIT_AS`` (address space) of ``memory_gb``; an allocation beyond it fails in that
  cell (``MemoryError`` / a torch error) or kills the process (status ``crashed``).
- processes: ``RLIMIT_NPROC`` of ``processes``. When the grader runs as root the student code runs
  as ``nobody`` (the kernel does not apply this limit to root); run as another user, the limit
  counts all of that user's processes.
- time: the judge kills the whole sandbox when the submission's wall time is spent (``timeout``).
"""

from __future__ import annotations

import mmap
import os
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import ROOT, Config

NOBODY = 65534
FILE_LIMIT = 1 << 30  # no file grows past 1 GiB
SHM_LIMIT = 64 << 20  # /dev/shm, apart from disk_mb
SUBMISSION = Path("/submission")  # the submission, read-only; the worker copies it into its home
WORKER_DIR = Path("/opt/ioi-grader")  # a warm sandbox's copy of worker.py, read-only
HF_HUB = Path("/opt/hf-hub")  # the Hugging Face hub cache, read-only, wherever it is on the host


class SandboxUnavailable(RuntimeError):
    pass


def _limits(cfg: Config):
    mem = int(cfg.memory_gb * (1 << 30))
    nproc = int(cfg.processes)

    def apply():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))

    return apply


def hf_hub_cache(environ: dict | None = None) -> Path:
    """Where the Hugging Face hub cache is, as ``huggingface_hub`` finds it: HF_HUB_CACHE, else HF_HOME/hub,
    else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    env = os.environ if environ is None else environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return xdg / "huggingface" / "hub"


def _ro_paths(cfg: Config) -> list[Path]:
    import ioi_anomalies

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent,
             Path(ioi_anomalies.__file__).resolve().parent}
    return sorted(paths)


def worker_env(cfg: Config, home: Path, tmp: str = "/tmp") -> dict:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": tmp,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "IOI_ANOMALIES_MODEL": cfg.model,
        "IOI_ANOMALIES_CACHE": str(home / ".cache"),
        "PLOTLY_RENDERER": "json",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "LANG": "C.UTF-8",
    }
    if cfg.model != "embedded":  # the hub cache, read-only, wherever the instructor's environment puts it
        env["HF_HOME"] = str(home / ".cache" / "huggingface")
        env["HF_HUB_CACHE"] = str(HF_HUB) if cfg.sandbox != "none" else str(hf_hub_cache())
    env.update(cfg.extra_env)
    return env


def _sandbox_command(cfg: Config, binds: list[tuple[Path, Path]], inner: list[str]) -> tuple[list[str], dict]:
    """bubblewrap's command line running ``inner`` with ``binds`` (host folder, place inside) read-only, and its environment."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, or set sandbox = \"none\" "
                                 "in grader/grader_config.toml to grade trusted notebooks without a sandbox")
    home = Path("/home/student")
    tmp = Path("/tmp")
    as_root = os.getuid() == 0
    disk = str(int(cfg.disk_mb) << 20)
    cmd = [bwrap, "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev",
           "--perms", "1777", "--size", str(SHM_LIMIT), "--tmpfs", "/dev/shm"]
    if not as_root:
        cmd += ["--unshare-user"]
    for sys_dir in ("/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin"):
        if os.path.exists(sys_dir):
            cmd += ["--ro-bind", sys_dir, sys_dir] if not os.path.islink(sys_dir) else ["--symlink", os.readlink(sys_dir), sys_dir]
    # /tmp first, as its own tmpfs: read-only folders that live under /tmp on the host (a checkout
    # in /tmp/...) are then bound inside it
    cmd += ["--perms", "1777", "--size", disk, "--tmpfs", str(tmp)]
    made: set[str] = {str(tmp)}

    def parents(dest: Path) -> list[str]:  # bwrap would make them 0700, unreadable once we are nobody
        out = []
        for parent in reversed(dest.parents):
            if str(parent) not in made and str(parent) not in ("/", "/usr", "/etc"):
                made.add(str(parent))
                out += ["--perms", "0755", "--dir", str(parent)]
        return out

    for p in _ro_paths(cfg):
        cmd += parents(p) + ["--ro-bind", str(p), str(p)]
    for src, dest in binds:
        cmd += parents(dest) + ["--ro-bind", str(src), str(dest)]
    if cfg.model != "embedded" and hf_hub_cache().is_dir():
        cmd += parents(HF_HUB) + ["--ro-bind", str(hf_hub_cache().resolve()), str(HF_HUB)]
    cmd += parents(home) + ["--perms", "1777", "--size", disk, "--tmpfs", str(home), "--chdir", str(home), "--clearenv"]
    # the rest of the tree read-only: what bwrap made for the mounts above (/home, /opt, ...) cannot be written either
    cmd += ["--remount-ro", "/"]
    env = worker_env(cfg, home, str(tmp))
    for k, v in env.items():
        cmd += ["--setenv", k, v]
    if as_root:
        inner = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all", "--"] + inner
    return cmd + ["--"] + inner, env


def start_worker(workdir: Path, cfg: Config, log: Path) -> tuple[subprocess.Popen, socket.socket]:
    """Run ``grader/worker.py`` on a copy of itself in ``workdir``; returns the process and our socket end.

    In the sandbox, everything writable is memory of bounded size that vanishes with it: the home
    (``/home/student``, a tmpfs of ``disk_mb`` holding a copy of the submission, which is mounted
    read-only at ``/submission``), ``/tmp`` (a tmpfs of ``disk_mb`` too, mode 1777, ``TMPDIR``) and
    ``/dev/shm``. Nothing the notebook writes lands on the host.
    What the process prints outside Python (C libraries, a crash) goes to ``log``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "_grader_worker.py"
    shutil.copy(ROOT / "grader" / "worker.py", script)
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    python = sys.executable
    if cfg.sandbox == "none":
        cmd = [python, str(script), str(fd)]
        env = worker_env(cfg, workdir, os.environ.get("TMPDIR", "/tmp"))
    else:
        cmd, env = _sandbox_command(cfg, [(workdir, SUBMISSION)], [python, str(SUBMISSION / script.name), str(fd), str(SUBMISSION)])
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_limits(cfg))
    theirs.close()
    return proc, ours


# ---------------------------------------------------------------- warm sandboxes
# Starting a worker from nothing costs every submission the same seconds: the interpreter, torch,
# IPython, and what the notebook's set-up imports (TransformerLens: ~5 s). A warm sandbox pays them
# once per grading job: it is one bubblewrap sandbox, started as for a worker, whose first process
# (``worker.zygote``) imports them and then forks one worker per submission, one at a time. Before
# the next worker it puts the sandbox back as it was (``worker._reset``): every process the last one
# left killed, the home, /tmp and /dev/shm emptied, no System V IPC object left; it retires the
# sandbox when it cannot. It never reads a submission: the worker gets its files from its judge
# over its own socket, after the fork. It cannot be read or traced by a worker (not dumpable), runs
# only as the first process of the sandbox's PID namespace, and creates no POSIX message queue.
# The judge does not wait for a sandbox that is still starting: its request for a worker waits in
# the sandbox's socket, its files in the worker's, and the judge goes on with its own locked cells
# meanwhile (as a fresh worker boots beside it). A sandbox that ends before it forks the worker is
# the grader's failure (``grader_error``), never the student's. A judge whose worker runs past its
# time, or does not end after "bye", kills the whole sandbox, as it would a fresh worker's; the
# next submission gets a new one. ``IOI_GRADER_WARM_JUDGE=off``
# turns warm sandboxes off with the warm judge (grader/zygote.py owns them and lends one per judge).

LENT: "WarmSandbox | None" = None  # in a judge forked by the warm judge: the sandbox lent to it


class SandboxGone(RuntimeError):
    """The warm sandbox is not there or retired: start a fresh worker instead."""


def warm_key(cfg: Config) -> str:
    """Judges share a warm sandbox when their workers run in alike sandboxes (whatever the assignment: a worker that
    needs an import the sandbox has not done yet has it done before it is forked)."""
    import json

    return json.dumps([cfg.model, float(cfg.memory_gb), int(cfg.disk_mb), int(cfg.processes), cfg.sandbox,
                       sorted((str(k), str(v)) for k, v in cfg.extra_env.items())])


class WarmSandbox:
    """The grading side of one warm sandbox: start it, lend it, ask it for workers, retire it."""

    def __init__(self, cfg: Config, imports: list[str]):
        from .worker import _send_msg

        if cfg.sandbox == "none":
            raise SandboxGone("warm sandboxes need bubblewrap")
        self.key = warm_key(cfg)
        self.imports = list(imports)  # what the next worker's notebook imports in its set-up (``lend`` sets it per judge)
        self.dir = Path(tempfile.mkdtemp(prefix="ioi-warm-"))
        os.chmod(self.dir, 0o755)
        shutil.copy(ROOT / "grader" / "worker.py", self.dir / "worker.py")
        os.chmod(self.dir / "worker.py", 0o644)
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        host_ns = str(os.stat("/proc/self/ns/pid").st_ino)
        cmd, env = _sandbox_command(cfg, [(self.dir, WORKER_DIR)], [sys.executable, str(WORKER_DIR / "worker.py"), "--zygote", str(fd), host_ns])
        self.log = Path(f"{self.dir}.log")  # the zygote's own output (an import that failed); each worker has its own log
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.dir, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, preexec_fn=_limits(cfg))
        theirs.close()
        self._owner = os.getpid()
        try:  # signals reach this bwrap process, never another that gets its pid once it is reaped
            self._pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self.control = ours
        self.retired = ""
        self._buf = b""
        self.forking = False  # the zygote has said it is forking the worker asked for last
        self._pinged: int | None = None
        self._ping_sent = 0.0
        # set by the judge it is lent to (a forked process: shared memory) once it asks for a worker; a sandbox whose
        # judge never did (the submission was missing or not a notebook) goes back as it came, ready or still starting
        self._asked = mmap.mmap(-1, 1)
        _send_msg(ours, {"imports": list(imports)})

    @property
    def alive(self) -> bool:
        if self.retired:
            return False
        if os.getpid() == self._owner:
            return self.proc.poll() is None
        try:  # in a judge forked by its owner: not our child to wait for
            os.kill(self.proc.pid, 0)
            return True
        except OSError:
            return False

    def fileno(self) -> int:
        return self.control.fileno()

    # ---- messages
    def _messages(self, timeout: float | None) -> list[dict]:
        """The messages that arrive within ``timeout`` seconds (0: those already here); [] when none."""
        import json

        out = []
        end = None if timeout is None else time.monotonic() + timeout
        while not out:
            left = None if end is None else max(0.0, end - time.monotonic())
            ready, _, _ = select.select([self.control], [], [], left)
            if not ready:
                return out
            try:
                chunk = self.control.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.retire("the warm sandbox ended")
                return out
            self._buf += chunk
            while len(self._buf) >= 8:
                (n,) = struct.unpack("!Q", self._buf[:8])
                if len(self._buf) < 8 + n:
                    break
                msg, self._buf = json.loads(self._buf[8 : 8 + n]), self._buf[8 + n :]
                if "retired" in msg:
                    self.retire(str(msg["retired"]))
                if "forking" in msg:
                    self.forking = True
                out.append(msg)
            if end is not None and time.monotonic() >= end:
                return out
        return out

    def _next(self, key: str, timeout: float) -> dict:
        """Wait for the next message with ``key`` (others before it are dropped)."""
        end = time.monotonic() + timeout
        while True:
            for msg in self._messages(max(0.0, end - time.monotonic())):
                if key in msg:
                    return msg
            if not self.alive:
                raise SandboxGone(self.retired or "the warm sandbox ended")
            if time.monotonic() >= end:
                raise SandboxGone(f"the warm sandbox did not answer in {timeout:.0f} s")

    # ---- for the judge
    def start_worker(self, log: Path) -> tuple["WarmWorker", socket.socket]:
        """A fresh worker forked in this sandbox, after the zygote has run any of ``imports`` it had not; its first
        request must be ``files`` (the submission). Returns at once: a sandbox still starting forks the worker once
        its imports are done, while the judge goes on with its own work (as a fresh worker boots beside it)."""
        from .worker import _send_msg

        self.forking = False
        self._asked[0] = 1
        ours, theirs = socket.socketpair()
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _send_msg(self.control, {"op": "fork", "imports": self.imports}, [theirs.fileno(), log_fd])
        except OSError as e:
            ours.close()
            raise SandboxGone(f"the warm sandbox cannot be reached ({e})") from e
        finally:
            theirs.close()
            os.close(log_fd)
        return WarmWorker(self), ours

    # ---- for the warm judge that lends it
    @property
    def asked(self) -> bool:
        """Whether a judge it was lent to has asked it for a worker since :meth:`lent` (a sandbox never asked is as it came)."""
        return bool(self._asked[0])

    def lent(self, imports: list[str]) -> None:
        """Lent to a judge whose workers' notebooks import ``imports``."""
        self.imports = list(imports)
        self._asked[0] = 0

    def ping(self) -> None:
        """After a judge is done with it: ask whether it is ready again (``returned`` reads the answer)."""
        from .worker import _send_msg

        self._pinged = (self._pinged or 0) + 1
        self._ping_sent = time.monotonic()
        try:
            _send_msg(self.control, {"op": "ping", "n": self._pinged})
        except OSError:
            self.retire("the warm sandbox ended")

    def returned(self, timeout: float = 0) -> bool | None:
        """True: back and ready for another judge; False: retired; None: not yet (a worker still runs or it resets)."""
        for msg in self._messages(timeout):
            if msg.get("pong") == self._pinged:
                return True
        if not self.alive:
            return False
        return None

    def retire(self, why: str = "retired") -> None:
        """Stop the sandbox and every process in it (bubblewrap's processes inside die with the one outside)."""
        import signal

        self.retired = self.retired or why
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            elif os.getpid() == self._owner and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def close(self) -> None:
        self.retire("closed")
        try:
            self.proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, ChildProcessError):
            pass
        self.forget()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def forget(self) -> None:
        """Close this process's ends (its socket, its pidfd); in a forked judge, of a sandbox lent to another judge, whose
        sandbox it leaves running."""
        self.control.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class WarmWorker:
    """A worker forked in a warm sandbox, seen as ``subprocess.Popen`` is by the judge: ``poll``, ``wait``, ``returncode``."""

    def __init__(self, sandbox: WarmSandbox):
        self.sandbox, self.returncode = sandbox, None

    def never_started(self) -> bool:
        """True when the sandbox has not begun to fork this worker (it ended, or was still starting when the time ran
        out): the grader's failure, not the submission's."""
        self.poll()
        return not self.sandbox.forking

    def _read(self, timeout: float) -> None:
        try:
            self.returncode = int(self.sandbox._next("exit", timeout)["exit"])
        except SandboxGone:
            if not self.sandbox.alive:
                self.returncode = -9  # it ended with its sandbox

    def poll(self):
        if self.returncode is None:
            self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None):
        if self.returncode is None:
            self._read(3600 if timeout is None else timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired("warm worker", timeout)
        return self.returncode

    def kill(self) -> None:
        self.sandbox.retire("its worker was stopped")
        self.returncode = self.returncode if self.returncode is not None else -9


def submission_files(workdir: Path) -> list[tuple[str, bytes]]:
    """The files of a prepared submission folder, for a warm sandbox's worker (``worker.Worker.op_files``)."""
    out = []
    for root, _, files in os.walk(workdir):
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                out.append((path.relative_to(workdir).as_posix(), path.read_bytes()))
    return out


def start(workdir: Path, cfg: Config, log: Path):
    """A worker for one submission: forked in the sandbox lent to this judge, if any, else started fresh (``start_worker``).
    Returns (process, socket, files): ``files`` is what to send as the worker's first request (None: it copied them itself)."""
    if LENT is not None and LENT.alive and cfg.sandbox != "none":
        try:
            proc, sock = LENT.start_worker(log)
            return proc, sock, submission_files(workdir)
        except SandboxGone:
            LENT.retire("it failed to start a worker")
    proc, sock = start_worker(workdir, cfg, log)
    return proc, sock, None


def kill(proc, grace: float = 0) -> None:
    """Stop the worker and everything it started (it leads its own session). A warm sandbox's worker gets ``grace``
    seconds to end by itself (after "bye"); past them it is stopped with its sandbox."""
    import signal

    if isinstance(proc, WarmWorker):
        try:
            if grace <= 0:
                raise subprocess.TimeoutExpired("warm worker", grace)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
