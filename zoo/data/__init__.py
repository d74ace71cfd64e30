"""Text sources and token splits shared by every task."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.errors import DataError
from zoo.tokenizers import CharTokenizer

EMBEDDED = {"tinyshakespeare": "tinyshakespeare.txt"}


def read_text(source: str, errors: str = "strict") -> str:
    """The text of `source`: `embedded:NAME` (shipped with zoo) or a path to a local UTF-8 file."""
    if source.startswith("embedded:"):
        name = source.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise DataError(f"unknown embedded dataset {name!r}; embedded: {', '.join(EMBEDDED)}")
        return (importlib.resources.files("zoo.data") / "embedded" / EMBEDDED[name]).read_text("utf-8")
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; set data.source to a UTF-8 text file "
                        f"or embedded:tinyshakespeare")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {path} is empty; it needs text to train on")
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not UTF-8 (invalid byte at offset {exc.start}); convert it, "
                        f"or set data.encoding_errors = \"replace\"") from None


@dataclass
class TokenSplits:
    """Token ids of the train/val/test splits, cut by position so they are the same in every run."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    def __getitem__(self, split: str) -> torch.Tensor:
        if split not in ("train", "val", "test"):
            raise DataError(f"unknown split {split!r}; use train, val or test")
        return getattr(self, split)


def split_tokens(ids: torch.Tensor, fractions: tuple[float, float, float]) -> TokenSplits:
    """Cut one token sequence into train/val/test by position (train first, test last)."""
    n = len(ids)
    a = int(round(n * fractions[0]))
    b = int(round(n * (fractions[0] + fractions[1])))
    return TokenSplits(train=ids[:a], val=ids[a:b], test=ids[b:])


def char_data(source: str, fractions: tuple[float, float, float], errors: str = "strict",
              tokenizer: CharTokenizer | None = None) -> tuple[CharTokenizer, TokenSplits]:
    """Read a text, learn (or reuse) its character vocabulary, and split its ids."""
    text = read_text(source, errors)
    if not text:
        raise DataError(f"data source {source} is empty; it needs text to train on")
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    missing = tokenizer.unknown(text)
    if missing:
        raise DataError(f"data source {source} has characters the run's vocabulary lacks "
                        f"({', '.join(map(repr, missing[:10]))}); start a new run for new text")
    ids = torch.from_numpy(tokenizer.encode_array(text)).long()
    return tokenizer, split_tokens(ids, fractions)
