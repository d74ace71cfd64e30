"""Tokenizers. CharTokenizer learns its vocabulary from the training text (saved in the run); Gpt2Tokenizer
is OpenAI's GPT-2 BPE through tiktoken, built from the vocabulary shipped with zoo so it works offline."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
from pathlib import Path

import numpy as np

from zoo.errors import DataError, ZooError


class CharTokenizer:
    """Characters to ids. The vocabulary is the sorted set of characters, so it is the same in every run and
    process (never the iteration order of a `set`)."""

    kind = "char"
    eot = None  # no end-of-text id: generation stops only at its length

    def __init__(self, chars: list[str], fallback: str | None = None):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        if len(self.stoi) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ZooError("character vocabulary must hold distinct single characters")
        self.fallback = fallback

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def fingerprint(self) -> str:
        """A short hash of the vocabulary, to tell two tokenizers apart in messages."""
        return hashlib.sha256("".join(self.chars).encode("utf-8")).hexdigest()[:12]

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; characters outside the vocabulary map to the fallback or raise a ZooError."""
        missing = self.unknown(text)
        if missing:
            if self.fallback is None:
                shown = ", ".join(repr(c) for c in missing[:10])
                raise ZooError(f"text has characters the vocabulary lacks: {shown}; use only characters "
                               f"of the training text ({self.vocab_size} known)")
            fb = self.stoi[self.fallback]
            return [self.stoi.get(c, fb) for c in text]
        return [self.stoi[c] for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        """Fast encoding of a large text to a uint16/int32 array (every character must be known)."""
        table = np.full(max(map(ord, self.chars)) + 1 if self.chars else 1, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            table[ord(c)] = i
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if codes.size and codes.max() >= table.size:
            raise DataError(f"text has characters the vocabulary lacks: {self.unknown(text)[:10]}")
        ids = table[codes]
        if ids.size and ids.min() < 0:
            raise DataError(f"text has characters the vocabulary lacks: {self.unknown(text)[:10]}")
        return ids.astype(np.int32)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, "fallback": self.fallback}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0), encoding="utf-8")


# tiktoken's own pins for GPT-2 (tiktoken_ext/openai_public.py): the shipped file must be byte-identical
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256


@functools.cache
def gpt2_encoding():
    """tiktoken's `gpt2` encoding built from zoo's copy of OpenAI's r50k_base ranks (no download)."""
    import tiktoken

    raw = (importlib.resources.files("zoo.data") / "gpt2" / "r50k_base.tiktoken").read_bytes()
    if hashlib.sha256(raw).hexdigest() != R50K_SHA256:
        raise ZooError("zoo/data/gpt2/r50k_base.tiktoken is damaged (checksum mismatch); reinstall zoo")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines())}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=EOT + 1)


class Gpt2Tokenizer:
    """GPT-2 byte-level BPE: 50,257 ids, `<|endoftext|>` = 50256 between documents. Any text encodes."""

    kind = "gpt2"
    eot = EOT
    vocab_size = EOT + 1

    def __init__(self):
        self.enc = gpt2_encoding()

    def unknown(self, text: str) -> list[str]:
        return []

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; `<|endoftext|>` written in the text is encoded as the special token."""
        return self.enc.encode(text, allowed_special={"<|endoftext|>"})

    def encode_batch(self, texts: list[str], threads: int = 8) -> list[list[int]]:
        """Ids of many documents at once (tiktoken runs them in parallel threads); special tokens in the
        text are treated as plain text."""
        return self.enc.encode_ordinary_batch(texts, num_threads=threads)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    @property
    def fingerprint(self) -> str:
        return "gpt2"

    def to_dict(self) -> dict:
        return {"kind": self.kind}


def tokenizer_from_dict(data: dict) -> CharTokenizer | Gpt2Tokenizer:
    """Rebuild a tokenizer saved with `to_dict`."""
    if data.get("kind") == "char":
        return CharTokenizer(data["chars"], data.get("fallback"))
    if data.get("kind") == "gpt2":
        return Gpt2Tokenizer()
    raise ZooError(f"unknown tokenizer kind {data.get('kind')!r} in a saved tokenizer")


def load_tokenizer(path: str | Path) -> CharTokenizer | Gpt2Tokenizer:
    """Load a tokenizer saved in a run directory."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"tokenizer file {path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return tokenizer_from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ZooError(f"tokenizer file {path} cannot be read ({type(exc).__name__}: {str(exc)[:120]}); it "
                       "belongs to the run's checkpoints: restore it from a copy") from None
