"""A warm judge: one trusted parent process that has imported what judging needs and forks a judge per submission.

Starting a judge from nothing costs every submission the same seconds: the interpreter, torch,
TransformerLens, transformers' lazily loaded model code, the package, the references, the digest
of the grader's code. The zygote pays them once. It is started with the judge's environment
(``PYTHONHASHSEED=0``, one thread), imports the grader, torch and the package's grading protocol,
then runs the import statements of the cells the assignments' judges run (``judge_imports``: their
locked cells and tests, so TransformerLens, the package's helpers and the references where an
assignment uses them, and no more where it does not), and forks judges as they are asked for (a
judge asked for meanwhile waits: forked early, judges that import beside the zygote on a busy
machine made the first notebooks slower, not faster).
For each submission it forks a child, which sets the judge's limits (address space
``judge_memory_gb``, no core files, killed with the zygote), takes the submission's environment
and grades exactly as ``python -m grader.autograde`` does (``autograde._child_main``), in its own
process, with its own namespaces, its own copy of every module, and no hooks (the zygote holds no
model: the zygote never loads one). Nothing from a student ever runs in the zygote: its children talk to the sandboxed
worker; the zygote only forks and reaps.

It also lends each judge a warm sandbox for the student's side (``Sandboxes``; ``grader/sandbox.py``): started by
the zygote, lent to one judge at a time, taken back once it says it is ready again, retired otherwise.

The zygote lives as long as the process that uses it (``zygote_for``), which talks to it over a
socket of its own: when that process dies the zygote reads the end of the socket, kills its
children and exits; its children die with it (``PR_SET_PDEATHSIG``). If it is lost, the
submission it was grading is graded again in a fresh judge process and the next one starts a new
zygote. ``IOI_GRADER_WARM_JUDGE=off`` turns it off (every judge a fresh process, as before).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

WARM_ENV = "IOI_GRADER_WARM_JUDGE"
WARM_SANDBOX_ENV = "IOI_GRADER_WARM_SANDBOX"  # off: every worker in a fresh sandbox (the warm judge stays on)
# read when a judge runs, not when a module is imported: they may differ between submissions of one zygote
# (the package reads its model and cache settings when its functions run; pytest names the running test in
# PYTEST_CURRENT_TEST: tests that grade share their process's zygote; torch sets TORCHINDUCTOR_CACHE_DIR in this
# process's environment the first time it loads a model here, and reads it only when it compiles)
RUNTIME_ENV = ("IOI_GRADER_REFERENCE_CACHE", "IOI_ANOMALIES_MODEL", "IOI_ANOMALIES_CACHE", "PYTEST_CURRENT_TEST",
               "TORCHINDUCTOR_CACHE_DIR")
# What every judge imports, whatever it grades: the grader, torch (it reads the worker's replies with
# torch.load) and the package's grading protocol. What an assignment's judge runs (its locked cells and
# tests: the model, the references) is imported per assignment (``judge_imports``, ``Zygote.preload``).
PRELOAD = (
    "grader.autograde", "grader.judge", "grader.intake", "grader.results", "grader.hidden", "grader.refcache", "grader.sandbox",
    "torch", "ioi_anomalies.grading",
)


class ZygoteGone(RuntimeError):
    """The warm judge is not there (it died, or could not start): grade in a fresh process instead."""


def judge_imports(sources, kinds=("setup", "test")) -> list[str]:
    """The import statements of the cells a judge runs itself (locked set-up cells and tests, hidden parts
    included) in these assignments' sources, each once, as source text: what a zygote imports before it
    forks their judges. Instructor code only; a cell that does not parse (an IPython magic) is skipped.
    ``kinds=("setup",)``: those of the released set-up cells only, what a warm sandbox imports for its workers."""
    import ast

    out: list[str] = []
    for source in sources:
        for cell in source.cells:
            if cell.kind not in kinds:
                continue
            try:
                body = ast.parse(cell.source).body
            except SyntaxError:
                continue
            for node in body:
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                    statement = ast.unparse(node)
                    if statement not in out:
                        out.append(statement)
    return out


def enabled() -> bool:
    return os.environ.get(WARM_ENV, "").lower() not in ("off", "0", "no", "false")


# ---------------------------------------------------------------- the process that grades (client side)
class Zygote:
    """The grading process's handle on one warm judge: ``run`` grades one submission in a forked child."""

    def __init__(self, env: dict, log: Path | None = None, warm: bool = True):
        from .config import ROOT

        ours, theirs = socket.socketpair()
        self._sock = ours
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "grader.zygote", str(theirs.fileno())] + ([] if warm else ["--bare"]), cwd=ROOT, env=env,
                                         pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        finally:
            theirs.close()
            if out is not subprocess.DEVNULL:
                out.close()
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, dict] = {}  # request id -> {"event", "returncode", "error"}
        self._dead = False
        self.imported: set[str] = set()
        threading.Thread(target=self._read, name="warm-judge-reader", daemon=True).start()

    def preload(self, statements: list[str]) -> None:
        """Have the zygote run these import statements (``judge_imports``) before the judges it forks next."""
        new = [st for st in statements if st not in self.imported]
        if new and self.alive:
            self.imported.update(new)
            try:
                self._send({"op": "import", "code": new})
            except OSError:
                pass  # lost: the next run says so

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    @property
    def alive(self) -> bool:
        return not self._dead and self.proc.poll() is None

    def _send(self, msg: dict) -> None:
        data = (json.dumps(msg) + "\n").encode()
        with self._lock:
            self._sock.sendall(data)

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    slot = self._waiting.get(msg.get("id"))
                    if slot is not None and ("returncode" in msg or "error" in msg):
                        slot.update(msg)
                        slot["event"].set()
        except (OSError, ValueError):
            pass
        self._dead = True
        for slot in list(self._waiting.values()):  # whoever waits learns that the zygote is gone
            slot["event"].set()

    def run(self, argv: list[str], env: dict, memory_bytes: int, stderr_path: Path, timeout: float, entry: str = "grade",
            sandbox: dict | None = None) -> int:
        """Grade in a forked child: its exit status (negative: the signal); ``subprocess.TimeoutExpired`` past ``timeout``.
        ``sandbox`` ({"cfg": JSON, "imports": [...]}): lend the child a warm sandbox for its worker (``Sandboxes``).

        Raises :class:`ZygoteGone` when the zygote is lost before the child finished (nothing was recorded).
        """
        if not self.alive:
            raise ZygoteGone("the warm judge is not running")
        with self._lock:
            self._next += 1
            rid = self._next
        slot = {"event": threading.Event()}
        self._waiting[rid] = slot
        try:
            try:
                self._send({"op": "run", "id": rid, "argv": argv, "env": env, "memory": memory_bytes, "stderr": str(stderr_path),
                            "entry": entry, "sandbox": sandbox})
            except OSError as e:
                raise ZygoteGone(f"the warm judge cannot be reached ({e})") from e
            if not slot["event"].wait(timeout):
                with_kill = True
                try:
                    self._send({"op": "kill", "id": rid})
                except OSError:
                    with_kill = False
                if with_kill:
                    slot["event"].wait(30)
                raise subprocess.TimeoutExpired(argv, timeout)
            if "returncode" in slot:
                return int(slot["returncode"])
            raise ZygoteGone(slot.get("error") or "the warm judge died")
        finally:
            self._waiting.pop(rid, None)

    def close(self) -> None:
        self._dead = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        try:
            self.proc.wait(timeout=2)  # it reads the end of the socket between imports and forks
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its children die with it
            self.proc.wait()


_zygotes: dict[tuple, Zygote] = {}
_imports: dict[tuple, list[str]] = {}  # environment key -> the import statements its zygote runs
_zygotes_lock = threading.Lock()
MAX_ZYGOTES = 2  # environments kept warm at once (a test session changes HF_HOME; each zygote holds its imports)


def _key(env: dict) -> tuple:
    """Zygotes are shared by judges whose environments differ only in what is read when a judge runs."""
    return tuple(sorted((k, v) for k, v in env.items() if k not in RUNTIME_ENV))


def zygote_for(env: dict, imports: list[str] = ()) -> Zygote:
    """This process's warm judge for judges run with ``env`` (started on first use, replaced when lost), with
    ``imports`` (``judge_imports``) and every import asked of an earlier one for this ``env`` done before it forks."""
    key = _key(env)
    with _zygotes_lock:
        wanted = _imports.setdefault(key, [])
        wanted += [st for st in imports if st not in wanted]
        z = _zygotes.get(key)
        if z is None or not z.alive:
            if z is not None:
                z.close()
                del _zygotes[key]
            for other in [k for k, o in _zygotes.items() if not o.busy][: max(0, len(_zygotes) + 1 - MAX_ZYGOTES)]:
                _zygotes.pop(other).close()
            z = _zygotes[key] = Zygote(env)
        z.preload(wanted)
        return z


@atexit.register
def close_all() -> None:
    with _zygotes_lock:
        for z in _zygotes.values():
            z.close()
        _zygotes.clear()


# ---------------------------------------------------------------- the zygote itself
def preload_steps() -> list:
    """What the zygote imports before it forks a judge, one step each."""
    import importlib

    def imp(name):
        def step():
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - a judge imports it again and fails there, as a fresh one would
                print(f"warm judge: could not import {name}: {type(e).__name__}: {e}", file=sys.stderr)
        return step

    def digest():
        from grader import refcache

        refcache.code_digest()
        import gc

        gc.collect()

    return [imp(n) for n in PRELOAD] + [digest]


def run_imports(statements: list[str]) -> None:
    """Run import statements asked for by the grading process (``Zygote.preload``); one that fails is left to the judge."""
    for statement in statements:
        try:
            exec(compile(statement, "<judge imports>", "exec"), {"__name__": "__judge_imports__"})
        except Exception as e:  # noqa: BLE001 - a judge imports it again and fails there, as a fresh one would
            print(f"warm judge: could not run {statement!r}: {type(e).__name__}: {e}", file=sys.stderr)


def _grade():
    from grader.autograde import _child_main

    return _child_main


def probe(argv: list[str]) -> int:
    """What a forked judge starts from, written as JSON to ``argv[0]`` (``python -m grader.zygote --check``, the tests);
    ``argv[1]``: ``sleep`` (hang), ``memory`` (allocate past the limit), ``exit N``."""
    import resource

    facts = {"pid": os.getpid(), "ppid": os.getppid(), "threads": threading.active_count(),
             "memory_limit": resource.getrlimit(resource.RLIMIT_AS)[0], "core_limit": resource.getrlimit(resource.RLIMIT_CORE)[0],
             "hash_seed": os.environ.get("PYTHONHASHSEED"), "probe_env": os.environ.get("IOI_PROBE"), "cwd": os.getcwd(),
             "preloaded": [m for m in PRELOAD if m in sys.modules], "modules": sorted(sys.modules)}
    Path(argv[0]).write_text(json.dumps(facts))
    print("probe: facts written")
    what = argv[1] if len(argv) > 1 else ""
    if what == "sleep":
        time.sleep(600)
    if what == "memory":
        blocks = []
        while True:
            blocks.append(bytearray(256 << 20))
    if what == "exit":
        return int(argv[2])
    return 0


ENTRIES = {"grade": _grade, "probe": lambda: probe}


class Sandboxes:
    """The warm sandboxes this warm judge lends its judges (``grader.sandbox.WarmSandbox``): one per judge at a time,
    back to the idle ones once it has said it is ready again, retired when it does not."""

    MAX_IDLE = 4  # idle sandboxes kept, the most recently used first (each holds its imports in memory)
    RETURN_S = 60.0  # a sandbox that is not ready this long after its judge ended is retired

    def __init__(self):
        self.idle: list = []  # oldest first
        self.lent: dict[int, object] = {}  # judge's pid -> sandbox
        self.returning: list = []

    def all(self) -> list:
        return self.idle + list(self.lent.values()) + self.returning

    def lend(self, want: dict | None):
        """A ready (or starting) sandbox for a judge grading with ``want`` ({"cfg": JSON, "imports": [...]}), or None."""
        if not want or not enabled() or os.environ.get(WARM_SANDBOX_ENV, "").lower() in ("off", "0", "no", "false"):
            return None
        from .config import config_from_json
        from .sandbox import WarmSandbox, warm_key

        try:
            cfg = config_from_json(want["cfg"])
            if cfg.sandbox == "none":
                return None
            key, imports = warm_key(cfg), list(want.get("imports", []))
            for sb in reversed(self.idle):
                if sb.key == key:
                    self.idle.remove(sb)
                    if sb.alive:
                        sb.lent(imports)
                        return sb
                    sb.close()
            return WarmSandbox(cfg, imports)
        except Exception as e:  # noqa: BLE001 - no warm sandbox: the judge starts a fresh worker
            print(f"warm judge: no warm sandbox ({type(e).__name__}: {e})", file=sys.stderr)
            return None

    def ended(self, pid: int) -> None:
        """The judge ``pid`` ended: its sandbox goes back to the idle ones at once if the judge never asked it for a
        worker, else once it says it is ready again."""
        sb = self.lent.pop(pid, None)
        if sb is None:
            return
        if not sb.asked and sb.alive:  # its judge ended before it asked for a worker: nothing ran in it
            self._keep(sb)
        else:
            sb.ping()
            self.returning.append(sb)

    def _keep(self, sb) -> None:
        self.idle.append(sb)
        while len(self.idle) > self.MAX_IDLE:
            self.idle.pop(0).close()

    def check(self, readable=()) -> None:
        """Sandboxes that answered (``readable``) or waited too long go back to the idle ones or are retired."""
        now = time.monotonic()
        for sb in list(self.returning):
            try:
                back = sb.returned(0) if sb in readable or not sb.alive else None
            except Exception:  # noqa: BLE001 - an answer it cannot read: retired, never a reason for this process to end
                back = False
            if back is None and now - sb._ping_sent > self.RETURN_S:
                back = False
            if back is None:
                continue
            self.returning.remove(sb)
            if back:
                self._keep(sb)
            else:
                sb.close()

    def close(self) -> None:
        for sb in self.all():
            sb.close()
        self.idle, self.lent, self.returning = [], {}, []


def _child(sock: socket.socket, msg: dict, sandboxes: Sandboxes | None = None, lent=None) -> None:
    """In the forked child: the judge's limits and environment, then grading as ``python -m grader.autograde``; never returns."""
    code = 1
    try:
        sock.close()
        if sandboxes is not None:
            from . import sandbox

            for sb in sandboxes.all():  # the other judges' sandboxes are theirs
                if sb is not lent:
                    sb.forget()
            sandbox.LENT = lent
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        import random

        from .autograde import judge_limits

        judge_limits(int(msg["memory"]))()  # the same limits as a fresh judge's; it dies with the zygote
        if os.getppid() == 1:
            os._exit(1)
        from .worker import redirect_output

        redirect_output(os.open(msg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.environ.clear()
        os.environ.update(msg["env"])
        random.seed()
        code = ENTRIES[msg.get("entry", "grade")]()(list(msg["argv"]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - as an uncaught exception would end ``python -m grader.autograde``
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(fd: int, warm: bool = True) -> None:
    import select

    sock = socket.socket(fileno=fd)
    for step in preload_steps() if warm else []:  # all of it first: judges that import beside it make the first ones slower
        step()
    children: dict[int, int] = {}  # pid -> request id
    ids: dict[int, int] = {}  # request id -> pid
    sandboxes = Sandboxes()
    buf = b""

    def reply(msg: dict) -> None:
        try:
            sock.sendall((json.dumps(msg) + "\n").encode())
        except OSError:
            pass

    def reap() -> None:  # the judges only: the sandboxes' processes are their Popen's to wait for
        for child in list(children):
            try:
                pid, status = os.waitpid(child, os.WNOHANG)
            except ChildProcessError:
                pid, status = child, 0
            if pid == 0:
                continue
            sandboxes.ended(pid)
            rid = children.pop(pid, None)
            if rid is not None:
                ids.pop(rid, None)
                reply({"id": rid, "returncode": os.waitstatus_to_exitcode(status)})

    try:
        while True:
            ready, _, _ = select.select([sock] + sandboxes.returning, [], [], 0.05)
            if sock in ready:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
            reap()
            sandboxes.check(ready)
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("entry", "grade") not in ENTRIES:
                    reply({"id": msg.get("id"), "error": "unknown entry"})
                    continue
                if msg.get("op") == "import":  # before the judges asked for after it are forked
                    run_imports([str(st) for st in msg.get("code", [])])
                    continue
                if msg.get("op") == "kill":
                    pid = ids.get(msg["id"])
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                    continue
                lent = sandboxes.lend(msg.get("sandbox"))
                try:
                    pid = os.fork()
                except OSError as e:
                    if lent is not None:
                        lent.close()
                    reply({"id": msg["id"], "error": f"the warm judge could not fork ({e})"})
                    continue
                if pid == 0:
                    _child(sock, msg, sandboxes, lent)
                children[pid], ids[msg["id"]] = msg["id"], pid
                if lent is not None:
                    sandboxes.lent[pid] = lent
    finally:
        sandboxes.close()
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


if __name__ == "__main__":
    serve(int(sys.argv[1]), warm="--bare" not in sys.argv[2:])
