"""Plausible wrong answers for 01_early_induction_heads, and the graded tests each must fail."""

from tests.mutation import Mutant, edit

A = "01_early_induction_heads"
PREV = "return block.diagonal(dim1=-2, dim2=-1).mean(dim=(0, -1))\n    ### END SOLUTION\n\n\ndef duplicate"
PREV_BLOCK = "block = pattern[:, :, 1 : seq_len + 1, :seq_len]"
DUP_BLOCK = "block = pattern[:, :, seq_len : 2 * seq_len, :seq_len]"
IND_BLOCK = "block = pattern[:, :, seq_len : 2 * seq_len, 1 : seq_len + 1]"
REDUCE = "return block.diagonal(dim1=-2, dim2=-1).mean(dim=(0, -1))"


def scores(*pairs):
    return edit(A, "head_scores", *pairs)


def one_score(block: str, new_line: str):
    """Replace one function's body (identified by its block line) with ``new_line``."""
    return scores((f"{block}\n    {REDUCE}", new_line))


def patch(*pairs):
    return edit(A, "path_patching", *pairs)


def sweep(*pairs):
    return edit(A, "sweep", *pairs)


T_PREV, T_DUP, T_IND = "test_previous_token_score", "test_duplicate_token_score", "test_induction_score"
T_PP, T_IN, T_SW, T_ST = "test_path_patching", "test_receiver_input", "test_sweep_senders", "test_strongest_senders"
T_ATT, T_MS, T_DR = "test_attention_s2_s1p1", "test_multi_sender", "test_attention_drops"

MUTANTS = [
    # ---- head-type scores
    Mutant("scores: zeros of the right shape", scores(*[(f"{b}\n    {REDUCE}", "return torch.zeros(pattern.shape[1])") for b in (PREV_BLOCK, DUP_BLOCK, IND_BLOCK)]),
           [T_PREV, T_DUP, T_IND]),
    Mutant("scores: hard-coded from the visible test", scores(*[(f"{b}\n    {REDUCE}", "return torch.ones(3)") for b in (PREV_BLOCK, DUP_BLOCK, IND_BLOCK)]),
           [T_PREV, T_DUP, T_IND]),
    Mutant("previous: the whole sub-diagonal", one_score(PREV_BLOCK, "return pattern.diagonal(-1, dim1=-2, dim2=-1).mean(dim=(0, -1))"), [T_PREV]),
    Mutant("previous: window one short", one_score(PREV_BLOCK, f"block = pattern[:, :, 1 : seq_len, : seq_len - 1]\n    {REDUCE}"), [T_PREV]),
    Mutant("previous: window one late", one_score(PREV_BLOCK, f"block = pattern[:, :, 2 : seq_len + 2, 1 : seq_len + 1]\n    {REDUCE}"), [T_PREV]),
    Mutant("previous: self-attention (offset 0)", one_score(PREV_BLOCK, f"block = pattern[:, :, :seq_len, :seq_len]\n    {REDUCE}"), [T_PREV]),
    Mutant("previous: transposed (key -> query)", one_score(PREV_BLOCK, f"block = pattern.transpose(-1, -2)[:, :, 1 : seq_len + 1, :seq_len]\n    {REDUCE}"), [T_PREV]),
    Mutant("previous: mean over heads, not batch", one_score(PREV_BLOCK, f"{PREV_BLOCK}\n    return block.diagonal(dim1=-2, dim2=-1).mean(dim=(1, -1))"), [T_PREV]),
    Mutant("previous: sum, not mean", one_score(PREV_BLOCK, f"{PREV_BLOCK}\n    return block.diagonal(dim1=-2, dim2=-1).sum(dim=(0, -1))"), [T_PREV]),
    Mutant("duplicate: offset seq_len - 1", one_score(DUP_BLOCK, f"block = pattern[:, :, seq_len : 2 * seq_len, 1 : seq_len + 1]\n    {REDUCE}"), [T_DUP]),
    Mutant("duplicate: offset seq_len + 1", one_score(DUP_BLOCK, f"block = pattern[:, :, seq_len + 1 : 2 * seq_len, : seq_len - 1]\n    {REDUCE}"), [T_DUP]),
    Mutant("duplicate: mean over heads, not batch", one_score(DUP_BLOCK, f"{DUP_BLOCK}\n    return block.diagonal(dim1=-2, dim2=-1).mean(dim=(1, -1))"), [T_DUP]),
    Mutant("duplicate: transposed", one_score(DUP_BLOCK, f"block = pattern.transpose(-1, -2)[:, :, seq_len : 2 * seq_len, :seq_len]\n    {REDUCE}"), [T_DUP]),
    Mutant("duplicate: first half as destinations", one_score(DUP_BLOCK, f"block = pattern[:, :, :seq_len, :seq_len]\n    {REDUCE}"), [T_DUP]),
    Mutant("induction: the whole diagonal (one pair too many)", one_score(IND_BLOCK, "return pattern.diagonal(-(seq_len - 1), dim1=-2, dim2=-1).mean(dim=(0, -1))"), [T_IND]),
    Mutant("induction: the duplicate offset", one_score(IND_BLOCK, f"{DUP_BLOCK}\n    {REDUCE}"), [T_IND]),
    Mutant("induction: offset seq_len - 2", one_score(IND_BLOCK, f"block = pattern[:, :, seq_len : 2 * seq_len - 1, 2 : seq_len + 1]\n    {REDUCE}"), [T_IND]),
    Mutant("induction: transposed", one_score(IND_BLOCK, f"block = pattern.transpose(-1, -2)[:, :, seq_len : 2 * seq_len, 1 : seq_len + 1]\n    {REDUCE}"), [T_IND]),
    Mutant("induction: mean over heads, not batch", one_score(IND_BLOCK, f"{IND_BLOCK}\n    return block.diagonal(dim1=-2, dim2=-1).mean(dim=(1, -1))"), [T_IND]),
    Mutant("induction: max, not mean, over the window", one_score(IND_BLOCK, f"{IND_BLOCK}\n    return block.diagonal(dim1=-2, dim2=-1).amax(-1).mean(0)"), [T_IND]),
    # ---- path patching
    Mutant("path_patch: zero", {"path_patching": "def path_patch(model, senders, receivers, receiver_input, metric, orig, new):\n    return 0.0"}, [T_PP]),
    Mutant("path_patch: the clean metric, nothing patched", patch(("with model.hooks(fwd_hooks=[(n, receive) for n in recv_names]):", "with model.hooks(fwd_hooks=[]):")), [T_PP]),
    Mutant("path_patch: always the keys (wrong receiver input)", patch(('f"blocks.{l}.attn.hook_{receiver_input}"', 'f"blocks.{l}.attn.hook_k"')), [T_PP]),
    Mutant("path_patch: always the queries", patch(('f"blocks.{l}.attn.hook_{receiver_input}"', 'f"blocks.{l}.attn.hook_q"')), [T_PP]),
    Mutant("path_patch: other heads not frozen (activation patching)", patch(("out = clean_z[hook.name].clone()", "out = z.clone()")), [T_PP]),
    Mutant("path_patch: the senders frozen too", patch(("mine = [h for l, h in senders if l == layer]", "mine = []")), [T_PP]),
    Mutant("path_patch: only the first sender", patch(("mine = [h for l, h in senders if l == layer]", "mine = [h for l, h in senders[:1] if l == layer]")), [T_PP]),
    Mutant("path_patch: every head of the receivers' layer patched", patch(("x[:, :, heads] = patched[hook.name][:, :, heads]", "x[:] = patched[hook.name]")), [T_PP]),
    Mutant("path_patch: receivers' input from the corrupted run, no freezing",
           patch(("_, patched = run_and_cache(model, orig.toks, recv_names, fwd_hooks=[(n, freeze) for n in z_names], return_logits=False)",
                  "_, patched = run_and_cache(model, new.toks, recv_names, return_logits=False)")), [T_PP]),
    Mutant("path_patch: final run on the corrupted prompts", patch(("return float(metric(model(orig.toks)))", "return float(metric(model(new.toks)))")), [T_PP]),
    Mutant("path_patch: sign flipped", patch(("return float(metric(model(orig.toks)))", "return -float(metric(model(orig.toks)))")), [T_PP]),
    Mutant("path_patch: clean and corrupted swapped", patch(("out = clean_z[hook.name].clone()", "out = new_z[hook.name].clone()"),
                                                           ("out[:, :, mine] = new_z[hook.name][:, :, mine]", "out[:, :, mine] = clean_z[hook.name][:, :, mine]")), [T_PP]),
    Mutant("receiver input: queries", {"receiver_input": 'PREVIOUS_TOKEN_INPUT = "q"'}, [T_IN]),
    Mutant("receiver input: values", {"receiver_input": 'PREVIOUS_TOKEN_INPUT = "v"'}, [T_IN]),
    # ---- the sweep and the strongest senders
    Mutant("sweep: zeros of the right shape", sweep(("results[i] = path_patch(model, [sender], receivers, receiver_input, metric, orig, new)", "pass")), [T_SW]),
    Mutant("sweep: always into the keys", sweep(("[sender], receivers, receiver_input,", '[sender], receivers, "k",')), [T_SW]),
    Mutant("sweep: all senders together in every entry", sweep(("path_patch(model, [sender],", "path_patch(model, list(senders),")), [T_SW]),
    Mutant("sweep: senders in reverse order", sweep(("enumerate(senders)", "enumerate(senders[::-1])")), [T_SW]),
    Mutant("sweep: senders sorted by layer and head", sweep(("enumerate(senders)", "enumerate(sorted(senders))")), [T_SW]),
    Mutant("sweep: only the senders below the receivers", sweep(("    results = torch.zeros(len(senders))\n",
                                                                 "    senders = [s for s in senders if s[0] < max(l for l, _ in receivers)]\n    results = torch.zeros(len(senders))\n")), [T_SW]),
    Mutant("sweep: the change, not the metric", sweep(("results[i] = path_patch(model, [sender], receivers, receiver_input, metric, orig, new)",
                                                        "results[i] = path_patch(model, [sender], receivers, receiver_input, metric, orig, new) - path_patch(model, [], receivers, receiver_input, metric, orig, new)")), [T_SW]),
    Mutant("strongest: most positive first", sweep(("order = results.flatten().argsort()[:k].tolist()", "order = results.flatten().argsort(descending=True)[:k].tolist()")), [T_ST]),
    Mutant("strongest: largest magnitude", sweep(("order = results.flatten().argsort()[:k].tolist()", "order = results.flatten().abs().argsort(descending=True)[:k].tolist()")), [T_ST]),
    Mutant("strongest: least negative first", sweep(("order = results.flatten().argsort()[:k].tolist()", "order = results.flatten().argsort()[:k].tolist()[::-1]")), [T_ST]),
    Mutant("strongest: unravelled by the number of layers", sweep(("n_heads = results.shape[1]", "n_heads = results.shape[0]")), [T_ST]),
    Mutant("strongest: hard-coded from the visible test", sweep(("    n_heads = results.shape[1]\n", "    return [(1, 2), (0, 1)]\n")), [T_ST]),
    # ---- fuzzy heads: attention S2 -> S1+1
    Mutant("attention: zeros", edit(A, "fuzzy", ("return torch.stack(", "return torch.zeros(len(heads))\n    torch.stack(")), [T_ATT]),
    Mutant("attention: S1 instead of S1+1", edit(A, "fuzzy", ('dataset.word_idx["S1+1"]', 'dataset.word_idx["S1"]')), [T_ATT]),
    Mutant("attention: from END instead of S2", edit(A, "fuzzy", ('s2, s1p1 = dataset.word_idx["S2"]', 's2, s1p1 = dataset.word_idx["end"]')), [T_ATT]),
    Mutant("attention: transposed (S1+1 -> S2)", edit(A, "fuzzy", ("[rows, h, s2, s1p1]", "[rows, h, s1p1, s2]")), [T_ATT]),
    Mutant("attention: every prompt's S2 with every prompt's S1+1", edit(A, "fuzzy", ("[rows, h, s2, s1p1]", "[:, h, s2][:, :, s1p1]")), [T_ATT]),
    Mutant("attention: one head's value for all", edit(A, "fuzzy", ('[rows, h, s2, s1p1].mean() for l, h in heads]', '[rows, heads[0][1], s2, s1p1].mean() for l, h in heads]'),
                                                       ('cache[f"blocks.{l}.attn.hook_pattern"][rows', 'cache[f"blocks.{heads[0][0]}.attn.hook_pattern"][rows')), [T_ATT]),
    # ---- two senders together
    Mutant("multi: together = sum of the single senders", edit(A, "multi_sender", ('out["together"] = path_patch(model, list(senders), receivers, "k", metric, orig, new)',
                                                                                 'out["together"] = sum(out.values())')), [T_MS]),
    Mutant("multi: into the queries", edit(A, "multi_sender", ('receivers, "k", metric', 'receivers, "q", metric')), [T_MS]),
    Mutant("multi: together = the first sender only", edit(A, "multi_sender", ("path_patch(model, list(senders),", "path_patch(model, list(senders)[:1],")), [T_MS]),
    Mutant("multi: no 'together' entry", edit(A, "multi_sender", ('out["together"] = ', "_ = ")), [T_MS]),
    Mutant("multi: zeros", edit(A, "multi_sender", ("    return out\n", "    return {k: 0.0 for k in out}\n")), [T_MS]),
    # ---- softmax arithmetic
    Mutant("drops: signs flipped", edit(A, "softmax", ("return p(s) - p(s - d1), p(s) - p(s - d2), p(s) - p(s - d1 - d2)", "return p(s - d1) - p(s), p(s - d2) - p(s), p(s - d1 - d2) - p(s)")), [T_DR]),
    Mutant("drops: together = the sum", edit(A, "softmax", ("p(s) - p(s - d1 - d2)", "2 * p(s) - p(s - d1) - p(s - d2)")), [T_DR]),
    Mutant("drops: exp instead of the softmax", edit(A, "softmax", ("p = lambda x: torch.softmax(torch.tensor([x, 0.0], dtype=torch.float64), 0)[0].item()", "p = lambda x: torch.tensor(x).exp().item()")), [T_DR]),
    Mutant("drops: hard-coded from the visible test", edit(A, "softmax", ("return p(s) - p(s - d1)", "return 0.1, 0.1, 0.5\n    return p(s) - p(s - d1)")), [T_DR]),
]
