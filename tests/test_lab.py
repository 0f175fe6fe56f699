"""The student's JupyterLab (``tools.lab``, ``make lab``) in headless Chromium.

It serves the student's own copy of the assignments: the instructor's nbgrader tools are absent,
the Validate button works, and validating (which saves the notebook) leaves the tracked
``notebooks/`` untouched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from grader.config import ROOT

A = "01_early_induction_heads"
TOKEN = "ioi-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    """The HTTP status of a GET to the local server (0: not answering yet)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def test_prepare_copies_once_and_never_overwrites(tmp_path):
    from tools.lab import INSTRUCTOR_LAB_PLUGINS, prepare

    work = tmp_path / "work"
    created = prepare(work, pages=tmp_path / "no-pages")
    nb = work / A / f"{A}.ipynb"
    assert nb in created and nb.read_bytes() == (ROOT / "notebooks" / A / f"{A}.ipynb").read_bytes()
    nb.write_text(nb.read_text().replace("YOUR CODE HERE", "MY CODE HERE"))
    assert prepare(work, pages=tmp_path / "no-pages") == [], "a second run copies nothing"
    assert "MY CODE HERE" in nb.read_text(), "the student's work is kept"
    page = json.loads((work / ".jupyter" / "labconfig" / "page_config.json").read_text())
    assert set(page["disabledExtensions"]) == set(INSTRUCTOR_LAB_PLUGINS)
    server = json.loads((work / ".jupyter" / "jupyter_server_config.json").read_text())
    assert "nbgrader.server_extensions.validate_assignment" not in server["ServerApp"]["jpserver_extensions"]
    assert "work/" in (ROOT / ".gitignore").read_text().split()


@pytest.fixture(scope="module")
def student_lab(tmp_path_factory):
    from tools.lab import command, prepare

    work = tmp_path_factory.mktemp("student") / "work"
    prepare(work, pages=work / "no-pages")
    port = _free_port()
    args, env = command(work, port=port, headless=True, token=TOKEN)
    args.append("--LabApp.expose_app_in_browser=True")  # lets the test ask the app which commands exist
    log = open(work.parent / "lab.log", "w")
    proc = subprocess.Popen(args, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            break
        if _get(f"{base}/api/status?token={TOKEN}") == 200:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the student's Lab did not start: " + (work.parent / "lab.log").read_text()[-3000:])
    assert proc.poll() is None, (work.parent / "lab.log").read_text()[-3000:]
    yield base, work
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.slow
def test_student_lab_has_no_instructor_tools_and_validate_keeps_notebooks_clean(student_lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from tools.lab import INSTRUCTOR_LAB_PLUGINS

    base, work = student_lab
    assert _get(f"{base}/formgrader?token={TOKEN}") == 404, "the formgrader server extension is off"
    assert _get(f"{base}/nbgrader_version?token={TOKEN}&version=0.9.6") == 200, "the validate extension is on"
    nb = work / A / f"{A}.ipynb"
    before = nb.stat().st_mtime_ns
    browser.get(f"{base}/lab/tree/{A}/{A}.ipynb?token={TOKEN}")
    wait = WebDriverWait(browser, 180)
    button = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".validate-button button, button.validate-button, .validate-button")))
    plugins = browser.execute_script("return window.jupyterapp.listPlugins()")
    assert "@jupyter/nbgrader:validate-assignment" in plugins and "@jupyter/nbgrader:assignment-list" in plugins, plugins
    assert not [p for p in INSTRUCTOR_LAB_PLUGINS if p in plugins], "the instructor's nbgrader plugins are off"
    commands = browser.execute_script("return window.jupyterapp.commands.listCommands()")
    assert not [c for c in commands if c in ("nbgrader:open-create-assignment", "nbgrader:open-formgrader", "nbgrader:open-course-list")]
    menus = browser.execute_script("return [...document.querySelectorAll('.lm-MenuBar-itemLabel')].map(e => e.textContent)")
    assert "File" in menus and "Nbgrader" not in menus, menus
    assert "Create Assignment" not in browser.page_source
    button.click()
    dialog = WebDriverWait(browser, 600).until(
        lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, ".jp-Dialog") if "Validation" in e.text), None))
    text = dialog.text
    assert "Validation Results" in text and "NotImplementedError" in text, text[:3000]
    assert nb.stat().st_mtime_ns != before, "Validate saved the student's copy"
    status = subprocess.run(["git", "status", "--porcelain", "--", "notebooks/"], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout == "", status.stdout
