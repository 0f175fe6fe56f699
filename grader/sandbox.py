"""Starting a student's process with limits, inside bubblewrap.

What is enforced on Linux (see the README's grader section):

- files: the sandbox sees the system (``/usr``, ``/etc``, ...), the Python install and the
  ``ioi_anomalies`` package read-only, the Hugging Face cache read-only when GPT-2 grades, and
  one writable folder of its own (a fresh temporary copy of the submission). The repository,
  solutions, hidden tests, the gradebook and other submissions are not there. Whatever it writes
  is deleted after grading.
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
FILE_LIMIT = 1 << 30  # no file, and no /tmp, grows past 1 GiB


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


def _ro_paths(cfg: Config) -> list[Path]:
    import ioi_anomalies

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent,
             Path(ioi_anomalies.__file__).resolve().parent}
    if cfg.model != "embedded":
        hf = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        if hf.exists():
            paths.add(hf)
    return sorted(paths)


def worker_env(cfg: Config, home: Path) -> dict:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": "/tmp",
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
    if cfg.model != "embedded" and "HF_HOME" in os.environ:
        env["HF_HOME"] = os.environ["HF_HOME"]
    env.update(cfg.extra_env)
    return env


def start_worker(workdir: Path, cfg: Config, log: Path) -> tuple[subprocess.Popen, socket.socket]:
    """Run ``grader/worker.py`` on a copy of itself in ``workdir``; returns the process and our socket end.

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
        env = worker_env(cfg, workdir)
    else:
        bwrap = shutil.which("bwrap")
        if not bwrap:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, or set sandbox = \"none\" "
                                     "in grader/grader_config.toml to grade trusted notebooks without a sandbox")
        home = Path("/home/student")
        as_root = os.getuid() == 0
        if as_root:
            os.chown(workdir, NOBODY, NOBODY)
            for p in workdir.rglob("*"):
                os.chown(p, NOBODY, NOBODY)
        cmd = [bwrap, "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev", "--size", str(FILE_LIMIT), "--tmpfs", "/tmp"]
        if not as_root:
            cmd += ["--unshare-user"]
        for sys_dir in ("/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin"):
            if os.path.exists(sys_dir):
                cmd += ["--ro-bind", sys_dir, sys_dir] if not os.path.islink(sys_dir) else ["--symlink", os.readlink(sys_dir), sys_dir]
        made: set[str] = set()

        def parents(dest: Path) -> list[str]:  # bwrap would make them 0700, unreadable once we are nobody
            out = []
            for parent in reversed(dest.parents):
                if str(parent) not in made and str(parent) not in ("/", "/usr", "/etc"):
                    made.add(str(parent))
                    out += ["--perms", "0755", "--dir", str(parent)]
            return out

        for p in _ro_paths(cfg):
            cmd += parents(p) + ["--ro-bind", str(p), str(p)]
        cmd += parents(home) + ["--bind", str(workdir), str(home), "--chdir", str(home), "--clearenv"]
        env = worker_env(cfg, home)
        for k, v in env.items():
            cmd += ["--setenv", k, v]
        inner = [python, str(home / script.name), str(fd)]
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
