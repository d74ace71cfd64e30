"""The tokenizer of a transformers folder (`data.tokenizer = "hf:PATH"`): its tokenizer.json through Hugging Face
`tokenizers`, so a model from the Hub keeps its own vocabulary (any size: token files become uint32 above
65,536 ids). The whole tokenizer.json is saved in the run, so the run does not depend on the folder."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.tokenizers.base import Documents, Tokenizer, TokenizerSpec, from_printable

EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")


def _token_name(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class HfTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` from its JSON, with the end-of-text and padding tokens its folder declares."""

    kind = "hf"

    def __init__(self, tokenizer_json: str, source: str, eos: str | None = None, pad: str | None = None):
        from tokenizers import Tokenizer as Raw

        try:
            self.raw = Raw.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise DataError(f"the tokenizer.json of {source} cannot be read ({str(exc)[:160]})") from None
        self.json = tokenizer_json
        self.source = source
        self.vocab_size = self.raw.get_vocab_size(with_added_tokens=True)
        vocab = self.raw.get_vocab(with_added_tokens=True)
        if eos is None:
            eos = next((name for name in EOS_NAMES if name in vocab), None)
        self.eos, self.pad = eos, pad
        self.eot = vocab.get(eos) if eos is not None else None
        self._pad_id = vocab.get(pad) if pad is not None else None

    @classmethod
    def from_folder(cls, path: str) -> HfTokenizer:
        folder = Path(path).expanduser()
        file = folder / "tokenizer.json"
        if not file.is_file():
            where = "is not a folder" if not folder.is_dir() else "has no tokenizer.json"
            raise DataError(f"data.tokenizer = 'hf:{path}': {folder} {where}; name a transformers folder saved "
                            "with a fast tokenizer (tokenizer.json), or use \"gpt2\" or \"bpe\"")
        config: dict = {}
        if (folder / "tokenizer_config.json").is_file():
            try:
                config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise DataError(f"{folder / 'tokenizer_config.json'} is not valid JSON") from None
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{file} is not UTF-8 text; restore the folder's tokenizer.json") from None
        return cls(text, str(folder), _token_name(config.get("eos_token")), _token_name(config.get("pad_token")))

    @property
    def pad_id(self) -> int:
        return self._pad_id if self._pad_id is not None else super().pad_id

    @functools.cached_property
    def fingerprint(self) -> str:  # type: ignore[override]
        return f"hf{self.vocab_size}-{hashlib.sha256(self.json.encode('utf-8')).hexdigest()[:12]}"

    def encode(self, text: str) -> list[int]:
        self.raw.encode_special_tokens = False
        return self.raw.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str], threads: int = 8) -> list[list[int]]:
        self.raw.encode_special_tokens = True  # special tokens written in a document are plain text
        try:
            return [e.ids for e in self.raw.encode_batch(texts, add_special_tokens=False)]
        finally:
            self.raw.encode_special_tokens = False

    def decode(self, ids: list[int]) -> str:
        return self.raw.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """Byte-level vocabularies (GPT-2's alphabet) exactly; SentencePiece-style ones with '▁' as a space and
        <0xNN> byte pieces as one byte; special (added) tokens 0."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        special = {t.content for t in self.raw.get_added_tokens_decoder().values() if t.special}
        for token, i in self.raw.get_vocab(with_added_tokens=True).items():
            if token in special or i >= self.vocab_size:
                continue
            raw = from_printable(token)
            if raw is None:
                if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                    out[i] = 1
                    continue
                raw = token.replace("\u2581", " ").encode("utf-8", "surrogatepass")
            out[i] = len(raw)
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "eos": self.eos, "pad": self.pad,
                "tokenizer_json": self.json}

    def to_hf(self, transformers, pad: bool = False):
        from tokenizers import Tokenizer as Raw

        kwargs = {}
        if self.eos is not None:
            kwargs.update(eos_token=self.eos)
        if self.pad is not None or (pad and self.eos is not None):
            kwargs.update(pad_token=self.pad or self.eos)
        return transformers.PreTrainedTokenizerFast(tokenizer_object=Raw.from_str(self.json), **kwargs)


def _fit(data, argument: str, documents: Documents) -> HfTokenizer:
    return HfTokenizer.from_folder(argument)


def _check(data, argument: str) -> str:
    return "" if argument else "data.tokenizer is 'hf:' without a folder; write hf:PATH (a transformers folder)"


SPEC = TokenizerSpec(
    name="hf", fields=(), fit=_fit, key=lambda data, argument: {"path": str(Path(argument).expanduser().resolve())},
    check=_check, summary="hf:PATH, the tokenizer.json of a transformers folder",
    from_dict=lambda saved: HfTokenizer(saved["tokenizer_json"], saved.get("source", "a saved run"),
                                        saved.get("eos"), saved.get("pad")))
