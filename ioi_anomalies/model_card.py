"""Measure the embedded model and (re)write its circuit and model card.

    python -m ioi_anomalies.model_card [--model DIR]

Everything is measured with this package's own helpers on prompts the training never used
(seed 2026 and up), and written next to the weights: ``circuit.json`` (read by
``get_circuit``) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import (
    ABC_FLIP,
    FLIP_GRID,
    IOIDataset,
    generate_repeated_tokens,
    head_dla,
    head_type_scores,
    load_model,
    logit_diff,
    make_ioi_metric,
    mean_z_by_template,
    path_patch_heads_to_heads,
    repeated_token_loss,
)
from .attribution import final_ln_scale
from .hooks import run_and_cache
from .models import EMBEDDED_MODEL, embedded_model_dir

EVAL_SEED = 2026
Head = tuple[int, int]


def _top(scores: torch.Tensor, k: int, exclude: set[Head], min_value: float, at_least: int = 0) -> list[Head]:
    """Up to ``k`` heads with the highest scores above ``min_value`` (at least ``at_least``
    heads whatever their score, so that every class of the circuit has a member)."""
    n_heads = scores.shape[1]
    order = scores.flatten().argsort(descending=True).tolist()
    out = []
    for i in order:
        head = divmod(i, n_heads)
        if head in exclude:
            continue
        if scores.flatten()[i] < min_value and len(out) >= at_least:
            break
        out.append(head)
        if len(out) == k:
            break
    return out


def _end_ablation_hooks(heads, means, end):
    """Hooks that set the given heads' ``z`` to ``means`` at each prompt's END (the model card's
    own; the notebooks have students write theirs)."""
    def make(layer, hs):
        def hook(z, hook):
            rows = torch.arange(z.shape[0], device=z.device)
            for h in hs:
                z[rows, end, h] = means[layer][rows, end, h].to(z.device)
            return z
        return hook
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(int(l), []).append(int(h))
    return [(f"blocks.{l}.attn.hook_z", make(l, hs)) for l, hs in sorted(by_layer.items())]


@torch.inference_mode()
def _patched_logits(model, orig, new, heads):
    """Logits of ``orig`` with the given heads' ``z`` (all positions) taken from a run on ``new``."""
    names = sorted({f"blocks.{l}.attn.hook_z" for l, _ in heads})
    _, cache = run_and_cache(model, new.toks, names, return_logits=False)

    def make(l, h):
        def hook(z, hook):
            z[:, :, h] = cache[f"blocks.{l}.attn.hook_z"][:, :, h].to(z.device)
            return z
        return hook

    logits, _ = run_and_cache(model, orig.toks, [], fwd_hooks=[(f"blocks.{l}.attn.hook_z", make(l, h)) for l, h in heads])
    return logits


@torch.inference_mode()
def _ln_scale_ratio(model, dataset, fwd_hooks) -> float:
    """Mean over prompts of the final LayerNorm scale at END without / with ``fwd_hooks``."""
    _, before = run_and_cache(model, dataset.toks, ["ln_final.hook_scale"], return_logits=False)
    _, after = run_and_cache(model, dataset.toks, ["ln_final.hook_scale"], fwd_hooks=fwd_hooks, return_logits=False)
    return (final_ln_scale(before, dataset) / final_ln_scale(after, dataset)).mean().item()


@torch.inference_mode()
def dla_after_ablation(model, ioi, heads, means):
    hooks = _end_ablation_hooks(heads, means, ioi.word_idx["end"])
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)] + ["ln_final.hook_scale"]
    logits, cache = run_and_cache(model, ioi.toks, names, fwd_hooks=hooks)
    return head_dla(model, ioi, cache=cache), logit_diff(logits, ioi).item()


def measure(model) -> dict:
    ioi = IOIDataset("mixed", N=200, tokenizer=model.tokenizer, seed=EVAL_SEED)
    abc = ioi.gen_flipped_prompts(ABC_FLIP)
    per_prompt = logit_diff(model(ioi.toks), ioi, per_prompt=True).detach()
    rep = generate_repeated_tokens(model.cfg.d_vocab, 20, 20, seed=EVAL_SEED)
    scores = head_type_scores(model, rep)
    first, second = repeated_token_loss(model, rep)
    results: dict = {
        "ioi": {"n": 200, "seed": EVAL_SEED, "logit_diff": per_prompt.mean().item(),
                "io_preferred": (per_prompt > 0).float().mean().item(),
                "abc_logit_diff": logit_diff(model(abc.toks), ioi).item()},
        "repeated_tokens": {"seq_len": 20, "batch": 20, "loss_first_half": first, "loss_second_half": second,
                            "max_induction_score": scores["induction"].max().item()},
    }
    # name movers and negative name movers: direct logit attribution at END
    small = ioi[:60]
    small_abc = small.gen_flipped_prompts(ABC_FLIP)
    dla = head_dla(model, small)
    ld = logit_diff(model(small.toks), small).item()
    name_movers = _top(dla, 3, set(), 0.1 * ld, at_least=1)
    negative = _top(-dla, 2, set(name_movers), 0.05 * ld)
    # backup name movers: DLA rises when the top name mover is mean-ablated at END
    means = mean_z_by_template(model, small_abc)
    top = name_movers[0]
    dla_ablated, ld_ablated = dla_after_ablation(model, small, [top], means)
    rise = dla_ablated - dla
    used = set(name_movers) | set(negative)
    backup = _top(rise, 4, used, 0.02 * ld)
    used |= set(backup)
    # S-inhibition heads: path patching into the name movers' queries
    metric = make_ioi_metric(model, small, small_abc)
    pp_q = path_patch_heads_to_heads(model, name_movers, "q", metric, small, small_abc, progress=False)
    s_inhib = _top(-pp_q, 4, used, 0.02, at_least=2)
    used |= set(s_inhib)
    # induction / duplicate / previous-token heads by scores on repeated random tokens
    induction = _top(scores["induction"], 4, used, 0.2, at_least=2)
    used |= set(induction)
    duplicate = _top(scores["duplicate"], 3, used, 0.1, at_least=1)
    used |= set(duplicate)
    previous = _top(scores["previous"], 2, used, 0.2, at_least=2)
    circuit = {
        "name mover": name_movers, "backup name mover": backup, "negative name mover": negative,
        "s2 inhibition": s_inhib, "induction": induction, "duplicate token": duplicate, "previous token": previous,
    }
    # fuzzy induction: induction-class heads that matter most for the S-inhibition heads' keys
    fuzzy = []
    if s_inhib:
        pp_k = path_patch_heads_to_heads(model, s_inhib, "k", metric, small, small_abc, progress=False)
        cand = [h for h in induction if h[0] < pp_k.shape[0]]
        fuzzy = sorted(cand, key=lambda h: pp_k[h].item())[:2]
        results["s_inhibition_keys_path_patching"] = {f"{l}.{h}": round(pp_k[l, h].item(), 4) for l, h in cand}
    named = {"fuzzy induction": fuzzy, "attention view": induction[:2]}
    naive = ld - dla[top].item()
    from .attribution import component_dla

    values, labels = component_dla(model, small)
    heads_total = sum(v for v, lab in zip(values.tolist(), labels) if "." in lab)
    mlps = {lab: v for v, lab in zip(values.tolist(), labels) if lab.startswith("mlp")}
    results["direct_effects"] = {"all_heads": heads_total, **{k: round(v, 3) for k, v in mlps.items()}, "logit_diff": ld}
    results["ablation"] = {
        "top_name_mover": f"{top[0]}.{top[1]}", "dla_top": dla[top].item(), "logit_diff": ld,
        "naive_prediction": naive, "logit_diff_after": ld_ablated,
        "compensation": (ld_ablated - naive), "ln_scale_ratio": _ln_scale_ratio(
            model, small, _end_ablation_hooks([top], means, small.word_idx["end"])),
        "largest_rises": {f"{l}.{h}": round(rise[l, h].item(), 4) for l, h in backup},
    }
    # positional vs token signal of the S-inhibition heads (3x2 grid of logit differences)
    grid = torch.zeros(3, 2)
    for (row, col), flip in FLIP_GRID.items():
        ds = small if flip is None else small.gen_flipped_prompts(flip)
        grid[row, col] = logit_diff(_patched_logits(model, small, ds, s_inhib), small).item() if s_inhib else float("nan")
    results["positional_vs_token_grid"] = grid.tolist()
    results["row_difference"] = (grid[0] - grid[2]).abs().mean().item()
    results["column_difference"] = (grid[:, 0] - grid[:, 1]).abs().mean().item()
    return {"circuit": circuit, "named": named, "results": results}


_NOT_RECIPE = ("dropout", "steps", "train_seconds", "torch_threads", "timing_note", "log", "held_heads",
               "held_heads_previous_token_score")


def _recipe(training: dict) -> dict:
    """What defines a training recipe, dropout aside (to tell whether a twin is this model's)."""
    return {k: v for k, v in training.items() if k not in _NOT_RECIPE}


def _dropout_sentence(cmp: dict | None, ab: dict, training: dict) -> str:
    if not cmp:
        return "No dropout twin has been measured (`--dropout-model`)."
    c = cmp["ablation"]
    more = c["compensation"] > ab["compensation"] + 0.05
    if cmp.get("recipe") != _recipe(training):
        return (f"A twin of an earlier recipe (no marker task, no held heads) trained with dropout {cmp['dropout']} "
                f"reached IOI logit difference {cmp['ioi']['logit_diff']:.2f}; ablating its top name mover "
                f"{c['top_name_mover']} (DLA {c['dla_top']:.3f}), other heads compensated for {c['compensation']:.3f}, "
                f"against 0.650 for that recipe without dropout: there, dropout did not bring backup name movers. "
                f"This model's own twin has not been measured (`--dropout-model`).")
    return (f"Its twin trained the same way with dropout {cmp['dropout']} (IOI logit difference "
            f"{cmp['ioi']['logit_diff']:.2f}) was measured the same way: ablating its top name mover "
            f"{c['top_name_mover']} (DLA {c['dla_top']:.3f}), other heads compensate for {c['compensation']:.3f} "
            f"(here: {ab['compensation']:.3f}); its largest DLA rises: "
            f"{', '.join(f'{k} (+{v:.3f})' for k, v in c['largest_rises'].items()) or 'none'}. "
            + ("So dropout does give this model more backup behaviour." if more else
               "So on this model dropout does not bring backup name movers."))


def _hold_sentence(training: dict) -> str:
    if not training.get("hold_prev"):
        return ""
    return (f". The first {training['prev_first']} steps are the previous-token (marker) task alone; then the "
            f"{training['hold_prev']} best previous-token heads ({', '.join(training['held_heads'])}, scores "
            f"{', '.join(str(x) for x in training['held_heads_previous_token_score'])}) keep their query and key weights "
            f"and the positions stop learning, while the rest trains on the mix (marker sequences in it carry loss "
            f"weight {training['filler_weight']} on their unpredictable tokens)")


def _induction_story(training: dict) -> str:
    """What was learned about growing induction heads (the runs are described, not re-measured)."""
    return """### Growing induction heads
Forty variants of the first recipe (IOI prompts and repeated blocks only) were trained for
3,000-4,000 steps each (the CPU budget allows about 3,000): 2, 4 or 8 heads per layer (d_head 64, 32,
16), learning rates 1e-3 to 1e-2, repeated blocks of 4-12, 8-24, 10-20 or 20-30 tokens, 500-1,000
steps of repeats before any IOI, dropout 0.1, token embeddings frozen or at a tenth of the learning
rate, no weight decay, positions starting random or as sinusoids of scale 0.03, 0.1 or 0.3. The best
induction score stayed between 0.05 and 0.26. None of them grew a previous-token head (best
previous-token score 0.23), and without one there is nothing for an induction head to find its keys
with. The models copied in other ways: layer-0 heads at fixed offsets, which predict the training
blocks but not the evaluation's 20-token repeats, and a smeared induction (a 2-layer model trained
on repeats alone brought its second-half loss from 10.8 to 0.91 nats in 4,000 steps, its layer-1
heads attending 18 positions back rather than at the induction offset of 19).

Small probes (2 layers x 4 heads, repeats and marker sequences only, 1,500 steps) then showed what is
missing and what works:
- The marker task ("... X , X ...", `marker` in `--mix`) grows previous-token heads fast: a 1-layer
  model trained on it alone reaches previous-token scores 0.82-0.95 in 300 steps.
- Left free, the rest of the mix erases them: from 0.55 to 0.02 within 200 steps, because copying the
  previous token is wrong almost everywhere else until an induction head reads it. Holding only
  their query and key weights does not keep them (the positions move: 0.03).
- Holding their queries, keys *and* the positions (`--hold-prev`) keeps them, and induction heads form
  on top of them by K-composition: induction score 0.18 at 750 steps, 0.80 at 1,000, 0.87 at 1,250,
  with the second-half loss on 20-token repeats falling from 8.35 to 1.22 nats.
- The training script reproduces the effect: `train_embedded --layers 2 --heads 4 --mix
  repeat:7,marker:3 --block 10 20 --prev-first 300 --hold-prev 2 --steps 1500` holds two heads with
  previous-token scores 0.77 and 0.74, and its induction score climbs to 0.37 by the last step
  (second-half loss 10.8 -> 6.3 nats).
- In the 4-layer x 8-head model (d_head 16), 300 marker steps grow only weak previous-token heads
  (0.22-0.25, mostly attending to their own position), and the induction score stays at 0.05-0.07
  whether the positions are fixed sinusoids or learned and then held.""" + _recipe_outcome(training)


def _recipe_outcome(training: dict) -> str:
    if training.get("hold_prev"):
        return (f"\n\nThe shipped recipe therefore uses {training['n_head']} heads per layer (d_head "
                f"{training['d_model'] // training['n_head']}), {training['prev_first']} marker steps and "
                f"{training['hold_prev']} held heads; the evaluation below says what it reached.")
    return ("\n\nThe shipped model was trained with the first recipe (no marker task, no held heads); "
            "the options above are in the training script for the next attempt.")


def write_card(model_dir: Path, measured: dict) -> str:
    training = json.loads((model_dir / "training.json").read_text()) if (model_dir / "training.json").exists() else {}
    cfg = json.loads((model_dir / "config.json").read_text())
    r = measured["results"]
    c = measured["circuit"]
    fmt = lambda hs: ", ".join(f"{l}.{h}" for l, h in hs) or "none found"  # noqa: E731
    ab = r["ablation"]
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 2**20
    grid = r["positional_vs_token_grid"]
    card = f"""# {EMBEDDED_MODEL}: a small GPT-2 that does IOI, shipped for offline use

*This file is written by `python -m ioi_anomalies.model_card`; every number below is measured.*

## Architecture
GPT-2 architecture: {cfg['n_layer']} layers x {cfg['n_head']} heads, d_model {cfg['n_embd']}, d_mlp
{cfg.get('n_inner') or 4 * cfg['n_embd']}, context {cfg['n_positions']}, GPT-2's tokenizer and 50,257-token vocabulary,
tied embeddings. {'The MLPs are part of the checkpoint but zero: they were frozen at zero during training (see below), so the model computes with attention alone. ' if training.get('attention_only') else ''}Stored in float16 ({size_mb:.1f} MB on disk with the tokenizer), loaded as float32 through the
same TransformerLens bridge path as GPT-2 small.

## Training
`python -m ioi_anomalies.train_embedded` (its defaults) from nothing, on the CPU, seeded:
{training.get('steps', '?')} steps in {training.get('train_seconds', '?')} s on {training.get('torch_threads', '?')} thread(s){' (' + training['timing_note'] + ')' if training.get('timing_note') else ''}, batch {training.get('batch', '?')}
(twice that for IOI batches), AdamW lr {training.get('lr', '?')}, dropout {training.get('dropout', '?')}, batch mix
`{training.get('mix', '?')}`. Data, all generated by the package: IOI prompts from all 15 BABA + 15 ABBA
templates and the ABC/BAC templates (seeds from 1,000,003 up, never used for evaluation), with the
names of {100 * training.get('name_swap', 0):.0f}% of them replaced by random single-token capitalised words so that
the answer has to be copied from the context; and random token blocks from the whole vocabulary
repeated two to four times. The final name carries loss weight {training.get('end_weight', '?')}. The output layer is
trained with a sampled softmax (the batch's targets plus {training.get('negatives', '?')} random negatives);
positional embeddings start as sinusoids and are learned{_hold_sentence(training)}.
The frozen MLPs are skipped in training (a zero MLP outputs exactly zero), so a step costs only
its attention; the run is seeded and gives the same weights each time on the same machine.

What did not work, within the 15-minute budget: six layers with dropout 0.1 and a mix that also had
multi-sentence stories never learned IOI; without the name swap, or with trained MLPs, the model
learned IOI quickly but through its first MLP (a head in layer 0 averages the names into END and
MLP0 decodes which one occurs once), with no name movers, no S-inhibition and no induction heads.

{_induction_story(training)}

## Evaluation (fresh prompts: "mixed", N=200, seed {EVAL_SEED})
- IOI logit difference: **{r['ioi']['logit_diff']:.3f}**; IO preferred over S in **{100 * r['ioi']['io_preferred']:.1f}%** of prompts.
- ABC (corrupted) prompts, scored on the IOI names: {r['ioi']['abc_logit_diff']:.3f}.
- Repeated random tokens (20 tokens twice, 20 sequences): loss {r['repeated_tokens']['loss_first_half']:.2f} on the
  first half, **{r['repeated_tokens']['loss_second_half']:.2f}** on the second; best induction score
  **{r['repeated_tokens']['max_induction_score']:.2f}**.

## The model's own circuit (measured with the package's helpers)
| class | heads | how found |
|---|---|---|
| name mover | {fmt(c['name mover'])} | direct logit attribution at END |
| negative name mover | {fmt(c['negative name mover'])} | most negative DLA |
| backup name mover | {fmt(c['backup name mover'])} | DLA rises when {ab['top_name_mover']} is mean-ablated at END |
| s2 inhibition | {fmt(c['s2 inhibition'])} | path patching into the name movers' queries |
| induction | {fmt(c['induction'])} | induction score on repeated random tokens |
| duplicate token | {fmt(c['duplicate token'])} | duplicate-token score |
| previous token | {fmt(c['previous token'])} | previous-token score |

Direct effects at END (mean over 60 prompts): all heads together {r['direct_effects']['all_heads']:.3f},
{', '.join(f"{k} {v:.3f}" for k, v in r['direct_effects'].items() if k.startswith('mlp'))}, of a logit difference of
{r['direct_effects']['logit_diff']:.3f}.

Fuzzy induction candidates (induction heads that matter most for the S-inhibition heads' keys):
{fmt(measured['named']['fuzzy induction'])}.

## The series' phenomena on this model
- **Backup name movers.** Mean-ablating the top name mover {ab['top_name_mover']} (DLA {ab['dla_top']:.3f}) at END:
  naive prediction {ab['naive_prediction']:.3f}, measured {ab['logit_diff_after']:.3f} (from {ab['logit_diff']:.3f}), so
  {'other heads compensate for ' + format(ab['compensation'], '.3f') + ' of logit difference' if ab['compensation'] > 0.05 else 'there is no real compensation'}.
  Largest DLA rises: {', '.join(f'{k} (+{v:.3f})' for k, v in ab['largest_rises'].items()) or 'none'}; final-LN scale ratio
  (clean / ablated) {ab['ln_scale_ratio']:.3f}.
- **Positional vs token signal.** Logit difference after patching all S-inhibition heads from each
  flipped dataset (rows: token original / random / inverted; columns: position original / inverted):
  {[[round(x, 3) for x in row] for row in grid]}. Mean row difference (token) {r['row_difference']:.3f}, mean column
  difference (position) {r['column_difference']:.3f}: the S-inhibition heads carry
  {'more positional than token signal' if r['column_difference'] > r['row_difference'] else 'more token than positional signal'}.
- **Dropout and backup heads.** The shipped model was trained with dropout {training.get('dropout', '?')}.
  {_dropout_sentence(measured.get('dropout_comparison'), ab, training)}
  `04_further_directions` retrains it with and without dropout and repeats the ablation.
- **Induction.** {'This model has clear induction heads.' if r['repeated_tokens']['max_induction_score'] >= 0.5 else 'This model has no clean induction heads (best score ' + format(r['repeated_tokens']['max_induction_score'], '.2f') + '; second-half loss ' + format(r['repeated_tokens']['loss_second_half'], '.2f') + ' against ' + format(r['repeated_tokens']['loss_first_half'], '.2f') + ' on the first half). The induction exercises run on it, with small effects; on GPT-2 small they show the real thing.'}
"""
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=embedded_model_dir())
    p.add_argument("--dropout-model", type=Path, default=None,
                   help="a twin trained with dropout (train_embedded --dropout 0.1 --out DIR): measure its "
                        "backup behaviour too (default: keep the comparison already recorded)")
    a = p.parse_args(argv)
    model = load_model(a.model, device="cpu", verbose=False)
    measured = measure(model)
    old = a.model / "circuit.json"
    if a.dropout_model is not None:
        twin = measure(load_model(a.dropout_model, device="cpu", verbose=False))["results"]
        info = json.loads((a.dropout_model / "training.json").read_text())
        measured["dropout_comparison"] = {"dropout": info["dropout"], "steps": info["steps"], "recipe": _recipe(info),
                                          "ioi": twin["ioi"], "ablation": twin["ablation"]}
    elif old.exists():
        measured["dropout_comparison"] = json.loads(old.read_text()).get("dropout_comparison")
    (a.model / "circuit.json").write_text(json.dumps(
        {"model": EMBEDDED_MODEL, "circuit": measured["circuit"], "named": measured["named"],
         "results": measured["results"], "dropout_comparison": measured.get("dropout_comparison")}, indent=1))
    card = write_card(a.model, measured)
    (a.model / "MODEL_CARD.md").write_text(card)
    print(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
