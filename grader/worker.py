"""The student side of grading: runs a submission's code inside the sandbox and answers questions.

This file is copied into the sandbox and run there on its own (``python worker.py FD``); it imports
nothing from the grader, so it carries no instructor material. The judge (``grader/judge.py``)
talks to it over the socket ``FD``:

- requests are pickles from the trusted judge: run a cell, look a name up, call a function, read
  an attribute or an item of an object that lives here;
- replies are written with ``torch.save`` and read by the judge with ``torch.load(weights_only=True)``,
  which accepts tensors, numbers, strings and plain containers only. Anything else stays here and
  the judge gets a handle to it; objects of the data types the package declares
  (``ioi_anomalies.grading``) travel as their plain fields and are rebuilt by the judge from trusted code.

So whatever the student's code does to ``torch``, builtins or test helpers in this process, the
checks run elsewhere.

In a warm sandbox (``grader/sandbox.py``) the same file runs as ``python worker.py --zygote FD``:
the sandbox's first process, which imports once what workers need and forks one worker per
submission (``zygote``); that worker reads its submission from its judge (``op_files``) and then
works as above.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import socket
import struct
import sys
import time
import traceback
import types

OUTPUT_LIMIT = 20_000
SAFE_SCALARS = (type(None), bool, int, float, str, complex)
# what may be sent back (the judge enforces the same bounds on what arrives)
MAX_DEPTH = 16
MAX_ITEMS = 200_000
MAX_TENSOR_BYTES = 256 << 20
MAX_REPLY_BYTES = 512 << 20
FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)


class NotPlainData(TypeError):
    """A value that cannot leave the student's process: it is not plain data."""


class _Capped(io.StringIO):
    def write(self, s):
        if self.tell() < OUTPUT_LIMIT:
            return super().write(s[: OUTPUT_LIMIT - self.tell()])
        return len(s)


class Worker:
    def __init__(self, sock: socket.socket):
        import torch

        self.torch = torch
        self.sock = sock
        self.ns: dict = {"__name__": "__main__"}
        self.handles: dict[int, object] = {}
        self.shared: dict[str, object] = {}  # name -> object made by a trusted cell, as the judge has it
        self.shared_ids: dict[int, str] = {}
        self.recipes: dict[tuple, object] = {}
        self._shell = None
        try:  # the package's declared protocol: data types, recipes, parts
            from ioi_anomalies import grading

            self.protocol = grading
        except Exception:  # noqa: BLE001 - e.g. a folder of the submission shadows the package: plain data only
            self.protocol = _NoProtocol

    # ---- transport
    def recv(self):
        head = self._read(8)
        (n,) = struct.unpack("!Q", head)
        return _Unpickler(io.BytesIO(self._read(n)), self).load()

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(1 << 20, n - len(buf)))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def send(self, obj) -> None:
        b = io.BytesIO()
        self.torch.save(obj, b)
        data = b.getvalue()
        self.sock.sendall(struct.pack("!Q", len(data)) + data)

    # ---- values going out: plain data only (the judge checks again; this side only says why early)
    def export(self, obj, depth: int = 0, budget: list | None = None):
        torch = self.torch
        budget = budget if budget is not None else [MAX_ITEMS, MAX_REPLY_BYTES]
        budget[0] -= 1
        if budget[0] < 0:
            raise NotPlainData(f"the answer has more than {MAX_ITEMS} items")
        if type(obj) in SAFE_SCALARS:  # never a shared reference: the judge shares no plain values
            return obj
        if id(obj) in self.shared_ids and self.shared.get(self.shared_ids[id(obj)]) is obj:
            return {"__ioi_shared__": self.shared_ids[id(obj)]}
        if depth > MAX_DEPTH:
            raise NotPlainData(f"the answer is nested more than {MAX_DEPTH} levels deep")
        if isinstance(obj, torch.Tensor):
            if obj.layout != torch.strided or obj.is_quantized:
                raise NotPlainData(f"a {obj.layout} tensor (return an ordinary dense tensor)")
            nbytes = obj.numel() * obj.element_size()
            budget[1] -= nbytes
            if nbytes > MAX_TENSOR_BYTES or budget[1] < 0:  # before materialising an expanded view
                raise NotPlainData(f"a tensor of shape {tuple(obj.shape)} ({nbytes / 2**20:.0f} MiB) is larger than the grader accepts")
            return obj.detach().to("cpu").as_subclass(torch.Tensor).contiguous().clone()
        if isinstance(obj, (torch.device, torch.dtype)):
            return obj
        if isinstance(obj, (bool, int, float, str)):  # subclasses: keep the plain value
            return (bool if isinstance(obj, bool) else int if isinstance(obj, int) else float if isinstance(obj, float) else str)(obj)
        mod = type(obj).__module__ or ""
        if mod == "numpy":
            import numpy as np

            if isinstance(obj, np.ndarray) and obj.dtype != object:
                return self.export(torch.from_numpy(np.ascontiguousarray(obj)), depth, budget)
            if isinstance(obj, np.generic):
                return self.export(obj.item(), depth, budget)
        if isinstance(obj, (list, tuple)):
            out = [self.export(x, depth + 1, budget) for x in obj]
            return tuple(out) if isinstance(obj, tuple) else out
        if isinstance(obj, dict):
            return {self.export(k, depth + 1, budget): self.export(v, depth + 1, budget) for k, v in obj.items()}
        if isinstance(obj, (set, frozenset)):
            return {"__ioi_set__": [self.export(x, depth + 1, budget) for x in obj]}
        if self.protocol.is_data(obj):  # a declared data type of the package: its fields, as plain data
            return {"__ioi_object__": self.protocol.type_name(obj), "state": self.export(self.protocol.state_of(obj), depth + 1, budget)}
        if isinstance(obj, FUNCTIONS):  # a function stays here; the judge may call it
            return self._handle(obj)
        raise NotPlainData(f"a {type(obj).__name__} object (return tensors, numbers, strings, or lists, tuples, dicts or sets of them)")

    def _handle(self, obj):
        self.handles[id(obj)] = obj
        return {"__ioi_handle__": id(obj), "type": type(obj).__name__, "callable": True}

    # ---- requests
    def run(self) -> None:
        while True:
            try:
                req = self.recv()
            except EOFError:
                return
            except Exception as e:  # noqa: BLE001 - e.g. a name the judge shares that this side never defined
                self.send({"error": _describe(e)})
                continue
            if req.get("op") == "bye":
                self.send({"ok": True})
                return
            try:
                reply = getattr(self, "op_" + req["op"])(**req.get("args", {}))
            except BaseException as e:  # noqa: BLE001 - the student's code may raise anything
                reply = {"error": _describe(e)}
            try:
                self.send(reply)
            except Exception as e:  # an answer that cannot be written: say so, keep going
                self.send({"error": {"ename": type(e).__name__, "evalue": f"the answer could not be sent back: {e}", "traceback": ""}})

    def shell(self):
        """An IPython shell on this namespace: cells run as in Jupyter (magics, ``!cmd``, top-level await)."""
        if self._shell is None:
            from IPython.core.interactiveshell import InteractiveShell
            from traitlets.config import Config

            c = Config()
            c.HistoryManager.enabled = False
            c.InteractiveShell.colors = "NoColor"
            c.InteractiveShell.xmode = "Plain"
            self._shell = InteractiveShell.instance(config=c, user_ns=self.ns)
        return self._shell

    def op_exec(self, code: str, name: str, share=()):
        started = time.perf_counter()
        before = {k: id(v) for k, v in self.ns.items()}
        out, err = _Capped(), _Capped()
        error = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result = self.shell().run_cell(code, store_history=False, silent=False)
                e = result.error_before_exec or result.error_in_exec
                if e is not None:
                    error = _describe(e)
            except BaseException as e:  # noqa: BLE001
                error = _describe(e)
        for n in share:
            if n in self.ns:
                self._share(n, self.ns[n])
        assigned = [k for k, v in self.ns.items() if before.get(k) != id(v) and not k.startswith("_")]
        return {"ok": error is None, "error": error, "stdout": out.getvalue(), "stderr": err.getvalue(), "assigned": assigned,
                "seconds": time.perf_counter() - started}

    def _share(self, name, obj):
        if type(obj) in SAFE_SCALARS:  # as the judge: plain values travel as themselves
            return
        self.shared[name] = obj
        self.shared_ids[id(obj)] = name
        for part, value in self.protocol.parts(obj).items():  # e.g. a model's tokenizer, known as "model.tokenizer"
            self.shared[f"{name}.{part}"] = value
            self.shared_ids[id(value)] = f"{name}.{part}"

    def op_files(self, files):
        """A warm sandbox's worker gets its submission here, first: (relative path, bytes) pairs, written into its home."""
        written = 0
        for rel, data in files:
            parts = [p for p in str(rel).split("/") if p not in ("", ".")]
            if str(rel).startswith("/") or ".." in parts or not parts:
                print(f"could not copy {rel}: not a path inside the submission", file=sys.stderr)
                continue
            try:
                if len(parts) > 1:
                    os.makedirs(os.path.join(*parts[:-1]), exist_ok=True)
                with open(os.path.join(*parts), "wb") as f:
                    f.write(data)
                written += 1
            except OSError as e:
                print(f"could not copy {rel}: {e}", file=sys.stderr)
        return {"ok": True, "written": written}

    def op_get(self, name: str):
        if name not in self.ns:
            return {"missing": True}
        return {"value": self.export(self.ns[name])}

    def op_call(self, target, args, kwargs):
        return {"value": self.export(target(*args, **kwargs))}


class _NoProtocol:
    """Stands in for ``ioi_anomalies.grading`` when it cannot be imported: no data types, recipes or parts."""

    REBUILDERS: dict = {}

    @staticmethod
    def is_data(obj) -> bool:
        return False

    @staticmethod
    def parts(obj) -> dict:
        return {}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, worker: Worker):
        super().__init__(f)
        self.worker = worker

    def persistent_load(self, pid):
        kind, key = pid
        if kind == "shared":
            return self.worker.shared[key]
        if kind == "handle":
            return self.worker.handles[key]
        if kind == "recipe":  # an object the judge made by a declared recipe (ioi_anomalies.grading): make the same one here
            name, kwargs, *files = key  # the first time, with the files the judge's constructor kept
            if name not in self.worker.protocol.REBUILDERS or type(kwargs) is not dict:
                raise pickle.UnpicklingError(f"unknown recipe {name!r}")
            cache_key = (name, tuple(sorted(kwargs.items())))
            if cache_key not in self.worker.recipes:
                self.worker.recipes[cache_key] = self.worker.protocol.rebuild(name, kwargs, files[0] if files else None)
            return self.worker.recipes[cache_key]
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


def _describe(e: BaseException) -> dict:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    # drop this file's own frames: the student sees their code and the libraries it called
    lines = [ln for ln in tb if "worker.py" not in ln and "IPython" not in ln]
    return {"ename": type(e).__name__, "evalue": str(e)[:2000], "traceback": "".join(lines)[-6000:]}


def _copy_submission(src: str) -> None:
    """Copy the read-only submission into the (writable, private) working folder."""
    import shutil

    for entry in os.listdir(src):
        if entry == os.path.basename(__file__):
            continue
        path = os.path.join(src, entry)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.copytree(path, entry, symlinks=True, dirs_exist_ok=True)
            elif os.path.isfile(path):
                shutil.copyfile(path, entry)
        except OSError as e:
            print(f"could not copy {entry}: {e}", file=sys.stderr)


# ---------------------------------------------------------------- the warm sandbox
# One sandbox (``grader.sandbox.WarmSandbox``) serves the submissions of one grading job, one after another.
# Its first process, the zygote, runs no student code: it imports what a worker needs, then for each
# submission forks a worker, waits for it, and puts the sandbox back as it found it (``_reset``) before
# it says it is ready again. It never reads a submission (the worker reads its files from the judge's
# socket after the fork), so no worker's memory holds another student's work.
PR_SET_DUMPABLE = 4
WRITABLE = ("/tmp", "/dev/shm")  # with the home: everything a worker can write


def _prctl(option: int, arg: int) -> int:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


def _send_msg(sock: socket.socket, msg: dict, fds=()) -> None:
    """A length-prefixed JSON message; ``fds``: file descriptors sent with it."""
    import json

    data = json.dumps(msg).encode()
    packet = struct.pack("!Q", len(data)) + data
    if fds:
        socket.send_fds(sock, [packet], list(fds))
    else:
        sock.sendall(packet)


def _recv_msg(sock: socket.socket, maxfds: int = 0) -> tuple[dict, list[int]]:
    """A length-prefixed JSON message and the file descriptors sent with its first bytes."""
    import json

    head, fds, _, _ = socket.recv_fds(sock, 8, maxfds) if maxfds else (sock.recv(8), [], 0, None)
    if not head:
        raise EOFError
    buf = bytearray(head)
    while len(buf) < 8:
        chunk = sock.recv(8 - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    (n,) = struct.unpack("!Q", bytes(buf))
    body = bytearray()
    while len(body) < n:
        chunk = sock.recv(min(1 << 20, n - len(body)))
        if not chunk:
            raise EOFError
        body += chunk
    return json.loads(bytes(body)), list(fds)


def _no_processes_but_mine(me: int) -> bool:
    return all(not p.isdigit() or int(p) in (1, me) for p in os.listdir("/proc"))


# syscall numbers (no wrapper in the standard library), by machine
_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}
_KEYCTL = {"x86_64": 250, "aarch64": 219}


def _own_settings() -> dict:
    """What a process of the same user may change in another one (and a forked worker would inherit): its resource
    limits, nice value, scheduling policy and priority, CPU affinity and I/O priority."""
    import resource

    out: dict = {name: resource.getrlimit(getattr(resource, name)) for name in dir(resource) if name.startswith("RLIMIT_")}
    out["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    out["scheduler"] = os.sched_getscheduler(0)
    out["sched_priority"] = os.sched_getparam(0).sched_priority
    out["affinity"] = sorted(os.sched_getaffinity(0))
    ioprio = _syscall(_IOPRIO_GET, 1, 0)  # IOPRIO_WHO_PROCESS, this process
    if ioprio is not None:
        out["ioprio"] = ioprio
    return out


def _network_sockets() -> int:
    """Sockets left in the sandbox's network namespace (TCP connections linger in TIME_WAIT after their process)."""
    count = 0
    for name in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"):
        try:
            with open(f"/proc/net/{name}") as f:
                count += max(0, len(f.read().splitlines()) - 1)
        except OSError:
            pass
    return count


def _syscall(numbers: dict[str, int], *args: int) -> int | None:
    """A system call the standard library has no wrapper for, by its number on this machine (None where it is not known)."""
    import ctypes
    import platform

    number = numbers.get(platform.machine())
    return None if number is None else ctypes.CDLL(None, use_errno=True).syscall(number, *args)


def _skeleton(home: str) -> dict[str, tuple[int, int, bool]]:
    """Every path in the writable folders (home, /tmp, /dev/shm): its mode, its owner, and whether it is a folder of
    that writable file system (not a mount point in it). As the zygote starts: the folders themselves and those
    bubblewrap made for what it mounted in them (a checkout under /tmp puts the package's parents there); what a
    worker adds, ``_reset`` removes."""
    out: dict[str, tuple[int, int, bool]] = {}
    for top in (home,) + WRITABLE:
        device = os.lstat(top).st_dev
        todo = [top]
        while todo:
            path = todo.pop()
            st = os.lstat(path)
            ours = os.path.isdir(path) and not os.path.islink(path) and st.st_dev == device
            out[path] = (st.st_mode, st.st_uid, ours)
            if ours:
                try:
                    todo += [os.path.join(path, e) for e in os.listdir(path)]
                except OSError:
                    pass
    return out


def _reset(home: str, settings: dict, skeleton: dict) -> str:
    """Put the sandbox back as the zygote found it: no process but itself, home, /tmp and /dev/shm as they were
    (``skeleton``: empty, but for the folders bubblewrap made there), no System V IPC object, no socket, and the zygote's own limits, priorities and affinity as they were
    (another process of the same user may change them: a worker would inherit them).
    Returns why it could not ("": done); the sandbox is then retired."""
    import signal
    import subprocess

    me = os.getpid()
    for _ in range(1000):  # every process the worker left (they run as this user; setuid is off in the sandbox)
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        while True:  # a process made with clone(CLONE_PARENT) is ours to reap
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if _no_processes_but_mine(me):
            break
        time.sleep(0.005)
    else:
        return "processes the worker started could not be stopped"
    if _own_settings() != settings:
        return "the zygote's limits or priorities were changed"
    if _network_sockets():
        return "sockets of the last worker are still open"
    for folder, (mode, _, ours) in skeleton.items():  # the writable folders, and the folders bubblewrap made in them
        if not ours:
            continue
        try:
            if os.lstat(folder).st_mode != mode:
                os.chmod(folder, mode & 0o7777)
            children = {os.path.join(folder, e) for e in os.listdir(folder)}
            extra = sorted(children - set(skeleton))
            if extra:  # GNU tools: any depth, any modes the worker left
                subprocess.run(["chmod", "-R", "u+rwx", "--"] + extra, stdin=subprocess.DEVNULL, capture_output=True)
                subprocess.run(["rm", "-rf", "--"] + extra, stdin=subprocess.DEVNULL, capture_output=True)
        except OSError as e:
            return f"{folder}: {e}"
    if _skeleton(home) != skeleton:
        return "the home, /tmp or /dev/shm could not be emptied"
    ipc = ("/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg")

    def ipc_objects() -> int:
        try:
            return sum(len(open(f).read().splitlines()) - 1 for f in ipc if os.path.exists(f))
        except OSError:
            return -1

    if ipc_objects():
        subprocess.run(["ipcrm", "--all"], stdin=subprocess.DEVNULL, capture_output=True)
        if ipc_objects():
            return "System V IPC objects could not be removed"
    if not _no_processes_but_mine(me):
        return "a process started while the sandbox was emptied"
    return ""


def redirect_output(fd: int) -> None:
    """Standard input from /dev/null, standard output and error to ``fd`` (then closed): a forked child's first step."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(null)
    os.close(fd)


def _warm_child(control: socket.socket, student_fd: int, log_fd: int) -> None:
    """In a worker forked by the zygote: its own session, output to its log, its home, then the worker's loop."""
    code = 1
    try:
        control.close()
        os.setsid()
        _syscall(_KEYCTL, 1, 0)  # KEYCTL_JOIN_SESSION_KEYRING: a new session keyring, not the zygote's
        _prctl(PR_SET_DUMPABLE, 1)  # a process like any other (the zygote is not)
        redirect_output(log_fd)
        os.chdir(os.environ["HOME"])
        sys.path[0] = os.getcwd()  # as in Jupyter: the notebook's folder first, so the student's own modules import
        sys.argv = ["notebook"]
        import torch

        torch.manual_seed(0)
        Worker(socket.socket(fileno=student_fd)).run()  # its first request brings the submission (op_files)
        code = 0
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def zygote(fd: int, host_ns: int) -> None:
    """The warm sandbox's first process: imports, then one forked worker per ``fork`` request, each followed by ``_reset``.

    Messages on ``fd`` (length-prefixed JSON): in ``{"imports": [...]}`` first (import statements of the
    assignment's released set-up cells); out ``{"ready": n}``; in ``{"op": "fork", "imports": [...]}`` with the
    student's socket and the log's descriptor (the imports not done yet are done before the fork); out
    ``{"forking": n}``, ``{"pid": p}``, ``{"exit": code}``, then ``{"ready": n}`` or ``{"retired": why}`` (and it
    exits). ``{"op": "ping", "n": k}`` between workers is answered ``{"pong": k}``. ``host_ns``: the PID namespace
    of the grader (the inode of /proc/self/ns/pid), which the zygote must not be in.
    """
    import gc
    import resource

    control = socket.socket(fileno=fd)
    try:
        own_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        own_ns = host_ns
    # _reset kills every process it may: only as the first process of a PID namespace other than the grader's, never root
    if (os.getpid(), os.getppid()) != (2, 1) or own_ns == host_ns or os.getuid() == 0:
        _send_msg(control, {"retired": "the warm sandbox runs only as the first process of a bubblewrap sandbox"})
        return
    msg, _ = _recv_msg(control)
    os.environ.setdefault("PLOTLY_RENDERER", "json")
    import torch  # noqa: F401
    from IPython.core.interactiveshell import InteractiveShell  # noqa: F401

    try:
        from ioi_anomalies import grading  # noqa: F401
    except Exception:  # noqa: BLE001 - each worker tries again, as a fresh one would
        pass
    done: set[str] = set()

    def run_imports(statements) -> None:
        """Trusted import statements (the released set-up cells'), each once. Safe at any time: nothing on sys.path
        is writable in the sandbox (its home has no user site-packages folder when the zygote starts)."""
        for statement in statements:
            if statement in done:
                continue
            done.add(statement)
            try:
                exec(compile(statement, "<worker imports>", "exec"), {"__name__": "__worker_imports__"})
            except Exception:  # noqa: BLE001 - the notebook imports it again and fails there, as in a fresh process
                pass
        gc.collect()
        gc.freeze()  # the workers' collections leave the zygote's objects alone (and their pages shared)

    run_imports(msg.get("imports", []))
    _prctl(PR_SET_DUMPABLE, 0)  # a worker cannot read or trace the zygote
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))  # no POSIX message queue outlives a worker
    home = os.environ["HOME"]
    settings = _own_settings()
    skeleton = _skeleton(home)
    served = 0
    _send_msg(control, {"ready": served})
    while True:
        try:
            msg, fds = _recv_msg(control, 2)
        except (EOFError, OSError):
            return
        if msg.get("op") == "ping":
            for f in fds:
                os.close(f)
            _send_msg(control, {"pong": msg.get("n")})
            continue
        if msg.get("op") != "fork" or len(fds) != 2:
            for f in fds:
                os.close(f)
            _send_msg(control, {"retired": "a request the zygote does not know"})
            return
        run_imports(msg.get("imports", []))
        _send_msg(control, {"forking": served})  # from here on, what happens to the worker is the submission's doing
        pid = os.fork()
        if pid == 0:
            _warm_child(control, *fds)
        for f in fds:
            os.close(f)
        _send_msg(control, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send_msg(control, {"exit": os.waitstatus_to_exitcode(status)})
        why = _reset(home, settings, skeleton)
        if why:
            _send_msg(control, {"retired": why})
            return
        served += 1
        _send_msg(control, {"ready": served})


def main() -> None:
    if sys.argv[1] == "--zygote":
        return zygote(int(sys.argv[2]), int(sys.argv[3]))
    fd = int(sys.argv[1])
    if len(sys.argv) > 2:
        _copy_submission(sys.argv[2])
    sock = socket.socket(fileno=fd)
    os.environ.setdefault("PLOTLY_RENDERER", "json")
    sys.argv = ["notebook"]
    import torch

    torch.manual_seed(0)
    Worker(sock).run()


if __name__ == "__main__":
    main()
