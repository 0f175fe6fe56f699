"""`make report` in a real browser: headless Chromium, networking off, every page checked.

Building the report executes every solution notebook top to bottom on the embedded model, so
this is also the test that each of them runs without an error.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from grader.config import ROOT

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from grader.report import build

    out = tmp_path_factory.mktemp("report")
    pages = build(out)
    return out, {p["name"]: p for p in pages}


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("Chromium is not installed: `make setup` installs Debian's chromium and chromium-driver (as root, with apt-get); "
                    "elsewhere run `sudo apt-get install chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                # networking off: no background traffic, every host unresolvable, every request through a dead proxy
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
                "--disable-default-apps", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=http://127.0.0.1:9", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


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
    assert pages["01_early_induction_heads"]["views"] >= 1, "the attention view is in the report"
    assert all(pages[n]["plots"] >= 1 for n in ("01_early_induction_heads", "02_backup_name_movers", "03_positional_vs_token_signal"))


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_page_renders_in_chromium_without_errors(report, browser, name):
    out, pages = report
    page = pages[name]
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
