"""The expected-output pages (``tools.report``, ``make report``, part of ``make demo``).

In a real browser (headless Chromium, networking off) every page is checked; every link from the
student notebooks resolves; the pages show no solution code and no hidden test. Building them
executes every solution notebook top to bottom on the embedded model, so this is also the test
that each of them runs without an error.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from grader.config import ROOT

ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())


@pytest.mark.slow  # executes every solution notebook (the session's report)
def test_the_report_has_a_page_per_notebook_and_an_index(report):
    out, pages = report
    assert sorted(pages) == ASSIGNMENTS
    index = (out / "index.html").read_text()
    for name in ASSIGNMENTS:
        assert f"href='{name}.html'" in index and (out / f"{name}.html").exists()
    for page in (out / f"{n}.html" for n in ASSIGNMENTS):
        text = page.read_text()
        assert "https://" not in text.split("<body>")[0], "the page head loads nothing from the network"
        assert "unpkg.com" not in text and "cdn.plot.ly" not in text
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text and "MARK SCHEME" not in text
        assert "IPython.core.display" not in text, "a displayed object is shown rendered, not as its repr"
    assert "<strong>On ioi-anomalies-mini:</strong>" in (out / "01_early_induction_heads.html").read_text(), "the summary, rendered"
    assert pages["01_early_induction_heads"]["views"] >= 1, "the attention view is in the report"
    assert all(pages[n]["plots"] >= 1 for n in ("01_early_induction_heads", "02_backup_name_movers", "03_positional_vs_token_signal"))


@pytest.mark.slow  # a browser on the session's report
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_page_renders_in_chromium_without_errors(report, browser, name):
    out, pages = report
    page = pages[name]
    browser.get_log("browser")  # the shared browser's earlier messages are not this page's
    browser.get((out / f"{name}.html").as_uri())
    state = {}
    for _ in range(60):  # plotly and React draw asynchronously
        state = browser.execute_script("""
            const plots = [...document.querySelectorAll('div.plot')].map(d => ({
                drawn: !!d.querySelector('svg.main-svg'),
                title: (d.querySelector('.gtitle') || {}).textContent || ''}));
            const views = [...document.querySelectorAll('div[id^="circuits-vis-"]')].map(d => d.children.length > 0);
            return {plots, views, ready: document.readyState};
        """)
        if state["ready"] == "complete" and all(p["drawn"] for p in state["plots"]) and all(state["views"]):
            break
        time.sleep(0.5)
    browser.execute_script("const f = document.querySelector('div.plot, div[id^=\"circuits-vis-\"]'); if (f) f.scrollIntoView();")
    time.sleep(0.3)
    shots = out / "screenshots"
    shots.mkdir(exist_ok=True)
    browser.save_screenshot(str(shots / f"{name}.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, json.dumps(errors, indent=1)[:3000]
    assert len(state["plots"]) == page["plots"]
    assert all(p["drawn"] for p in state["plots"]), state["plots"]
    assert [p["title"] for p in state["plots"]] == page["titles"] and all(page["titles"]), (state["plots"], page["titles"])
    assert len(state["views"]) == page["views"] and all(state["views"]), state["views"]
    assert (shots / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_student_notebooks_link_their_report_page(name):
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / name / f"{name}.ipynb", as_version=4)
    assert f"](../../build/report/{name}.html)" in nb.cells[0].source, "the intro links the expected output"


LINK = re.compile(r"\]\(([^)\s]+)\)|href=[\"']([^\"']+)[\"']")


@pytest.mark.slow  # executes every solution notebook (the session's report)
def test_every_link_from_the_notebooks_resolves_after_make_demo(report):
    """Relative links from notebooks/ point at files of a checkout, or at pages `make demo` builds (build/report/)."""
    import nbformat

    out, _ = report
    built = ROOT / "build" / "report"
    links = 0
    for path in sorted((ROOT / "notebooks").glob("*/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "markdown":
                continue
            for m in LINK.finditer(cell.source):
                target = (m.group(1) or m.group(2)).split("#")[0]
                if not target or re.match(r"^[a-z]+:", target):
                    continue  # web links and anchors within the page
                links += 1
                resolved = (path.parent / target).resolve()
                if resolved.is_relative_to(built):
                    assert (out / resolved.relative_to(built)).exists(), f"{path.name}: {target} is not built by the report"
                else:
                    assert resolved.exists(), f"{path.name}: {target} does not exist in the checkout"
    assert links >= len(ASSIGNMENTS)
    make = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "-m tools.report" in make, "make demo builds the expected-output pages"


@pytest.mark.slow  # executes every solution notebook (the session's report)
def test_the_pages_show_no_solution_and_no_hidden_test(report, secret_lines):
    from conftest import leaked

    out, _ = report
    for page in sorted(out.glob("*.html")):
        assert not leaked(page.read_text(), secret_lines), f"{page.name} shows solution or hidden-test lines"


def test_the_leak_check_finds_a_solution_line(secret_lines):
    """Control: a page that did show the solution would be caught."""
    from conftest import leaked

    import html

    line = sorted(secret_lines)[0]
    assert leaked(f"<pre>{html.escape(line)}</pre>", secret_lines) == [line]


def test_a_bad_number_of_jobs_is_refused_before_any_kernel_starts(capsys, monkeypatch):
    import tools.report as report

    monkeypatch.setattr(report, "build", lambda *a, **k: pytest.fail("nothing is built"))
    with pytest.raises(SystemExit) as e:
        report.main(["--jobs", "0"])
    assert e.value.code == 2 and "--jobs must be 1 or more, not 0" in capsys.readouterr().err


def test_a_notebook_that_fails_stops_the_build_before_the_next_ones_start(tmp_path, monkeypatch):
    import threading

    import tools.report as report

    started, second_started, first_failed = [], threading.Event(), threading.Event()

    def execute(nb, folder, threads=None):
        started.append(folder.name)
        if folder.name == ASSIGNMENTS[0]:
            second_started.wait(10)  # the second kernel runs beside the first while it fails, and ends after it
            first_failed.set()
            raise RuntimeError("a cell raised")
        second_started.set()
        first_failed.wait(10)
        time.sleep(0.5)
        return nb, 0.0

    monkeypatch.setattr(report, "execute", execute)
    with pytest.raises(RuntimeError, match="a cell raised"):
        report.build(tmp_path, list(ASSIGNMENTS), jobs=2)
    assert sorted(started) == list(ASSIGNMENTS[:2]), "the notebooks after the running two never started"
    assert not list(tmp_path.glob("*.html")), "no page and no index for a failed build"
