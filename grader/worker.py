"""The student side of grading: runs a submission's code inside the sandbox and answers questions.

This file is copied into the sandbox and run there on its own (``python worker.py FD``); it imports
nothing from the grader, so it carries no instructor material. The judge (``grader/judge.py``)
talks to it over the socket ``FD``:

- requests are pickles from the trusted judge: run a cell, look a name up, call a function, read
  an attribute or an item of an object that lives here;
- replies are written with ``torch.save`` and read by the judge with ``torch.load(weights_only=True)``,
  which accepts tensors, numbers, strings and plain containers only. Anything else stays here and
  the judge gets a handle to it; objects of the project's own classes (``ioi_anomalies.*``) travel
  as their plain state and are rebuilt by the judge from trusted code.

So whatever the student's code does to ``torch``, builtins or test helpers in this process, the
checks run elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import socket
import struct
import sys
import traceback

OUTPUT_LIMIT = 20_000
SAFE_SCALARS = (type(None), bool, int, float, str, complex)
RECIPES = {"random_model"}


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

    # ---- values going out
    def export(self, obj, depth: int = 0):
        torch = self.torch
        if id(obj) in self.shared_ids and self.shared.get(self.shared_ids[id(obj)]) is obj:
            return {"__ioi_shared__": self.shared_ids[id(obj)]}
        if type(obj) in SAFE_SCALARS:
            return obj
        if depth > 12:
            return self._handle(obj)
        if isinstance(obj, torch.Tensor):
            return obj.detach().to("cpu").as_subclass(torch.Tensor).clone()
        if isinstance(obj, (bool, int, float, str)):  # subclasses: keep the plain value
            return (bool if isinstance(obj, bool) else int if isinstance(obj, int) else float if isinstance(obj, float) else str)(obj)
        mod = type(obj).__module__ or ""
        if mod == "numpy":
            import numpy as np

            if isinstance(obj, np.ndarray) and obj.dtype != object:
                return torch.from_numpy(np.array(obj))
            if isinstance(obj, np.generic):
                return obj.item()
        if isinstance(obj, (list, tuple)):
            out = [self.export(x, depth + 1) for x in obj]
            return tuple(out) if isinstance(obj, tuple) else out
        if isinstance(obj, dict):
            return {self.export(k, depth + 1): self.export(v, depth + 1) for k, v in obj.items()}
        if isinstance(obj, (set, frozenset)):
            return {"__ioi_set__": [self.export(x, depth + 1) for x in obj]}
        if mod.split(".")[0] == "ioi_anomalies" and hasattr(obj, "__dict__") and not callable(obj):
            return {"__ioi_object__": f"{mod}:{type(obj).__qualname__}", "state": self.export(dict(vars(obj)), depth + 1)}
        return self._handle(obj)

    def _handle(self, obj):
        self.handles[id(obj)] = obj
        return {"__ioi_handle__": id(obj), "type": type(obj).__name__, "callable": callable(obj)}

    # ---- requests
    def run(self) -> None:
        while True:
            try:
                req = self.recv()
            except EOFError:
                return
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

    def op_exec(self, code: str, name: str, share=()):
        before = {k: id(v) for k, v in self.ns.items()}
        out, err = _Capped(), _Capped()
        error = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                exec(compile(code, f"<cell {name}>", "exec"), self.ns)
            except BaseException as e:  # noqa: BLE001
                error = _describe(e)
        for n in share:
            if n in self.ns:
                self._share(n, self.ns[n])
        assigned = [k for k, v in self.ns.items() if before.get(k) != id(v) and not k.startswith("__")]
        return {"ok": error is None, "error": error, "stdout": out.getvalue(), "stderr": err.getvalue(), "assigned": assigned}

    def _share(self, name, obj):
        self.shared[name] = obj
        self.shared_ids[id(obj)] = name
        tok = getattr(obj, "tokenizer", None) if type(obj).__module__.split(".")[0] != "builtins" else None
        if tok is not None:
            self.shared[name + ".tokenizer"] = tok
            self.shared_ids[id(tok)] = name + ".tokenizer"

    def op_get(self, name: str):
        if name not in self.ns:
            return {"missing": True}
        return {"value": self.export(self.ns[name])}

    def op_call(self, target, args, kwargs):
        return {"value": self.export(target(*args, **kwargs))}

    def op_getattr(self, target, name: str):
        return {"value": self.export(getattr(target, name))}

    def op_getitem(self, target, key):
        return {"value": self.export(target[key])}

    def op_len(self, target):
        return {"value": len(target)}

    def op_list(self, target):
        return {"value": self.export(list(target))}

    def op_repr(self, target):
        return {"value": repr(target)[:2000]}

    def op_bool(self, target):
        return {"value": bool(target)}


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
        if kind == "recipe":  # a model the judge made by a deterministic recipe: make the same one here
            name, kwargs = key
            if name not in RECIPES:
                raise pickle.UnpicklingError(f"unknown model recipe {name!r}")
            cache_key = (name, tuple(sorted(kwargs.items())))
            if cache_key not in self.worker.recipes:
                import importlib

                self.worker.recipes[cache_key] = getattr(importlib.import_module("ioi_anomalies.models"), name)(**kwargs)
            return self.worker.recipes[cache_key]
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


def _describe(e: BaseException) -> dict:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    # drop this file's own frames: the student sees their code and the libraries it called
    lines = [ln for ln in tb if "worker.py" not in ln]
    return {"ename": type(e).__name__, "evalue": str(e)[:2000], "traceback": "".join(lines)[-6000:]}


def main() -> None:
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    os.environ.setdefault("PLOTLY_RENDERER", "json")
    sys.argv = ["notebook"]
    import torch

    torch.manual_seed(0)
    Worker(sock).run()


if __name__ == "__main__":
    main()
