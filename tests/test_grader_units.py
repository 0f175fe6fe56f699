"""The grader's pure steps, without the sandbox: fast, and each with a wrong input it must refuse."""

from __future__ import annotations

import io
import os
import socket
import stat
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

from grader.autograde import course_secret, remove_tree, submission_digest, submission_key
from grader.config import Config
from grader.intake import list_files
from grader.judge import (
    MAX_DEPTH,
    Conn,
    Handle,
    NotPlainData,
    RemoteError,
    WorkerGone,
    check_reply,
    failure_message,
    failure_site,
)
from grader.sandbox import hf_hub_cache
from ioi_anomalies.checks import CheckFailed, check_close, check_heads

TEST = ('check_close(f(X), 2 * X, "f of X")\n### BEGIN HIDDEN TESTS\nY = torch.randn(3)\n'
        'check_close(f(Y), 2 * Y, "f of a random tensor")\nassert Y.sum() > -99, "sums are finite"\n### END HIDDEN TESTS')


def _raise_in_test(code: str, ns: dict, filename: str = "<test t>"):
    try:
        exec(compile(code, filename, "exec"), ns)
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("the test did not fail")


# ---- messages: hidden failures say the property only


def test_check_failed_carries_the_property_apart_from_the_detail():
    with pytest.raises(CheckFailed) as e:
        check_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.5]), "the thing")
    assert e.value.what == "the thing" and "3.5" in str(e.value)
    with pytest.raises(CheckFailed) as e:
        check_heads([(0, 1)], [(1, 1)], "heads")
    assert e.value.what == "heads" and "1.1" in str(e.value)


def test_a_hidden_check_shows_only_its_property():
    ns = {"torch": torch, "check_close": check_close, "X": torch.ones(2), "f": lambda x: 2 * x if x.shape == (2,) else x + 0.123}
    e = _raise_in_test(TEST, ns)
    line, hidden, here = failure_site(TEST, "<test t>", e.__traceback__)
    assert (line, hidden, here) == (None, True, False)
    msg, tb = failure_message(e, line, hidden, here)
    assert msg == "hidden test failed: f of a random tensor" and tb is None


def test_a_hidden_assert_shows_its_own_message_and_nothing_else():
    code = "### BEGIN HIDDEN TESTS\nv = 41\nassert v == 42, 'the answer is right'\n### END HIDDEN TESTS"
    e = _raise_in_test(code, {})
    assert failure_message(e, *failure_site(code, "<test t>", e.__traceback__)) == ("hidden test failed: the answer is right", None)
    code = "### BEGIN HIDDEN TESTS\nimport torch\ntorch.testing.assert_close(torch.ones(1), torch.zeros(1))\n### END HIDDEN TESTS"
    e = _raise_in_test(code, {})
    msg, _ = failure_message(e, *failure_site(code, "<test t>", e.__traceback__))
    assert msg == "a hidden test failed (AssertionError)", msg  # a library's message would show the values


def test_the_students_exception_text_never_shows_in_a_hidden_test():
    secret = "inputs were tensor([0.1, 0.2])"

    class Boom:
        def __call__(self, x):
            raise RemoteError({"ename": "ValueError", "evalue": secret, "traceback": "Traceback ... " + secret})

    code = "f(X)\n### BEGIN HIDDEN TESTS\nf(X + 1)\n### END HIDDEN TESTS"
    calls = iter([1])
    ns = {"X": 1, "f": lambda x: next(calls, None) or Boom()(x)}
    e = _raise_in_test(code, ns)
    assert failure_message(e, *failure_site(code, "<test t>", e.__traceback__)) == ("your code raised ValueError during a hidden test", None)
    weird = RemoteError({"ename": f"E_{secret}", "evalue": "", "traceback": ""})
    assert failure_message(weird, None, True, False)[0] == "your code raised an exception during a hidden test"
    visible = failure_message(RemoteError({"ename": "ValueError", "evalue": "bad x", "traceback": "tb"}), "f(X)", False, False)
    assert visible == ("your code raised ValueError: bad x", "tb"), "visible tests keep the full message and traceback"


def test_visible_failures_keep_their_full_message():
    ns = {"torch": torch, "check_close": check_close, "X": torch.ones(2), "f": lambda x: x}
    e = _raise_in_test(TEST, ns)
    line, hidden, here = failure_site(TEST, "<test t>", e.__traceback__)
    assert (line, hidden) == ('check_close(f(X), 2 * X, "f of X")', False)
    msg, _ = failure_message(e, line, hidden, here)
    assert msg.startswith("f of X: 2 of 2 values differ") and "expected 2" in msg


# ---- only plain data crosses


def _conn() -> Conn:
    return Conn(None, None, time.monotonic() + 60, Path("/nonexistent.log"))


def test_plain_data_is_rebuilt_as_the_judges_own_objects():
    c = _conn()
    t = torch.arange(6.0).reshape(2, 3).t()  # a strided view
    got = c.imp({"a": [1, (2.5, t)], "s": {"__ioi_set__": [(0, 1), (2, 3)]}, (1, 2): None})
    assert got["s"] == {(0, 1), (2, 3)} and got[(1, 2)] is None
    assert got["a"][1][1].is_contiguous() and torch.equal(got["a"][1][1], t)
    assert isinstance(c.imp({"__ioi_handle__": 5, "type": "function", "callable": True}), Handle)


@pytest.mark.parametrize("value, why", [
    (torch.zeros(1).expand(2**31), "larger than the grader accepts"),  # 8 GiB once materialised, 4 bytes on the wire
    (object(), "not plain data"),
    ({"__ioi_object__": "os:system", "state": {}}, "unexpected type"),
    ({"__ioi_object__": "ioi_anomalies.models:TransformerBridge", "state": {}}, "type"),
    ({"__ioi_shared__": "not-shared"}, "does not know"),
    ({torch.ones(1): 1}, "dict key"),
    ({"__ioi_handle__": "5", "type": "function", "callable": True}, "malformed"),
])
def test_anything_else_is_refused_before_it_is_used(value, why):
    with pytest.raises(NotPlainData) as e:
        _conn().imp(value)
    assert why in str(e.value)


def test_deep_nesting_is_refused_without_recursing():
    v: list = []
    for _ in range(100_000):
        v = [v]
    with pytest.raises(NotPlainData) as e:
        _conn().imp(v)
    assert f"more than {MAX_DEPTH} levels" in str(e.value)


def test_a_handle_can_only_be_called():
    h = Handle(_conn(), 1, "function")
    with pytest.raises(AttributeError):
        h.items()
    with pytest.raises(TypeError):
        len(h)
    with pytest.raises(TypeError):
        iter(h)


def _reply_conn(payload: bytes) -> Conn:
    ours, theirs = socket.socketpair()
    theirs.sendall(struct.pack("!Q", len(payload)) + payload)
    return Conn(None, ours, time.monotonic() + 10, Path("/nonexistent.log"))


def _saved(obj) -> bytes:
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


@pytest.mark.parametrize("reply", [
    {"ok": "yes"}, {"error": "boom"}, {"error": {"ename": 3}}, {"assigned": "x"}, {"stdout": 5}, [1, 2], {1: 2},
])
def test_a_reply_with_unexpected_field_types_is_a_crash_not_a_grader_error(reply):
    with pytest.raises(WorkerGone) as e:
        _reply_conn(_saved(reply)).recv()
    assert (e.value.status, e.value.reason) == ("crashed", "the student's process sent a malformed reply")


def test_a_deeply_nested_or_non_plain_reply_is_handled():
    sys_limit = sys.getrecursionlimit()
    v: list = []
    for _ in range(5000):
        v = [v]
    sys.setrecursionlimit(20_000)
    try:
        raw = _saved({"value": v})
    finally:
        sys.setrecursionlimit(sys_limit)
    c = _reply_conn(raw)
    with pytest.raises(NotPlainData):
        c.imp(c.recv()["value"])
    with pytest.raises(WorkerGone) as e:
        _reply_conn(b"\x80\x04garbage").recv()
    assert e.value.status == "crashed" and "not plain data" in e.value.reason
    ours, theirs = socket.socketpair()
    theirs.sendall(struct.pack("!Q", 1 << 40))
    with pytest.raises(WorkerGone) as e:
        Conn(None, ours, time.monotonic() + 10, Path("/nonexistent.log")).recv()
    assert e.value.status == "crashed" and "more than the grader accepts" in e.value.reason


def test_error_records_are_normalised():
    r = check_reply({"ok": False, "error": {"ename": "", "evalue": "x" * 10_000}})
    assert r["error"] == {"ename": "Error", "evalue": "x" * 2000, "traceback": ""}


# ---- seeds


def test_course_secret_is_private_and_stable(tmp_path):
    cfg = Config(course=tmp_path / "course")
    a = course_secret(cfg)
    assert len(a) == 64 and course_secret(cfg) == a
    assert stat.S_IMODE((tmp_path / "course" / "hidden-tests.key").stat().st_mode) == 0o600
    assert course_secret(Config(course=tmp_path / "other")) != a


def test_submission_key_follows_content_and_secret(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.ipynb").write_text("one")
    d1 = submission_digest(tmp_path / "s")
    assert submission_digest(tmp_path / "s") == d1
    (tmp_path / "s" / "table.json").write_text("{}")  # any file of the submission counts, not just the notebook
    d2 = submission_digest(tmp_path / "s")
    assert d2 != d1
    assert submission_key(b"k", d1) == submission_key(b"k", d1)
    assert len({submission_key(b"k", d1), submission_key(b"k", d2), submission_key(b"other", d1)}) == 3


# ---- file names are bytes until proven text; trees of any depth


def test_list_files_keeps_undecodable_names_apart_and_stops_at_depth(tmp_path):
    root = os.fsencode(tmp_path)
    open(os.path.join(root, b"ok.ipynb"), "w").close()
    open(os.path.join(root, b"bad\xff.ipynb"), "w").close()
    os.symlink("/etc/passwd", tmp_path / "link")
    deep = tmp_path
    for _ in range(60):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("x")
    good, bad = list_files(tmp_path)
    assert [r for r, _ in good] == ["ok.ipynb"] and bad == [b"bad\xff.ipynb"]
    assert submission_digest(tmp_path)  # no UnicodeEncodeError


def test_remove_tree_deletes_trees_deeper_than_python_recurses(tmp_path):
    top = tmp_path / "t"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(3000):  # deeper than the recursion limit and than PATH_MAX
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    remove_tree(top)
    assert not top.exists()


# ---- the Hugging Face cache, where the README puts it


def test_hf_hub_cache_follows_the_variables(tmp_path):
    home = Path.home()
    assert hf_hub_cache({}) == home / ".cache" / "huggingface" / "hub"
    assert hf_hub_cache({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "huggingface" / "hub"
    assert hf_hub_cache({"HF_HOME": str(tmp_path / "hf")}) == tmp_path / "hf" / "hub"
    assert hf_hub_cache({"HF_HOME": "/x", "HF_HUB_CACHE": str(tmp_path / "c")}) == tmp_path / "c"


# ---- notebooks shaped to break intake


def test_nbgrader_metadata_of_the_wrong_shape_counts_as_none(tmp_path):
    import json

    from grader.intake import read_notebook

    cells = [{"cell_type": "code", "source": ["x = 1\n"], "metadata": {"nbgrader": []}, "outputs": [], "execution_count": None},
             {"cell_type": "code", "source": "y", "metadata": {"nbgrader": {"grade_id": ["a"]}}, "outputs": [], "execution_count": None},
             {"cell_type": "markdown", "source": "", "metadata": {"nbgrader": "x"}}]
    p = tmp_path / "n.ipynb"
    p.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 4}))
    nb = read_notebook(p)
    assert [c.source for c in nb.cells] == ["x = 1\n", "y", ""]
    assert all("nbgrader" not in c.metadata for c in nb.cells)


def test_a_hidden_message_built_with_values_is_not_shown():
    from grader.judge import literal_message

    code = ("### BEGIN HIDDEN TESTS\nexpected = [1, 2]\ngot = [2, 1]\n"
            "assert got == expected, f'got {got}, expected {expected}'\n### END HIDDEN TESTS")
    e = _raise_in_test(code, {})
    assert not literal_message(code, "<test t>", e.__traceback__)
    msg, _ = failure_message(e, *failure_site(code, "<test t>", e.__traceback__), literal_message(code, "<test t>", e.__traceback__))
    assert msg == "a hidden test failed (AssertionError)"
    code = ("### BEGIN HIDDEN TESTS\nfor n in (3,):\n    check_close(torch.zeros(n), torch.ones(n),\n"
            "                f'zeros of {n}')\n### END HIDDEN TESTS")
    e = _raise_in_test(code, {"torch": torch, "check_close": check_close})
    assert not literal_message(code, "<test t>", e.__traceback__)
    code = code.replace("f'zeros of {n}'", "'zeros'")
    e = _raise_in_test(code, {"torch": torch, "check_close": check_close})
    assert literal_message(code, "<test t>", e.__traceback__)


@pytest.mark.parametrize("value, ok", [(0, True), (8, True), (-1, False), ("8", False), (True, False), (1.5, False)])
def test_the_hidden_seed_pool_setting_is_checked(tmp_path, value, ok):
    from grader import config

    path = tmp_path / "grader_config.toml"
    path.write_text(f"hidden_seed_pool = {value!r}\n".replace("'", '"').replace("True", "true"))
    if ok:
        cfg = config.load(path)
        assert cfg.hidden_seed_pool == value
        assert cfg.fingerprint() == ("model=embedded" + (f";seeds={value}" if value else ""))
    else:
        with pytest.raises(SystemExit, match="hidden_seed_pool must be 0"):
            config.load(path)


def test_jobs_default_to_one_more_than_the_cores_as_memory_allows():
    from grader.config import default_jobs

    assert default_jobs("embedded", cores=2, memory_gb=24) == 3
    assert default_jobs("embedded", cores=16, memory_gb=24) == 9  # 2.5 GB per job on the embedded model
    assert default_jobs("gpt2-small", cores=16, memory_gb=24) == 4  # 6 GB per job on GPT-2 small
    assert default_jobs("embedded", cores=1, memory_gb=1) == 1  # always at least one
    assert Config(jobs=5).n_jobs == 5 and Config(jobs=0).n_jobs == default_jobs("embedded")


def test_a_new_gradebook_takes_the_head_revision_without_running_alembic(tmp_path, monkeypatch):
    """nbgrader stamps a new gradebook with the head of its migrations; the grader reads it in its own process."""
    import re
    import sqlite3

    import nbgrader
    from nbgrader.api import Gradebook

    from grader.course import alembic_head, gradebook_in_process

    versions = Path(nbgrader.__file__).parent / "alembic" / "versions"
    scripts = [f.read_text() for f in versions.glob("*.py")]
    found = {re.search(r"^revision = '(\w+)'", t, re.M).group(1): re.search(r"^down_revision = '?(\w+)'?", t, re.M).group(1) for t in scripts}
    (head,) = set(found) - set(found.values())  # the revision no other revision comes from
    assert alembic_head() == head
    monkeypatch.setenv("PATH", str(tmp_path))  # no alembic command to find: nbgrader's own way would fail
    gradebook_in_process()
    Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}").close()
    with sqlite3.connect(tmp_path / "gradebook.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
