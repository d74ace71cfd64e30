"""Characters: the vocabulary is the sorted set of the text's characters (saved in the run)."""

from __future__ import annotations

import hashlib

import numpy as np

from zoo.errors import DataError, ZooError
from zoo.tokenizers.base import Documents, Tokenizer, TokenizerSpec

PAD = "<pad>"


class CharTokenizer(Tokenizer):
    """Characters to ids. The vocabulary is the sorted set of characters, so it is the same in every run and
    process (never the iteration order of a `set`)."""

    kind = "char"
    corpus = False
    split_by = "tokens"  # one character, one token: cutting the ids is cutting the text
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
    def vocab_size(self) -> int:  # type: ignore[override]
        return len(self.chars)

    @property
    def fingerprint(self) -> str:
        """A short hash of the vocabulary, to tell two tokenizers apart in messages."""
        return hashlib.sha256("".join(self.chars).encode("utf-8", "surrogatepass")).hexdigest()[:12]

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.stoi.keys())

    def for_any_text(self) -> CharTokenizer:
        """The vocabulary with a fallback for characters it lacks (a space if it has one)."""
        if self.fallback is not None:
            return self
        return CharTokenizer(self.chars, fallback=" " if " " in self.stoi else self.chars[0])

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
        """Fast encoding of a large text to an int32 array (every character must be known)."""
        table = np.full(max(map(ord, self.chars)) + 1 if self.chars else 1, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            table[ord(c)] = i
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        if codes.size and codes.max() >= table.size:
            raise DataError(f"text has characters the vocabulary lacks: {self.unknown(text)[:10]}")
        ids = table[codes]
        if ids.size and ids.min() < 0:
            raise DataError(f"text has characters the vocabulary lacks: {self.unknown(text)[:10]}")
        return ids.astype(np.int32)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in self.chars], dtype=np.int64)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, "fallback": self.fallback}

    def to_hf(self, transformers, pad: bool = False):
        """A `tokenizers`-backed fast tokenizer (every character its own token). Characters outside the
        vocabulary become the fallback (a space, or the first character), as in `zoo classify`; with `pad`, a
        padding token gets the id after the vocabulary."""
        from tokenizers import Tokenizer as HfTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        unk = self.for_any_text().fallback
        vocab = {c: i for i, c in enumerate(self.chars)}
        if pad:
            vocab[PAD] = len(self.chars)
        tok = HfTokenizer(models.WordLevel(vocab, unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
        tok.decoder = decoders.Fuse()
        # the fallback character is not declared as an unk *special* token: decoding would drop it from text
        return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **({"pad_token": PAD} if pad else {}))


def _fit(data, argument: str, documents: Documents) -> CharTokenizer:
    """The characters of the whole text (val and test included, so every split encodes)."""
    return CharTokenizer.from_text("".join(documents("all")))


SPEC = TokenizerSpec(
    name="char", fields=(), fit=_fit, corpus=False, key=lambda data, argument: {},
    from_dict=lambda saved: CharTokenizer(saved["chars"], saved.get("fallback")),
    summary="the training text's characters, sorted")
