"""Plausible wrong answers for 02_backup_name_movers, and the graded tests each must fail."""

from tests.mutation import Mutant, edit, solution_source

A = "02_backup_name_movers"


def top(*pairs):
    return edit(A, "top_head", *pairs)


def hook(*pairs):
    """A wrong hook, with the solution's ablation_effect defined again so that it calls it."""
    return {**edit(A, "ablation_hook", *pairs), "dla_after": solution_source(A, "dla_after")}


def effect(*pairs):
    return edit(A, "dla_after", *pairs)


def ratio(*pairs):
    return edit(A, "ln_ratio", *pairs)


def criteria(*pairs):
    return edit(A, "criteria", *pairs)


T_TOP, T_HOOK, T_DLA, T_LN = "test_top_head", "test_ablation_hook", "test_dla_after", "test_ln_ratio"
T_F, T_C, T_M = "test_faithfulness", "test_completeness", "test_minimality"
ARGMAX = "layer, head = divmod(int(dla.argmax()), dla.shape[1])"
SET_END = "z[rows, end_positions, head] = means[rows, end_positions, head]"
WHERE = "return torch.where(keep[layer][..., None], z, means[layer])"
F_M_LOOP = "    for l, h in K:\n        keep[l][:, :, h] = False\n"

MUTANTS = [
    # ---- top head
    Mutant("top head: the smallest value", top((ARGMAX, "layer, head = divmod(int(dla.argmin()), dla.shape[1])")), [T_TOP]),
    Mutant("top head: divides by the wrong axis (transpose)", top((ARGMAX, "layer, head = divmod(int(dla.argmax()), dla.shape[0])")), [T_TOP]),
    Mutant("top head: (head, layer) swapped", top(("return layer, head", "return head, layer")), [T_TOP]),
    Mutant("top head: hard-coded from the visible test", top((ARGMAX, "layer, head = 1, 0")), [T_TOP]),
    Mutant("top head: largest absolute value", top((ARGMAX, "layer, head = divmod(int(dla.abs().argmax()), dla.shape[1])")), [T_TOP]),
    # ---- ablation hook
    Mutant("hook: zero-ablation instead of the mean", hook((SET_END, "z[rows, end_positions, head] = 0.0")), [T_HOOK, T_DLA]),
    Mutant("hook: every position instead of END", hook((SET_END, "z[:, :, head] = means[:, :, head]")), [T_HOOK, T_DLA]),
    Mutant("hook: every head at END", hook((SET_END, "z[rows, end_positions] = means[rows, end_positions]")), [T_HOOK, T_DLA]),
    Mutant("hook: the position before END", hook((SET_END, "z[rows, end_positions - 1, head] = means[rows, end_positions - 1, head]")), [T_HOOK, T_DLA]),
    Mutant("hook: the mean of the wrong prompt (first prompt's)", hook((SET_END, "z[rows, end_positions, head] = means[0, end_positions, head]")), [T_HOOK, T_DLA]),
    Mutant("hook: returns a new tensor of zeros", hook(("        return z\n", "        return torch.zeros_like(z)\n")), [T_HOOK, T_DLA]),
    Mutant("hook: forgets to return z", hook(("        return z\n", "        pass\n")), [T_HOOK]),
    # ---- ablation effect
    Mutant("effect: DLA of the clean run", effect(("dla_after = head_dla(model, dataset, cache=cache)", "dla_after = head_dla(model, dataset)")), [T_DLA]),
    Mutant("effect: naive prediction adds the DLA", effect((".item() - head_dla(model, dataset)[layer, h]", ".item() + head_dla(model, dataset)[layer, h]")), [T_DLA]),
    Mutant("effect: naive prediction from the DLA of head (h, layer) (transpose)", effect(("head_dla(model, dataset)[layer, h]", "head_dla(model, dataset)[h, layer]")), [T_DLA]),
    Mutant("effect: measured is the clean logit difference", effect(("return dla_after, naive_prediction, logit_diff(logits, dataset).item()", "return dla_after, naive_prediction, logit_diff(model(dataset.toks), dataset).item()")), [T_DLA]),
    Mutant("effect: hook on the wrong layer", effect(("fwd_hooks=[(Z_NAMES[layer], hook)]", "fwd_hooks=[(Z_NAMES[layer - 1], hook)]")), [T_DLA]),
    Mutant("effect: means of layer 0", effect(("end_ablation_hook(h, means[layer], ", "end_ablation_hook(h, means[0], ")), [T_DLA]),
    # ---- LayerNorm ratio
    Mutant("ln ratio: inverted", ratio(("return (clean_scale / ablated_scale).mean().item()", "return (ablated_scale / clean_scale).mean().item()")), [T_LN]),
    Mutant("ln ratio: ratio of the means", ratio(("return (clean_scale / ablated_scale).mean().item()", "return (clean_scale.mean() / ablated_scale.mean()).item()")), [T_LN]),
    Mutant("ln ratio: hard-coded from the visible test", ratio(("return (clean_scale / ablated_scale).mean().item()", "return 1.5")), [T_LN]),
    Mutant("ln ratio: difference instead of ratio", ratio(("return (clean_scale / ablated_scale).mean().item()", "return (clean_scale - ablated_scale).mean().item() + 1")), [T_LN]),
    # ---- faithfulness, completeness, minimality
    Mutant("ablation: keeps and replaces swapped", criteria((WHERE, "return torch.where(keep[layer][..., None], means[layer], z)")), [T_F, T_C, T_M]),
    Mutant("ablation: zeros instead of means", criteria((WHERE, "return torch.where(keep[layer][..., None], z, torch.zeros_like(z))")), [T_F, T_C, T_M]),
    Mutant("ablation: only the last layer is hooked", criteria(("for l in range(model.cfg.n_layers)]):", "for l in range(model.cfg.n_layers)][-1:]):")), [T_F, T_C, T_M]),
    Mutant("ablation: nothing is ablated", criteria((WHERE, "return z")), [T_F, T_C, T_M]),
    Mutant("faithfulness: (F(M), F(C))", criteria(("    return f_c, f_m\n    ### END SOLUTION\n\n\ndef completeness", "    return f_m, f_c\n    ### END SOLUTION\n\n\ndef completeness")), [T_F]),
    Mutant("completeness: (F(M \\ K), F(C \\ K))", criteria(("    f_m = ablated_logit_diff(model, dataset, means, keep)\n    return f_c, f_m", "    f_m = ablated_logit_diff(model, dataset, means, keep)\n    return f_m, f_c")), [T_C]),
    Mutant("completeness: K kept in the circuit", criteria(("circuit_keep_masks(model, dataset, remove(circuit, K)))\n    n, seq", "circuit_keep_masks(model, dataset, circuit))\n    n, seq")), [T_C]),
    Mutant("completeness: K ablated only at END in the full model", criteria((F_M_LOOP, "    rows = torch.arange(n)\n    for l, h in K:\n        keep[l][rows, dataset.word_idx['end'], h] = False\n")), [T_C]),
    Mutant("completeness: F(M \\ K) without ablating K", criteria((F_M_LOOP, "")), [T_C]),
    Mutant("minimality: signed difference", criteria(("return abs(without_kv - without_k)", "return without_kv - without_k")), [T_M]),
    Mutant("minimality: K ignored", criteria(("remove(circuit, set(K) | {v})", "remove(circuit, {v})"), ("without_k = ablated_logit_diff(model, dataset, means, circuit_keep_masks(model, dataset, remove(circuit, K)))", "without_k = ablated_logit_diff(model, dataset, means, circuit_keep_masks(model, dataset, circuit))")), [T_M]),
    Mutant("minimality: F(C \\ (K + {v})) alone", criteria(("return abs(without_kv - without_k)", "return abs(without_kv)")), [T_M]),
    Mutant("minimality: zero", criteria(("return abs(without_kv - without_k)", "return 0.0")), [T_M]),
]
