"""Text sources and token splits shared by every task."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.tokenizers import CharTokenizer, Gpt2Tokenizer

EMBEDDED = {"tinyshakespeare": "tinyshakespeare.txt"}


def read_text(source: str, errors: str = "strict") -> str:
    """The text of `source`: `embedded:NAME` (shipped with zoo) or a path to a local UTF-8 file."""
    if source.startswith("embedded:"):
        name = source.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise DataError(f"unknown embedded dataset {name!r}; embedded: {', '.join(EMBEDDED)}")
        return (importlib.resources.files("zoo.data") / "embedded" / EMBEDDED[name]).read_text("utf-8")
    path = Path(source).expanduser()
    if path.is_dir():
        raise DataError(f"data.source {path} is a folder; a character-level recipe reads one UTF-8 text file "
                        "(folders of .jsonl/.parquet documents need data.tokenizer = \"gpt2\")")
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
    """Token ids of the train/val/test splits (numpy arrays, memory-mapped for prepared corpora)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __getitem__(self, split: str) -> np.ndarray:
        if split not in ("train", "val", "test"):
            raise DataError(f"unknown split {split!r}; use train, val or test")
        return getattr(self, split)


def split_tokens(ids: np.ndarray, fractions: tuple[float, float, float], cut: str = "round") -> TokenSplits:
    """Cut one token sequence into train/val/test by position (train first, test last), at round(n * f) or,
    with cut = "floor", at int(n * f) (nanoGPT's `data[:int(n*0.9)]`); with no test fraction, val runs to
    the end."""
    n = len(ids)
    at = (lambda f: int(n * f)) if cut == "floor" else (lambda f: int(round(n * f)))
    a = at(fractions[0])
    b = n if fractions[2] == 0 else at(fractions[0] + fractions[1])
    return TokenSplits(train=ids[:a], val=ids[a:b], test=ids[b:])


def char_data(source: str, fractions: tuple[float, float, float], errors: str = "strict",
              tokenizer: CharTokenizer | None = None, cut: str = "round") -> tuple[CharTokenizer, TokenSplits]:
    """Read a text, learn (or reuse) its character vocabulary, and split its ids."""
    text = read_text(source, errors)
    if not text:
        raise DataError(f"data source {source} is empty; it needs text to train on")
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    missing = tokenizer.unknown(text)
    if missing:
        raise DataError(f"data source {source} has characters the run's vocabulary lacks "
                        f"({', '.join(map(repr, missing[:10]))}); start a new run for new text")
    return tokenizer, split_tokens(tokenizer.encode_array(text), fractions, cut)


def _single_text(source: str) -> bool:
    """Embedded datasets and a single plain-text file are one document, split by position."""
    return source.startswith("embedded:") or (Path(source).expanduser().is_file()
                                              and Path(source).suffix not in (".jsonl", ".json", ".parquet"))


def load_splits(data, tokenizer=None, progress: bool = True):
    """(tokenizer, TokenSplits, info) for a recipe's [data] section. Character data and single BPE texts are
    split by position in memory; BPE corpora are prepared once into cached token files (`zoo prepare-data`)."""
    if data.tokenizer == "char":
        tok, splits = char_data(data.source, data.splits, data.encoding_errors, tokenizer, data.cut)
        return tok, splits, {"source": data.source, "tokens": {k: len(splits[k]) for k in ("train", "val", "test")}}
    tok = Gpt2Tokenizer()
    if _single_text(data.source):
        ids = np.asarray(tok.encode(read_text(data.source, data.encoding_errors)), dtype=np.uint16)
        splits = split_tokens(ids, data.splits, data.cut)
        return tok, splits, {"source": data.source, "tokens": {k: len(splits[k]) for k in ("train", "val", "test")}}
    from zoo.data import tokens

    folder = prepare(data, progress=progress)
    manifest, arrays = tokens.load(folder)
    val = arrays["val"]
    if data.test_tokens:
        end = data.test_offset + data.test_tokens
        if end > len(val):
            raise DataError(f"the validation split of {data.source} has {len(val):,} tokens; the test slice "
                            f"[{data.test_offset:,}, {end:,}) does not fit; lower data.test_offset/test_tokens")
        val_part, test = val[: data.test_offset], val[data.test_offset : end]
    else:
        half = len(val) // 2
        val_part, test = val[:half], val[half:]
    info = {"source": data.source, "cache": str(folder), "manifest": manifest,
            "tokens": {"train": len(arrays["train"]), "val": len(val_part), "test": len(test)}}
    return tok, TokenSplits(train=arrays["train"], val=val_part, test=test), info


def prepare(data, progress: bool = True) -> Path:
    """Tokenise a recipe's BPE corpus into cached token files (a no-op when they exist)."""
    from zoo.data import tokens

    cache = Path(data.cache_dir).expanduser() / "tokens" if data.cache_dir else None
    return tokens.prepare(data.source, text_field=data.text_field, val_fraction=data.val_fraction,
                          max_tokens=data.max_tokens, errors=data.encoding_errors, progress=progress, cache=cache)
