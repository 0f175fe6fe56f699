"""The GPT-2 tokenizer, built offline from the vendored BPE files.

TransformerLens reloads a tokenizer by its ``name_or_path``, so a tokenizer that exists only in
memory cannot be handed to a model. :func:`load_tokenizer` therefore builds the tokenizer from
``encoder.json`` / ``vocab.bpe`` once, saves it as a Hugging Face tokenizer directory in a cache
folder, and loads it back from there: its ``name_or_path`` is a real directory that any later
``from_pretrained`` can open.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from transformers import PreTrainedTokenizerFast

EOT = "<|endoftext|>"
EOT_ID = 50256

_FILES = ("encoder.json", "vocab.bpe")
_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def tokenizer_files_dir() -> Path:
    """The package folder holding the vendored ``encoder.json`` and ``vocab.bpe``."""
    return Path(str(resources.files("ioi_anomalies") / "data" / "gpt2-tokenizer"))


def cache_root() -> Path:
    """The project's cache folder: ``$IOI_ANOMALIES_CACHE``, else ``$XDG_CACHE_HOME/ioi_anomalies``
    (``~/.cache/ioi_anomalies``). Built tokenizers and random models are kept there."""
    root = os.environ.get("IOI_ANOMALIES_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ioi_anomalies"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the GPT-2 tokenizer in memory from the vendored files (checked by sha256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    src = tokenizer_files_dir()
    for name in _FILES:
        digest = hashlib.sha256((src / name).read_bytes()).hexdigest()
        if digest != _SHA256[name]:
            raise RuntimeError(
                f"{src / name} is not OpenAI's GPT-2 {name} (sha256 {digest}); "
                "reinstall the package to restore it."
            )
    vocab = json.loads((src / "encoder.json").read_text(encoding="utf-8"))
    lines = (src / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=1024,
    )


def save_tokenizer(directory: str | os.PathLike) -> Path:
    """Write the GPT-2 tokenizer files into ``directory`` (e.g. next to a model's weights)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(directory)
    return directory


def tokenizer_dir() -> Path:
    """A directory with the saved GPT-2 tokenizer, created on first use."""
    target = cache_root() / "gpt2-tokenizer"
    if not (target / "tokenizer.json").exists():
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        save_tokenizer(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's tokenizer (identical ids), loaded from a saved directory, with no network.

    ``<|endoftext|>`` (id 50256) is its bos, eos, unk and pad token, as in GPT-2; it does not
    prepend BOS on ``encode``. Padding is on the right.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    tok.padding_side = "right"
    return tok


def encode_plain(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added, whatever the tokenizer's habits.

    A TransformerLens bridge's tokenizer prepends BOS on ``encode`` (``" Mary"`` ->
    ``[50256, 5335]``). Code that takes ``encode(...)[0]`` as a word's id then silently gets
    ``<|endoftext|>``. Use this instead.
    """
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    bos = getattr(tokenizer, "bos_token_id", None)
    bos_text = getattr(tokenizer, "bos_token", None)
    # Some wrappers add BOS regardless of add_special_tokens: strip one that the text didn't ask for.
    if ids and bos is not None and ids[0] == bos and not (bos_text and text.startswith(bos_text)):
        ids = ids[1:]
    return ids
