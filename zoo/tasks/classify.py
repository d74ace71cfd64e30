"""Sequence classification (Raschka ch. 6): a linear head on the backbone's hidden state at the last non-pad
token, trained on labelled texts (the SMS Spam Collection by default, or any CSV/TSV with a text and a label
column), with a freezing policy. The backbone and its tokenizer come from a base: a zoo language-model run or
GPT-2 weights in the Hugging Face layout.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.resources
import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from zoo.bases import Base, resolve_base
from zoo.config import Section, check, doc
from zoo.errors import DataError, RecipeError
from zoo.models.base import Backbone, Trainable
from zoo.specs import TaskSpec
from zoo.tasks.base import Batch, MicroBatchPlan, Task
from zoo.tokenizers import EOT, Gpt2Tokenizer


@dataclass(frozen=True)
class ClassifyTaskConfig(Section):
    kind: str = doc("classify", "classify")
    base: str = doc("the pretrained language model: a run directory or hf:gpt2 / hf:PATH "
                    "(zoo finetune-classifier --base sets it)", "")
    base_checkpoint: str = doc("which checkpoint of a base run: best, latest or step-N", "best")
    labels: tuple[str, ...] = doc("the class names, in the order of the head's outputs", ("ham", "spam"))
    positive: str = doc("the class precision/recall/F1 are about (empty = the last label)", "")
    text_column: str = doc("text column of a CSV/TSV with a header row", "text")
    label_column: str = doc("label column of a CSV/TSV with a header row", "label")
    balance: bool = doc("undersample every class to the smallest one (the book's 747 + 747)", True)
    max_length: int = doc("truncate texts to this many tokens (0 = the model's context length, or no limit)", 0)
    trainable: Literal["default", "last_n", "head_only", "all"] = doc(
        "default: the last block/recurrent layer, the final norm and the head; last_n: the last `last_n` "
        "blocks too; head_only; all", "default")
    last_n: int = doc("blocks or recurrent layers trained with trainable = \"last_n\"", 1)
    split: Literal["seeded", "book"] = doc(
        "seeded: balance and shuffle with run.seed, cut by rounding; book: Raschka ch. 6 exactly (the file read "
        "as pandas reads it, ham sampled and the set shuffled with numpy's RandomState(123) as pandas' sample "
        "does, cut by truncation: the same messages in the same order as the book's train/val/test)", "seeded")
    pooling: Literal["last_token", "last_position"] = doc(
        "the hidden state the head reads: last_token (each message's last real token) or last_position (the "
        "last position of the padded row, the book's)", "last_token")
    padding: Literal["batch", "longest_train"] = doc(
        "batch: pad each batch to its longest message; longest_train: pad (and truncate) every message to the "
        "longest training message, the book's", "batch")
    head_bias: bool = doc("give the classification head a bias (the book's nn.Linear has one)", False)

    def validate(self) -> None:
        check(len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels), "task.labels",
              f"is {list(self.labels)}; give at least two distinct class names")
        check(not self.positive or self.positive in self.labels, "task.positive",
              f"is {self.positive!r}; use one of {', '.join(self.labels)}")
        check(self.max_length >= 0 and self.last_n >= 1, "task.max_length",
              "and task.last_n must be >= 0 and >= 1")


# ------------------------------------------------------------------------------------------------ data
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
    """The base's tokenizer: GPT-2 BPE, or a base run's character vocabulary (zoo.bases)."""
    if recipe.data.tokenizer == "gpt2":
        return Gpt2Tokenizer()
    base = recipe.task.base
    if not base or base.startswith("hf:"):
        raise RecipeError("a character-level classifier needs task.base = a zoo run directory (its vocabulary)")
    return resolve_base(base).tokenizer()


# ----------------------------------------------------------------------------------------------- model
class Classifier(Trainable):
    """A backbone plus a linear head (`score`; no bias by default, like GPT2ForSequenceClassification's) on
    the hidden state at each sequence's last real token, or at the last position of the padded row
    (`task.pooling`). With `task.padding = "longest_train"` it keeps the length every input is padded to as a
    buffer (`pad_to`, saved with the weights), so inference pads as training did."""

    stateful = False

    def __init__(self, config: ClassifyTaskConfig, backbone: nn.Module):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.max_seq_len = backbone.max_seq_len
        self.score = nn.Linear(backbone.d_model, len(config.labels), bias=config.head_bias)
        nn.init.normal_(self.score.weight, std=0.02)
        if self.score.bias is not None:
            nn.init.zeros_(self.score.bias)
        if config.padding == "longest_train":
            self.register_buffer("pad_to", torch.zeros((), dtype=torch.long))

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.backbone(idx)
        if self.config.pooling == "last_position":
            return self.score(hidden[:, -1])
        last = hidden[torch.arange(idx.shape[0], device=idx.device), lengths - 1]
        return self.score(last)

    @property
    def recurrent(self) -> bool:
        return self.backbone.recurrent

    def heads(self) -> list[nn.Module]:
        return [self.score, *self.backbone.heads()]

    def padded_length(self) -> int | None:
        """The fixed length inputs are padded to, or None for per-batch padding."""
        return int(self.pad_to) if self.config.padding == "longest_train" else None

    def fit(self, ids: list[int]) -> list[int]:
        """A message's ids cut to what the classifier reads: task.max_length (or the backbone's context) and
        the padded length, if fixed. The one truncation rule for training, evaluation and inference."""
        limits = [n for n in (self.config.max_length or self.max_seq_len, self.padded_length()) if n]
        return ids[: min(limits)] if limits else ids

    def load_pretrained(self) -> str:
        """Start from the base: a zoo run's checkpoint, or GPT-2 weights (zoo.bases)."""
        if not self.config.base:
            return self.backbone.load_pretrained()
        return resolve_base(self.config.base).load_into(self.backbone, self.config.base_checkpoint)

    def freeze(self) -> None:
        """Apply the trainable policy. The LM head is never trained: the classifier does not use it."""
        policy, cfg = self.config.trainable, self.config
        groups, final = self.backbone.layer_groups()
        train = [self.score]
        if policy == "all":
            train = [self]
        elif policy in ("default", "last_n"):
            n = 1 if policy == "default" else cfg.last_n
            train += [p for group in groups[-n:] for p in group] + list(final)
        for p in self.parameters():
            p.requires_grad = False
        for item in train:
            for p in item.parameters() if isinstance(item, nn.Module) else [item]:
                p.requires_grad = True
        lm_head = self.backbone.lm_head.weight
        if not any(lm_head is p for g in groups for p in g):  # an untied head is unused: out of the optimizer
            lm_head.requires_grad = False
            if getattr(self.backbone.lm_head, "bias", None) is not None:
                self.backbone.lm_head.bias.requires_grad = False


def wrap(config: ClassifyTaskConfig, backbone: Backbone) -> Classifier:
    model = Classifier(config, backbone)
    model.freeze()
    return model


# ------------------------------------------------------------------------------------------------ task
def pad_id_for(tokenizer_kind: str) -> int:
    """The id padding uses: GPT-2's <|endoftext|> (as the book and GPT2ForSequenceClassification do), else 0.
    With last-token pooling padding never reaches the head."""
    return EOT if tokenizer_kind == "gpt2" else 0


def pad(examples: list[tuple[list[int], int]], pad_id: int,
        length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example, or to `length`: ids [B, T], labels [B], lengths [B]."""
    longest = length or max(len(ids) for ids, _ in examples)
    x = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    for i, (ids, _) in enumerate(examples):
        x[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    y = torch.tensor([label for _, label in examples], dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids, _ in examples], dtype=torch.long)
    return x, y, lengths


class ClassifyTask(Task):
    """Shuffled padded examples each epoch (a permutation seeded by the epoch), cross-entropy on the head."""

    unit = "examples"
    reports_val_at_end = True

    def __init__(self, config: ClassifyTaskConfig, data: Examples, *, batch_size: int, seed: int, pad_id: int,
                 eval_batch_size: int, model: Classifier):
        self.config, self.data, self.batch_size, self.seed = config, data, batch_size, seed
        self.pad_id, self.eval_batch_size = pad_id, eval_batch_size
        if config.padding == "longest_train" and not model.padded_length():
            # a fresh model: the book pads every message to the longest training message (a loaded model
            # brings the length it was trained with)
            model.pad_to.fill_(max(len(model.fit(ids)) for ids, _ in data.train))
        self.pad_to = model.padded_length()
        for split in ("train", "val", "test"):
            data[split][:] = [(model.fit(ids), label) for ids, label in data[split]]
        if len(data.train) < batch_size:
            raise DataError(f"the train split has {len(data.train)} examples, fewer than train.batch_size "
                            f"({batch_size}); lower it or use more data")

    def steps_per_epoch(self) -> int:
        return len(self.data.train) // self.batch_size

    def items_per_step(self) -> int:
        return self.batch_size

    def chance_loss(self) -> float:
        """The loss of a uniform guess over the classes (nats per example)."""
        return math.log(len(self.config.labels))

    def micro_batches(self, step: int, plan: MicroBatchPlan) -> list[Batch]:
        epoch, i = divmod(step, self.steps_per_epoch())
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        chosen = order[i * self.batch_size:(i + 1) * self.batch_size].tolist()
        out = []
        for m in plan.mine:
            part = [self.data.train[j] for j in chosen[plan.rows(m)]]
            x, y, lengths = pad(part, self.pad_id, self.pad_to)
            out.append(Batch(x, y, slot=m, reset=True, lengths=lengths))
        return out

    def loss(self, model: nn.Module, batch: Batch, state) -> tuple[torch.Tensor, None]:
        return F.cross_entropy(model(batch.x, batch.lengths).float(), batch.y), None

    def metrics(self, sums: dict[str, float]) -> dict:
        return metrics_for(self.config.labels, self.config.positive, sums)

    def scalars(self, split: str, metrics: dict) -> dict[str, float]:
        return {f"acc/{split}": metrics["accuracy"]}

    def summary(self, split: str, metrics: dict, which: str) -> dict:
        return {f"{'final_' if which == 'final' else ''}{split}_metrics": metrics}

    def report(self, split: str, metrics: dict) -> str:
        return (f"{split} accuracy {metrics['accuracy']:.4f} (precision {metrics['precision']:.4f}, recall "
                f"{metrics['recall']:.4f}, F1 {metrics['f1']:.4f})")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """Summed loss and confusion-matrix counts over this rank's share of the split."""
        was_training = model.training
        model.eval()
        k = len(self.config.labels)
        sums = {"loss_sum": 0.0, "count": 0, **{f"cm_{a}_{b}": 0 for a in range(k) for b in range(k)}}
        examples = self.data[split]
        try:
            for n, start in enumerate(range(0, len(examples), self.eval_batch_size)):
                if n % world_size != rank:
                    continue
                x, y, lengths = pad(examples[start:start + self.eval_batch_size], self.pad_id, self.pad_to)
                with autocast():
                    logits = model(x.to(device), lengths.to(device)).float()
                sums["loss_sum"] += F.cross_entropy(logits, y.to(device), reduction="sum").item()
                sums["count"] += len(y)
                for truth, pred in zip(y.tolist(), logits.argmax(-1).tolist(), strict=True):
                    sums[f"cm_{truth}_{pred}"] += 1
        finally:
            model.train(was_training)
        return sums


    @torch.no_grad()
    def predictions(self, model: nn.Module, split: str, device: torch.device,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[dict]:
        """Every example of a split with its text, where it came from, true label, predicted label and the
        predicted label's probability (batched and padded as in evaluation)."""
        was_training = model.training
        model.eval()
        labels, rows = self.config.labels, []
        examples, sources = self.data[split], (self.data.sources or {}).get(split)
        try:
            for start in range(0, len(examples), self.eval_batch_size):
                x, y, lengths = pad(examples[start:start + self.eval_batch_size], self.pad_id, self.pad_to)
                with autocast():
                    probs = model(x.to(device), lengths.to(device)).float().softmax(-1).cpu()
                for k, (truth, p) in enumerate(zip(y.tolist(), probs, strict=True)):
                    text, where = sources[start + k] if sources else ("", "")
                    rows.append({"where": where, "text": text, "label": labels[truth],
                                 "predicted": labels[int(p.argmax())], "probability": float(p.max())})
        finally:
            model.train(was_training)
        return rows


@torch.no_grad()
def predict(model: Classifier, tokenizer, texts: list[str], device: torch.device,
            batch_size: int = 32) -> list[tuple[str, float]]:
    """(label, probability) of each text, tokenised, truncated and padded as the classifier was trained."""
    config = model.config
    pad_id = pad_id_for(tokenizer.kind)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            part = [(model.fit(tokenizer.encode(text)) or [pad_id], 0) for text in texts[start:start + batch_size]]
            x, _, lengths = pad(part, pad_id, model.padded_length())
            probs = model(x.to(device), lengths.to(device)).float().softmax(-1).cpu()
            out += [(config.labels[int(p.argmax())], float(p.max())) for p in probs]
    finally:
        model.train(was_training)
    return out


def metrics_for(labels: tuple[str, ...], positive: str, sums: dict[str, float]) -> dict:
    """Loss, accuracy, precision/recall/F1 of the positive class, and the confusion matrix (rows = truth)."""
    k = len(labels)
    cm = [[int(sums[f"cm_{a}_{b}"]) for b in range(k)] for a in range(k)]
    count = max(1, int(sums["count"]))
    pos = labels.index(positive) if positive else k - 1
    tp = cm[pos][pos]
    predicted = sum(cm[a][pos] for a in range(k))
    actual = sum(cm[pos])
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"loss": sums["loss_sum"] / count, "accuracy": sum(cm[i][i] for i in range(k)) / count,
            "precision": precision, "recall": recall, "f1": f1, "examples": int(sums["count"]),
            "positive": labels[pos], "labels": list(labels), "confusion": cm}


def build(config: ClassifyTaskConfig, recipe, tokenizer, data: Examples, model: Classifier,
          plan: MicroBatchPlan) -> ClassifyTask:
    return ClassifyTask(config, data, batch_size=recipe.train.batch_size,
                        seed=recipe.data.order_seed(recipe.run.seed), pad_id=pad_id_for(recipe.data.tokenizer),
                        eval_batch_size=recipe.eval.batch_size, model=model)


def finetune(raw: dict, base: Base, recipe_stem: str) -> tuple[dict, str]:
    """A classification recipe (parsed TOML) completed for a base model: the base's architecture and
    tokenizer and `task.base`; with the run's default name (`spam_<base>` for the SMS data)."""
    raw = json.loads(json.dumps(raw))
    raw["model"] = base.model_section()
    raw.setdefault("data", {})["tokenizer"] = base.tokenizer_kind
    raw.setdefault("task", {})["base"] = base.spec
    source = raw["data"].get("source", "embedded:sms_spam")
    return raw, (f"spam_{base.name}" if source == "embedded:sms_spam" else f"{recipe_stem}_{base.name}")


SPEC = TaskSpec(name="classify", config=ClassifyTaskConfig, load_data=load_data, wrap=wrap, build=build,
                finetune=finetune)
