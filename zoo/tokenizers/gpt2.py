"""OpenAI's GPT-2 BPE through tiktoken, built from the vocabulary shipped with zoo so it works offline."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json

import numpy as np

from zoo.errors import ZooError
from zoo.tokenizers.base import EOT_TEXT, Documents, Tokenizer, TokenizerSpec

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
                             special_tokens={EOT_TEXT: EOT}, explicit_n_vocab=EOT + 1)


class Gpt2Tokenizer(Tokenizer):
    """GPT-2 byte-level BPE: 50,257 ids, `<|endoftext|>` = 50256 between documents. Any text encodes. A single
    text is split by token position (as zoo always has for GPT-2, so earlier runs' splits stay the same)."""

    kind = "gpt2"
    split_by = "tokens"
    eot = EOT
    vocab_size = EOT + 1

    def __init__(self):
        self.enc = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; `<|endoftext|>` written in the text is encoded as the special token."""
        return self.enc.encode(text, allowed_special={EOT_TEXT})

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], threads: int = 8) -> list[list[int]]:
        """Ids of many documents at once (tiktoken runs them in parallel threads); special tokens in the
        text are treated as plain text."""
        return self.enc.encode_ordinary_batch(texts, num_threads=threads)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.uint16)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    @property
    def fingerprint(self) -> str:
        return "gpt2"

    def token_bytes(self) -> np.ndarray:
        return _gpt2_bytes().copy()

    def to_dict(self) -> dict:
        return {"kind": self.kind}

    def to_hf(self, transformers, pad: bool = False):
        """transformers' GPT2Tokenizer from the vocabulary files zoo ships."""
        folder = importlib.resources.files("zoo.data") / "gpt2"
        vocab = json.loads((folder / "encoder.json").read_text("utf-8"))
        merges = [tuple(line.split()) for line in (folder / "vocab.bpe").read_text("utf-8").split("\n")[1:] if line]
        return transformers.GPT2Tokenizer(vocab=vocab, merges=merges, eos_token=EOT_TEXT, bos_token=EOT_TEXT,
                                          unk_token=EOT_TEXT)


@functools.cache
def _gpt2_bytes() -> np.ndarray:
    enc = gpt2_encoding()
    out = np.array([len(enc.decode_single_token_bytes(i)) for i in range(EOT)] + [0], dtype=np.int64)
    return out


def _fit(data, argument: str, documents: Documents) -> Gpt2Tokenizer:
    return Gpt2Tokenizer()


SPEC = TokenizerSpec(name="gpt2", fields=(), fit=_fit, key=lambda data, argument: {},
                     from_dict=lambda saved: Gpt2Tokenizer(), summary="OpenAI's GPT-2 BPE (50,257 ids)")
