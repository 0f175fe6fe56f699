"""Starting a student's process with limits, inside bubblewrap.

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

import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from .config import ROOT, Config

NOBODY = 65534
FILE_LIMIT = 1 << 30  # no file grows past 1 GiB
SHM_LIMIT = 64 << 20  # /dev/shm, apart from disk_mb
SUBMISSION = Path("/submission")  # the submission, read-only; the worker copies it into its home
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
        cmd += ["--ro-bind", str(workdir), str(SUBMISSION)]
        if cfg.model != "embedded" and hf_hub_cache().is_dir():
            cmd += parents(HF_HUB) + ["--ro-bind", str(hf_hub_cache().resolve()), str(HF_HUB)]
        cmd += parents(home) + ["--perms", "1777", "--size", disk, "--tmpfs", str(home), "--chdir", str(home), "--clearenv"]
        env = worker_env(cfg, home, str(tmp))
        for k, v in env.items():
            cmd += ["--setenv", k, v]
        inner = [python, str(SUBMISSION / script.name), str(fd), str(SUBMISSION)]
        if as_root:
            inner = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all", "--"] + inner
        cmd += ["--"] + inner
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_limits(cfg))
    theirs.close()
    return proc, ours


def kill(proc: subprocess.Popen) -> None:
    """Stop the worker and everything it started (it leads its own session)."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
