"""Labelled texts: reading a CSV/TSV (or the embedded SMS Spam Collection, as pandas reads it), the splits (zoo's
seeded one, or Raschka's book split message for message) and their encoding with the base's tokenizer."""

from __future__ import annotations

import csv
import importlib.resources
import io
import random
from dataclasses import dataclass
from pathlib import Path

from zoo.bases import resolve_base
from zoo.errors import DataError, RecipeError
from zoo.tasks.classify.config import ClassifyTaskConfig


@dataclass
class Examples:
    """Token ids and label indices of the train/val/test splits, and where each came from (`sources`: the
    text and its file:line, for predictions)."""

    train: list[tuple[list[int], int]]
    val: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]
    sources: dict[str, list[tuple[str, str]]] | None = None

    def __getitem__(self, split: str) -> list[tuple[list[int], int]]:
        if split not in ("train", "val", "test"):
            raise DataError(f"unknown split {split!r}; use train, val or test")
        return getattr(self, split)


def _quoted_tsv(text: str, where: str) -> list[tuple[str, str, str]]:
    """label TAB text rows read as pandas' `read_csv(sep="\\t", header=None)` reads them: a field that opens
    with a double quote runs to its closing quote, across line ends (in the SMS Spam Collection three ham
    lines become one message this way, as in the book)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar='"')
    rows, start = [], 1
    for row in reader:
        if len(row) >= 2:
            rows.append((row[1], row[0], f"{where}:{start}"))
        start = reader.line_num + 1
    return rows


def read_labelled(source: str, config: ClassifyTaskConfig) -> list[tuple[str, str, str]]:
    """(text, label, where) rows of `embedded:sms_spam` (label TAB text, no header) or a CSV/TSV file with a
    header row naming `text_column` and `label_column`. The SMS file is read a line a message, or for the
    book's split as pandas reads it."""
    if source == "embedded:sms_spam":
        raw = (importlib.resources.files("zoo.data") / "embedded" / "sms_spam.tsv").read_text("utf-8")
        if config.split == "book":
            return _quoted_tsv(raw, "sms_spam.tsv")
        rows = [line.split("\t", 1) for line in raw.splitlines()]
        return [(text, label, f"sms_spam.tsv:{i + 1}") for i, (label, text) in enumerate(rows)]
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; set data.source to a CSV/TSV file or embedded:sms_spam")
    tsv = path.suffix.lower() in (".tsv", ".tab")
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 2**20))  # a long message is fine; a runaway quote is not
    try:
        with open(path, encoding="utf-8", newline="") as f:
            # strict: a quote left open is an error at the end of the file, not a field that swallows rows
            reader = csv.reader(f, delimiter="\t" if tsv else ",", strict=True,
                                quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
            header = next(reader, None)
            if header is None:
                raise DataError(f"data file {path} is empty")
            missing = [c for c in (config.text_column, config.label_column) if c not in header]
            if missing:
                raise DataError(f"{path}:1: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)});"
                                f" set task.text_column / task.label_column")
            ti, li = header.index(config.text_column), header.index(config.label_column)
            rows = []
            for row in reader:
                rows.append((row[ti] if ti < len(row) else "", row[li] if li < len(row) else "",
                             f"{path}:{reader.line_num}"))
            return rows
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: {exc} (a quote that is never closed, or a field longer than "
                        "64 MiB?); fix the quoting of that row") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not UTF-8 (invalid byte at offset {exc.start})") from None


BOOK_SEED = 123  # random_state of the book's create_balanced_dataset and random_split


def split_texts(recipe) -> dict[str, list[tuple[str, int, str]]]:
    """The labelled texts, checked, balanced, shuffled and split: {split: [(text, label index, where)]}.
    `task.split = "seeded"` balances and shuffles with Python's random seeded by run.seed and cuts by rounding;
    `"book"` is Raschka's create_balanced_dataset + random_split: each larger class sampled down to the
    smallest with numpy's RandomState(123) (pandas' `sample(n, random_state=123)` is `permutation(len)[:n]`),
    classes concatenated in label order, the whole shuffled with RandomState(123).permutation (pandas'
    `sample(frac=1)`), cut at int(n * fraction) (the book's `int(len(df) * train_frac)`)."""
    config: ClassifyTaskConfig = recipe.task
    rows = read_labelled(recipe.data.source, config)
    by_class: dict[int, list[tuple[str, str]]] = {i: [] for i in range(len(config.labels))}
    for text, label, where in rows:
        if label not in config.labels:
            raise DataError(f"{where}: label {label!r} is not one of {', '.join(config.labels)} (set task.labels)")
        if not text.strip():
            raise DataError(f"{where}: the text is empty")
        by_class[config.labels.index(label)].append((text, where))
    empty = [config.labels[i] for i, texts in by_class.items() if not texts]
    if empty:
        raise DataError(f"{recipe.data.source} has no examples of class {', '.join(map(repr, empty))}")
    n_train, n_val = recipe.data.splits[0], recipe.data.splits[1]
    if config.split == "book":
        import numpy as np

        smallest = min(len(t) for t in by_class.values())
        if config.balance:
            by_class = {i: [texts[j] for j in np.random.RandomState(BOOK_SEED).permutation(len(texts))[:smallest]]
                        if len(texts) > smallest else texts for i, texts in by_class.items()}
        items = [(text, i, where) for i, texts in by_class.items() for text, where in texts]
        items = [items[j] for j in np.random.RandomState(BOOK_SEED).permutation(len(items))]
        a = int(len(items) * n_train)
        b = a + int(len(items) * n_val)
    else:
        rng = random.Random(recipe.run.seed)
        if config.balance:
            smallest = min(len(t) for t in by_class.values())
            by_class = {i: rng.sample(texts, smallest) for i, texts in by_class.items()}
        items = [(text, i, where) for i, texts in by_class.items() for text, where in texts]
        rng.shuffle(items)
        a = int(round(len(items) * n_train))
        b = int(round(len(items) * (n_train + n_val)))
    parts = {"train": items[:a], "val": items[a:b], "test": items[b:]}
    for split, part in parts.items():
        if not part:
            raise DataError(f"the {split} split of {recipe.data.source} is empty ({len(items)} examples); use more "
                            "data")
    return parts


def load_data(recipe, tokenizer=None, progress: bool = True):
    """(tokenizer, Examples, info): `split_texts`, encoded with the base's tokenizer (the classifier truncates
    them, see Classifier.fit)."""
    tokenizer = tokenizer or base_tokenizer(recipe)
    texts = split_texts(recipe)
    parts = {split: [(tokenizer.encode(text), label) for text, label, _ in part] for split, part in texts.items()}
    data = Examples(**parts, sources={split: [(text, where) for text, _, where in part]
                                      for split, part in texts.items()})
    counts = {s: len(data[s]) for s in ("train", "val", "test")}
    return tokenizer, data, {"source": recipe.data.source, "examples": counts}


def base_tokenizer(recipe):
    """The base's tokenizer (zoo.bases): a base run's own (a character vocabulary reads unknown characters as a
    fallback), or GPT-2's for `hf:` weights; with no base, the recipe's GPT-2 tokenizer."""
    base = recipe.task.base
    if base:
        return resolve_base(base).tokenizer()
    from zoo.tokenizers import selected

    spec, argument = selected(recipe.data.tokenizer)
    if spec.trained or not spec.corpus:
        raise RecipeError(f"a classifier with data.tokenizer = {recipe.data.tokenizer!r} needs task.base = a zoo run "
                          "directory (the base's own tokenizer)")
    return spec.fit(recipe.data, argument, lambda which: iter(()))
