"""A student's self-check: run one notebook top to bottom and report its visible tests in plain text.

``python -m ioi_anomalies.validate NOTEBOOK`` (``make validate NB=...`` in the repository,
``python -m grader validate`` for instructors) starts a fresh kernel, runs every cell in order the
way grading does (a failing cell does not stop the run), then prints one line per test cell
(passed or failed, with its message) under the exercise heading it belongs to. It exits 1 when a
visible test fails or any cell raises, 0 otherwise. Hidden tests run only at grading.

``EXECUTION`` holds the project's execution settings, shared by this self-check, the Validate
button in JupyterLab (through ``nbgrader_config.py``), nbgrader's own commands and the
expected-output pages, so that a slow machine (a slow kernel start, late output) is never
mistaken for a wrong answer.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Seconds. A cell may run for `timeout`; the kernel may take `startup_timeout` to start; output may
# arrive `iopub_timeout` after a cell's reply (nbgrader's default of 4 s fails on a busy machine).
EXECUTION = {"timeout": 600, "startup_timeout": 300, "iopub_timeout": 120, "interrupt_on_timeout": True}
KERNEL = "ioi-anomalies"


def apply_execution_settings(c) -> None:
    """Write ``EXECUTION`` into a traitlets config ``c`` (an nbgrader_config.py's ``c``)."""
    for key, value in EXECUTION.items():
        setattr(c.Execute, key, value)


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


@dataclass
class CellResult:
    grade_id: str
    kind: str  # "test" or "cell"
    heading: str
    passed: bool
    points: float = 0.0
    message: str = ""


@dataclass
class Report:
    notebook: Path
    results: list[CellResult] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""  # the run itself failed (no kernel, unreadable notebook)

    @property
    def tests(self) -> list[CellResult]:
        return [r for r in self.results if r.kind == "test"]

    @property
    def ok(self) -> bool:
        return not self.error and all(r.passed for r in self.results)

    def text(self) -> str:
        lines = [f"Validating {self.notebook}"]
        if self.error:
            return "\n".join(lines + [f"ERROR: {self.error}"])
        heading = None
        for r in self.results:
            if r.kind == "cell" and r.passed:
                continue
            if r.heading != heading:
                heading = r.heading
                lines.append(f"\n{heading}")
            if r.kind == "test":
                lines.append(f"  {'passed' if r.passed else 'FAILED'}  {r.grade_id} ({r.points:g} point{'s' if r.points != 1 else ''})")
            else:
                lines.append(f"  ERROR   a cell raised an error ({r.grade_id})")
            if not r.passed:
                lines.extend("      " + line for line in r.message.splitlines())
        passed = sum(r.passed for r in self.tests)
        errors = sum(not r.passed for r in self.results if r.kind == "cell")
        lines.append("")
        lines.append(f"{passed} of {len(self.tests)} visible tests passed"
                     + (f"; {errors} other cell(s) raised an error" if errors else "") + f" ({self.seconds:.0f} s).")
        lines.append("All visible tests pass. Hidden tests run when the notebook is graded." if self.ok
                     else "Look under the headings above, fix the first error, then validate again.")
        return "\n".join(lines)


def _error_message(outputs) -> str:
    for out in outputs:
        if out.get("output_type") == "error":
            ename, evalue = out.get("ename", "Error"), _plain(out.get("evalue", ""))
            where = ""
            tb = [_plain(t) for t in out.get("traceback", [])]
            # IPython marks each frame's current line with "---->"
            arrows = [line for t in tb for line in t.splitlines() if line.lstrip().startswith("---->")]
            lines = [re.sub(r"^\s*---->\s*\d*\s*", "", a).strip() for a in arrows]
            if lines:  # the cell's line, then the line that raised when it is elsewhere (inside a function)
                where = f"\nat: {lines[0]}" + (f"\nraised by: {lines[-1]}" if len(lines) > 1 and lines[-1] != lines[0] else "")
            return f"{ename}: {evalue}".rstrip(": ") + where
    return ""


def execute(path: Path, kernel_name: str | None = None, cwd: Path | None = None):
    """The executed notebook (errors recorded in the outputs, the run goes on), with the project's settings."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    name = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or KERNEL
    client = NotebookClient(nb, kernel_name=name, allow_errors=True, raise_on_iopub_timeout=True,
                            resources={"metadata": {"path": str(cwd or path.parent)}}, **EXECUTION)
    client.execute()
    return nb


def validate(path: Path, kernel_name: str | None = None) -> Report:
    import nbformat

    path = Path(path)
    report = Report(path)
    t0 = time.perf_counter()
    try:
        nb = execute(path, kernel_name)
    except nbformat.reader.NotJSONError:
        report.error = "not a readable notebook (invalid JSON): restore it from your last good copy"
        return report
    except Exception as e:  # no kernel, kernel died, ...
        report.error = f"the notebook could not be run: {type(e).__name__}: {_plain(str(e)).strip()[:2000]}"
        return report
    finally:
        report.seconds = time.perf_counter() - t0
    heading = "(before the first heading)"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    heading = line.lstrip("#").strip()
                    break
            continue
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        message = _error_message(cell.get("outputs", []))
        gid = meta.get("grade_id") or f"cell {i + 1}"
        if meta.get("grade") and not meta.get("solution"):
            report.results.append(CellResult(gid, "test", heading, not message, float(meta.get("points", 0) or 0), message))
        elif message:
            report.results.append(CellResult(gid, "cell", heading, False, message=message))
    report.seconds = time.perf_counter() - t0
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ioi_anomalies.validate",
                                description="Run a notebook top to bottom in a fresh kernel and report its visible tests. "
                                            "Exits 1 when a visible test fails or a cell raises an error.")
    p.add_argument("notebook", type=Path, help="the notebook to check, e.g. work/01_early_induction_heads/01_early_induction_heads.ipynb")
    p.add_argument("--kernel", help=f"Jupyter kernel to run it with (default: the notebook's own, {KERNEL!r})")
    a = p.parse_args(argv)
    if not a.notebook.is_file():
        print(f"{a.notebook}: no such notebook", file=sys.stderr)
        return 2
    os.environ.setdefault("IOI_ANOMALIES_MODEL", "embedded")
    report = validate(a.notebook, a.kernel)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
