"""Grading one submission: the student's code runs in a sandboxed worker, the tests run here.

Plain nbgrader runs the tests in the student's kernel, so one line such as
``torch.testing.assert_close = lambda *a, **k: None`` earns full marks. Here two processes share
the work, cell by cell in the source notebook's order:

- the **worker** (``grader/worker.py``, in the sandbox) runs the locked cells and the student's
  own cells, and holds everything the student defines;
- the **judge** (this module, trusted) runs the locked cells the tests depend on and every test,
  taken from the source notebook. A student name used by a test (a function, a variable) is
  looked up in the worker: functions become handles that call across, values come back as
  tensors and plain data only (``torch.load(weights_only=True)``), and objects of the project's
  own classes are rebuilt here from their state. ``check_close``, ``assert``, ``torch`` and the
  reference helpers that decide the grade all live in this process, where the student's code never
  ran.

A test passes when it raises nothing; warnings are ignored. When the worker hangs past the wall
time or dies, the tests already judged keep their points and the rest are marked ungraded.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import signal
import socket
import struct
import time
import traceback
import warnings
from pathlib import Path

from .config import Config
from .intake import HIDDEN, Plan, defined_names, used_names
from .sandbox import kill, start_worker

_SCALARS = (type(None), bool, int, float, str, complex, bytes)


class WorkerGone(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class RemoteError(Exception):
    """The student's code raised while the judge asked it something."""

    def __init__(self, info: dict):
        super().__init__(f"{info.get('ename')}: {info.get('evalue')}")
        self.ename, self.evalue, self.tb = info.get("ename", "Error"), info.get("evalue", ""), info.get("traceback", "")


class GraderError(Exception):
    """A locked (trusted) cell failed in the judge: the grader's problem, not the student's."""


class Handle:
    """An object that stays in the worker; every use is a question to it."""

    __slots__ = ("_conn", "_id", "_type")

    def __init__(self, conn: "Conn", hid: int, type_name: str):
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_id", hid)
        object.__setattr__(self, "_type", type_name)

    def __call__(self, *args, **kwargs):
        return self._conn.value("call", target=self, args=args, kwargs=kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._conn.value("getattr", target=self, name=name)

    def __getitem__(self, key):
        return self._conn.value("getitem", target=self, key=key)

    def __len__(self):
        return self._conn.value("len", target=self)

    def __iter__(self):
        return iter(self._conn.value("list", target=self))

    def __bool__(self):
        return self._conn.value("bool", target=self)

    def __repr__(self):
        return self._conn.value("repr", target=self)


class Conn:
    """The judge's end of the socket to one worker."""

    def __init__(self, proc, sock: socket.socket, deadline: float, log: Path):
        self.proc, self.sock, self.deadline, self.log = proc, sock, deadline, log
        self.shared: dict[str, object] = {}
        self.shared_ids: dict[int, str] = {}

    # objects the judge made with trusted code, known to the worker by the same name
    def share(self, name: str, obj) -> None:
        if type(obj) in _SCALARS or isinstance(obj, Handle):
            return
        self.shared[name], self.shared_ids[id(obj)] = obj, name
        tok = getattr(obj, "tokenizer", None) if not isinstance(obj, (dict, list, tuple, type)) else None
        if tok is not None:
            self.shared[name + ".tokenizer"], self.shared_ids[id(tok)] = tok, name + ".tokenizer"

    def send(self, op: str, **args) -> None:
        import torch

        buf = io.BytesIO()
        conn = self

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, Handle):
                    return ("handle", obj._id)
                if isinstance(obj, torch.nn.Module) and isinstance(getattr(obj, "recipe", None), tuple):
                    return ("recipe", obj.recipe)  # a model the worker can rebuild, e.g. random_model(...)
                name = conn.shared_ids.get(id(obj))
                if name is not None and conn.shared.get(name) is obj:
                    return ("shared", name)
                return None

        try:
            P(buf, protocol=pickle.HIGHEST_PROTOCOL).dump({"op": op, "args": args})
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"cannot pass this value to the student's code: {e}") from e
        data = buf.getvalue()
        self._io(lambda: self.sock.sendall(struct.pack("!Q", len(data)) + data))

    def recv(self) -> dict:
        import torch

        (n,) = struct.unpack("!Q", self._read(8))
        raw = self._read(n)
        try:
            reply = torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as e:  # noqa: BLE001 - anything the worker sent that is not plain data
            raise WorkerGone("crashed", f"the student's process sent back something that is not plain data ({type(e).__name__})") from e
        if not isinstance(reply, dict):
            raise WorkerGone("crashed", "the student's process answered out of turn")
        return reply

    def ask(self, op: str, **args) -> dict:
        self.send(op, **args)
        reply = self.recv()
        if reply.get("error"):
            raise RemoteError(reply["error"])
        return reply

    def value(self, op: str, **args):
        return self.imp(self.ask(op, **args).get("value"))

    def imp(self, v):
        """Turn a reply into judge-side objects (handles, shared objects, rebuilt project objects)."""
        if isinstance(v, dict):
            keys = set(v)
            if keys == {"__ioi_handle__", "type", "callable"}:
                return Handle(self, v["__ioi_handle__"], str(v["type"]))
            if keys == {"__ioi_shared__"}:
                return self.shared[v["__ioi_shared__"]]
            if keys == {"__ioi_set__"}:
                return set(self.imp(x) for x in v["__ioi_set__"])
            if keys == {"__ioi_object__", "state"}:
                mod, _, qual = str(v["__ioi_object__"]).partition(":")
                if mod.split(".")[0] != "ioi_anomalies" or "." in qual:
                    raise TypeError(f"unexpected object type {v['__ioi_object__']!r}")
                cls = getattr(importlib.import_module(mod), qual)
                obj = cls.__new__(cls)
                obj.__dict__.update(self.imp(v["state"]))
                return obj
            return {self.imp(k): self.imp(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.imp(x) for x in v]
        if isinstance(v, tuple):
            return tuple(self.imp(x) for x in v)
        return v

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WorkerGone("timeout", "the notebook ran past its time limit")
        return left

    def _io(self, fn):
        self.sock.settimeout(self._remaining())
        try:
            return fn()
        except socket.timeout as e:
            raise WorkerGone("timeout", "the notebook ran past its time limit") from e
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise self._died() from e

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._io(lambda: self.sock.recv(min(1 << 20, n - len(buf))))
            if not chunk:
                raise self._died()
            buf += chunk
        return bytes(buf)

    def _died(self) -> WorkerGone:
        try:
            code = self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            code = None
        tail = ""
        try:
            tail = self.log.read_text(errors="replace")[-600:].strip()
        except OSError:
            pass
        sig = -code if code is not None and code < 0 else code - 128 if code is not None and 128 < code < 160 else None
        if sig is not None:  # bubblewrap passes a signal on as 128 + its number
            try:
                why = f"killed by {signal.Signals(sig).name}"
            except ValueError:
                why = f"killed by signal {sig}"
        elif code == 1 and "Killed" in tail:
            why = "killed (out of memory?)"
        else:
            why = f"exit status {code}"
        if "MemoryError" in tail or "std::bad_alloc" in tail or "Cannot allocate memory" in tail:
            why += "; it ran out of memory"
        gone = WorkerGone("crashed", f"the notebook's process died ({why})")
        gone.log_tail = tail
        return gone


def _failing_line(code: str, filename: str, tb) -> str | None:
    """The visible test line an exception came from, or None if it came from hidden code."""
    frames = [f for f in traceback.extract_tb(tb) if f.filename == filename]
    if not frames:
        return None
    lineno = frames[-1].lineno or 0
    hidden = set()
    for m in HIDDEN.finditer(code):
        start = code.count("\n", 0, m.start()) + 1
        hidden.update(range(start, code.count("\n", 0, m.end()) + 2))
    if lineno in hidden:
        return None
    lines = code.splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else None


class Judge:
    def __init__(self, plan: Plan, cfg: Config, workdir: Path):
        self.plan, self.cfg, self.workdir = plan, cfg, workdir
        self.ns: dict = {"__name__": "__main__"}
        self.fetched: set[str] = set()

    def needed_trusted(self) -> set[int]:
        """Locked cells whose names the tests use (directly or through other locked cells)."""
        need: set[str] = set()
        out: set[int] = set()
        for i in range(len(self.plan.steps) - 1, -1, -1):
            s = self.plan.steps[i]
            if s.kind == "test":
                need |= used_names(s.code)
            elif s.kind == "trusted" and defined_names(s.code) & need:
                out.add(i)
                need |= used_names(s.code)
        return out

    def _bind_student_names(self, conn: Conn, code: str) -> None:
        for n in list(self.fetched):
            self.ns.pop(n, None)
        self.fetched.clear()
        for n in sorted(used_names(code) - defined_names(code) - set(self.ns)):
            reply = conn.ask("get", name=n)
            if not reply.get("missing"):
                self.ns[n] = conn.imp(reply.get("value"))
                self.fetched.add(n)

    def _exec_here(self, code: str, filename: str):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, filename, "exec"), self.ns)

    def _exec_trusted(self, conn: Conn, step, share) -> None:
        try:
            self._exec_here(step.code, f"<locked cell {step.name}>")
        except (WorkerGone, RemoteError):
            raise
        except Exception as e:  # noqa: BLE001
            raise GraderError(f"locked cell {step.name} failed in the grader: {type(e).__name__}: {e}") from e
        for n in share:
            if n in self.ns:
                conn.share(n, self.ns[n])

    def run(self) -> dict:
        import torch

        torch.manual_seed(0)
        cfg, plan = self.cfg, self.plan
        log = self.workdir.parent / (self.workdir.name + ".log")
        started = time.monotonic()
        deadline = started + cfg.wall_time_s
        tests: dict[str, dict] = {}
        cell_errors: list[dict] = []
        status, reason, log_tail = "graded", [], ""
        proc, sock = start_worker(self.workdir, cfg, log)
        conn = Conn(proc, sock, deadline, log)
        needed = self.needed_trusted()
        try:
            for i, step in enumerate(plan.steps):
                if step.kind == "trusted":
                    share = sorted(defined_names(step.code)) if i in needed else []
                    conn.send("exec", code=step.code, name=step.name, share=share)
                    # the judge runs its own copy meanwhile, or after the worker when it needs the student's names
                    overlap = i in needed and not (used_names(step.code) - defined_names(step.code) - set(self.ns))
                    if overlap:
                        self._exec_trusted(conn, step, share)
                    reply = conn.recv()
                    if not reply.get("ok"):
                        cell_errors.append({"cell": step.name, **(reply.get("error") or {})})
                    if i in needed and not overlap:
                        try:
                            self._bind_student_names(conn, step.code)
                            self._exec_trusted(conn, step, share)
                        except RemoteError as e:  # the student's code failed inside a locked cell
                            if reply.get("ok"):
                                cell_errors.append({"cell": step.name, "ename": e.ename, "evalue": e.evalue, "traceback": e.tb})
                        except GraderError as e:  # a locked cell fed with the student's answers: their answers' fault
                            if reply.get("ok"):
                                cell_errors.append({"cell": step.name, "ename": "Error", "evalue": str(e), "traceback": ""})
                elif step.kind == "student":
                    conn.send("exec", code=step.code, name=step.name)
                    reply = conn.recv()
                    if not reply.get("ok"):
                        cell_errors.append({"cell": step.name, **(reply.get("error") or {})})
                else:
                    tests[step.name] = self.run_test(conn, step)
        except (WorkerGone, GraderError) as e:
            status = e.status if isinstance(e, WorkerGone) else "grader_error"
            e.reason = getattr(e, "reason", str(e))
            reason = [e.reason]
            log_tail = getattr(e, "log_tail", "")
            for step in plan.steps:
                if step.kind == "test" and step.name not in tests:
                    tests[step.name] = {"points": step.points, "score": 0.0, "state": "not graded",
                                        "message": f"not graded: {e.reason}"}
        finally:
            with contextlib.suppress(Exception):
                if proc.poll() is None and time.monotonic() < deadline:
                    conn.send("bye")
            sock.close()
            kill(proc)
        for step in plan.steps:  # a test that was never reached still appears
            if step.kind == "test" and step.name not in tests:
                tests[step.name] = {"points": step.points, "score": 0.0, "state": "not graded", "message": "not graded"}
        if status == "graded" and plan.tampered:
            status = "tampered"
        reason += plan.tampered + plan.notes
        return {
            "status": status,
            "reason": "; ".join(reason),
            "tests": tests,
            "cell_errors": cell_errors,
            "duration_s": round(time.monotonic() - started, 2),
            "worker_log": log_tail,  # for the instructor; never shown in feedback
        }

    def run_test(self, conn: Conn, step) -> dict:
        base = {"points": step.points, "score": 0.0}
        if step.deleted:
            return {**base, "state": "failed", "message": "this test cell was deleted or its metadata removed; it counts as failed"}
        filename = f"<test {step.name}>"
        try:
            self._bind_student_names(conn, step.code)
            self._exec_here(step.code, filename)
        except WorkerGone:
            raise
        except RemoteError as e:
            return {**base, "state": "failed", "message": f"your code raised {e.ename}: {e.evalue}".strip(), "traceback": e.tb}
        except Exception as e:  # noqa: BLE001 - any failure of the test is a failed test
            msg = str(e).strip()
            line = _failing_line(step.code, filename, e.__traceback__)
            if isinstance(e, AssertionError):
                msg = msg or (f"check failed: {line}" if line else "a hidden check failed")
            else:
                msg = f"{type(e).__name__}: {msg}" + (f" (in: {line})" if line else "")
                if isinstance(e, NameError):
                    msg += " - is it defined in your notebook, and did its cell run without errors?"
            return {**base, "state": "failed", "message": msg}
        return {**base, "score": step.points, "state": "passed", "message": "passed"}


def judge_submission(plan: Plan, cfg: Config, workdir: Path) -> dict:
    os.environ.setdefault("PLOTLY_RENDERER", "json")
    os.environ["IOI_ANOMALIES_MODEL"] = cfg.model
    return Judge(plan, cfg, workdir).run()
