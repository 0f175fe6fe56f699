"""What the grader hands out: the grade table, the summary, nbgrader's feedback pages and the manual-grading sheet."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from .autograde import graded_assignments, load_result, source_for, students, write_atomic
from .config import Config
from .gradebook import manual_grades, set_manual
from .results import Status, SubmissionResult

BASE_COLUMNS = ["student", "assignment", "status", "score", "max_score", "auto_score", "manual_score", "manual_pending"]


def _num(x) -> float:
    """Every score in one form: a float rounded to 4 places (written as ``1.0``, ``4.5``, ``0.0``)."""
    return round(float(x), 4)


def collect(cfg: Config, assignments: list[str] | None = None) -> list[dict]:
    """One row per student and assignment: the stored result (or ``missing``) plus manual grades."""
    assignments = assignments or graded_assignments(cfg)
    manual = manual_grades(cfg)
    rows = []
    for a in assignments:
        src = source_for(cfg, a)
        for s in students(cfg):
            r = load_result(cfg, a, s) or SubmissionResult.blank(s, a, src, status=Status.MISSING, reason="no submission")
            man_scores, pending = {}, 0
            for c in src.manual:
                score, comment = manual.get((s, a, c.grade_id), (None, ""))
                if r.status in (Status.MISSING, Status.INVALID_NOTEBOOK) or not r.answers.get(c.grade_id, "").strip():
                    score = 0.0 if score is None else score  # nothing to read: nothing to wait for
                if score is None:
                    pending += 1
                man_scores[c.grade_id] = score
            manual_total = sum(v for v in man_scores.values() if v is not None)
            row = {
                "student": s, "assignment": a, "status": r.status.value,
                "score": _num(r.score + manual_total),
                "max_score": _num(r.max_score + (r.manual_max or sum(c.points for c in src.manual))),
                "auto_score": _num(r.score), "manual_score": _num(manual_total), "manual_pending": int(pending),
                "reason": r.reason,
            }
            for c in src.tests:
                t = r.tests.get(c.grade_id)
                row[c.grade_id] = _num(t.score if t else 0.0)
            for c in src.manual:
                row[c.grade_id] = "" if man_scores[c.grade_id] is None else _num(man_scores[c.grade_id])
            rows.append(row)
    return rows


def export(cfg: Config, assignments: list[str] | None = None) -> Path:
    rows = collect(cfg, assignments)
    questions = []
    for a in assignments or graded_assignments(cfg):
        src = source_for(cfg, a)
        questions += [c.grade_id for c in src.tests + src.manual if c.grade_id not in questions]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=BASE_COLUMNS + questions + ["reason"], restval="", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_atomic(cfg.grades, buf.getvalue())
    return cfg.grades


def summary(results: list[SubmissionResult], out: Path | None = None) -> str:
    """Counts by status and a score histogram (saved as an interactive plotly page when ``out`` is given)."""
    counts = Counter(r.status.value for r in results)
    lines = ["status counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    fractions = [f for f in (r.fraction() for r in results) if f is not None]
    bins = Counter(min(int(f * 10), 9) for f in fractions)
    lines.append("score (% of points): " + "  ".join(f"{b * 10}-{b * 10 + 10}%: {bins.get(b, 0)}" for b in range(10)))
    if out is not None and results:
        import plotly.express as px

        fig = px.histogram(x=[100 * f for f in fractions], nbins=10, range_x=[0, 100],
                           title="Autograded scores", labels={"x": "Score (% of autograded points)", "count": "Submissions"})
        fig.update_layout(yaxis_title="Submissions")
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(out, include_plotlyjs=True)
        lines.append(f"histogram: {out}")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    cols = ["student", "assignment", "status", "score", "max_score", "reason"]
    data = [[str(r.get(c, "")) if c != "reason" else str(r.get(c, ""))[:70] for c in cols] for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) if data else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols), fmt.format(*("-" * w for w in widths))] + [fmt.format(*d) for d in data])


# ---- feedback


def test_labels(src) -> dict[str, str]:
    """Each test named by the exercise heading above it (numbered when one exercise has several)."""
    heads = {c.grade_id: src.heading(c.grade_id) for c in src.tests}
    seen: dict[str, int] = {}
    out = {}
    for c in src.tests:
        h = heads[c.grade_id]
        total = sum(1 for v in heads.values() if v == h)
        seen[h] = seen.get(h, 0) + 1
        out[c.grade_id] = f"{h} (test {seen[h]} of {total})" if total > 1 else h
    return out


def write_feedback(cfg: Config, assignments: list[str] | None = None) -> list[Path]:
    """nbgrader's feedback (``GenerateFeedback``, hidden tests kept out by ``HideHiddenTests``), one page per graded notebook.

    Pages are ``<feedback>/<student>/<assignment>/<assignment>.html``, readable by all (files 0644,
    folders 0755: a web server or an LMS upload may run as another user). A submission with no
    graded notebook (missing, invalid) has no page; its status and reason are in grades.csv.
    """
    import os

    from .course import Course

    course = Course(cfg)
    out = []
    for a in assignments or graded_assignments(cfg):
        for s in students(cfg):
            r = load_result(cfg, a, s)
            if r is None or not course.autograded_notebook(s, a).exists():
                continue
            path = course.generate_feedback(s, a)
            os.chmod(path, 0o644)
            for d in (cfg.feedback, path.parent.parent, path.parent):
                os.chmod(d, 0o755)
            out.append(path)
    return out


# ---- manual grading round trip

SHEET_COLUMNS = ["student", "assignment", "question", "max_points", "score", "comment", "answer"]


def manual_sheet(cfg: Config, path: Path, assignments: list[str] | None = None) -> int:
    """Write every answer that needs a human (with any score already given) to a CSV."""
    manual = manual_grades(cfg)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SHEET_COLUMNS)
    w.writeheader()
    n = 0
    for a in assignments or graded_assignments(cfg):
        src = source_for(cfg, a)
        for s in students(cfg):
            r = load_result(cfg, a, s)
            if not r or not r.answers:
                continue
            for c in src.manual:
                score, comment = manual.get((s, a, c.grade_id), (None, ""))
                w.writerow({"student": s, "assignment": a, "question": c.grade_id, "max_points": c.points,
                            "score": "" if score is None else score, "comment": comment, "answer": r.answers.get(c.grade_id, "")})
                n += 1
    write_atomic(path, buf.getvalue())
    return n


class ImportError_(ValueError):
    pass


def manual_import(cfg: Config, path: Path) -> int:
    """Read scores and comments back; every row is checked before anything is written."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ImportError_(f"{path}: cannot be read ({e.strerror})") from e
    reader = csv.DictReader(io.StringIO(text))
    missing = {"student", "assignment", "question", "score"} - set(reader.fieldnames or [])
    if missing:
        raise ImportError_(f"{path}: missing column(s) {sorted(missing)}; write the sheet with `make manual-sheet` and fill in 'score'")
    known = {a: {c.grade_id: c.points for c in source_for(cfg, a).manual} for a in graded_assignments(cfg)}
    errors, rows = [], []
    for line, row in enumerate(reader, start=2):
        s, a, q = (row.get(k, "").strip() for k in ("student", "assignment", "question"))
        raw = (row.get("score") or "").strip()
        if not raw:
            continue  # not graded yet
        if a not in known:
            errors.append(f"line {line}: unknown assignment {a!r}")
            continue
        if q not in known[a]:
            errors.append(f"line {line}: {a} has no written question {q!r} (have: {', '.join(known[a]) or 'none'})")
            continue
        r = load_result(cfg, a, s)
        if r is None or q not in r.answers:
            errors.append(f"line {line}: no graded submission of {a} by {s!r}")
            continue
        try:
            score = float(raw)
        except ValueError:
            errors.append(f"line {line}: score {raw!r} is not a number")
            continue
        if not 0 <= score <= known[a][q]:
            errors.append(f"line {line}: score {score:g} is outside 0..{known[a][q]:g} for {q}")
            continue
        rows.append((s, a, q, score, (row.get("comment") or "").strip()))
    if errors:
        raise ImportError_(f"{path}: nothing imported, {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    set_manual(cfg, rows)
    return len(rows)
