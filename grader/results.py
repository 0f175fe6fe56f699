"""What grading produces, typed: a status, each test's result and the submission's result, with one JSON form.

Every result the grader stores, sends between processes (the judge's child, a Dask worker) or
reads back goes through :meth:`SubmissionResult.to_json` / :meth:`SubmissionResult.from_json`; the
judge's reply (a plain dict, ``grader/judge.py``) becomes a result at one place,
:meth:`SubmissionResult.with_judgement`. The JSON form carries ``"version": VERSION``; a file without
one is read as version 0 (the same fields, written before the version existed).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from enum import Enum

VERSION = 1


class Status(str, Enum):
    """A submission's status (see the README's "Statuses, never a silent 0")."""

    GRADED = "graded"
    TAMPERED = "tampered"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    INVALID_NOTEBOOK = "invalid_notebook"
    MISSING = "missing"
    GRADER_ERROR = "grader_error"

    def __str__(self) -> str:
        return self.value


class TestState(str, Enum):
    __test__ = False  # not a pytest test class

    PASSED = "passed"
    FAILED = "failed"
    NOT_GRADED = "not graded"

    def __str__(self) -> str:
        return self.value


class ResultFormatError(ValueError):
    """A stored or received result that does not have the result's JSON form."""


def _num(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ResultFormatError(f"{what} must be a finite number, not {v!r}"[:200])
    return float(v)


def _str(v, what: str, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise ResultFormatError(f"{what} must be text, not {type(v).__name__}")
    return v


@dataclass
class TestResult:
    """One graded test cell: its points, its score, its state and the message feedback shows."""

    __test__ = False  # not a pytest test class

    points: float = 0.0
    score: float = 0.0
    state: TestState = TestState.NOT_GRADED
    message: str = "not graded"
    failed_in: str | None = None  # "visible" or "hidden": which part of the test failed
    traceback: str = ""  # visible failures only
    hidden_part: bool | None = None  # whether the test has hidden tests (None: not recorded)

    def to_json(self) -> dict:
        out = {"points": self.points, "score": self.score, "state": self.state.value, "message": self.message}
        if self.failed_in is not None:
            out["failed_in"] = self.failed_in
        if self.traceback:
            out["traceback"] = self.traceback
        if self.hidden_part is not None:
            out["hidden_part"] = self.hidden_part
        return out

    @classmethod
    def from_json(cls, d) -> "TestResult":
        if not isinstance(d, dict):
            raise ResultFormatError(f"a test's result must be an object, not {type(d).__name__}")
        try:
            state = TestState(d.get("state", "not graded"))
        except ValueError as e:
            raise ResultFormatError(f"unknown test state {d.get('state')!r}"[:200]) from e
        failed_in = _str(d.get("failed_in"), "failed_in", optional=True)
        if failed_in not in (None, "visible", "hidden"):
            raise ResultFormatError(f"failed_in must be 'visible' or 'hidden', not {failed_in!r}"[:200])
        tb = d.get("traceback", "")
        if isinstance(tb, list):
            tb = "\n".join(str(x) for x in tb)
        hidden = d.get("hidden_part")
        return cls(points=_num(d.get("points", 0.0), "points"), score=_num(d.get("score", 0.0), "score"), state=state,
                   message=_str(d.get("message", ""), "message"), failed_in=failed_in, traceback=_str(tb, "traceback"),
                   hidden_part=None if hidden is None else bool(hidden))


def _cell_error(d) -> dict:
    if not isinstance(d, dict):
        raise ResultFormatError("a cell error must be an object")
    return {k: str(d.get(k, "")) for k in ("cell", "ename", "evalue", "traceback")}


@dataclass
class SubmissionResult:
    """One (student, assignment): its status, scores, each test's result and what the human grader reads."""

    student: str
    assignment: str
    status: Status
    reason: str = ""
    score: float = 0.0
    max_score: float = 0.0
    manual_max: float = 0.0
    tests: dict[str, TestResult] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)  # written answers (manual grade id -> text)
    cell_errors: list[dict] = field(default_factory=list)  # {"cell", "ename", "evalue", "traceback"}
    notebook: str | None = None  # the graded notebook, relative to the submission folder
    submission_sha256: str = ""
    source_sha256: str = ""
    config: str = ""  # Config.fingerprint() it was graded with
    graded_at: str = ""
    duration_s: float | None = None
    worker_log: str = ""  # the instructor's; never in feedback
    judge_peak_rss_mb: float | None = None
    last_error: str = ""  # a later grader_error that did not replace this result

    # -- building
    @classmethod
    def blank(cls, student: str, assignment: str, source=None, status: Status = Status.GRADED, reason: str = "", **kw) -> "SubmissionResult":
        """A result with every test of ``source`` (an ``intake.Source``) not graded yet."""
        tests = {}
        if source is not None:
            tests = {c.grade_id: TestResult(points=c.points) for c in source.tests}
            kw.setdefault("max_score", sum(c.points for c in source.tests))
            kw.setdefault("manual_max", sum(c.points for c in source.manual))
            kw.setdefault("source_sha256", source.digest)
        kw.setdefault("graded_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        return cls(student=student, assignment=assignment, status=Status(status), reason=reason, tests=tests, **kw)

    @classmethod
    def grader_error(cls, student: str, assignment: str, reason: str) -> "SubmissionResult":
        return cls(student=student, assignment=assignment, status=Status.GRADER_ERROR, reason=reason)

    def with_judgement(self, out: dict) -> "SubmissionResult":
        """This result completed with the judge's reply (``judge.judge_submission``), the one boundary from its dict."""
        tests = dict(self.tests)
        tests.update({str(k): TestResult.from_json(v) for k, v in out.get("tests", {}).items()})
        return replace(self, status=Status(out.get("status", "grader_error")), reason=str(out.get("reason", "")), tests=tests,
                       cell_errors=[_cell_error(e) for e in out.get("cell_errors", [])], duration_s=out.get("duration_s"),
                       worker_log=str(out.get("worker_log", "")), score=round(sum(t.score for t in tests.values()), 6))

    # -- reading
    @property
    def is_grader_error(self) -> bool:
        return self.status == Status.GRADER_ERROR

    def fraction(self) -> float | None:
        return self.score / self.max_score if self.max_score else None

    # -- the JSON form
    def to_json(self) -> dict:
        out = {"version": VERSION, "student": self.student, "assignment": self.assignment, "status": self.status.value,
               "reason": self.reason, "score": self.score, "max_score": self.max_score, "manual_max": self.manual_max,
               "tests": {k: t.to_json() for k, t in self.tests.items()}, "answers": dict(self.answers),
               "cell_errors": [dict(e) for e in self.cell_errors], "notebook": self.notebook,
               "submission_sha256": self.submission_sha256, "source_sha256": self.source_sha256, "config": self.config,
               "graded_at": self.graded_at}
        for k in ("duration_s", "judge_peak_rss_mb"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        for k in ("worker_log", "last_error"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        return out

    def __getitem__(self, key: str):
        """The JSON form read by key (``result["status"]`` is ``"graded"``), for code that reads stored results."""
        return self.to_json()[key]

    def get(self, key: str, default=None):
        return self.to_json().get(key, default)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, d) -> "SubmissionResult":
        if not isinstance(d, dict):
            raise ResultFormatError(f"a result must be an object, not {type(d).__name__}")
        version = d.get("version", 0)
        if version not in (0, VERSION):
            raise ResultFormatError(f"result version {version!r} is not known to this grader (it reads 0 and {VERSION})")
        try:
            status = Status(d.get("status"))
        except ValueError as e:
            raise ResultFormatError(f"unknown status {d.get('status')!r}"[:200]) from e
        tests = d.get("tests", {})
        answers = d.get("answers", {}) or {}
        if not isinstance(tests, dict) or not isinstance(answers, dict) or not isinstance(d.get("cell_errors", []), list):
            raise ResultFormatError("tests and answers must be objects, cell_errors a list")
        opt = {k: (None if d.get(k) is None else _num(d[k], k)) for k in ("duration_s", "judge_peak_rss_mb")}
        return cls(student=_str(d.get("student"), "student"), assignment=_str(d.get("assignment"), "assignment"), status=status,
                   reason=_str(d.get("reason", ""), "reason"), score=_num(d.get("score", 0.0), "score"),
                   max_score=_num(d.get("max_score", 0.0), "max_score"), manual_max=_num(d.get("manual_max", 0.0), "manual_max"),
                   tests={str(k): TestResult.from_json(v) for k, v in tests.items()},
                   answers={str(k): _str(v, "an answer") for k, v in answers.items()},
                   cell_errors=[_cell_error(e) for e in d.get("cell_errors", [])],
                   notebook=_str(d.get("notebook"), "notebook", optional=True),
                   submission_sha256=_str(d.get("submission_sha256", ""), "submission_sha256"),
                   source_sha256=_str(d.get("source_sha256", ""), "source_sha256"), config=_str(d.get("config", ""), "config"),
                   graded_at=_str(d.get("graded_at", ""), "graded_at"), worker_log=_str(d.get("worker_log", ""), "worker_log"),
                   last_error=_str(d.get("last_error", ""), "last_error"), **opt)

    @classmethod
    def loads(cls, text: str) -> "SubmissionResult":
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as e:
            raise ResultFormatError(f"not JSON ({e})") from e
