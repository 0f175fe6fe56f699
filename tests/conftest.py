"""Shared fixtures: a small random GPT-2 saved as a Hugging Face directory and booted through the
same loader path as GPT-2 small (the embedded trained model has its own tests)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the machine's cores: one thread each, in this
    # process and in the kernels and processes it starts (set before torch is imported)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest

from ioi_anomalies import ABC_FLIP, IOIDataset


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random 3-layer, 4-head GPT-2 (``random_model``), built in this session's own cache."""
    os.environ["IOI_ANOMALIES_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from ioi_anomalies import random_model

    return random_model(n_layers=3, n_heads=4, d_model=64, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model):
    return Path(tiny_model.tokenizer.name_or_path)


@pytest.fixture()
def model(tiny_model):
    """The tiny model, checked free of hooks before and after each test."""
    tiny_model.reset_hooks()
    yield tiny_model
    from ioi_anomalies import count_user_hooks

    assert count_user_hooks(tiny_model) == 0, "a test left hooks on the shared model"
    tiny_model.reset_hooks()


@pytest.fixture(scope="session")
def ioi(tiny_model):
    return IOIDataset("mixed", N=12, tokenizer=tiny_model.tokenizer, seed=3)


@pytest.fixture(scope="session")
def abc(ioi):
    return ioi.gen_flipped_prompts(ABC_FLIP)


# Fixtures that execute whole notebooks or start a browser: a test using one is end to end.
END_TO_END_FIXTURES = {"report", "handout", "browser", "solution_run"}

# Fixtures built once per session or module that take long: under pytest-xdist (`make test`) every test
# using one runs on the same worker, so each is built once (the name is the test's `xdist_group`).
SHARED_FIXTURES = {"report": "report", "handout": "report", "graded": "graded", "card_rows": "card",
                   "local_cluster": "local_cluster", "slow_kernel": "slow_kernel", "student_lab": "student_lab",
                   "series_judge": "series_judge"}

# Work that takes longest first, so that the two workers end together (pytest-xdist hands out work
# in collection order): groups and single tests by name, heaviest first; everything else follows.
# The slow kernel mostly waits: it comes next to the graded class, whose two jobs at a time use the
# core it leaves idle (the first worker takes it after solution:01 while the second grades the class).
HEAVY_FIRST = ["solution:01", "series_judge", "graded", "slow_kernel", "report", "solution:03",
               "solution:02", "test_a_class_graded_on_a_cluster", "card"]


def assignment_of(item) -> str | None:
    """The solution notebook a ``solution_run`` test works on (its ``assignment`` or mutant ``file`` parameter)."""
    from grader.config import ROOT

    params = getattr(getattr(item, "callspec", None), "params", {})
    names = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())
    for key in ("assignment", "file"):
        value = str(params.get(key, ""))
        found = [n for n in names if value and (n == value or (value.startswith("nb") and n[:2] == value[2:]))]
        if len(found) == 1:
            return found[0]
    return None


def xdist_group(item) -> str | None:
    """The worker group of a test: its solution notebook's run, or the shared fixture it uses (None: any worker)."""
    used = set(getattr(item, "fixturenames", ()))
    if "solution_run" in used:
        nb = assignment_of(item)
        if nb is None:
            raise pytest.UsageError(f"{item.nodeid} uses solution_run: give it an `assignment` or mutant `file` parameter "
                                    "naming the notebook, so that its run is built on one worker")
        return f"solution:{nb[:2]}"
    groups = sorted({SHARED_FIXTURES[f] for f in used & set(SHARED_FIXTURES)})
    if len(groups) > 1:
        raise pytest.UsageError(f"{item.nodeid} uses fixtures of the worker groups {groups}: give them one group in SHARED_FIXTURES")
    return groups[0] if groups else None


def _rank(item, group: str | None) -> int:
    """The position of a test's group or name in HEAVY_FIRST (len(HEAVY_FIRST): anywhere after)."""
    for i, name in enumerate(HEAVY_FIRST):
        if name == group or item.name.split("[")[0].startswith(name):
            return i
    return len(HEAVY_FIRST)


#: why a collected test may not run (a pytest-xdist worker cannot stop the run with a readable UsageError)
REFUSED = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Every test that uses an end-to-end fixture is marked slow, so `make test-fast` skips them all;
    under pytest-xdist, tests sharing an expensive fixture are grouped on one worker, heaviest first."""
    refused: dict[str, str] = {}
    groups: dict[str, str | None] = {}
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            refused[item.nodeid] = f"mark this test @pytest.mark.slow (it uses one of {sorted(END_TO_END_FIXTURES)})"
        try:
            groups[item.nodeid] = xdist_group(item)
        except pytest.UsageError as e:
            groups[item.nodeid] = None
            refused[item.nodeid] = "; ".join(filter(None, [refused.get(item.nodeid), str(e)]))
    on_worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    if refused and not on_worker:
        raise pytest.UsageError("\n".join(f"{nodeid}: {why}" for nodeid, why in refused.items()))
    if on_worker:
        items.sort(key=lambda item: _rank(item, groups[item.nodeid]))  # stable: the collection order within each rank
    for item in items:
        if item.nodeid in refused:  # a worker's UsageError reaches the main process without its message: the test fails with it
            item.stash[REFUSED] = refused[item.nodeid]
        elif groups[item.nodeid] is not None:
            item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
            if on_worker and config.getvalue("loadgroup"):
                _join_group(item, groups[item.nodeid])


def _join_group(item, group: str) -> None:
    """Give the test the node id ``<id>@<group>`` that `--dist loadgroup` schedules by. pytest-xdist 3.8 writes it
    to ``item._nodeid``, which pytest 9 no longer reads (the id is ``item._id``): set here where pytest reads it."""
    from _pytest.nodeid import NodeId

    if "@" not in item.nodeid.rsplit("]", 1)[-1]:
        item._id = NodeId.parse(f"{item.nodeid}@{group}")


#: mutant file -> [caught, tried] in this run, added up in the process that reports (the main one under pytest-xdist).
MUTATION_SCORES: dict[str, list[int]] = {}


def recorded(report, when: str, key: str) -> list:
    """The values a test recorded under ``key`` (``user_properties``), read from its ``when`` report only."""
    return [value for name, value in report.user_properties if name == key] if report.when == when else []


def add_mutation_score(scores: dict[str, list[int]], report) -> None:
    """Count a mutant test's report (test_mutation records ``mutant_caught``: (file, caught)) into ``scores``."""
    for file, caught in recorded(report, "call", "mutant_caught"):
        score = scores.setdefault(file, [0, 0])
        score[0] += bool(caught)
        score[1] += 1


def pytest_runtest_logreport(report):
    """pytest-xdist sends each test's report, with its user properties, to the main process: scores add up there."""
    add_mutation_score(MUTATION_SCORES, report)
    add_cpu_seconds(CPU_SECONDS, report)


def pytest_terminal_summary(terminalreporter):
    """The mutation score of tests/test_mutation.py: wrong answers caught / tried, per notebook; with
    ``--cpu-profile``, the CPU seconds of each group of tests."""
    for nb, (caught, tried) in sorted(MUTATION_SCORES.items()):
        terminalreporter.write_line(f"mutation score {nb}: {caught}/{tried} wrong answers caught")
    if terminalreporter.config.getoption("cpu_profile"):
        for line in cpu_profile_lines(CPU_SECONDS):
            terminalreporter.write_line(line)


# ------------------------------------------------------------------ where the suite's CPU time goes (--cpu-profile)

def pytest_addoption(parser):
    parser.addoption("--cpu-profile", action="store_true", default=False,
                     help="print the CPU seconds each group of tests used: its own process and every process it started "
                          "(kernels, sandboxed workers, judges), largest first. `make test` is bound by CPU: cut the largest.")


#: label (a worker group, or file::test for the others) -> [CPU seconds, tests], added up in the process that reports.
CPU_SECONDS: dict[str, list[float]] = {}
CPU_AT_SETUP = pytest.StashKey[float]()


class CpuWatch:
    """CPU time (user + system) of this process and of every process it starts, at any depth.

    A thread looks at the descendants every ``every`` seconds and keeps each one's own CPU time as last
    seen, also after it ended: sandboxed workers that their judge kills without waiting for them count
    too. What a process uses after its last look (at most ``every`` seconds' worth) is missed.
    """

    def __init__(self, every: float = 0.2):
        import threading

        self.every, self.seen, self.lock = every, {}, threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.wait(self.every):
            self.look()

    def look(self) -> None:
        import psutil

        for p in psutil.Process().children(recursive=True):
            try:
                with p.oneshot():
                    key, t = (p.pid, p.create_time()), p.cpu_times()
            except psutil.Error:
                continue
            with self.lock:
                self.seen[key] = t.user + t.system

    def seconds(self) -> float:
        import resource

        self.look()
        me = resource.getrusage(resource.RUSAGE_SELF)
        with self.lock:
            return me.ru_utime + me.ru_stime + sum(self.seen.values())

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


CPU_WATCH: list[CpuWatch] = []  # one per test process, with --cpu-profile


def pytest_configure(config):
    if config.getoption("cpu_profile") and not CPU_WATCH:
        CPU_WATCH.append(CpuWatch())


def cpu_label(item) -> str:
    try:
        group = xdist_group(item)
    except pytest.UsageError:
        group = None
    return group or f"{item.nodeid.split('::')[0].rsplit('/', 1)[-1]}::{item.name.split('[')[0]}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if REFUSED in item.stash:
        pytest.fail(f"refused: {item.stash[REFUSED]}", pytrace=False)
    if CPU_WATCH:
        item.stash[CPU_AT_SETUP] = CPU_WATCH[0].seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if CPU_AT_SETUP in item.stash:  # setup, call and teardown (fixtures built and finished here count too)
        item.user_properties.append(("cpu_seconds", (cpu_label(item), CPU_WATCH[0].seconds() - item.stash[CPU_AT_SETUP])))


def add_cpu_seconds(totals: dict[str, list[float]], report) -> None:
    """Add a test's CPU seconds (recorded on its teardown report) to ``totals`` under its label."""
    for label, seconds in recorded(report, "teardown", "cpu_seconds"):
        entry = totals.setdefault(label, [0.0, 0])
        entry[0] += seconds
        entry[1] += 1


def cpu_profile_lines(totals: dict[str, list[float]], top: int = 40) -> list[str]:
    """The CPU profile as printed: the total, then the largest labels with their share."""
    whole = sum(s for s, _ in totals.values())
    lines = [f"CPU seconds of the tests, their processes included: {whole:.0f} in all"]
    for label, (seconds, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{seconds:8.1f} s {100 * seconds / whole if whole else 0:5.1f}%  {label} ({n} test{'s' * (n != 1)})")
    return lines


@pytest.fixture(scope="session")
def solution_run(tmp_path_factory):
    """Each solution notebook executed once per session in this process, as the judge runs it
    (``tests/mutation.py``): ``solution_run("02_backup_name_movers")`` is its :class:`NotebookRun`,
    whose namespace every test that needs the executed solution reuses (the mutation harness, the
    series' wrong submissions). Its hidden tests' references are cached per seed, as the judge's are."""
    from tests.mutation import NotebookRun

    runs: dict[str, NotebookRun] = {}

    def run(assignment: str) -> NotebookRun:
        if assignment not in runs:
            runs[assignment] = NotebookRun(assignment, reference_cache=tmp_path_factory.mktemp(f"references-{assignment[:2]}"))
        return runs[assignment]

    return run


@pytest.fixture(scope="session")
def series_judge():
    """This process's warm judge for the series' notebooks (``grader.autograde.warm_judge``), asked for once: the tests
    that grade the real notebooks in the sandbox run on one worker, where its imports and its idle warm sandboxes serve
    them all (the demo's class, full and zero marks) instead of being started again on the other."""
    from grader.autograde import graded_assignments, warm_judge
    from grader.config import Config

    warm_judge(Config(), graded_assignments(Config()))


@pytest.fixture(scope="session")
def report(tmp_path_factory):
    """The expected-output pages (``tools.report``), built once per session: (folder, {name: page info}).
    Building them executes every solution notebook once in the project's kernel, as students run it:
    the report's and the hand-out's tests share that run. Two kernels at a time (the default), each with one
    thread here: a core the other worker leaves idle (a slow kernel's waits, a time limit) runs the second."""
    from tools.report import build

    out = tmp_path_factory.mktemp("report")
    pages = build(out, jobs=2)
    return out, {p["name"]: p for p in pages}


def nbgrader_meta(grade_id, *, grade=False, solution=False, locked=False, points=None):
    """A cell's nbgrader metadata, as nbgrader writes it."""
    m = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution, "task": False}
    if points is not None:
        m["points"] = points
    return {"nbgrader": m}


def _secret_lines() -> set[str]:
    """Lines students must never receive: solution regions, model answers, hidden tests, hidden tests' references.

    Lines that also occur in what students get anyway (the released notebooks, the package, also inside a longer line) and short
    lines (``return x``, ``else:``) are left out: they give nothing away.
    """
    import re

    import nbformat

    from grader.config import ROOT

    secret, public = set(), set()
    region = re.compile(r"^[ \t]*### BEGIN (SOLUTION|HIDDEN TESTS).*?^[ \t]*### END \1", re.S | re.M)
    scheme = re.compile(r"=== BEGIN MARK SCHEME ===.*?=== END MARK SCHEME ===", re.S)
    for path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            parts = [m.group(0) for m in region.finditer(cell.source)] + [m.group(0) for m in scheme.finditer(cell.source)]
            if meta.get("solution") and not parts:
                parts = [cell.source]  # a solution cell without markers is replaced whole on release
            for part in parts:
                secret.update(line.strip() for line in part.splitlines())
    refs = ROOT / "grader" / "references"
    for path in sorted(refs.glob("*.py")) if refs.is_dir() else []:
        secret.update(line.strip() for line in path.read_text().splitlines())
    for path in sorted((ROOT / "notebooks").glob("*/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            public.update(line.strip() for line in cell.source.splitlines())
    for path in sorted((ROOT / "ioi_anomalies").rglob("*.py")):
        public.update(line.strip() for line in path.read_text().splitlines())
    shipped = "\n".join(public)  # a secret line that occurs inside a public one is given out anyway
    return {s for s in secret - public
            if len(s) >= 16 and not s.startswith("###") and "YOUR CODE HERE" not in s and s not in shipped}


@pytest.fixture(scope="session")
def secret_lines() -> set[str]:
    lines = _secret_lines()
    assert len(lines) > 20, "the solutions have solution regions and hidden tests to look for"
    return lines


def leaked(text: str, secret: set[str]) -> list[str]:
    """Secret lines found in ``text`` (as written, and HTML- or JSON-unescaped)."""
    import html
    import json

    views = [text, html.unescape(text)]
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if data is not None:
        views.append(json.dumps(data, ensure_ascii=False))
        cells = data.get("cells") if isinstance(data, dict) else None
        if isinstance(cells, list):  # a notebook: its sources as the student reads them
            views.append("\n".join("".join(c.get("source", "")) for c in cells if isinstance(c, dict)))
    return sorted(s for s in secret if any(s in v for v in views))


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium with networking off (every host unresolvable, a dead proxy); 127.0.0.1 still answers."""
    import shutil

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Chromium is not installed: `make setup` installs Debian's chromium and chromium-driver (as root, with apt-get); "
                    "elsewhere run `sudo apt-get install chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
                "--disable-default-apps", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()
