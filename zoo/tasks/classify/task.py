"""The classification task: padded batches of shuffled examples each epoch, cross-entropy on the head,
evaluation sums and the per-example predictions of `zoo eval --predictions`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import DataError
from zoo.models.base import eval_mode
from zoo.tasks.base import Autocast, Batch, MicroBatchPlan, Task
from zoo.tasks.classify.config import ClassifyTaskConfig
from zoo.tasks.classify.data import Examples
from zoo.tasks.classify.head import Classifier
from zoo.tasks.classify.metrics import metrics_for


def pad_id_for(tokenizer) -> int:
    """The id padding uses: the tokenizer's <|endoftext|> (as the book and GPT2ForSequenceClassification do),
    else 0. With last-token pooling padding never reaches the head."""
    return tokenizer.pad_id


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


def batched_logits(model: nn.Module, examples: list[tuple[list[int], int]], batch_size: int, pad_id: int,
                   pad_to: int | None, device: torch.device, autocast: Autocast = contextlib.nullcontext,
                   rank: int = 0, world_size: int = 1) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first example's index, labels, fp32 logits) of each padded batch of `examples` in this rank's share
    (every world_size-th batch), the model in eval mode: the one evaluation loop of evaluate, predictions and
    zoo classify."""
    with eval_mode(model):
        for n, start in enumerate(range(0, len(examples), batch_size)):
            if n % world_size != rank:
                continue
            x, y, lengths = pad(examples[start:start + batch_size], pad_id, pad_to)
            with autocast():
                yield start, y, model(x.to(device), lengths.to(device)).float()


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
    def evaluate(self, model: nn.Module, split: str, device: torch.device, autocast: Autocast = contextlib.nullcontext,
                 rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """Summed loss and confusion-matrix counts over this rank's share of the split."""
        k = len(self.config.labels)
        sums = {"loss_sum": 0.0, "count": 0, **{f"cm_{a}_{b}": 0 for a in range(k) for b in range(k)}}
        for _, y, logits in batched_logits(model, self.data[split], self.eval_batch_size, self.pad_id, self.pad_to,
                                           device, autocast, rank, world_size):
            sums["loss_sum"] += F.cross_entropy(logits, y.to(device), reduction="sum").item()
            sums["count"] += len(y)
            for truth, pred in zip(y.tolist(), logits.argmax(-1).tolist(), strict=True):
                sums[f"cm_{truth}_{pred}"] += 1
        return sums


    @torch.no_grad()
    def predictions(self, model: nn.Module, split: str, device: torch.device,
                    autocast: Autocast = contextlib.nullcontext) -> list[dict]:
        """Every example of a split with its text, where it came from, true label, predicted label and the
        predicted label's probability (batched and padded as in evaluation)."""
        labels, rows = self.config.labels, []
        sources = (self.data.sources or {}).get(split)
        for start, y, logits in batched_logits(model, self.data[split], self.eval_batch_size, self.pad_id,
                                               self.pad_to, device, autocast):
            for k, (truth, p) in enumerate(zip(y.tolist(), logits.softmax(-1).cpu(), strict=True)):
                text, where = sources[start + k] if sources else ("", "")
                rows.append({"where": where, "text": text, "label": labels[truth],
                             "predicted": labels[int(p.argmax())], "probability": float(p.max())})
        return rows

    def write_predictions(self, rows: list[dict], path: Path, split: str) -> str:
        import csv

        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["where", "text", "label", "predicted", "probability"])
            writer.writeheader()
            writer.writerows(rows)
        wrong = sum(r["label"] != r["predicted"] for r in rows)
        return f"wrote {len(rows)} predictions of the {split} split to {path} ({wrong} wrong)"



def build(config: ClassifyTaskConfig, recipe, tokenizer, data: Examples, model: Classifier,
          plan: MicroBatchPlan) -> ClassifyTask:
    return ClassifyTask(config, data, batch_size=recipe.train.batch_size,
                        seed=recipe.data.order_seed(recipe.run.seed), pad_id=pad_id_for(tokenizer),
                        eval_batch_size=recipe.eval.batch_size, model=model)
