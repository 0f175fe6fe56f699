"""Grading one submission: the student's code runs in a sandboxed worker, the tests run here.

Plain nbgrader runs the tests in the student's kernel, so one line such as
``torch.testing.assert_close = lambda *a, **k: None`` earns full marks. Here two processes share
the work, cell by cell in the source notebook's order:

- the **worker** (``grader/worker.py``, in the sandbox) runs the locked cells and the student's
  own cells, and holds everything the student defines;
- the **judge** (this module, trusted) runs the locked cells the tests depend on and every test,
  taken from the source notebook. A student name used by a test (a function, a variable) is
  looked up in the worker: functions become handles that call across, values come back as
  tensors and plain data only (``torch.load(weights_only=True)``), and objects of the data types
  the package declares (``ioi_anomalies.grading``) are rebuilt here from their fields.
  ``check_close``, ``assert``, ``torch`` and the reference helpers that decide the grade all live
  in this process, where the student's code never ran.

A test passes when it raises nothing; warnings are ignored. When the worker hangs past the wall
time or dies, the tests already judged keep their points and the rest are marked ungraded.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import pickle
import signal
import socket
import struct
import threading
import time
import traceback
import warnings
from pathlib import Path

from ioi_anomalies import grading  # the package's declared protocol: data types, recipes, parts

from .config import Config
from .intake import HIDDEN, Plan, defined_names, used_names
from .sandbox import kill
from .sandbox import start as start_worker

_SCALARS = (type(None), bool, int, float, str, complex, bytes)


# bounds on what may arrive from the student's process (the worker applies the same ones first)
MAX_DEPTH = 16
MAX_ITEMS = 200_000
MAX_TENSOR_BYTES = 256 << 20
MAX_REPLY_BYTES = 512 << 20
MAX_TEXT = 20_000


class WorkerGone(BaseException):
    """Grading of this submission stops (the worker died, hung, or the wall time is spent).

    A ``BaseException``, so that no ``except Exception`` in a test or a locked cell swallows it.
    """

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class NotPlainData(TypeError):
    """A value from the student's process that is not plain data: an error in the student's answer."""


class RemoteError(Exception):
    """The student's code raised while the judge asked it something (``info`` is a checked error record)."""

    def __init__(self, info: dict):
        super().__init__(f"{info['ename']}: {info['evalue']}")
        self.ename, self.evalue, self.tb = info["ename"], info["evalue"], info["traceback"]


class GraderError(Exception):
    """A locked (trusted) cell failed in the judge: the grader's problem, not the student's."""


class Handle:
    """A function of the student's that stays in the worker: calling it runs it there and returns plain data."""

    __slots__ = ("_conn", "_id", "_type")

    def __init__(self, conn: "Conn", hid: int, type_name: str):
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_id", hid)
        object.__setattr__(self, "_type", type_name)

    def __call__(self, *args, **kwargs):
        return self._conn.value("call", target=self, args=args, kwargs=kwargs)

    def __getattr__(self, name):
        raise AttributeError(f"a function from the notebook has no attribute {name!r} here")

    def __setattr__(self, name, value):
        raise AttributeError("a function from the notebook cannot be changed")

    def __repr__(self):
        return "<function from the notebook>"


class Conn:
    """The judge's end of the socket to one worker."""

    def __init__(self, proc, sock: socket.socket, deadline: float, log: Path):
        self.proc, self.sock, self.deadline, self.log = proc, sock, deadline, log
        self.shared: dict[str, object] = {}
        self.shared_ids: dict[int, str] = {}
        self.recipes_sent: set[tuple] = set()
        self.unanswered = 0

    # objects the judge made with trusted code, known to the worker by the same name
    def share(self, name: str, obj) -> None:
        if type(obj) in _SCALARS or isinstance(obj, Handle):
            return
        self.shared[name], self.shared_ids[id(obj)] = obj, name
        for part, value in grading.parts(obj).items():  # e.g. a model's tokenizer, known as "model.tokenizer"
            self.shared[f"{name}.{part}"], self.shared_ids[id(value)] = value, f"{name}.{part}"

    def send(self, op: str, **args) -> None:
        import torch

        buf = io.BytesIO()
        conn = self

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, Handle):
                    return ("handle", obj._id)
                recipe = grading.recipe_of(obj)
                if recipe is not None:  # made by a constructor the package declares: the worker makes the same one
                    name, kwargs = recipe
                    key = (name, tuple(sorted(kwargs.items())))
                    if key in conn.recipes_sent:
                        return ("recipe", (name, kwargs))
                    conn.recipes_sent.add(key)  # the first time, with the files the constructor kept (not made twice)
                    return ("recipe", (name, kwargs, grading.recipe_files(name, kwargs)))
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
        """One reply, checked: a dict whose known fields have the right types (else ``crashed``). Replies to requests
        sent without waiting (``unanswered``: a warm worker's files) are read first."""
        while self.unanswered:
            self.unanswered -= 1
            self._recv()
        return self._recv()

    def _recv(self) -> dict:
        import torch

        (n,) = struct.unpack("!Q", self._read(8))
        if n > MAX_REPLY_BYTES:
            raise WorkerGone("crashed", f"the student's process sent a reply of {n} bytes, more than the grader accepts")
        raw = self._read(n)
        try:
            reply = torch.load(io.BytesIO(raw), weights_only=True)
        except (Exception, RecursionError) as e:  # noqa: BLE001 - anything the worker sent that is not plain data
            raise WorkerGone("crashed", f"the student's process sent back something that is not plain data ({type(e).__name__})") from e
        return check_reply(reply)

    def ask(self, op: str, **args) -> dict:
        self.send(op, **args)
        reply = self.recv()
        if reply.get("error"):
            raise RemoteError(reply["error"])
        return reply

    def value(self, op: str, **args):
        return self.imp(self.ask(op, **args).get("value"))

    def imp(self, v):
        """Turn a reply's value into judge-side objects, accepting plain data only (else :class:`NotPlainData`).

        Tensors are made dense, contiguous and owned here, with their size checked before and after;
        containers are bounded in depth and size; objects of the project's classes are rebuilt from
        checked state; a function handle can only be called.
        """
        return self._imp(v, 0, [MAX_ITEMS, MAX_REPLY_BYTES])

    def _imp(self, v, depth: int, budget: list):
        import torch

        budget[0] -= 1
        if budget[0] < 0:
            raise NotPlainData(f"the answer has more than {MAX_ITEMS} items")
        t = type(v)
        if t in _SCALARS or t in (torch.device, torch.dtype):
            return v
        if depth >= MAX_DEPTH:
            raise NotPlainData(f"the answer is nested more than {MAX_DEPTH} levels deep")
        if isinstance(v, torch.Tensor):
            if v.layout != torch.strided or v.is_quantized or v.is_nested:
                raise NotPlainData("the answer holds a tensor that is not an ordinary dense tensor")
            nbytes = v.numel() * v.element_size()
            budget[1] -= nbytes
            if nbytes > MAX_TENSOR_BYTES or budget[1] < 0:  # refused before anything is materialised
                raise NotPlainData(f"the answer holds a tensor of shape {tuple(v.shape)}, larger than the grader accepts")
            out = v.detach().as_subclass(torch.Tensor).contiguous().clone()
            if out.untyped_storage().nbytes() > MAX_TENSOR_BYTES:
                raise NotPlainData("the answer holds a tensor larger than the grader accepts")
            return out
        if t is list:
            return [self._imp(x, depth + 1, budget) for x in v]
        if t is tuple:
            return tuple(self._imp(x, depth + 1, budget) for x in v)
        if t is not dict:
            raise NotPlainData(f"the answer holds a {t.__name__}, which is not plain data")
        keys = set(v)
        if keys == {"__ioi_handle__", "type", "callable"}:
            if type(v["__ioi_handle__"]) is not int:
                raise NotPlainData("malformed function reference")
            return Handle(self, v["__ioi_handle__"], str(v["type"])[:100])
        if keys == {"__ioi_shared__"}:
            name = v["__ioi_shared__"]
            if type(name) is not str or name not in self.shared:
                raise NotPlainData("the answer refers to an object the grader does not know")
            return self.shared[name]
        if keys == {"__ioi_set__"}:
            items = v["__ioi_set__"]
            if type(items) is not list:
                raise NotPlainData("malformed set")
            out = set()
            for x in items:
                out.add(self._key(self._imp(x, depth + 1, budget)))
            return out
        if keys == {"__ioi_object__", "state"}:
            return self._object(v, depth, budget)
        return {self._key(self._imp(k, depth + 1, budget)): self._imp(x, depth + 1, budget) for k, x in v.items()}

    @staticmethod
    def _key(k):
        """Dict keys and set items: scalars and tuples of them only (their hashing and equality are the judge's own)."""
        if type(k) in _SCALARS or (type(k) is tuple and all(type(x) in _SCALARS for x in k)):
            return k
        raise NotPlainData("the answer uses a dict key or set item that is not a number, a string or a tuple of them")

    def _object(self, v, depth: int, budget: list):
        """An object of a data type the package declares (``ioi_anomalies.grading``), rebuilt from checked fields."""
        name, state = v["__ioi_object__"], v["state"]
        if type(name) is not str or type(state) is not dict:
            raise NotPlainData("malformed project object")
        if name not in grading.DATA_TYPES:
            raise NotPlainData(f"the answer holds an object of an unexpected type ({name[:100]})")
        fields = self._imp(state, depth + 1, budget)
        try:
            return grading.from_state(name, fields)
        except grading.NotRebuildable:
            raise NotPlainData("malformed project object") from None

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


_ERROR_FIELDS = ("ename", "evalue", "traceback")


def _text(v, limit: int = MAX_TEXT) -> str:
    if type(v) is not str:
        raise TypeError
    return v[:limit]


def check_reply(reply) -> dict:
    """A reply from the worker with every field the judge reads of the expected type, or ``crashed``."""
    try:
        if type(reply) is not dict or not all(type(k) is str for k in reply):
            raise TypeError
        out = dict(reply)
        for k in ("ok", "missing"):
            if k in out and type(out[k]) is not bool:
                raise TypeError
        for k in ("stdout", "stderr"):
            if k in out:
                out[k] = _text(out[k])
        if "assigned" in out:
            if type(out["assigned"]) is not list:
                raise TypeError
            out["assigned"] = [_text(x, 200) for x in out["assigned"][:10_000]]
        err = out.get("error")
        if err is not None:
            if type(err) is not dict:
                raise TypeError
            out["error"] = {k: _text(err.get(k, ""), 6000 if k == "traceback" else 2000) for k in _ERROR_FIELDS}
            out["error"]["ename"] = out["error"]["ename"][:100] or "Error"
    except TypeError:
        raise WorkerGone("crashed", "the student's process sent a malformed reply") from None
    return out


def hidden_lines(code: str) -> set[int]:
    """Line numbers (1-based) of a test cell that belong to its hidden tests."""
    out: set[int] = set()
    for m in HIDDEN.finditer(code):
        out.update(range(code.count("\n", 0, m.start()) + 1, code.count("\n", 0, m.end()) + 2))
    return out


def failure_site(code: str, filename: str, tb) -> tuple[str | None, bool, bool]:
    """Where a test failed: (the visible line, or None), whether it was in hidden code, whether the test's own line raised.

    An exception with no frame in the test itself counts as hidden: nothing about it is shown.
    """
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if f.filename == filename]
    if not ours:
        return None, True, False
    lineno = ours[-1].lineno or 0
    if lineno in hidden_lines(code):
        return None, True, frames[-1].filename == filename
    lines = code.splitlines()
    line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else None
    return line, False, frames[-1].filename == filename


def literal_message(code: str, filename: str, tb) -> bool:
    """Whether the statement of the test that failed gives its message as a plain string literal.

    The ``assert``'s message or the ``what`` of ``check_close``/``check_heads`` on the failing line;
    an f-string or any other expression could carry hidden inputs or expected values.
    """
    import ast

    ours = [f for f in traceback.extract_tb(tb) if f.filename == filename]
    if not ours:
        return False
    lineno = ours[-1].lineno or 0
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) is None or not node.lineno <= lineno <= (node.end_lineno or node.lineno):
            continue
        if isinstance(node, ast.Assert):
            return isinstance(node.msg, ast.Constant) and isinstance(node.msg.value, str)
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("check_close", "check_heads"):
            what = node.args[2] if len(node.args) > 2 else next((k.value for k in node.keywords if k.arg == "what"), None)
            return isinstance(what, ast.Constant) and isinstance(what.value, str)
    return False


_BUILTIN_ERRORS = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type) and issubclass(getattr(builtins, n), BaseException)}
_NOT_PLAIN_HINT = "return tensors, numbers, strings, or lists, tuples, dicts or sets of them"


def failure_message(e: BaseException, line: str | None, hidden: bool, raised_here: bool,
                    literal: bool = True) -> tuple[str, str | None]:
    """The message (and the student's traceback, visible tests only) for a failed test.

    A failure inside hidden test code shows only the property that failed: the ``what`` of a
    ``CheckFailed``, or the message of the test's own ``assert``; never inputs, expected values or
    the text of an exception the student's code raised.
    """
    if isinstance(e, RemoteError):
        if e.ename == "NotPlainData":
            if hidden:
                return f"during a hidden test your code returned something that is not plain data ({_NOT_PLAIN_HINT})", None
            return f"your code returned something that is not plain data: {e.evalue}", None
        if hidden:
            kind = e.ename if e.ename in _BUILTIN_ERRORS else "an exception"
            return f"your code raised {kind} during a hidden test", None
        return f"your code raised {e.ename}: {e.evalue}".strip(), e.tb
    if isinstance(e, NotPlainData):
        if hidden:
            return f"during a hidden test your code returned something that is not plain data ({_NOT_PLAIN_HINT})", None
        return f"your code returned something that is not plain data: {e}", None
    if hidden:  # ``literal``: the property is written as a plain string in the test (no f-string values)
        what = getattr(e, "what", None)
        if literal and isinstance(e, AssertionError) and isinstance(what, str) and what.strip():
            return f"hidden test failed: {what.strip()}", None
        if literal and type(e) is AssertionError and raised_here and str(e).strip():
            return f"hidden test failed: {str(e).strip()}", None
        return f"a hidden test failed ({type(e).__name__})", None
    msg = str(e).strip()
    if isinstance(e, AssertionError):
        return msg or f"check failed: {line}", None
    msg = f"{type(e).__name__}: {msg}" + (f" (in: {line})" if line else "")
    if isinstance(e, NameError):
        msg += " - is it defined in your notebook, and did its cell run without errors?"
    return msg, None


def _wall_clock(signum, frame):
    raise WorkerGone("timeout", "the notebook ran past its time limit (while its tests were checked)")


def _arm_wall_clock(deadline: float) -> None:
    """The judge's own side keeps the wall limit too: a long check is interrupted at the deadline."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, _wall_clock)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, deadline - time.monotonic()))


def _disarm_wall_clock() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)


class Judge:
    def __init__(self, plan: Plan, cfg: Config, workdir: Path, key: bytes = b""):
        self.plan, self.cfg, self.workdir, self.key = plan, cfg, workdir, key
        self.ns: dict = {"__name__": "__main__"}
        self.fetched: set[str] = set()
        self.timings: dict[str, float] = {}
        self.steps: dict[str, dict[str, float]] = {}
        self._first_reply = True

    # ---- where the time goes (``timings`` in the result; ``python -m grader.bench --profile``)
    def _time(self, what: str, step: str, seconds: float) -> None:
        self.timings[what] = self.timings.get(what, 0.0) + seconds
        self.steps.setdefault(step, {})[what] = self.steps.get(step, {}).get(what, 0.0) + seconds

    def _time_worker(self, step: str, reply: dict, waited: float) -> None:
        ran = reply.get("seconds")
        ran = float(ran) if type(ran) in (int, float) and 0 <= ran <= waited + 1 else waited
        if self._first_reply:  # the worker's interpreter start and imports come before its first answer
            self._first_reply = False
            self._time("worker_boot_s", step, max(0.0, waited - ran))
        self._time("worker_cells_s", step, ran)

    def timing_summary(self, total: float) -> dict:
        from . import refcache

        out = {k: round(v, 3) for k, v in sorted(self.timings.items())}
        out["judge_boot_s"] = round(_process_age() - total, 3) if _process_age() is not None else None
        out["references_s"] = round(refcache.stats["seconds"], 3)
        out["reference_cache"] = {k: v for k, v in refcache.stats.items() if k != "seconds"}
        out["total_s"] = round(total, 3)
        out["steps"] = {k: {w: round(x, 3) for w, x in v.items()} for k, v in self.steps.items()}
        return out

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
        cfg, plan = self.cfg, self.plan
        log = self.workdir.parent / (self.workdir.name + ".log")
        started = time.monotonic()
        deadline = started + cfg.wall_time_s
        tests: dict[str, dict] = {}
        cell_errors: list[dict] = []
        status, reason, log_tail = "graded", [], ""
        t = time.monotonic()
        # first: the worker boots (or is forked in the warm sandbox lent to this judge) while this judge imports torch
        proc, sock, files = start_worker(self.workdir, cfg, log)
        self.timings["worker_start_s"] = time.monotonic() - t
        import torch

        from . import hidden

        torch.manual_seed(0)
        hidden.use_submission(self.key)
        conn = Conn(proc, sock, deadline, log)
        needed = self.needed_trusted()
        _arm_wall_clock(deadline)
        bye = False
        try:
            if files is not None:  # a warm sandbox's worker: the submission first, answered before the first cell's reply
                conn.send("files", files=files)
                conn.unanswered += 1
            for i, step in enumerate(plan.steps):
                if step.kind == "trusted":
                    share = sorted(defined_names(step.code)) if i in needed else []
                    t = time.monotonic()
                    conn.send("exec", code=step.code, name=step.name, share=share)
                    # the judge runs its own copy meanwhile, or after the worker when it needs the student's names
                    overlap = i in needed and not (used_names(step.code) - defined_names(step.code) - set(self.ns))
                    if overlap:
                        self._exec_trusted(conn, step, share)
                        self._time("judge_locked_cells_s", step.name, time.monotonic() - t)
                    t_wait = time.monotonic()
                    reply = conn.recv()
                    self._time_worker(step.name, reply, time.monotonic() - t_wait)
                    t = time.monotonic()
                    if not reply.get("ok"):
                        cell_errors.append({"cell": step.name, **(reply.get("error") or {})})
                    if i in needed and not overlap:
                        try:
                            self._bind_student_names(conn, step.code)
                            self._exec_trusted(conn, step, share)
                        except RemoteError as e:  # the student's code failed inside a locked cell
                            if reply.get("ok"):
                                cell_errors.append({"cell": step.name, "ename": e.ename, "evalue": e.evalue, "traceback": e.tb})
                        except NotPlainData as e:  # the locked cell reads an answer that is not plain data
                            if reply.get("ok"):
                                cell_errors.append({"cell": step.name, "ename": "NotPlainData", "evalue": str(e), "traceback": ""})
                        except GraderError as e:  # a locked cell fed with the student's answers: their answers' fault
                            if reply.get("ok"):
                                cell_errors.append({"cell": step.name, "ename": "Error", "evalue": str(e), "traceback": ""})
                        self._time("judge_locked_cells_s", step.name, time.monotonic() - t)
                elif step.kind == "student":
                    t_wait = time.monotonic()
                    conn.send("exec", code=step.code, name=step.name)
                    reply = conn.recv()
                    self._time_worker(step.name, reply, time.monotonic() - t_wait)
                    if not reply.get("ok"):
                        cell_errors.append({"cell": step.name, **(reply.get("error") or {})})
                else:
                    t = time.monotonic()
                    tests[step.name] = self.run_test(conn, step)
                    self._time("tests_s", step.name, time.monotonic() - t)
        except (WorkerGone, GraderError) as e:
            _disarm_wall_clock()
            status = e.status if isinstance(e, WorkerGone) else "grader_error"
            e.reason = getattr(e, "reason", str(e))
            if isinstance(e, WorkerGone) and getattr(proc, "never_started", lambda: False)():
                status = "grader_error"
                e.reason = "the grader's warm sandbox failed before it started the student's process; it is not the student's fault: re-run autograde"
            reason = [e.reason]
            log_tail = getattr(e, "log_tail", "")
            for step in plan.steps:
                if step.kind == "test" and step.name not in tests:
                    tests[step.name] = {"points": step.points, "score": 0.0, "state": "not graded",
                                        "message": f"not graded: {e.reason}"}
        finally:
            _disarm_wall_clock()
            with contextlib.suppress(Exception):
                if proc.poll() is None and time.monotonic() < deadline:
                    conn.send("bye")
                    bye = True
            sock.close()
            kill(proc, grace=5 if bye else 0)
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
            "timings": self.timing_summary(time.monotonic() - started),  # where the time went (``make bench``)
            "worker_log": log_tail,  # for the instructor; never shown in feedback
        }

    def run_test(self, conn: Conn, step) -> dict:
        base = {"points": step.points, "score": 0.0, "hidden_part": bool(HIDDEN.search(step.code))}
        if step.deleted:
            return {**base, "state": "failed", "message": "this test cell was deleted or its metadata removed; it counts as failed"}
        filename = f"<test {step.name}>"
        try:
            self._bind_student_names(conn, step.code)
        except (RemoteError, NotPlainData) as e:  # a name the test reads is not plain data, or could not be read
            why = "is not plain data" if isinstance(e, NotPlainData) or getattr(e, "ename", "") == "NotPlainData" else "could not be read"
            return {**base, "state": "failed", "failed_in": "visible",
                    "message": f"a value this test reads from your notebook {why} ({_NOT_PLAIN_HINT}; functions are fine)"}
        try:
            self._exec_here(step.code, filename)
        except WorkerGone:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the test is a failed test
            line, hidden, here = failure_site(step.code, filename, e.__traceback__)
            msg, tb = failure_message(e, line, hidden, here, literal_message(step.code, filename, e.__traceback__))
            out = {**base, "state": "failed", "failed_in": "hidden" if hidden else "visible", "message": msg}
            if tb:
                out["traceback"] = tb
            return out
        return {**base, "score": step.points, "state": "passed", "message": "passed"}


def _process_age() -> float | None:
    """Seconds since this process started (Linux), else None."""
    try:
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


REFERENCE_CACHE_ENV = "IOI_GRADER_REFERENCE_CACHE"


def reference_cache_dir(cfg: Config) -> Path | None:
    """Where hidden-test references are kept: ``$IOI_GRADER_REFERENCE_CACHE`` (``off``: nowhere), else ``<course>/.cache/references``."""
    where = os.environ.get(REFERENCE_CACHE_ENV, "")
    if where.lower() == "off":
        return None
    return Path(where) if where else cfg.course / ".cache" / "references"


def judge_submission(plan: Plan, cfg: Config, workdir: Path, key: bytes = b"") -> dict:
    """Grade one planned submission; ``key`` seeds its hidden tests (``grader.hidden.use_submission``).

    With ``hidden_seed_pool = 0`` (the default) the seed is the submission's own key: inputs differ
    for every submission and resubmission, and cached references serve regrades of the same file.
    With ``hidden_seed_pool = N`` it is the key of the assignment's pool of N (``grader.hidden.pooled``)
    that ``key`` picks, so references computed for one submission serve the others of the same key
    (``grader.refcache``).
    """
    from . import hidden, refcache
    from .autograde import course_secret

    os.environ.setdefault("PLOTLY_RENDERER", "json")
    os.environ["IOI_ANOMALIES_MODEL"] = cfg.model
    if key and cfg.hidden_seed_pool > 0:
        key = hidden.pooled(course_secret(cfg), plan.source.assignment, key, size=cfg.hidden_seed_pool)
    refcache.configure(reference_cache_dir(cfg), f"{plan.source.assignment}:{plan.source.digest}:{cfg.fingerprint()}")
    try:
        return Judge(plan, cfg, workdir, key).run()
    finally:
        refcache.configure(None)
