"""``python -m tools.report`` (``make report``, part of ``make demo``): the expected-output pages.

Every assignment runs top to bottom on the available model (the embedded one unless
``IOI_ANOMALIES_MODEL`` says otherwise) and becomes one page under ``build/report/``, with an
index. The student notebooks link to their page as the expected output, so the pages are safe to
hand to students: what runs is the solution's answer cells with every other cell as released
(visible tests only: hidden tests are never run), and what is shown is the released notebook's
text (answer cells as the student receives them, no solution code, no hidden test) with the
outputs and figures of that run. Plotly figures are drawn by a local copy of plotly.js, circuitsvis
views by circuitsvis's own bundled script, both in ``build/report/assets/``: the pages load nothing
from the network.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import nbformat

from .paths import ROOT

OUT = ROOT / "build" / "report"
KERNEL = "ioi-anomalies"
# The kernel renders plotly figures as JSON (drawn here) and circuitsvis views with its local script.
PRELUDE = (
    "import plotly.io as _pio\n_pio.renderers.default = 'plotly_mimetype'\n"
    "import circuitsvis.utils.render as _cv_render\n_cv_render.internet_on = lambda: False\n"
)
_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;max-width:70rem;margin:1.5rem auto;padding:0 1rem;line-height:1.5;color:#1f2328}
pre{background:#f6f8fa;padding:.6rem .8rem;overflow-x:auto;font-size:.85rem;border-radius:4px}
.code pre{border-left:3px solid #8fb3e0}.out pre{background:#fff;border-left:3px solid #ccc}
.err pre{background:#fff0f0;border-left:3px solid #d33}nav a{margin-right:1rem}
.caption{font-size:.8rem;color:#57606a;font-style:italic}.plot{width:100%;min-height:420px}img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem}
"""


def _assets(out: Path) -> tuple[str, str]:
    import circuitsvis
    import plotly

    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    shutil.copy(plotly_js, assets / "plotly.min.js")
    cv_js = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    shutil.copy(cv_js, assets / "circuitsvis.js")
    return "assets/plotly.min.js", "assets/circuitsvis.js"


def _cv_inline() -> str:
    import circuitsvis

    return (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8").replace("</script>", "")


def student_run(name: str) -> nbformat.NotebookNode:
    """The released notebook with the solution's answer cells: what runs (visible tests only), shown as released."""
    released = nbformat.read(ROOT / "notebooks" / name / f"{name}.ipynb", as_version=4)
    solution = nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)
    if [c.id for c in released.cells] != [c.id for c in solution.cells]:
        raise SystemExit(f"notebooks/{name} does not match solutions/{name}: run `make release`")
    for r, s in zip(released.cells, solution.cells):
        r.metadata["report_shown"] = r.source
        if s.metadata.get("nbgrader", {}).get("solution") and s.cell_type == "code":
            r.source = s.source
    return released


def execute(nb: nbformat.NotebookNode, folder: Path, threads: int | None = None) -> tuple[nbformat.NotebookNode, float]:
    """Run ``nb`` in a fresh kernel in ``folder``; ``threads``: torch's threads in it, unless the environment sets them."""
    from nbclient import NotebookClient

    from ioi_anomalies.validate import EXECUTION

    nb.cells.insert(0, nbformat.v4.new_code_cell(PRELUDE, id="report-prelude"))
    # the kernel's own environment (this process's is left alone: notebooks may run in threads side by side)
    limits = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    env = {"IOI_ANOMALIES_MODEL": "embedded", "HF_HUB_OFFLINE": "1", **limits, **os.environ, "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    NotebookClient(nb, kernel_name=KERNEL, allow_errors=False, resources={"metadata": {"path": str(folder)}},
                   **EXECUTION).execute(env=env)
    nb.cells.pop(0)
    return nb, time.perf_counter() - t0


def _markdown(src: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    src = re.sub(r"=== BEGIN MARK SCHEME ===.*?=== END MARK SCHEME ===", "", src, flags=re.S)
    src = re.sub(r"\(\.\./\.\./build/report/([\w.-]+\.html)\)", r"(\1)", src)  # notebook -> report links, seen from the report
    return markdown2html_mistune(src)


def _strip_markers(src: str) -> str:
    return "\n".join(line for line in src.splitlines() if not re.match(r"\s*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)", line))


def _ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def render(nb, title: str, nav: str, cv_inline: str) -> str:
    e = html.escape
    body = []
    n_plot = 0
    for cell in nb.cells:
        shown = cell.metadata.get("report_shown", cell.source)  # the released text, never the solution's
        if cell.cell_type == "markdown":
            body.append(f"<div class='md'>{_markdown(shown)}</div>")
            continue
        if cell.cell_type != "code":
            continue
        answer = cell.metadata.get("nbgrader", {}).get("solution")
        caption = "<div class='caption'>your answer goes here; below, the output it should give</div>" if answer else ""
        body.append(f"<div class='code'>{caption}<pre>{e(_strip_markers(shown))}</pre></div>")
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                body.append(f"<div class='out'><pre>{e(_ansi(out.get('text', '')))}</pre></div>")
            elif kind == "error":
                body.append(f"<div class='err'><pre>{e(_ansi(chr(10).join(out.get('traceback', []))))}</pre></div>")
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if "application/vnd.plotly.v1+json" in data:
                    fig = data["application/vnd.plotly.v1+json"]
                    n_plot += 1
                    div = f"plot-{n_plot}"
                    spec = json.dumps({"data": fig.get("data", []), "layout": fig.get("layout", {})}).replace("</", "<\\/")
                    body.append(f"<div id='{div}' class='plot'></div><script>(function(){{var f={spec};"
                                f"Plotly.newPlot('{div}', f.data, f.layout, {{responsive: true}});}})();</script>")
                elif "text/html" in data:
                    h = data["text/html"]
                    h = h.replace(cv_inline, "") if cv_inline and cv_inline[:200] in h else h
                    body.append(f"<div class='out'>{h}</div>")
                elif "text/markdown" in data:  # display(Markdown(...)): rendered, not its repr
                    body.append(f"<div class='out md'>{_markdown(data['text/markdown'])}</div>")
                elif "image/png" in data:
                    body.append(f"<div class='out'><img alt='figure' src='data:image/png;base64,{data['image/png']}'></div>")
                elif "text/plain" in data:
                    body.append(f"<div class='out'><pre>{e(data['text/plain'])}</pre></div>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{e(title)}</title><style>{_CSS}</style>"
            "<script src='assets/plotly.min.js'></script><script src='assets/circuitsvis.js'></script></head>"
            f"<body><nav>{nav}</nav>{''.join(body)}</body></html>")


def build(out: Path = OUT, assignments: list[str] | None = None, jobs: int = 2) -> list[dict]:
    """Execute each assignment in a fresh kernel (``jobs`` kernels at a time, sharing the cores) and write its page and
    the index."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    names = assignments or sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and not p.name.startswith("."))
    out.mkdir(parents=True, exist_ok=True)
    _assets(out)
    cv_inline = _cv_inline()
    nav = "<a href='index.html'>Index</a>" + "".join(f"<a href='{n}.html'>{html.escape(n)}</a>" for n in names)
    pages = []
    jobs = max(1, jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None  # kernels side by side share the cores
    failed = threading.Event()  # a notebook that fails stops the build: the ones not started yet never start

    def run(name: str):
        if failed.is_set():
            return None
        try:
            return execute(student_run(name), ROOT / "notebooks" / name, threads)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(jobs) as pool:  # a skipped notebook comes after the one that failed, whose error is raised
        runs = [pool.submit(run, name) for name in names]
        done = [(name, r.result()) for name, r in zip(names, tqdm(runs, desc="executing notebooks", unit="notebook"))]
    for name, (nb, seconds) in done:
        (out / f"{name}.html").write_text(render(nb, name, nav, cv_inline), encoding="utf-8")
        outputs = [o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        figs = [d["application/vnd.plotly.v1+json"] for d in outputs if "application/vnd.plotly.v1+json" in d]
        titles = [((f.get("layout", {}).get("title") or {}).get("text") or "") for f in figs]
        pages.append({"name": name, "page": f"{name}.html", "seconds": round(seconds, 1), "plots": len(figs), "titles": titles,
                      "views": sum(d.get("text/html", "").count("id=\"circuits-vis-") for d in outputs)})
    model = os.environ.get("IOI_ANOMALIES_MODEL", "embedded")
    rows = "".join(f"<tr><td><a href='{p['page']}'>{html.escape(p['name'])}</a></td><td>{p['plots']}</td><td>{p['seconds']} s</td></tr>" for p in pages)
    (out / "index.html").write_text(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>IOI anomalies: expected outputs</title><style>{_CSS}</style></head>"
        f"<body><h1>IOI anomalies: expected outputs</h1><p>Every notebook as it should look once solved, executed on the {html.escape(model)} model "
        "(answers and hidden tests are not shown).</p>"
        f"<table><tr><th>notebook</th><th>figures</th><th>run time</th></tr>{rows}</table></body></html>", encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"model": model, "pages": pages}, indent=1))
    return pages


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("assignments", nargs="*", help="which assignments (default: all)")
    p.add_argument("--out", type=Path, default=OUT, help="output folder (default: build/report)")
    p.add_argument("--jobs", type=int, default=2, help="notebooks executed at a time, each in its own kernel with its share "
                                                         "of the cores (default: 2; 1 gives the index each notebook's run time alone)")
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error(f"--jobs must be 1 or more, not {a.jobs}")
    pages = build(a.out, a.assignments or None, jobs=a.jobs)
    print(f"report: {a.out / 'index.html'} ({len(pages)} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
