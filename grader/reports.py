"""What the grader hands out: the grade table, the summary, feedback pages and the manual-grading sheet."""

from __future__ import annotations

import csv
import html
import io
from collections import Counter
from pathlib import Path

from .autograde import graded_assignments, load_result, source_for, students, write_atomic
from .config import Config
from .gradebook import manual_grades, set_manual

BASE_COLUMNS = ["student", "assignment", "status", "score", "max_score", "auto_score", "manual_score", "manual_pending"]


def _num(x) -> float:
    """Every score in one form: a float rounded to 4 places (written as ``1.0``, ``4.5``, ``0.0``)."""
    return round(float(x), 4)


def _missing(student: str, assignment: str, cfg: Config) -> dict:
    src = source_for(cfg, assignment)
    return {"student": student, "assignment": assignment, "status": "missing", "reason": "no submission",
            "score": 0.0, "max_score": sum(c.points for c in src.tests), "manual_max": sum(c.points for c in src.manual),
            "tests": {}, "answers": {}}


def collect(cfg: Config, assignments: list[str] | None = None) -> list[dict]:
    """One row per student and assignment: the stored result (or ``missing``) plus manual grades."""
    assignments = assignments or graded_assignments(cfg)
    manual = manual_grades(cfg)
    rows = []
    for a in assignments:
        src = source_for(cfg, a)
        for s in students(cfg):
            r = load_result(cfg, a, s) or _missing(s, a, cfg)
            auto = float(r.get("score") or 0.0)
            man_scores, pending = {}, 0
            for c in src.manual:
                score, comment = manual.get((s, a, c.grade_id), (None, ""))
                if r["status"] in ("missing", "invalid_notebook") or not r.get("answers", {}).get(c.grade_id, "").strip():
                    score = 0.0 if score is None else score  # nothing to read: nothing to wait for
                if score is None:
                    pending += 1
                man_scores[c.grade_id] = score
            manual_total = sum(v for v in man_scores.values() if v is not None)
            row = {
                "student": s, "assignment": a, "status": r["status"],
                "score": _num(auto + manual_total),
                "max_score": _num(float(r.get("max_score", 0)) + float(r.get("manual_max", sum(c.points for c in src.manual)))),
                "auto_score": _num(auto), "manual_score": _num(manual_total), "manual_pending": int(pending),
                "reason": r.get("reason", ""),
            }
            for c in src.tests:
                row[c.grade_id] = _num(r.get("tests", {}).get(c.grade_id, {}).get("score", 0.0))
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


def summary(results: list[dict], out: Path | None = None) -> str:
    """Counts by status and a score histogram (saved as an interactive plotly page when ``out`` is given)."""
    counts = Counter(r["status"] for r in results)
    lines = ["status counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    fractions = [r["score"] / r["max_score"] for r in results if r.get("max_score")]
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

_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;line-height:1.45}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto}.pass{color:#116329}.fail{color:#a40e26}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"""


def _test_labels(src) -> dict[str, str]:
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


def feedback_html(cfg: Config, row: dict, result: dict | None) -> str:
    a, s = row["assignment"], row["student"]
    src = source_for(cfg, a)
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(a)}: feedback for {e(s)}</title><style>{_CSS}</style>",
             f"<h1>{e(a)}</h1><p>Student <b>{e(s)}</b> &middot; status <b>{e(row['status'])}</b> &middot; "
             f"score <b>{row['score']:g} / {row['max_score']:g}</b>"
             + (f" ({row['manual_pending']} written answer(s) not graded yet)" if row["manual_pending"] else "") + "</p>"]
    if row.get("reason"):
        parts.append(f"<p>Notes: {e(row['reason'])}</p>")
    tests = (result or {}).get("tests", {})
    parts.append("<h2>Tests</h2><p>A <b>visible</b> test is in your notebook; a test marked <b>visible + hidden</b> "
                 "also checks your code on inputs you do not see, and says only which property failed.</p>"
                 "<table><tr><th>exercise</th><th>test</th><th>points</th><th>result</th></tr>")
    labels = _test_labels(src)
    for c in src.tests:
        t = tests.get(c.grade_id, {"score": 0.0, "state": "not graded", "message": "not graded"})
        cls = "pass" if t.get("state") == "passed" else "fail"
        kind = "visible + hidden" if "### BEGIN HIDDEN TESTS" in c.source else "visible"
        where = " (failed in the hidden part)" if t.get("failed_in") == "hidden" else ""
        parts.append(f"<tr><td>{e(labels[c.grade_id])}</td><td>{kind}</td><td>{t['score']:g} / {c.points:g}</td>"
                     f"<td class='{cls}'>{e(t.get('message', ''))}{e(where)}</td></tr>")
    parts.append("</table>")
    for c in src.tests:  # the visible part of each test only: hidden tests never leave the grader
        parts.append(f"<h3>{e(labels[c.grade_id])}</h3><pre>{e(c.visible)}</pre>")
    errs = (result or {}).get("cell_errors", [])
    if errs:
        parts.append("<h2>Errors in your notebook</h2>")
        for err in errs:
            name = str(err.get("cell", ""))
            where = name if name.startswith("extra cell") else f"the cell under \u201c{src.heading(name)}\u201d"
            parts.append(f"<p>{e(where)}: {e(str(err.get('ename', '')))}: {e(str(err.get('evalue', '')))}</p>")
    if src.manual:
        manual = manual_grades(cfg)
        parts.append("<h2>Written answers</h2>")
        for c in src.manual:
            score, comment = manual.get((s, a, c.grade_id), (None, ""))
            answer = (result or {}).get("answers", {}).get(c.grade_id, "")
            parts.append(f"<h3>{e(c.grade_id)} ({'not graded yet' if score is None else f'{score:g}'} / {c.points:g})</h3>"
                         f"<pre>{e(answer)}</pre>" + (f"<p>Comment: {e(comment)}</p>" if comment else ""))
    return "\n".join(parts)


def write_feedback(cfg: Config, assignments: list[str] | None = None) -> list[Path]:
    """One page per student and assignment, readable by all (files 0644, folders 0755: a web server or an LMS upload may run as another user)."""
    import os

    out = []
    for row in collect(cfg, assignments):
        path = cfg.feedback / row["student"] / row["assignment"] / "feedback.html"
        write_atomic(path, feedback_html(cfg, row, load_result(cfg, row["assignment"], row["student"])), mode=0o644)
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
            if not r or not r.get("answers"):
                continue
            for c in src.manual:
                score, comment = manual.get((s, a, c.grade_id), (None, ""))
                w.writerow({"student": s, "assignment": a, "question": c.grade_id, "max_points": c.points,
                            "score": "" if score is None else score, "comment": comment, "answer": r["answers"].get(c.grade_id, "")})
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
        if r is None or q not in r.get("answers", {}):
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
