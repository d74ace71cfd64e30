"""A byte-level BPE trained on the recipe's own train split.

Training is Hugging Face `tokenizers`' BPE trainer (the split pattern as a regex pre-tokenizer, GPT-2's byte
alphabet, `<|endoftext|>` the last id); encoding is tiktoken, handed the learned merges as ranks (nanochat's
arrangement: a trainer for the merges, tiktoken's speed for the ids). benchmarks/tokenizer.py measures the
trainer against rustbpe and the encoder against tiktoken's GPT-2 on the same text."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import Iterator

import numpy as np

from zoo.errors import DataError
from zoo.tokenizers.base import EOT_TEXT, Documents, Tokenizer, TokenizerSpec, byte_level_hf, from_printable

# the split patterns (pre-tokenisation: merges never cross a piece). gpt4 is the default: cl100k's pattern as
# first published and as Llama 3 ships it, which keeps numbers to pieces of at most three digits (GPT-2's runs
# of digits make one token per frequent number) and folds contractions case-insensitively; gpt2 is GPT-2's.
PATTERNS = {
    "gpt4": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
            r"""|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
}
DEFAULT_VOCAB = 4096
MIN_VOCAB = 257  # the 256 bytes and <|endoftext|>
MAX_VOCAB = 2**32  # what uint32 token files hold


class BpeTokenizer(Tokenizer):
    """Byte-level BPE with `ranks` (token bytes -> id, the 256 single bytes first, then the merges in the order
    they were learned), a split pattern and `<|endoftext|>` as the id after them."""

    kind = "bpe"

    def __init__(self, ranks: list[bytes], pattern: str):
        if pattern not in PATTERNS:
            raise DataError(f"saved BPE tokenizer has an unknown split pattern {pattern!r}; known: "
                            f"{', '.join(PATTERNS)}")
        if len(set(ranks)) != len(ranks) or sorted(t for t in ranks if len(t) == 1) != [bytes([b]) for b in range(256)]:
            raise DataError("saved BPE tokenizer is damaged (its tokens are not the 256 bytes and distinct merges)")
        self.ranks = list(ranks)
        self.pattern = pattern
        self.eot = len(ranks)
        self.vocab_size = len(ranks) + 1
        self.stats: dict = {}  # how it was trained (seconds, characters), when this process trained it

    @functools.cached_property
    def enc(self):
        import tiktoken

        return tiktoken.Encoding(name=f"zoo-bpe-{self.fingerprint}", pat_str=PATTERNS[self.pattern],
                                 mergeable_ranks={t: i for i, t in enumerate(self.ranks)},
                                 special_tokens={EOT_TEXT: self.eot}, explicit_n_vocab=self.vocab_size)

    @functools.cached_property
    def fingerprint(self) -> str:  # type: ignore[override]
        h = hashlib.sha256(self.pattern.encode())
        for token in self.ranks:
            h.update(len(token).to_bytes(4, "little") + token)
        return f"bpe{self.vocab_size}-{h.hexdigest()[:12]}"

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special={EOT_TEXT})

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], threads: int = 8) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=threads)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(t) for t in self.ranks] + [0], dtype=np.int64)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "pattern": self.pattern, "vocab_size": self.vocab_size,
                "tokens": [base64.b64encode(t).decode("ascii") for t in self.ranks]}

    def to_hf(self, transformers, pad: bool = False):
        return byte_level_hf(transformers, {t: i for i, t in enumerate(self.ranks)}, PATTERNS[self.pattern],
                             {EOT_TEXT: self.eot}, pad)


def from_dict(saved: dict) -> BpeTokenizer:
    tokens = [base64.b64decode(t, validate=True) for t in saved["tokens"]]
    tok = BpeTokenizer(tokens, saved["pattern"])
    if saved.get("vocab_size", tok.vocab_size) != tok.vocab_size:
        raise DataError(f"saved BPE tokenizer says vocab_size {saved['vocab_size']} but holds {tok.vocab_size} ids")
    return tok


def train(documents: Iterator[str], vocab_size: int, pattern: str = "gpt4") -> BpeTokenizer:
    """Learn `vocab_size - 257` merges from `documents` (fewer where the text has no more pairs to merge)."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HfTokenizer

    start = time.perf_counter()
    chars = 0

    def counted() -> Iterator[str]:
        nonlocal chars
        for doc in documents:
            chars += len(doc)
            yield doc

    hf = HfTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERNS[pattern]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, special_tokens=[],  # <|endoftext|> is added after
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(counted(), trainer)
    if chars == 0:
        raise DataError("the train split has no text to train a BPE tokenizer on")
    merges = json.loads(hf.to_str())["model"]["merges"]
    ranks = [bytes([b]) for b in range(256)]
    for merge in merges:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        left, right = from_printable(a), from_printable(b)
        if left is None or right is None:  # not written in the byte alphabet: cannot happen with ByteLevel
            raise DataError(f"the BPE trainer produced a merge outside the byte alphabet: {merge!r}")
        ranks.append(left + right)
    tok = BpeTokenizer(ranks, pattern)
    tok.stats = {"seconds": round(time.perf_counter() - start, 3), "characters": chars, "merges": len(merges)}
    return tok


def check(data, argument: str) -> str:
    vocab = data.vocab_size or DEFAULT_VOCAB
    if not MIN_VOCAB <= vocab <= MAX_VOCAB:
        return (f"data.vocab_size is {vocab:,}; a byte-level BPE needs at least {MIN_VOCAB} (the 256 bytes and "
                f"<|endoftext|>) and token files hold at most {MAX_VOCAB:,} ids")
    if argument:
        return f"data.tokenizer is 'bpe:{argument}'; write \"bpe\" and set data.vocab_size"
    return ""


def _fit(data, argument: str, documents: Documents) -> BpeTokenizer:
    def limited() -> Iterator[str]:  # the first data.tokenizer_max_chars characters of the train split
        left = data.tokenizer_max_chars or None
        for doc in documents("train"):
            if left is not None:
                if left <= 0:
                    return
                doc, left = doc[:left], left - len(doc)
            yield doc

    return train(limited(), data.vocab_size or DEFAULT_VOCAB, data.tokenizer_pattern)


def _key(data, argument: str) -> dict:
    return {"vocab_size": data.vocab_size or DEFAULT_VOCAB, "pattern": data.tokenizer_pattern,
            "max_chars": data.tokenizer_max_chars, "trainer": "hf-tokenizers-bpe-1"}


SPEC = TokenizerSpec(name="bpe", fields=("vocab_size", "tokenizer_pattern", "tokenizer_max_chars"), fit=_fit,
                     from_dict=from_dict, key=_key, check=check, trained=True,
                     summary=f"a byte-level BPE trained on the train split (data.vocab_size ids, {DEFAULT_VOCAB:,} "
                             "if 0)")
