"""The suite's own plumbing (tests/conftest.py): which worker group a test joins under pytest-xdist, and the
mutation score added up from the tests' reports."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import HEAVY_FIRST, SHARED_FIXTURES, _rank, add_mutation_score, xdist_group


def item(*fixtures: str, name: str = "test_x", **params):
    return SimpleNamespace(fixturenames=list(fixtures), callspec=SimpleNamespace(params=params), name=name, nodeid=f"tests/t.py::{name}")


@pytest.mark.parametrize("params, group", [
    ({"file": "nb01"}, "solution:01"),
    ({"file": "nb03", "mutant": "m"}, "solution:03"),
    ({"assignment": "02_backup_name_movers"}, "solution:02"),
])
def test_a_solution_run_test_joins_its_notebooks_group(params, group):
    assert xdist_group(item("solution_run", "tmp_path", **params)) == group
    assert xdist_group(item("run_of", "solution_run", "report", **params)) == group, "the solution's run decides"


@pytest.mark.parametrize("params", [{}, {"file": "nb99"}, {"assignment": "05_nothing"}])
def test_a_solution_run_test_without_its_notebook_is_refused(params):
    with pytest.raises(pytest.UsageError, match="solution_run"):
        xdist_group(item("solution_run", **params))


def test_shared_fixtures_name_the_group_and_others_run_anywhere():
    assert xdist_group(item("graded", "tmp_path")) == "graded"
    assert xdist_group(item("handout", "report", "secret_lines")) == xdist_group(item("report", "browser")) == "report"
    assert xdist_group(item("model", "ioi", "tmp_path")) is None
    with pytest.raises(pytest.UsageError, match="graded"):
        xdist_group(item("graded", "card_rows"))
    assert set(SHARED_FIXTURES.values()) <= set(HEAVY_FIRST) | {"local_cluster", "student_lab"}


def test_heavy_work_is_handed_out_first():
    order = sorted([item("model"), item("graded"), item("series_judge", "tmp_path", name="test_demo_grades_the_example_class_as_expected"),
                    item("solution_run", file="nb01")], key=lambda i: _rank(i, xdist_group(i)))
    assert [xdist_group(i) or i.name for i in order] == ["solution:01", "series_judge", "graded", "test_x"]


def test_the_mutation_score_adds_up_reports_from_any_worker():
    def report(when, *props):
        return SimpleNamespace(when=when, user_properties=list(props))

    scores: dict[str, list[int]] = {}
    for r in (report("call", ("mutant_caught", ("nb01", True))), report("call", ("mutant_caught", ["nb01", False])),
              report("setup", ("mutant_caught", ("nb01", True))), report("call", ("other", 1)),
              report("call", ("mutant_caught", ("nb02", True)))):
        add_mutation_score(scores, r)
    assert scores == {"nb01": [1, 2], "nb02": [1, 1]}


def test_make_test_groups_work_by_xdist_group():
    from grader.config import ROOT

    makefile = (ROOT / "Makefile").read_text()
    assert "--dist loadgroup" in makefile and "--no-loadscope-reorder" in makefile, "groups and the order above need both"


class Collected(SimpleNamespace):
    """A collected test as conftest's collection hook sees it."""

    def get_closest_marker(self, name):
        return next((m for m in self.markers if m.name == name), None)

    def add_marker(self, mark):
        self.markers.append(mark.mark if hasattr(mark, "mark") else mark)


def collected(*fixtures, slow=True, name="test_x", **params):
    base = item(*fixtures, name=name, **params)
    return Collected(**vars(base), stash={}, markers=[pytest.mark.slow.mark] if slow else [])


def test_collection_refuses_an_unmarked_end_to_end_test_and_under_xdist_fails_it_with_the_reason(monkeypatch):
    from conftest import REFUSED, pytest_collection_modifyitems

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    with pytest.raises(pytest.UsageError, match="mark this test @pytest.mark.slow"):
        pytest_collection_modifyitems(None, [collected("report", slow=False)])
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")  # a worker's UsageError would lose its message: the test fails with it
    items = [collected("model", slow=False, name="test_a"), collected("report", slow=False, name="test_b"),
             collected("graded", name="test_c"), collected("solution_run", file="nb01", name="test_d")]
    pytest_collection_modifyitems(SimpleNamespace(getvalue=lambda name: False), items)
    by_name = {i.name: i for i in items}
    assert "mark this test @pytest.mark.slow" in by_name["test_b"].stash[REFUSED] and REFUSED not in by_name["test_a"].stash
    marks = {i.name: i.get_closest_marker("xdist_group").args[0] if i.get_closest_marker("xdist_group") else None for i in items}
    assert marks == {"test_a": None, "test_b": None, "test_c": "graded", "test_d": "solution:01"}, "grouped (not the refused test)"
    rank = {"test_a": len(HEAVY_FIRST), "test_b": HEAVY_FIRST.index("report"), "test_c": HEAVY_FIRST.index("graded"),
            "test_d": HEAVY_FIRST.index("solution:01")}
    assert [i.name for i in items] == sorted(rank, key=rank.get), "heaviest first (the refused test in its group's place)"


def test_a_grouped_test_carries_its_group_in_the_node_id_that_loadgroup_reads():
    from _pytest.nodeid import NodeId

    from conftest import _join_group

    test = SimpleNamespace(nodeid="tests/t.py::test_x[nb01: a]")
    _join_group(test, "solution:01")
    assert str(test._id) == "tests/t.py::test_x[nb01: a]@solution:01"
    test = SimpleNamespace(nodeid="tests/t.py::test_x@solution:01", _id=NodeId.parse("tests/t.py::test_x@solution:01"))
    _join_group(test, "solution:01")
    assert str(test._id) == "tests/t.py::test_x@solution:01", "joined once"


def test_cpu_seconds_add_up_by_label_from_teardown_reports():
    from conftest import add_cpu_seconds, cpu_profile_lines

    def report(when, *props):
        return SimpleNamespace(when=when, user_properties=list(props))

    totals: dict[str, list[float]] = {}
    for r in (report("teardown", ("cpu_seconds", ("graded", 3.0))), report("teardown", ("cpu_seconds", ["graded", 1.5])),
              report("call", ("cpu_seconds", ("graded", 9.0))), report("teardown", ("other", 1)),
              report("teardown", ("cpu_seconds", ("t.py::test_x", 0.5)))):
        add_cpu_seconds(totals, r)
    assert totals == {"graded": [4.5, 2], "t.py::test_x": [0.5, 1]}
    lines = cpu_profile_lines(totals)
    assert "5 in all" in lines[0] and lines[1].split() == ["4.5", "s", "90.0%", "graded", "(2", "tests)"], lines


def test_cpu_seconds_count_every_process_a_test_starts_even_one_never_waited_for():
    """A process that ended and was waited for, and a grandchild that ended while its parent lives on, count."""
    import subprocess
    import sys

    from conftest import CpuWatch

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\n"
    watch = CpuWatch(every=0.05)
    try:
        before = watch.seconds()
        subprocess.run([sys.executable, "-c", burn], check=True)
        ended = watch.seconds()
        grand = (f"import subprocess, sys, time\np = subprocess.Popen([sys.executable, '-c', {burn!r}])\n"
                 "while p.poll() is None:\n    time.sleep(0.01)\nprint('ended', flush=True)\ntime.sleep(30)")
        running = subprocess.Popen([sys.executable, "-c", grand], stdout=subprocess.PIPE, text=True)
        try:
            assert running.stdout.readline().strip() == "ended"
            assert watch.seconds() - ended >= 0.7, "the ended grandchild counts"
        finally:
            running.kill()
            running.wait()
            running.stdout.close()
    finally:
        watch.stop()
    assert ended - before >= 0.7, "the ended child counts"


@pytest.mark.parametrize("code, outside", [
    ("g = generator('x')\ny = g + 1", {"generator"}),  # a test's own g needs no earlier cell's g
    ("x = x + 1", {"x"}),
    ("for cell, flip in FLIP.items():\n    print(cell, flip)", {"FLIP", "cell", "flip"}),  # read and bound by one statement
    ("def fit(grid):\n    return grid.sum() + helper(grid)", {"helper"}),  # a parameter is the function's own
    ("[a + b for a in xs]", {"b", "xs"}),
    ("class A:\n    k = K\n    def m(self):\n        return Z", {"K", "Z"}),
    ("lambda q: q + w", {"w"}),
    ("import torch\nt = torch.ones(1)", set()),
    ("import asyncio\nawait asyncio.sleep(t)", {"t"}),  # IPython's top-level await
    ("%env A=1", set()),
])
def test_the_mutation_harness_runs_the_cells_whose_names_a_cell_reads(code, outside):
    from tests.mutation import outside_names

    assert outside_names(code) == outside


HIDDEN_CELL = "check(f(X), 'visible')\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS\n"


@pytest.mark.parametrize("source, part", [
    (HIDDEN_CELL.format(hidden="Y = draw(seed('k'))\ncheck(f(Y), 'hidden')"), "hidden"),
    ("out = f(X)\ncheck(out, 'visible')\n### BEGIN HIDDEN TESTS\ncheck(out + f(draw()), 'hidden')\n### END HIDDEN TESTS", "whole"),
    ("check(f(X), 'visible only')", "none"),
    (HIDDEN_CELL.format(hidden="check(f(1), 'a')") + HIDDEN_CELL.format(hidden="check(f(2), 'b')"), "whole"),
    ("for x in XS:\n    check(f(x), 'v')\n    ### BEGIN HIDDEN TESTS\n    check(f(-x), 'h')\n    ### END HIDDEN TESTS", "whole"),
])
def test_other_submission_keys_rerun_the_hidden_tests_and_what_they_read(source, part):
    """What the harness runs again for another submission key: the hidden tests alone when the visible part
    binds nothing they read, else the whole cell; nothing when the cell has no hidden test."""
    from tests.mutation import NotebookRun

    got = NotebookRun.hidden_part(SimpleNamespace(source={"t": source}), "t")
    hidden = source.split("### BEGIN HIDDEN TESTS\n", 1)[-1].split("### END HIDDEN TESTS")[0]
    assert got == {"hidden": hidden, "whole": source, "none": ""}[part]
