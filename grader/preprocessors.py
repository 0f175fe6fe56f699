"""The project's preprocessors in nbgrader's pipelines (configured by ``grader/course.py``).

- :class:`SandboxExecute` replaces nbgrader's ``Execute`` in ``Autograde.autograde_preprocessors``.
  Instead of running the notebook in a kernel (where the student's code could rewrite the tests),
  it takes the submission's verdict, computed in the sandboxed worker with the separate judge
  (``grader/autograde.py``; stored per submission, recomputed when absent or stale), and writes it
  as each test cell's output: an ``error`` output with the failure's message for a failed or
  ungraded test, an ``execute_result`` with the score for partial credit, a line of text for a
  pass. nbgrader's ``SaveAutoGrades`` then scores the cells as it always does (``determine_grade``).
- :class:`HideHiddenTests` runs in ``GenerateFeedback``: test cells show their visible part only,
  a failure in a hidden test shows its property (never a traceback through hidden code), and the
  page opens with the submission's status, score and notes.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import List, Unicode

from .intake import HIDDEN
from .results import SubmissionResult, TestResult, TestState

TEST_FAILED, NOT_GRADED = "TestFailed", "NotGraded"


def is_test_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")


def verdict_outputs(test: TestResult | None, points: float) -> list:
    """The outputs that make nbgrader's ``determine_grade`` give this verdict's score."""
    if test is None:
        test = TestResult(points=points)
    if test.state == TestState.PASSED and test.score >= points:
        return [nbformat.v4.new_output("stream", name="stdout", text=f"passed ({test.score:g}/{points:g})\n")]
    if test.state == TestState.PASSED and test.score > 0:  # partial credit: nbgrader reads the number
        return [nbformat.v4.new_output("execute_result", data={"text/plain": repr(float(test.score))}, execution_count=None)]
    message = test.message + (" (failed in the hidden part)" if test.failed_in == "hidden" else "")
    trace = test.traceback.splitlines() if test.failed_in == "visible" and test.traceback else [message]
    ename = NOT_GRADED if test.state == TestState.NOT_GRADED else TEST_FAILED
    return [nbformat.v4.new_output("error", ename=ename, evalue=message, traceback=trace)]


def write_verdicts(nb, result: SubmissionResult) -> None:
    """Each test cell of ``nb`` gets its verdict from ``result`` as its only output."""
    for cell in nb.cells:
        if is_test_cell(cell):
            meta = cell.metadata["nbgrader"]
            cell.outputs = verdict_outputs(result.tests.get(meta.get("grade_id", "")), float(meta.get("points", 0) or 0))
            cell.execution_count = None


def _find_coursedir(obj):
    while obj is not None:
        if getattr(obj, "coursedir", None) is not None:
            return obj.coursedir
        obj = getattr(obj, "parent", None)
    return None


class _GraderSettings(NbGraderPreprocessor):
    # nbgrader's feedback configures this for every preprocessor it runs (as GetGrades declares it)
    display_data_priority = List(["text/html", "application/pdf", "text/latex", "image/svg+xml", "image/png", "image/jpeg",
                                  "text/plain"]).tag(config=True)
    grader_config = Unicode("", help="The grader's settings as JSON (grader.config.Config); empty: grader/grader_config.toml, "
                                     "with nbgrader's submitted folder as the submissions").tag(config=True)

    def grader(self):
        from .config import config_from_json, load

        if self.grader_config:
            return config_from_json(self.grader_config)
        cfg = load()
        coursedir = _find_coursedir(self)
        if coursedir is None:
            return cfg
        # nbgrader's own folders: its source, its submitted copies, and the folder of its gradebook (the course secret's)
        submitted = Path(coursedir.format_path(coursedir.submitted_directory, "s", "a")).parent.parent
        solutions = Path(coursedir.format_path(coursedir.source_directory, ".", "a")).parent
        db = coursedir.db_url
        course = Path(db[len("sqlite:///"):]).parent if db.startswith("sqlite:///") else Path(coursedir.root)
        return cfg.with_(submitted=submitted, solutions=solutions, course=course, results=course / "verdicts")


class SandboxExecute(_GraderSettings):
    """nbgrader's execute step, done by the sandboxed worker and the separate judge (see the module docstring)."""

    def preprocess(self, nb, resources):
        from .autograde import verdict

        info = resources["nbgrader"]
        result = verdict(self.grader(), info["student"], info["assignment"])
        if result.is_grader_error:  # the grader's own fault: nbgrader reports the notebook as failed and records nothing
            raise RuntimeError(f"the grader could not grade this submission: {result.reason}")
        write_verdicts(nb, result)
        return nb, resources


def _visible(source: str) -> str:
    """``source`` without its hidden-test regions (an unterminated one: everything from its first line on)."""
    out = HIDDEN.sub("", source).rstrip()
    if "BEGIN HIDDEN TESTS" in out:
        out = out[: out.index("BEGIN HIDDEN TESTS")].rsplit("\n", 1)[0] if "\n" in out[: out.index("BEGIN HIDDEN TESTS")] else ""
    return out


def feedback_header(result: SubmissionResult) -> str:
    lines = [f"**Status: {result.status.value}** · automatic score {result.score:g} / {result.max_score:g}"]
    if result.reason:
        lines.append(f"Notes: {result.reason}")
    for err in result.cell_errors:
        lines.append(f"Error in {err.get('cell', '')}: {err.get('ename', '')}: {err.get('evalue', '')}")
    lines.append("A test marked *visible + hidden* also checks your code on inputs you do not see, and says only which property failed.")
    return "\n\n".join(lines)


def hide_hidden_tests(nb, result: SubmissionResult | None, labels: dict[str, str] | None = None) -> None:
    """Feedback's view of an autograded notebook: hidden tests out, each test named and marked, the status on top."""
    cells = []
    for cell in nb.cells:
        if cell.get("cell_type") == "code" and not is_test_cell(cell) and "BEGIN HIDDEN TESTS" in cell.source:
            cell.source = _visible(cell.source)  # e.g. a test cell stripped of its metadata: graded as an extra cell
        if is_test_cell(cell):
            gid = cell.metadata["nbgrader"].get("grade_id", "")
            hidden = bool(HIDDEN.search(cell.source)) or "BEGIN HIDDEN TESTS" in cell.source
            cell.source = _visible(cell.source)
            t = result.tests.get(gid) if result else None
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error" and (hidden and not (t and t.failed_in == "visible")):
                    out["traceback"] = [out.get("evalue", "")]
            kind = "visible + hidden" if hidden else "visible"
            cells.append(nbformat.v4.new_markdown_cell(f"*Test: {(labels or {}).get(gid, gid)} ({kind})*", id=f"feedback-{gid}"[:64]))
        cells.append(cell)
    if result is not None:
        cells.insert(0, nbformat.v4.new_markdown_cell(feedback_header(result), id="feedback-status"))
    nb.cells = cells


class HideHiddenTests(_GraderSettings):
    """Feedback without hidden tests (see the module docstring)."""

    def preprocess(self, nb, resources):
        from .autograde import load_result, source_for
        from .reports import test_labels

        info = resources["nbgrader"]
        cfg = self.grader()
        result = load_result(cfg, info["assignment"], info["student"])
        try:
            labels = test_labels(source_for(cfg, info["assignment"]))
        except OSError:
            labels = {}
        if result is None and not self.grader_config:  # graded by `make autograde` rather than by nbgrader's command
            from .config import load

            result = load_result(load(), info["assignment"], info["student"])
        hide_hidden_tests(nb, result, labels)
        return nb, resources
