"""Text sources and token splits shared by every task."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo import cache_home
from zoo.errors import DataError, ZooError
from zoo.tokenizers import CharTokenizer, Tokenizer, selected, tokenizer_from_dict
from zoo.tokenizers.base import Documents

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
                        "(folders of .jsonl/.parquet documents need data.tokenizer = \"bpe\", \"gpt2\" or \"hf:PATH\")")
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
    a, b = _cut(len(ids), fractions, cut)
    return TokenSplits(train=ids[:a], val=ids[a:b], test=ids[b:])


def _cut(n: int, fractions: tuple[float, float, float], cut: str) -> tuple[int, int]:
    """Where train ends and test starts in a sequence of n items (see split_tokens)."""
    at = (lambda f: int(n * f)) if cut == "floor" else (lambda f: int(round(n * f)))
    return at(fractions[0]), (n if fractions[2] == 0 else at(fractions[0] + fractions[1]))


def _single_text(source: str) -> bool:
    """Embedded datasets and a single plain-text file are one document, split by position."""
    return source.startswith("embedded:") or (Path(source).expanduser().is_file()
                                              and Path(source).suffix not in (".jsonl", ".json", ".parquet"))


def tokenizer_cache(data) -> Path:
    """Where trained tokenizers are kept: beside the token files (data.cache_dir, else zoo's cache)."""
    return (Path(data.cache_dir).expanduser() if data.cache_dir else cache_home()) / "tokenizers"


def _tokenizer_key(data, source_key: dict) -> dict:
    spec, argument = selected(data.tokenizer)
    return {"source": source_key, "tokenizer": spec.name, **spec.key(data, argument)}


def tokenizer_path(data, source_key: dict) -> Path:
    """Where the recipe's trained tokenizer is cached: a file named by a hash of the source and the settings."""
    spec, _ = selected(data.tokenizer)
    digest = hashlib.sha256(json.dumps(_tokenizer_key(data, source_key), sort_keys=True).encode()).hexdigest()[:16]
    return tokenizer_cache(data) / f"{spec.name}-{digest}.json"


def fit_tokenizer(data, documents: Documents, source_key: dict) -> Tokenizer:
    """The recipe's tokenizer. One that learns from the data (bpe) is trained once per source and settings and
    kept under a key of both, so every run, seed and resume of the recipe uses the same vocabulary."""
    spec, argument = selected(data.tokenizer)
    if not spec.trained:
        return spec.fit(data, argument, documents)
    path = tokenizer_path(data, source_key)
    key = _tokenizer_key(data, source_key)
    if path.is_file():
        try:
            return tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ZooError, OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"the cached tokenizer {path} cannot be read ({str(exc)[:120]}); move it away and "
                            "run again to train it anew") from None
    tok = spec.fit(data, argument, documents)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**tok.to_dict(), "trained_on": key}, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return tok


def recipe_tokenizer(data) -> tuple[Tokenizer, Path | None, bool]:
    """(tokenizer, where it is cached or None, whether this call trained it) for a recipe's [data], without
    tokenising the corpus."""
    spec, _ = selected(data.tokenizer)
    if _single_text(data.source):
        documents, key = _text_documents(data, read_text(data.source, data.encoding_errors))
    else:
        documents, key = _corpus_documents(data)
    path = tokenizer_path(data, key) if spec.trained else None
    existed = path is not None and path.is_file()
    return fit_tokenizer(data, documents, key), path, spec.trained and not existed


def _text_documents(data, text: str) -> tuple[Documents, dict]:
    """A single text's documents for fitting a tokenizer (its train part, or all of it) and its cache key."""
    a, _ = _cut(len(text), data.splits, data.cut)

    def documents(which: str):
        yield text if which == "all" else text[:a]

    return documents, {"source": data.source, "bytes": len(text), "sha256": hashlib.sha256(
        text.encode("utf-8", "surrogatepass")).hexdigest(), "splits": list(data.splits), "cut": data.cut}


def _corpus_documents(data) -> tuple[Documents, dict]:
    """A corpus's documents by split for fitting a tokenizer, and its cache key (files, sizes, times)."""
    from zoo.data import tokens

    settings = {"text_field": data.text_field, "val_fraction": data.val_fraction, "errors": data.encoding_errors}
    key = {"source": data.source, **settings, **tokens.source_stamp(data.source)}
    return (lambda which: tokens.documents(data.source, which, **settings)), key


def text_splits(data, tokenizer: Tokenizer | None = None) -> tuple[Tokenizer, TokenSplits]:
    """A single text's tokenizer and train/val/test ids. The text is cut by character position and each part
    encoded (so every tokenizer sees the same val and test text), or, for a tokenizer that splits by tokens
    (GPT-2's, as zoo always has), encoded whole and its ids cut."""
    text = read_text(data.source, data.encoding_errors)
    if not text:
        raise DataError(f"data source {data.source} is empty; it needs text to train on")
    a, b = _cut(len(text), data.splits, data.cut)
    if tokenizer is None:
        tokenizer = fit_tokenizer(data, *_text_documents(data, text))
    missing = tokenizer.unknown(text)
    if missing:
        raise DataError(f"data source {data.source} has characters the run's vocabulary lacks "
                        f"({', '.join(map(repr, missing[:10]))}); start a new run for new text")
    if tokenizer.split_by == "tokens":
        return tokenizer, split_tokens(tokenizer.encode_array(text), data.splits, data.cut)
    parts = [tokenizer.encode_array(part) for part in (text[:a], text[a:b], text[b:])]
    return tokenizer, TokenSplits(*parts)


def char_data(source: str, fractions: tuple[float, float, float], errors: str = "strict",
              tokenizer: CharTokenizer | None = None, cut: str = "round") -> tuple[CharTokenizer, TokenSplits]:
    """Read a text, learn (or reuse) its character vocabulary, and split its ids."""
    from types import SimpleNamespace

    data = SimpleNamespace(source=source, splits=fractions, encoding_errors=errors, cut=cut, tokenizer="char")
    return text_splits(data, tokenizer)  # type: ignore[return-value]


def load_splits(data, tokenizer=None, progress: bool = True):
    """(tokenizer, TokenSplits, info) for a recipe's [data] section. Single texts are split by position in
    memory; corpora are prepared once into cached token files (`zoo prepare-data`). A resumed run passes the
    tokenizer it was trained with."""
    corpus = tokenizer.corpus if tokenizer is not None else selected(data.tokenizer)[0].corpus
    if _single_text(data.source) or not corpus:
        tok, splits = text_splits(data, tokenizer)  # read_text names a folder or a missing file
        return tok, splits, {"source": data.source, "tokens": {k: len(splits[k]) for k in ("train", "val", "test")}}
    from zoo.data import tokens

    tok, folder = prepare(data, tokenizer, progress=progress)
    manifest, arrays = tokens.load(folder, tok)
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


def prepare(data, tokenizer: Tokenizer | None = None, progress: bool = True) -> tuple[Tokenizer, Path]:
    """The tokenizer and the cached token files of a recipe's corpus (trained and tokenised unless cached)."""
    from zoo.data import tokens

    spec, _ = selected(data.tokenizer)
    if not (tokenizer.corpus if tokenizer is not None else spec.corpus):
        raise DataError(f"data.source {data.source} is a corpus of documents; the {data.tokenizer} tokenizer reads "
                        "one UTF-8 text file: set data.tokenizer = \"bpe\", \"gpt2\" or \"hf:PATH\"")
    cache = Path(data.cache_dir).expanduser() / "tokens" if data.cache_dir else None
    if tokenizer is None:
        tokenizer = fit_tokenizer(data, *_corpus_documents(data))
    folder = tokens.prepare(data.source, tokenizer, text_field=data.text_field, val_fraction=data.val_fraction,
                            max_tokens=data.max_tokens, errors=data.encoding_errors, progress=progress, cache=cache)
    return tokenizer, folder
