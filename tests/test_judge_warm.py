"""The warm judge (``grader/zygote.py``): judges forked from one trusted parent keep the limits, the
environment and the isolation of a judge started from nothing, and a lost parent costs no grade."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from grader import autograde as ag
from grader import zygote
from grader.config import Config

GB = 1 << 30


@pytest.fixture
def bare(tmp_path):
    """A zygote that skips the imports (the forking, limits and reaping are the same)."""
    env = dict(ag.judge_env(), IOI_PROBE="given")
    z = zygote.Zygote(env, warm=False)
    yield z, env, tmp_path
    z.close()


def probe(z, env, tmp, *what, memory=3 * GB, timeout=60.0):
    facts, err = tmp / f"facts{time.monotonic_ns()}.json", tmp / "judge.log"
    rc = z.run([str(facts), *what], env, memory, err, timeout, entry="probe")
    return rc, (json.loads(facts.read_text()) if facts.exists() else None), err.read_text()


def test_a_forked_judge_has_the_judges_limits_and_the_environment_it_is_given(bare):
    z, env, tmp = bare
    rc, facts, out = probe(z, env, tmp)
    assert rc == 0 and "facts written" in out, out  # what the judge prints is kept, as a fresh process's was
    assert facts["memory_limit"] == 3 * GB and facts["core_limit"] == 0
    assert facts["hash_seed"] == "0" and facts["probe_env"] == "given" and facts["threads"] == 1
    assert facts["ppid"] == z.proc.pid and facts["pid"] != z.proc.pid, "a child of the zygote, not the zygote itself"
    rc2, again, _ = probe(z, dict(env, IOI_PROBE="other"), tmp)
    assert again["probe_env"] == "other" and again["pid"] != facts["pid"], "every submission its own process and environment"


def test_exit_status_memory_limit_and_a_hang_come_back_as_from_a_fresh_process(bare):
    z, env, tmp = bare
    assert probe(z, env, tmp, "exit", "3")[0] == 3
    rc, _, out = probe(z, env, tmp, "memory", memory=1 * GB)
    assert rc == 1 and "MemoryError" in out, "the judge's address-space limit holds in the child"
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        probe(z, env, tmp, "sleep", timeout=1.0)
    assert time.monotonic() - t0 < 20
    assert probe(z, env, tmp)[0] == 0, "the zygote goes on after a child was killed"


def test_a_lost_zygote_takes_its_children_with_it_and_says_so(bare):
    z, env, tmp = bare
    import threading

    outcome = {}

    def hang():
        try:
            probe(z, env, tmp, "sleep", timeout=60.0)
        except Exception as e:  # noqa: BLE001
            outcome["error"] = e

    t = threading.Thread(target=hang)
    t.start()
    deadline = time.monotonic() + 30
    while not list(tmp.glob("facts*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (facts,) = [json.loads(p.read_text()) for p in tmp.glob("facts*.json")]
    z.proc.kill()
    t.join(30)
    assert isinstance(outcome.get("error"), zygote.ZygoteGone), outcome
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{facts['pid']}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{facts['pid']}") or "Z" in open(f"/proc/{facts['pid']}/stat").read().split()[2], \
        "the forked judge died with the zygote"
    with pytest.raises(zygote.ZygoteGone):
        probe(z, env, tmp)


def test_without_a_zygote_the_judge_runs_as_a_fresh_process(tmp_path, monkeypatch):
    class Gone:
        def run(self, *a, **k):
            raise zygote.ZygoteGone("lost")

    monkeypatch.setattr(zygote, "zygote_for", lambda env: Gone())
    cmd = [sys.executable, "-c", "import os, sys; print(os.environ['PYTHONHASHSEED']); sys.exit(4)"]
    assert ag._run_judge(Config(), cmd, ag.judge_env(), tmp_path / "log") == 4
    assert (tmp_path / "log").read_text().strip() == "0"
    monkeypatch.setenv(zygote.WARM_ENV, "off")
    monkeypatch.setattr(zygote, "zygote_for", lambda env: pytest.fail("the warm judge is off"))
    assert ag._run_judge(Config(), cmd, ag.judge_env(), tmp_path / "log") == 4


def test_the_judges_environment_does_not_depend_on_nbgraders_step_running_beside_it():
    """A batch records (nbgrader's autograde, in this process) while its threads start judges: nbgrader's markers of
    its own step are not the judges' (else they would change a judge's environment and warm judge by chance)."""
    from nbgrader.utils import setenv

    before = ag.judge_env()
    with setenv(NBGRADER_EXECUTION="autograde", NBGRADER_VALIDATING="1"):
        during = ag.judge_env()
    assert during == before and zygote._key(during) == zygote._key(before)


def test_one_zygote_per_environment_a_few_at_most(monkeypatch):
    made = []

    class Fake:
        busy, alive = False, True

        def __init__(self, env):
            made.append(self)
            self.imported = []

        def preload(self, statements):
            self.imported += [s for s in statements if s not in self.imported]

        def close(self):
            self.alive = False

    monkeypatch.setattr(zygote, "Zygote", Fake)
    monkeypatch.setattr(zygote, "_zygotes", {})
    monkeypatch.setattr(zygote, "_imports", {})
    env = ag.judge_env()
    a = zygote.zygote_for(dict(env, IOI_GRADER_REFERENCE_CACHE="/one"))
    assert zygote.zygote_for(dict(env, IOI_GRADER_REFERENCE_CACHE="/two")) is a, "read when a judge runs: one zygote"
    assert zygote.zygote_for(dict(env, IOI_ANOMALIES_MODEL="gpt2-small", IOI_ANOMALIES_CACHE="/c")) is a, "so are the package's"
    without = {k: v for k, v in env.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    assert zygote.zygote_for(without) is zygote.zygote_for(dict(without, TORCHINDUCTOR_CACHE_DIR="/tmp/torchinductor_x")) is a, \
        "and what torch sets in os.environ the first time this process loads a model"
    b = zygote.zygote_for(dict(env, HF_HOME="/elsewhere"), ["import json"])  # read at import: another zygote
    assert b is not a and a.alive and b.imported == ["import json"] and a.imported == []
    c = zygote.zygote_for(dict(env, HF_HOME="/third"))
    assert not a.alive and b.alive and c.alive and len(zygote._zygotes) == zygote.MAX_ZYGOTES
    b.alive = False  # lost: replaced, with the imports asked of it
    again = zygote.zygote_for(dict(env, HF_HOME="/elsewhere"), ["import csv"])
    assert again is not b and again.imported == ["import json", "import csv"]


def test_the_warm_zygote_forks_from_one_thread_with_the_judges_modules_loaded(tmp_path, series_judge):
    """This process's warm judge for the series (the one grading uses): the real preload (the grader, torch, the
    protocol) and what the series' judges import (TransformerLens, the package, the references), asked for before
    its next judge: that judge already has it all."""
    env = ag.judge_env()
    cfg = Config()
    z = zygote.zygote_for(env, zygote.judge_imports(ag.source_for(cfg, a) for a in ag.graded_assignments(cfg)))
    rc, facts, out = probe(z, env, tmp_path, timeout=300.0)
    assert rc == 0, out
    assert facts["threads"] == 1, "nothing but the main thread when a judge is forked"
    assert set(facts["preloaded"]) == set(zygote.PRELOAD)
    wanted = {"transformer_lens", "ioi_anomalies.models", "circuitsvis", "grader.references.nb01", "grader.references.nb02",
              "grader.references.nb03"}
    assert wanted <= set(facts["modules"]), wanted - set(facts["modules"])


def test_a_zygote_runs_the_imports_it_is_asked_for_before_its_next_judge(bare):
    z, env, tmp = bare
    assert "xml.dom.minidom" not in probe(z, env, tmp)[1]["modules"]
    z.preload(["import xml.dom.minidom", "import a_module_that_does_not_exist", "from wave import open as _open"])
    rc, facts, _ = probe(z, env, tmp)
    assert rc == 0 and {"xml.dom.minidom", "wave"} <= set(facts["modules"]), "a failed import leaves the others done"


def test_a_judge_imports_what_its_locked_cells_and_tests_import_not_the_answers(tmp_path):
    from grader.intake import Source
    from test_grader import source_notebook

    import nbformat

    nb = source_notebook()
    nb.cells[2].source = "import json\n" + nb.cells[2].source  # an answer cell: the student's process imports it
    nbformat.write(nb, tmp_path / "toy.ipynb")
    assert zygote.judge_imports([Source.load(tmp_path / "toy.ipynb")]) == [
        "import torch", "from ioi_anomalies.checks import check_close", "from grader.hidden import generator"]


def test_nbgraders_one_submission_at_a_time_still_warms_the_judge_with_its_assignments_imports(tmp_path, monkeypatch):
    """`nbgrader autograde` with the project's preprocessor asks for each verdict alone (``verdict``), not for a batch."""
    from grader.results import Status, SubmissionResult
    from test_grader import A, make_course, submit, variant

    cfg = make_course(tmp_path)
    submit(cfg, "s", variant(), "toy.ipynb")
    asked = []
    monkeypatch.setenv(zygote.WARM_ENV, "on")
    monkeypatch.setattr(zygote, "zygote_for", lambda env, imports=(): asked.append(list(imports)))
    monkeypatch.setattr(ag, "run_child", lambda cfg, s, a: SubmissionResult(student=s, assignment=a, status=Status.GRADED))
    assert ag.verdict(cfg, "s", A).status == Status.GRADED
    assert asked and "from ioi_anomalies.checks import check_close" in asked[0]


def test_a_warm_sandbox_imports_only_what_the_released_set_up_cells_import(tmp_path):
    """What the sandbox's zygote imports for its workers: never a hidden test's import (``grader.hidden`` here)."""
    from grader.intake import Source
    from test_grader import source_notebook

    import nbformat

    nbformat.write(source_notebook(), tmp_path / "toy.ipynb")
    assert zygote.judge_imports([Source.load(tmp_path / "toy.ipynb")], kinds=("setup",)) == [
        "import torch", "from ioi_anomalies.checks import check_close"]


def test_the_warm_sandbox_zygote_refuses_to_run_outside_its_own_sandbox(tmp_path):
    """Between workers it kills every process it may (``kill(-1)``): started anywhere but as the first process of a
    sandbox's PID namespace, it says so and exits before it imports or forks anything."""
    import socket
    import subprocess
    import sys

    from grader.config import ROOT
    from grader.worker import _recv_msg, _send_msg

    ours, theirs = socket.socketpair()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host_ns = str(os.stat("/proc/self/ns/pid").st_ino)
        proc = subprocess.Popen([sys.executable, str(ROOT / "grader" / "worker.py"), "--zygote", str(theirs.fileno()), host_ns],
                                pass_fds=(theirs.fileno(),))
        theirs.close()
        _send_msg(ours, {"imports": []})
        msg, _ = _recv_msg(ours)
        assert proc.wait(timeout=30) == 0
        assert "retired" in msg and "first process" in msg["retired"], msg
        assert bystander.poll() is None, "nothing else was touched"
    finally:
        bystander.kill()
        ours.close()


def test_configurations_that_start_alike_sandboxes_share_a_warm_one():
    """6 GB written as 6 (grader_config.toml) or 6.0 (the default) is one sandbox; another disk size or environment is not."""
    from grader.sandbox import warm_key

    assert warm_key(Config(memory_gb=6, disk_mb=1024)) == warm_key(Config(memory_gb=6.0, disk_mb=1024.0))
    assert warm_key(Config(wall_time_s=5, jobs=3, judge_memory_gb=2)) == warm_key(Config())
    assert warm_key(Config(disk_mb=64)) != warm_key(Config())
    assert warm_key(Config(extra_env={"A": "1"})) != warm_key(Config())
    assert warm_key(Config(model="gpt2-small")) != warm_key(Config())
