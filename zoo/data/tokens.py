"""Pre-training data for BPE models: documents from local text/jsonl/parquet files or a Hugging Face dataset
(streamed), tokenised once into memory-mapped token files (uint16 while the vocabulary fits, uint32 above 65,536
ids) with a manifest, cached and reused under a key of the source, the settings and the tokenizer.

A source is a sequence of documents; each document's tokens are followed by `<|endoftext|>`. Documents go to
train or validation by index (every `round(1 / val_fraction)`-th to validation), so the split is the same on
every machine. Memory is bounded by one chunk of documents, never by the corpus.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from zoo import __version__, cache_home
from zoo.errors import DataError
from zoo.tokenizers import Tokenizer, tokenizer_from_dict

FORMAT = 1
LOCAL_FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json",
                 ".parquet": "parquet"}


def cache_root() -> Path:
    """Where token files live: the `tokens` folder of zoo's cache."""
    return cache_home() / "tokens"


def local_files(source: str) -> list[Path]:
    """The files a local source names: a file, a directory (its supported files) or a glob pattern."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_FORMATS)
    elif any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source)))
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"data source {source} does not exist; name a file, a folder, a glob, or hf:NAME[:CONFIG]")
    if not files:
        raise DataError(f"data source {source} holds no .txt, .jsonl or .parquet files")
    kinds = {LOCAL_FORMATS.get(p.suffix) for p in files}
    if None in kinds or len(kinds) > 1:
        raise DataError(f"data source {source} must be files of one kind: .txt, .jsonl or .parquet "
                        f"(found {', '.join(sorted({p.suffix or '(none)' for p in files}))})")
    return files


def _text_documents(files: list[Path], errors: str) -> Iterator[str]:
    for path in files:
        raw = path.read_bytes()
        try:
            yield raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError as exc:
            raise DataError(f"data file {path} is not UTF-8 (invalid byte at offset {exc.start}); convert it, or "
                            f"set data.encoding_errors = \"replace\"") from None


def _dataset_batches(dataset, text_field: str, where: str, size: int) -> Iterator[list[str]]:
    for batch in dataset.iter(batch_size=size):
        if text_field not in batch:
            raise DataError(f"{where} has no {text_field!r} field (fields: {', '.join(batch)}); set data.text_field")
        yield [t for t in batch[text_field] if isinstance(t, str) and t]


def document_batches(source: str, text_field: str = "text", errors: str = "strict",
                     size: int = 512) -> Iterator[list[str]]:
    """The documents of a source in batches, streamed: `hf:NAME[:CONFIG]` or local .txt/.jsonl/.parquet."""
    import datasets

    if source.startswith("hf:"):
        name, _, config = source.removeprefix("hf:").partition(":")
        try:
            dataset = datasets.load_dataset(name, name=config or None, split="train", streaming=True)
        except Exception as exc:  # datasets raises many kinds (ConnectionError, offline mode, missing repo)
            raise DataError(f"cannot open Hugging Face dataset {name!r} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160]}); it needs a network connection, or use local "
                            f"files") from None
        yield from _dataset_batches(dataset, text_field, source, size)
        return
    files = local_files(source)
    kind = LOCAL_FORMATS[files[0].suffix]
    if kind == "text":
        for text in _text_documents(files, errors):
            yield [text]
        return
    if kind == "parquet":
        # pyarrow reads local parquet row-batch by row-batch several times faster than the datasets row
        # iterator, with the same bounded memory
        import pyarrow.parquet as pq

        for path in files:
            pf = pq.ParquetFile(path)
            if text_field not in pf.schema_arrow.names:
                raise DataError(f"{path} has no {text_field!r} column (columns: {', '.join(pf.schema_arrow.names)}); "
                                f"set data.text_field")
            for batch in pf.iter_batches(batch_size=size, columns=[text_field]):
                yield [t for t in batch.column(0).to_pylist() if isinstance(t, str) and t]
        return
    dataset = datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train", streaming=True)
    yield from _dataset_batches(dataset, text_field, source, size)


_WORKER: Tokenizer | None = None


def _init_worker(saved: dict) -> None:
    """A worker process's tokenizer, rebuilt once from its saved form (safe under spawn)."""
    global _WORKER
    _WORKER = tokenizer_from_dict(saved)


def _encode(texts: list[str], tok: Tokenizer | None = None) -> list[bytes]:
    """The token file bytes of each document's ids followed by its end-of-text id (runs in worker processes)."""
    tok = tok or _WORKER
    assert tok is not None and tok.eot is not None
    return [np.asarray([*ids, tok.eot], dtype=tok.dtype).tobytes() for ids in tok.encode_batch(texts, threads=1)]


def val_every(val_fraction: float) -> int:
    """Every n-th document goes to validation (0: none)."""
    return max(2, round(1 / val_fraction)) if val_fraction > 0 else 0


def is_val(index: int, every: int) -> bool:
    return bool(every) and index % every == every - 1


def documents(source: str, which: str = "train", *, text_field: str = "text", val_fraction: float = 0.01,
              errors: str = "strict") -> Iterator[str]:
    """The documents of a source, one by one: the train split's ("train", what a tokenizer is trained on: no
    validation or test text), the validation split's ("val", which holds the test slice too) or all ("all")."""
    every, index = val_every(val_fraction), 0
    for batch in document_batches(source, text_field, errors):
        for doc in batch:
            if which == "all" or is_val(index, every) == (which == "val"):
                yield doc
            index += 1


def source_stamp(source: str) -> dict:
    """What identifies a source's content for cache keys: its files' paths, sizes and times (a Hub name as is)."""
    files = None if source.startswith("hf:") else local_files(source)
    return {"stamp": _fingerprint(source, files, {})}


def _fingerprint(source: str, files: list[Path] | None, settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"source": source, "format": FORMAT, **settings}, sort_keys=True).encode())
    for path in files or []:
        st = path.stat()
        h.update(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prepare(source: str, tokenizer: Tokenizer, *, text_field: str = "text", val_fraction: float = 0.01,
            max_tokens: int = 0, errors: str = "strict", chunk_documents: int = 256, workers: int = 0,
            progress: bool = True, cache: Path | None = None) -> Path:
    """Tokenise `source` with `tokenizer` into `<cache>/<fingerprint>/{train,val}.bin` + `manifest.json`, unless
    that folder exists already (the fingerprint covers the source, the settings and the tokenizer). `max_tokens`
    stops once the train split holds that many (0 = whole source).
    `workers` processes encode chunks in parallel (0 = one per CPU core)."""
    files = None if source.startswith("hf:") else local_files(source)
    settings = {"tokenizer": tokenizer.fingerprint, "text_field": text_field, "val_fraction": val_fraction,
                "max_tokens": max_tokens, "errors": errors}
    folder = (cache or cache_root()) / _fingerprint(source, files, settings)
    if (folder / "manifest.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    every = val_every(val_fraction)
    itemsize = np.dtype(tokenizer.dtype).itemsize
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    hashes = {"train": hashlib.sha256(), "val": hashlib.sha256()}
    n_bytes, start = 0, time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="doc", desc=f"tokenising {source}", disable=not sys.stderr.isatty())
    outs = {split: open(tmp / f"{split}.bin", "wb") for split in counts}  # noqa: SIM115 - closed below

    def flush(chunk: list[str], encoded: list[bytes], first_index: int) -> None:
        nonlocal n_bytes
        for offset, data in enumerate(encoded):
            split = "val" if is_val(first_index + offset, every) else "train"
            outs[split].write(data)
            hashes[split].update(data)
            counts[split] += len(data) // itemsize
            docs[split] += 1
        n_bytes += sum(len(d.encode("utf-8")) for d in chunk)
        if bar is not None:
            bar.update(len(chunk))
            bar.set_postfix_str(f"{counts['train'] + counts['val']:,} tokens")

    workers = workers or os.cpu_count() or 1
    pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(tokenizer.to_dict(),))
    try:
        index = 0
        pending: deque = deque()  # at most 2 chunks per worker in flight: memory stays bounded
        for chunk in document_batches(source, text_field, errors, chunk_documents):
            pending.append((chunk, pool.submit(_encode, chunk) if pool else None))
            while pending and (len(pending) > 2 * workers or pool is None):
                done, future = pending.popleft()
                flush(done, future.result() if future else _encode(done, tokenizer), index)
                index += len(done)
            if max_tokens and counts["train"] >= max_tokens:
                break
        while pending and not (max_tokens and counts["train"] >= max_tokens):
            done, future = pending.popleft()
            flush(done, future.result(), index)
            index += len(done)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for f in outs.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        if bar is not None:
            bar.close()
    if counts["train"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"data source {source} yielded no text to train on")
    seconds = time.perf_counter() - start
    manifest = {
        "source": source, "tokenizer": tokenizer.fingerprint, "tokenizer_kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(tokenizer.dtype).name, "format": FORMAT,
        "zoo_version": __version__,
        "settings": settings, "documents": docs, "tokens": counts,
        "sha256": {k: h.hexdigest() for k, h in hashes.items()}, "text_bytes": n_bytes,
        "seconds": round(seconds, 3), "files": [str(p) for p in files or []],
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same data first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load(folder: Path, tokenizer: Tokenizer | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and the memory-mapped train/val token arrays of a prepared folder, checked against the
    tokenizer that is to read them (a folder made by another one is refused, never deleted)."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    made_by = manifest.get("tokenizer", "gpt2")
    if tokenizer is not None and made_by != tokenizer.fingerprint:
        raise DataError(f"token cache {folder} was made by the {made_by} tokenizer, not this run's "
                        f"{tokenizer.fingerprint}; set data.cache_dir to another folder, or move {folder} away to "
                        "prepare it again")
    name = manifest.get("dtype", "uint16")
    if name not in ("uint16", "uint32"):
        raise DataError(f"token cache {folder} has token files of dtype {name!r}; move it away to prepare it again")
    dtype = np.dtype(name)
    if tokenizer is not None and dtype != np.dtype(tokenizer.dtype):
        raise DataError(f"token cache {folder} holds {name} ids but {tokenizer.fingerprint} needs "
                        f"{np.dtype(tokenizer.dtype).name}; move it away to prepare it again")
    arrays = {}
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        size = path.stat().st_size
        if size != dtype.itemsize * manifest["tokens"][split]:
            raise DataError(f"token file {path} is truncated ({size} bytes, manifest says "
                            f"{manifest['tokens'][split]} tokens of {name}); move {folder} away to prepare it again")
        arrays[split] = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
    return manifest, arrays
