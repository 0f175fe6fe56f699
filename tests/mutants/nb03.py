"""Plausible wrong answers for 03_positional_vs_token_signal, and the graded tests each must fail."""

from tests.mutation import Mutant, edit, solution_source

A = "03_positional_vs_token_signal"


def datasets(*pairs):
    return edit(A, "datasets", *pairs)


def patching(*pairs):
    """A wrong hook or grid, with the solution's per-head grid defined again so that it calls it."""
    return {**edit(A, "patch_grid", *pairs), "per_head": solution_source(A, "per_head")}


def per_head(*pairs):
    return edit(A, "per_head", *pairs)


def coefficients(*pairs):
    return edit(A, "coefficients", *pairs)


T_DS, T_CL, T_HOOK, T_GRID, T_HEAD, T_COEF = (
    "test_grid_datasets", "test_classify_signals", "test_patch_z_hook", "test_patch_grid", "test_per_head_grid", "test_coefficients")
BUILD = "return {cell: dataset if flip is None else dataset.gen_flipped_prompts(flip) for cell, flip in FLIP_GRID.items()}"
COL = 'col = 0 if (s2 == flipped.toks[rows, w["S1"]]).all() else 1'
SET = "z[:, :, heads] = new_z[:, :, heads]"
STACK = "return torch.stack([patch_grid(model, orig, datasets, [h]) for h in heads])"
FIT = "return coef[1].item(), coef[2].item()"

MUTANTS = [
    # ---- the six datasets
    Mutant("datasets: the original prompts in every cell", datasets((BUILD, "return {cell: dataset for cell in FLIP_GRID}")), [T_DS]),
    Mutant("datasets: row and column swapped for (1, 0) and (0, 1)",
           datasets((BUILD, "return {(r, c): dataset if FLIP_GRID[{(1, 0): (0, 1), (0, 1): (1, 0)}.get((r, c), (r, c))] is None else dataset.gen_flipped_prompts(FLIP_GRID[{(1, 0): (0, 1), (0, 1): (1, 0)}.get((r, c), (r, c))]) for r, c in FLIP_GRID}")),
           [T_DS]),
    Mutant("datasets: hard-coded from the notebook's prompts", datasets((BUILD, "return {cell: ioi if flip is None else ioi.gen_flipped_prompts(flip) for cell, flip in FLIP_GRID.items()}")), [T_DS]),
    # ---- classifying a flip
    Mutant("classify: columns swapped", datasets((COL, 'col = 1 if (s2 == flipped.toks[rows, w["S1"]]).all() else 0')), [T_CL]),
    Mutant("classify: rows 0 and 2 swapped", datasets(("        row = 0\n", "        row = 2\n"), ("        row = 2\n    else", "        row = 0\n    else")), [T_CL]),
    Mutant("classify: S1 of the original prompts", datasets((COL, 'col = 0 if (s2 == orig.toks[rows, w["S1"]]).all() else 1')), [T_CL]),
    Mutant("classify: always the original cell", datasets(("    return row, col", "    return 0, 0")), [T_CL]),
    # ---- the z-patching hook
    Mutant("hook: every head patched", patching((SET, "z[:] = new_z")), [T_HOOK, T_GRID, T_HEAD]),
    Mutant("hook: the other heads patched", patching((SET, "others = [i for i in range(z.shape[2]) if i not in heads]\n        z[:, :, others] = new_z[:, :, others]")), [T_HOOK, T_GRID, T_HEAD]),
    Mutant("hook: heads indexed on the position axis (transpose)", patching((SET, "z[:, heads] = new_z[:, heads]")), [T_HOOK, T_GRID, T_HEAD]),
    Mutant("hook: only the last position", patching((SET, "z[:, -1, heads] = new_z[:, -1, heads]")), [T_HOOK, T_GRID, T_HEAD]),
    Mutant("hook: zeros instead of the other run", patching((SET, "z[:, :, heads] = 0.0")), [T_HOOK, T_GRID, T_HEAD]),
    # ---- the grid
    Mutant("grid: scored on the flipped prompts' names", patching(("out[row, col] = logit_diff(model(orig.toks), orig)", "out[row, col] = logit_diff(model(orig.toks), ds)")), [T_GRID, T_HEAD]),
    Mutant("grid: cache of the original prompts", patching(("_, cache = run_and_cache(model, ds.toks,", "_, cache = run_and_cache(model, orig.toks,")), [T_GRID, T_HEAD]),
    Mutant("grid: only the last head of each layer", patching(("by_layer.setdefault(l, []).append(h)", "by_layer[l] = [h]")), [T_GRID]),
    Mutant("grid: the flipped prompts run, the original z patched in", patching(("with model.hooks(fwd_hooks=hooks):\n            out[row, col] = logit_diff(model(orig.toks), orig)", "with model.hooks(fwd_hooks=hooks):\n            out[row, col] = logit_diff(model(ds.toks), orig)")), [T_GRID, T_HEAD]),
    Mutant("grid: the transpose (token along columns)", patching(("    return out\n", "    return out.T.reshape(3, 2)\n")), [T_GRID, T_HEAD]),
    # ---- one head at a time
    Mutant("per head: all heads together for every head", per_head((STACK, "return torch.stack([patch_grid(model, orig, datasets, heads) for h in heads])")), [T_HEAD]),
    Mutant("per head: relative change instead of the logit difference", per_head((STACK, "clean = logit_diff(model(orig.toks), orig)\n    return torch.stack([(patch_grid(model, orig, datasets, [h]) - clean) / clean for h in heads])")), [T_HEAD]),
    Mutant("per head: the first head every time", per_head((STACK, "return torch.stack([patch_grid(model, orig, datasets, heads[:1]) for h in heads])")), [T_HEAD]),
    Mutant("per head: stacked on the wrong axis", per_head((STACK, "return torch.stack([patch_grid(model, orig, datasets, [h]) for h in heads], dim=-1)")), [T_HEAD]),
    # ---- coefficients
    Mutant("coefficients: codes of +-1 (half swings)", coefficients(("token = torch.tensor([0.5, 0.0, -0.5])", "token = torch.tensor([1.0, 0.0, -1.0])"), ("position = torch.tensor([0.5, -0.5])", "position = torch.tensor([1.0, -1.0])")), [T_COEF]),
    Mutant("coefficients: (p, t) swapped", coefficients((FIT, "return coef[2].item(), coef[1].item()")), [T_COEF]),
    Mutant("coefficients: token codes reversed", coefficients(("token = torch.tensor([0.5, 0.0, -0.5])", "token = torch.tensor([-0.5, 0.0, 0.5])")), [T_COEF]),
    Mutant("coefficients: random and inverted rows swapped", coefficients(("token = torch.tensor([0.5, 0.0, -0.5])", "token = torch.tensor([0.5, -0.5, 0.0])")), [T_COEF]),
    Mutant("coefficients: token codes laid out along columns (transpose)", coefficients(("token.repeat_interleave(2), position.repeat(3)", "token.repeat(2), position.repeat_interleave(3)")), [T_COEF]),
    Mutant("coefficients: the row-to-row difference (the source's 0.75)", coefficients((FIT, "return (grid[0] - grid[1]).mean().item(), (grid[:, 0] - grid[:, 1]).mean().item()")), [T_COEF]),
    Mutant("coefficients: hard-coded from the visible test", coefficients((FIT, "return 2.0, 4.0")), [T_COEF]),
]
