"""Instruction fine-tuning as a Task: the book's batches (see data.collate), the next-token loss over the targets
that are not -100, validation and test loss on the response tokens only, and greedy answers to the test split
at the end (written in the book's shape, with the share that follow the format)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.base import State, eval_mode
from zoo.tasks.base import Autocast, Batch, MicroBatchPlan, Task, summarize
from zoo.tasks.instruct.config import InstructTaskConfig
from zoo.tasks.instruct.data import FORMATS, IGNORE, Example, collate


@dataclass
class Instructions:
    """The encoded examples of each split, the records they came from, and what encoding them cut."""

    train: list[Example]
    val: list[Example]
    test: list[Example]
    records: dict[str, list[dict]]
    truncated: int = 0

    def __getitem__(self, split: str) -> list[Example]:
        return getattr(self, split)


class InstructTask(Task):
    unit = "examples"
    reports_val_at_end = False

    def __init__(self, config: InstructTaskConfig, data: Instructions, *, tokenizer, batch_size: int, seed: int,
                 eval_batch_size: int, max_length: int, vocab_size: int):
        self.config, self.data, self.tokenizer = config, data, tokenizer
        self.format = FORMATS[config.prompt_format]
        self.batch_size, self.seed, self.eval_batch_size = batch_size, seed, eval_batch_size
        self.max_length, self.vocab_size = max_length, vocab_size
        self.end_id = tokenizer.eot if tokenizer.eot is not None else tokenizer.pad_id
        self.pad_id = tokenizer.pad_id
        if len(data.train) < batch_size:
            from zoo.errors import DataError

            raise DataError(f"the train split has {len(data.train)} examples, fewer than one batch "
                            f"({batch_size}); lower train.batch_size")
        self._order: tuple[int, np.ndarray] | None = None
        self._answer_stats: dict = {}

    # ------------------------------------------------------------------------------ training
    def steps_per_epoch(self) -> int:
        return len(self.data.train) // self.batch_size  # the last partial batch is dropped, as the book does

    def items_per_step(self) -> int:
        return self.batch_size

    def chance_loss(self) -> float:
        return math.log(max(2, self.vocab_size))

    def flops_per_item(self, model: nn.Module) -> float | None:
        return None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.data.train)))
        return self._order[1]

    def micro_batches(self, step: int, plan: MicroBatchPlan) -> list[Batch]:
        epoch, i = divmod(step, self.steps_per_epoch())
        rows = self._epoch_order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        out = []
        for m in plan.mine:
            chosen = [self.data.train[int(j)] for j in rows[plan.rows(m)]]
            x, y = collate(chosen, self.pad_id, self.end_id, self.max_length, self.config.mask_prompt)
            out.append(Batch(x, y, slot=m, reset=True))
        return out

    def loss(self, model: nn.Module, batch: Batch, state: State) -> tuple[torch.Tensor, State]:
        hidden, _ = model(batch.x, None)
        return model.next_token_loss(hidden, batch.y), None

    # ------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device, autocast: Autocast = contextlib.nullcontext,
                 rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """Summed loss and count of the response tokens (and the end token) of this rank's share of a split."""
        examples = self.data[split]
        total, count = 0.0, 0
        with eval_mode(model):
            for b, start in enumerate(range(0, len(examples), self.eval_batch_size)):
                if b % world_size != rank:
                    continue
                x, y = collate(examples[start:start + self.eval_batch_size], self.pad_id, self.end_id,
                               self.max_length, mask_prompt=True)
                with autocast():
                    logits = model.logits(model(x.to(device), None)[0])
                total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.to(device).reshape(-1),
                                         ignore_index=IGNORE, reduction="sum").double().item()
                count += int((y != IGNORE).sum())
        return {"loss_sum": total, "tokens": count}

    def metrics(self, sums: dict[str, float]) -> dict:
        return summarize(sums["loss_sum"], int(sums["tokens"]))

    def summary(self, split: str, metrics: dict, which: str) -> dict:
        return {f"{'final_' if which == 'final' else ''}{split}_response_tokens": metrics["tokens"]}

    # ------------------------------------------------------------------------------ answers
    def finish(self, model: nn.Module, device: torch.device, run_dir: Path, main: bool) -> dict:
        """Greedy answers to the test split from the weights the run is judged by (the best checkpoint's),
        written to test_responses.json; returns the format-following share for summary.json."""
        if not self.config.answers:
            return {}
        from zoo.tasks.instruct.answers import answer_records, write_responses

        rows, stats = answer_records(model, self.tokenizer, self.format, self.data.records["test"], self.config,
                                     device, self.max_length)
        if main:
            write_responses(run_dir / "test_responses.json", rows)
        return stats

    def predictions(self, model: nn.Module, split: str, device: torch.device,
                    autocast: Autocast = contextlib.nullcontext) -> list[dict]:
        """Greedy answers to a split's instructions (`zoo eval --predictions`: e.g. a base before tuning)."""
        from zoo.tasks.instruct.answers import answer_records

        rows, self._answer_stats = answer_records(model, self.tokenizer, self.format, self.data.records[split],
                                                  self.config, device, self.max_length)
        return rows

    def write_predictions(self, rows: list[dict], path: Path, split: str) -> str:
        from zoo.tasks.instruct.answers import write_responses

        write_responses(path, rows)
        stats = self._answer_stats
        return (f"wrote {len(rows)} answers to the {split} split to {path} ({stats['answers_ended']:.0%} ended "
                f"within {self.config.response_tokens} tokens, {stats['format_following']:.0%} follow the format)")

    def report(self, split: str, metrics: dict) -> str:
        return f"{split} response loss {metrics['loss']:.4f} over {metrics['tokens']:,} response tokens"
