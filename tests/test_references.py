"""The hidden tests' references live with the grader, never in the package students import.

- no hidden test in any solution notebook takes anything from ``ioi_anomalies`` but plumbing
  (data, models, metrics, caching, circuit look-up, checks);
- nothing ``grader.references`` defines is importable from ``ioi_anomalies``, by name or as the
  same code;
- notebook 01's solution writes path patching itself (no package path-patching call);
- the head-type score windows (references, package, solution) equal explicit loops over the
  reference's (destination, source) pairs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import types

import nbformat
import pytest
import torch

import grader.references
import ioi_anomalies
from grader.course import ROOT
from grader.intake import HIDDEN
from ioi_anomalies.hooks import act_name

ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())

#: What a hidden test may take from the package: inputs and measuring tools, never an answer.
PLUMBING = {
    "ABC_FLIP", "FLIP_GRID", "NAMES", "IOIDataset",  # prompts
    "load_model", "random_model", "model_label", "EMBEDDED_MODEL", "GPT2_SMALL",  # models
    "get_circuit", "get_named_heads", "GPT2_SMALL_CIRCUIT", "SEQ_POS_TO_KEEP",  # which head is which
    "logit_diff", "make_ioi_metric", "make_logit_diff_metric", "EndLogitMetric", "baseline_logit_diffs",  # metrics
    "run_and_cache", "assert_no_hooks", "count_user_hooks", "hook_snapshot",  # caching and hook hygiene
    "generate_repeated_tokens", "mean_z_by_template",  # inputs: repeated tokens, mean activations
    "head_dla",  # notebook 02 gives students direct logit attribution as a tool in its set-up cell
    "check_close", "check_heads", "CheckFailed",  # comparisons
    "imshow", "line", "scatter",  # plots
}


def _cells(assignment):
    return nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4).cells


def _package_imports(tree: ast.AST) -> dict[str, str]:
    """Names bound by ``from ioi_anomalies[...] import x`` (and modules by ``import ioi_anomalies``)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ioi_anomalies":
            for a in node.names:
                out[a.asname or a.name] = a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ioi_anomalies":
                    out[(a.asname or a.name).split(".")[0]] = a.name
    return out


def _used(tree: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # ioi_anomalies.x, module.x
    return names | attrs


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_hidden_tests_take_only_plumbing_from_the_package(assignment):
    cells = _cells(assignment)
    given = {}  # what the notebook's locked cells import from the package
    for c in cells:
        meta = c.metadata.get("nbgrader", {})
        if c.cell_type == "code" and meta.get("locked") and not meta.get("grade"):
            given.update(_package_imports(ast.parse(c.source)))
    bad = {}
    for c in cells:
        for m in HIDDEN.finditer(c.source if c.cell_type == "code" else ""):
            block = "\n".join(line for line in m.group(0).splitlines() if "### " not in line)
            tree = ast.parse(inspect.cleandoc("\n" + block) if block.startswith((" ", "\t")) else block)
            imported = _package_imports(tree)
            for alias, name in imported.items():
                if name.split(".")[-1] not in PLUMBING and not name.startswith("ioi_anomalies"):
                    bad.setdefault(c.metadata["nbgrader"]["grade_id"], set()).add(name)
                elif name.startswith("ioi_anomalies"):  # a module: check what is used from it
                    bad.setdefault(c.metadata["nbgrader"]["grade_id"], set()).add(f"import {name}")
            for n in _used(tree) & set(given):
                if given[n] not in PLUMBING:
                    bad.setdefault(c.metadata["nbgrader"]["grade_id"], set()).add(given[n])
    assert not bad, f"hidden tests use package functions as references (move them to grader/references/): {bad}"


def _defined(module) -> dict[str, object]:
    return {n: o for n, o in vars(module).items()
            if isinstance(o, (types.FunctionType, type)) and getattr(o, "__module__", None) == module.__name__}


def _code_key(fn) -> tuple:
    c = fn.__code__
    return (c.co_code, tuple(x for x in c.co_consts if not isinstance(x, types.CodeType)), c.co_names)


def _functions(obj):
    """The plain functions behind ``obj`` (decorators such as ``torch.inference_mode`` unwrapped)."""
    found = [obj] if isinstance(obj, types.FunctionType) else []
    if isinstance(obj, type):
        for v in vars(obj).values():
            found.append(v.__func__ if isinstance(v, (staticmethod, classmethod)) else v)
    for f in found:
        if isinstance(f, types.FunctionType):
            f = inspect.unwrap(f)
            if isinstance(f, types.FunctionType):
                yield f


def _package_modules():
    yield ioi_anomalies
    for info in pkgutil.walk_packages(ioi_anomalies.__path__, "ioi_anomalies."):
        if info.name.endswith(".train_embedded"):
            continue  # a command-line tool, not an importable answer (it moves to tools/); it imports no reference either
        yield importlib.import_module(info.name)


def test_nothing_the_references_define_is_importable_from_the_package():
    refs = {}
    for info in pkgutil.iter_modules(grader.references.__path__, "grader.references."):
        refs.update({f"{info.name}.{n}": o for n, o in _defined(importlib.import_module(info.name)).items()})
    assert refs, "grader/references defines the hidden tests' references"
    by_name = {k.rsplit(".", 1)[1]: k for k in refs}
    codes = {_code_key(f): k for k, o in refs.items() for f in _functions(o) if len(f.__code__.co_code) > 8}
    clashes = []
    for mod in _package_modules():
        for name in set(dir(mod)):
            if name.startswith("__"):
                continue
            if name in by_name and not name.startswith("_") and not isinstance(getattr(mod, name, None), types.ModuleType):
                clashes.append(f"{mod.__name__}.{name} (name of {by_name[name]})")
            obj = getattr(mod, name, None)
            for f in _functions(obj):
                if _code_key(f) in codes:
                    clashes.append(f"{mod.__name__}.{name} (same code as {codes[_code_key(f)]})")
    assert not clashes, clashes


def test_the_code_check_would_see_a_copied_reference():
    from grader.references import nb01

    copy = types.FunctionType(nb01.window_score.__code__, {}, "renamed")
    assert _code_key(copy) == _code_key(nb01.window_score)
    assert _code_key(nb01.previous_token_score) != _code_key(nb01.window_score)


# Command-line entry points students run; every other script (benchmarks, demo, report, training) lives in tools/.
STUDENT_COMMANDS = {"validate"}
MOVING_TO_TOOLS = {"train_embedded"}


def test_the_package_holds_no_command_line_tool_students_do_not_use():
    scripts = sorted(p.stem for p in (ROOT / "ioi_anomalies").rglob("*.py") if "__main__" in p.read_text() and p.stem != "__init__")
    assert set(scripts) - MOVING_TO_TOOLS == STUDENT_COMMANDS, f"move {sorted(set(scripts) - STUDENT_COMMANDS - MOVING_TO_TOOLS)} to tools/"
    assert (ROOT / "tools" / "bench.py").exists() and not (ROOT / "ioi_anomalies" / "bench.py").exists()


PATH_PATCHING_API = {"path_patch_heads_to_heads", "path_patch_senders", "PathPatchingEngine", "attribution_path_patching",
                     "z_patch_hooks", "patch_heads_z"}


def test_notebook01_solution_writes_path_patching_itself():
    answers = [c.source for c in _cells("01_early_induction_heads")
               if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]
    used = set().union(*(_used(ast.parse(s)) for s in answers))
    assert not used & PATH_PATCHING_API, used & PATH_PATCHING_API
    path_patch = next(s for s in answers if "def path_patch(" in s)
    assert "model.hooks(" in path_patch and "hook_z" in path_patch, "the solution patches with hooks"
    # the package's engine only appears after the student has written path patching and the sweep, never in setup
    setup = next(c.source for c in _cells("01_early_induction_heads") if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
    assert not _used(ast.parse(setup)) & PATH_PATCHING_API


# ------------------------------------------------------------------------------ score windows
def _loop_windows(pattern: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """The reference's windows as explicit (destination, source) loops."""
    pairs = {
        "previous": [(d, d - 1) for d in range(1, seq_len + 1)],
        "duplicate": [(d, d - seq_len) for d in range(seq_len, 2 * seq_len)],
        "induction": [(d, d - seq_len + 1) for d in range(seq_len, 2 * seq_len)],
    }
    out = {}
    for kind, ps in pairs.items():
        assert len(ps) == seq_len
        total = torch.zeros(pattern.shape[1], dtype=torch.float64)
        for b in range(pattern.shape[0]):
            for d, s in ps:
                total += pattern[b, :, d, s].double()
        out[kind] = total / (pattern.shape[0] * len(ps))
    return out


def _solution_scores():
    src = next(c.source for c in _cells("01_early_induction_heads") if c.metadata.get("nbgrader", {}).get("grade_id") == "head_scores")
    ns = {"torch": torch}
    exec(src, ns)
    return {"previous": ns["previous_token_score"], "duplicate": ns["duplicate_token_score"], "induction": ns["induction_score"]}


@pytest.mark.parametrize("seq_len,batch,heads", [(4, 2, 3), (7, 3, 5), (12, 1, 2)])
def test_score_windows_equal_explicit_loops(seq_len, batch, heads):
    from grader.references import nb01

    g = torch.Generator().manual_seed(seq_len)
    pattern = nb01.random_patterns(g, batch, heads, seq_len)
    expected = _loop_windows(pattern, seq_len)
    solution = _solution_scores()
    for kind in nb01.WINDOWS:
        torch.testing.assert_close(nb01.window_score(pattern, seq_len, kind).double(), expected[kind], atol=1e-6, rtol=0)
        torch.testing.assert_close(solution[kind](pattern, seq_len).double(), expected[kind], atol=1e-6, rtol=0)
    # the whole diagonals are not the windows (one pair more for induction, seq_len - 1 more for previous)
    assert not torch.allclose(pattern.diagonal(-(seq_len - 1), dim1=-2, dim2=-1).mean((0, -1)).double(), expected["induction"], atol=1e-6)
    assert not torch.allclose(pattern.diagonal(-1, dim1=-2, dim2=-1).mean((0, -1)).double(), expected["previous"], atol=1e-6)


def test_package_head_type_scores_use_the_same_windows(model):
    from ioi_anomalies import generate_repeated_tokens, head_type_scores

    toks = generate_repeated_tokens(model.cfg.d_vocab, seq_len=6, batch=3, seed=2)
    scores = head_type_scores(model, toks)
    _, cache = model.run_with_cache(toks)
    for l in range(model.cfg.n_layers):
        expected = _loop_windows(cache[act_name("pattern", l)], 6)
        for kind in ("previous", "duplicate", "induction"):
            torch.testing.assert_close(scores[kind][l].double(), expected[kind], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ the hidden tests' exact references
def test_the_engine_references_equal_the_plain_path_patching(model, ioi, abc):
    """exact / each_sender / multi_sender_effects (the engine, one batch) agree with the plain hooks."""
    from grader.references import nb01
    from ioi_anomalies import make_logit_diff_metric

    metric = make_logit_diff_metric(ioi)
    receivers = [(2, 1), (1, 3)]
    sets = [[], [(0, 2)], [(1, 0)], [(0, 1), (1, 2)], [(2, 0)]]
    for inp in "qkv":
        got = nb01.exact(model, sets, receivers, inp, metric, ioi, abc)
        plain = [nb01.path_patch(model, s, receivers, inp, metric, ioi, abc) for s in sets]
        assert got == pytest.approx(plain, abs=1e-4), inp
        assert len(set(round(x, 5) for x in plain)) > 2, "the cases move the metric"
    each = nb01.each_sender(model, [(1, 0), (0, 2)], receivers, "v", metric, ioi, abc)
    assert each.tolist() == pytest.approx([nb01.path_patch(model, [s], receivers, "v", metric, ioi, abc) for s in [(1, 0), (0, 2)]], abs=1e-4)
    multi = nb01.multi_sender_effects(model, [(0, 1), (1, 2)], receivers, metric, ioi, abc)
    assert set(multi) == {(0, 1), (1, 2), "together"}
    assert multi["together"] == pytest.approx(nb01.path_patch(model, [(0, 1), (1, 2)], receivers, "k", metric, ioi, abc), abs=1e-4)
    assert multi[(1, 2)] == pytest.approx(nb01.path_patch(model, [(1, 2)], receivers, "k", metric, ioi, abc), abs=1e-4)


def test_a_sweep_case_draws_three_senders_in_an_unsorted_order(model):
    from grader.references import nb01

    for label in ("a", "b", "c", "d"):
        senders, receivers, *_ = nb01.sweep_case(model, label, "k")
        assert len(set(senders)) == 3 and senders != sorted(senders)
        assert sum(l == model.cfg.n_layers - 1 for l, _ in senders) >= 1, "one sender reaches no receiver"
