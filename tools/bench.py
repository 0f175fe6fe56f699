"""``python -m tools.bench`` (first step of ``make bench``): the project's benchmarks, each side by side with its baseline in one process.

Prints one JSON object per line with ``name``, ``baseline_s``, ``project_s``, ``speedup``,
``max_abs_diff``, ``peak_rss_mb``, ``model``, ``n_prompts`` and ``device``. Timings are figures
to read, never assertions: these machines are noisy. The engine runs before its baseline so
that ``peak_rss_mb`` (the process's peak so far) is the engine's peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpt2_small_shaped(device: str):
    """A GPT-2-small-shaped model with random weights, booted like the real one."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ioi_anomalies.models import load_model
    from ioi_anomalies.tokenizer import save_tokenizer

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="gpt2-small-shaped-"))
    GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp)
    save_tokenizer(tmp)
    return load_model(tmp, device=device, verbose=False)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_path_patching(name, model, model_name, receivers, which, n, seed, device, skip_baseline=False, budget_mb=128.0):
    from ioi_anomalies import ABC_FLIP, IOIDataset, make_ioi_metric
    from grader.references.nb01 import sweep_senders as plain_sweep  # two forward passes per sender, with hooks
    from ioi_anomalies.path_patching import path_patch_heads_to_heads

    ioi = IOIDataset("mixed", N=n, tokenizer=model.tokenizer, seed=seed, device=device)
    abc = ioi.gen_flipped_prompts(ABC_FLIP)
    metric = make_ioi_metric(model, ioi, abc)
    _sync(device)
    t0 = time.perf_counter()
    fast = path_patch_heads_to_heads(model, receivers, which, metric, ioi, abc, progress=False, memory_budget_mb=budget_mb)
    _sync(device)
    project_s = time.perf_counter() - t0
    rss = peak_rss_mb()
    row = {"name": name, "project_s": round(project_s, 3), "peak_rss_mb": round(rss, 1), "model": model_name,
           "n_prompts": n, "n_senders": int(fast.numel()), "receivers": [f"{l}.{h}" for l, h in receivers],
           "receiver_input": which, "device": device}
    if device.startswith("cuda"):
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if skip_baseline:
        row.update(baseline_s=None, speedup=None, max_abs_diff=None)
        return row
    _sync(device)
    t0 = time.perf_counter()
    plain = plain_sweep(model, receivers, which, metric, ioi, abc)
    _sync(device)
    baseline_s = time.perf_counter() - t0
    row.update(baseline_s=round(baseline_s, 3), speedup=round(baseline_s / project_s, 2),
               max_abs_diff=float((fast - plain).abs().max()))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    p.add_argument("--only", nargs="*", default=None, help="run only these benchmarks (by name)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--n", type=int, default=25, help="number of IOI prompts (default: 25)")
    p.add_argument("--seed", type=int, default=1, help="dataset seed (default: 1)")
    p.add_argument("--budget-mb", type=float, default=None,
                   help="the engine's working-memory budget per chunk (default: 128 MB on the CPU, 4096 MB on a GPU)")
    a = p.parse_args(argv)
    budget = a.budget_mb or (4096.0 if a.device.startswith("cuda") else 128.0)
    want = lambda n: a.only is None or n in a.only  # noqa: E731
    machine = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads",
               "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None}

    if want("induction_keys_72") or want("s_inhibition_values_96"):
        model = gpt2_small_shaped(a.device)
        if want("induction_keys_72"):
            row = bench_path_patching("induction_keys_72", model, "gpt2-small-shaped (random)", [(5, 5), (6, 9)], "k", a.n, a.seed, a.device, budget_mb=budget)
            print(json.dumps({**row, **machine}), flush=True)
        if want("s_inhibition_values_96"):
            row = bench_path_patching("s_inhibition_values_96", model, "gpt2-small-shaped (random)", [(7, 3), (7, 9), (8, 6), (8, 10)], "v", a.n, a.seed, a.device, budget_mb=budget)
            print(json.dumps({**row, **machine}), flush=True)
        del model
    if want("embedded"):
        from ioi_anomalies.circuit import get_circuit
        from ioi_anomalies.models import EMBEDDED_MODEL, load_model

        model = load_model("embedded", device=a.device, verbose=False)
        circuit = get_circuit(model)
        # its name movers' queries, the path patching that finds its S-inhibition heads
        receivers = circuit["name mover"]
        row = bench_path_patching("embedded_name_mover_queries", model, EMBEDDED_MODEL, receivers, "q", a.n, a.seed, a.device, budget_mb=budget)
        print(json.dumps({**row, **machine}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
