"""``python -m tools.demo`` (first step of ``make demo``): load the available model, build the IOI dataset, measure it, save a figure.

GPT-2 small where it can be had (HF cache or network), else the embedded model.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> int:
    from ioi_anomalies import ABC_FLIP, IOIDataset, head_dla, imshow, load_model, logit_diff, model_label

    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    p.add_argument("--model", default=None, help="'gpt2-small', 'embedded', or a model directory (default: automatic)")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the figure (default: demo-output)")
    p.add_argument("--n", type=int, default=25, help="number of IOI prompts (default: 25)")
    p.add_argument("--seed", type=int, default=1, help="dataset seed (default: 1)")
    a = p.parse_args(argv)

    model = load_model(a.model)
    ioi = IOIDataset("mixed", N=a.n, tokenizer=model.tokenizer, seed=a.seed)
    abc = ioi.gen_flipped_prompts(ABC_FLIP)
    clean = logit_diff(model(ioi.toks), ioi, per_prompt=True).detach()
    corrupted = logit_diff(model(abc.toks), ioi).item()
    print(f"\nModel: {model_label(model)}")
    print(f"Example prompt: {ioi.sentences[0]!r}")
    print(f"IOI logit difference (mean over {ioi.N} prompts, seed {a.seed}): {clean.mean():.4f}")
    print(f"IO preferred over S in {(clean > 0).float().mean():.0%} of prompts")
    print(f"ABC (corrupted) logit difference: {corrupted:.4f}")
    print("First five per-prompt logit differences:", ", ".join(f"{x:.4f}" for x in clean[:5].tolist()))

    dla = head_dla(model, ioi)
    layer, head = divmod(int(dla.argmax()), model.cfg.n_heads)
    print(f"Top head by direct logit attribution: {layer}.{head} ({dla.max():.4f})")
    fig = imshow(
        dla,
        title=f"Direct logit attribution of each head to IO - S at END ({model_label(model)})",
        labels={"x": "Head", "y": "Layer", "color": "Logit diff contribution"},
    )
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "head_dla.html"
    fig.write_html(path, include_plotlyjs=True)
    print(f"Figure saved to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
