"""Loading models as TransformerLens 4.3 bridges in compatibility mode, offline first.

Every model goes the same way: a Hugging Face GPT-2 directory (from the HF cache, the network,
the package, or a folder you name) is booted with ``TransformerBridge.boot_transformers`` and put
in compatibility mode with the processing the reference analysis used: LayerNorm folded, writing
weights and the unembedding centred, factored attention matrices refactored. The result behaves
like a ``HookedTransformer`` (``run_with_cache``, ``run_with_hooks``, ``hook_z``, ``W_U``, ...).

Names:
- ``"gpt2-small"`` (also ``"gpt2"``): OpenAI's GPT-2 small, from the HF cache or the network;
- ``"embedded"`` (also :data:`EMBEDDED_MODEL`): the small IOI model shipped inside this package;
- a path to a local HF GPT-2 directory;
- ``None``: the model named by the environment variable ``IOI_ANOMALIES_MODEL`` if set (the
  grader sets it), else GPT-2 small where it can be had, else the embedded model (it says which).
"""

from __future__ import annotations

import os
import socket
import threading
from importlib import resources
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge  # this module is imported on first use of a model helper

EMBEDDED_MODEL = "ioi-anomalies-mini"
GPT2_SMALL = "gpt2-small"
_GPT2_ALIASES = {"gpt2-small", "gpt2", "openai-community/gpt2"}
_GPT2_REPOS = ("openai-community/gpt2", "gpt2")
_EMBEDDED_ALIASES = {"embedded", EMBEDDED_MODEL}


class ModelUnavailableError(RuntimeError):
    """The requested model's weights cannot be had on this machine."""


def embedded_model_dir() -> Path:
    """The folder of the embedded model inside the package."""
    return Path(str(resources.files("ioi_anomalies") / "models" / EMBEDDED_MODEL))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _cached_gpt2_repo() -> str | None:
    """The GPT-2 repo id whose config and weights are in the local HF cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    for repo in _GPT2_REPOS:
        config = try_to_load_from_cache(repo, "config.json")
        weights = [try_to_load_from_cache(repo, f) for f in ("model.safetensors", "pytorch_model.bin")]
        if isinstance(config, str) and any(isinstance(w, str) for w in weights):
            return repo
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers within ``timeout`` seconds (DNS included)."""
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection(("huggingface.co", 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def gpt2_small_available() -> bool:
    """True where GPT-2 small can be loaded: it is cached, or the hub answers and we may use it."""
    if _cached_gpt2_repo() is not None:
        return True
    return not _offline() and _hub_reachable()


def resolve_model_source(name: str | os.PathLike | None) -> tuple[str, str]:
    """Map a model name to ``(label, source)`` where ``source`` is a repo id or a directory."""
    if name is None:
        chosen = os.environ.get("IOI_ANOMALIES_MODEL", "").strip()
        if chosen:  # set by the grader (embedded by default) or by a user
            return resolve_model_source(chosen)
        if gpt2_small_available():
            return resolve_model_source(GPT2_SMALL)
        return resolve_model_source("embedded")
    if isinstance(name, os.PathLike) or (isinstance(name, str) and os.path.isdir(name)):
        path = Path(name)
        if not (path / "config.json").exists():
            raise ModelUnavailableError(f"{path} is not a Hugging Face model directory (no config.json).")
        return path.name, str(path)
    if name in _EMBEDDED_ALIASES:
        path = embedded_model_dir()
        if not (path / "config.json").exists():
            raise ModelUnavailableError(
                f"the embedded model is missing from {path}; rebuild it with "
                "`python -m tools.train_embedded` or reinstall the package."
            )
        return EMBEDDED_MODEL, str(path)
    if name in _GPT2_ALIASES:
        cached = _cached_gpt2_repo()
        if cached is not None:
            return GPT2_SMALL, cached
        if _offline():
            raise ModelUnavailableError(
                "GPT-2 small is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it "
                f"cannot be downloaded. Use the offline model instead: load_model({EMBEDDED_MODEL!r}) "
                "(or load_model() to pick automatically), or unset HF_HUB_OFFLINE on a machine "
                "that can reach huggingface.co."
            )
        if not _hub_reachable():
            raise ModelUnavailableError(
                "GPT-2 small is not in the Hugging Face cache and huggingface.co cannot be "
                f"reached from this machine. Use the offline model instead: load_model({EMBEDDED_MODEL!r}) "
                "(or load_model() to pick automatically), or run once where the hub is reachable "
                "to fill the cache."
            )
        return GPT2_SMALL, _GPT2_REPOS[0]
    raise ValueError(
        f"unknown model {name!r}: use 'gpt2-small', 'embedded' ({EMBEDDED_MODEL!r}), "
        "a path to a Hugging Face GPT-2 directory, or None to choose automatically."
    )


def load_model(name: str | os.PathLike | None = None, device: str | torch.device | None = None, verbose: bool = True):
    """Load a model as a TransformerBridge in compatibility mode, in eval mode, with no hooks.

    Args:
        name: ``"gpt2-small"``, ``"embedded"``, a local HF GPT-2 directory, or None (GPT-2 small
            where available, else the embedded model).
        device: torch device; defaults to CUDA when available, else CPU.
        verbose: print which model was loaded (useful when ``name`` is None).
    """
    label, source = resolve_model_source(name)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = None
    if os.path.isdir(source) and not (Path(source) / "tokenizer.json").exists():
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    model = TransformerBridge.boot_transformers(source, device=device, dtype=torch.float32, tokenizer=tokenizer)
    model.enable_compatibility_mode(
        disable_warnings=True,
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        refactor_factored_attn_matrices=True,
    )
    model.eval()
    model.reset_hooks()
    model.model_label = label
    if verbose:
        print(f"Loaded model {label!r} ({model.cfg.n_layers} layers x {model.cfg.n_heads} heads) from {source} on {device}.")
    return model


def model_label(model) -> str:
    """The short name a model was loaded under ('gpt2-small', the embedded name, a folder name)."""
    label = getattr(model, "model_label", None)
    if label:
        return label
    path = getattr(getattr(model, "tokenizer", None), "name_or_path", "") or ""
    return Path(path).name or "unknown"


#: Prompts per experiment in the notebooks: the reference analysis's 25, where a forward pass is cheap.
REFERENCE_PROMPTS = 25
#: Prompts per experiment on a large model run on a CPU (GPT-2 small: about 17 times the embedded
#: model's cost per token), so that a notebook still runs in minutes.
LARGE_MODEL_PROMPTS = 8
#: Models with more parameters than this count as large.
LARGE_MODEL_PARAMS = 20_000_000


def model_parameters(model) -> int:
    """The parameters a forward pass multiplies by, per token: attention, MLP and unembedding
    weights (GPT-2 small about 124 M, the embedded model, attention only, about 7 M)."""
    c = model.cfg
    d_mlp = 0 if getattr(c, "attn_only", False) else (c.d_mlp if getattr(c, "d_mlp", None) else 4 * c.d_model)
    return int(c.n_layers * (4 * c.d_model * c.d_model + 2 * c.d_model * d_mlp) + c.d_vocab * c.d_model)


def prompts_for(model) -> int:
    """How many IOI prompts the notebooks' experiments use on ``model``.

    :data:`REFERENCE_PROMPTS` (25, as in the reference analysis) on a model of at most
    :data:`LARGE_MODEL_PARAMS` parameters (:func:`model_parameters`) or on a GPU;
    :data:`LARGE_MODEL_PROMPTS` (8) on a larger model on a CPU, such as GPT-2 small, where each
    forward pass costs many times more and a notebook would otherwise take far longer to run and grade.
    """
    device = str(getattr(model.cfg, "device", "cpu") or "cpu")
    if device.startswith("cpu") and model_parameters(model) > LARGE_MODEL_PARAMS:
        return LARGE_MODEL_PROMPTS
    return REFERENCE_PROMPTS


def random_model_dir(n_layers: int = 3, n_heads: int = 4, d_model: int = 64, seed: int = 0) -> Path:
    """The cache folder of :func:`random_model`'s weights for these arguments."""
    from .tokenizer import cache_root

    return cache_root() / f"random-gpt2-{n_layers}L{n_heads}H{d_model}d-seed{seed}"


def random_model(n_layers: int = 3, n_heads: int = 4, d_model: int = 64, seed: int = 0, device: str | torch.device = "cpu"):
    """A small GPT-2 with random weights, loaded like every other model (a bridge in compatibility mode).

    For checking that code is general: the same arguments always give the same weights. Weights
    are drawn larger than GPT-2's initialisation so attention patterns and patching effects are far
    from uniform and zero, and LayerNorm weights are non-trivial so that folding them matters.
    The directory is cached under the project's cache folder. The arguments are recorded as the
    model's recipe (``ioi_anomalies.grading.recipe_of``), so another process can make the same model.
    """
    import shutil
    import tempfile

    from transformers import GPT2Config, GPT2LMHeadModel

    from .grading import remember
    from .tokenizer import save_tokenizer

    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
    recipe = {"n_layers": n_layers, "n_heads": n_heads, "d_model": d_model, "seed": seed}
    path = random_model_dir(n_layers, n_heads, d_model, seed)
    if not (path / "model.safetensors").exists():
        gen = torch.Generator().manual_seed(seed)
        cfg = GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=d_model, n_positions=128, n_inner=2 * d_model)
        torch.manual_seed(seed)
        hf = GPT2LMHeadModel(cfg)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if p.ndim == 2 and "wte" not in name and "wpe" not in name:
                    p.mul_(8.0)
                elif "ln" in name:
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".random-"))
        hf.save_pretrained(tmp)
        save_tokenizer(tmp)
        try:
            tmp.rename(path)  # another process may have made it meanwhile: theirs is the same
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    model = load_model(path, device=device, verbose=False)
    model.model_label = f"random GPT-2 ({n_layers}L x {n_heads}H, seed {seed})"
    return remember(model, "random_model", recipe)
