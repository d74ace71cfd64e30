"""What the trainer knows of a task (and nothing else about what is being learned): the micro-batch plan, the
batch type, the training forward as one module, and the Task base class with the hooks it calls."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from zoo.errors import RecipeError, ZooError
from zoo.models.base import State, Trainable

Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class MicroBatchPlan:
    """How one optimizer step's global batch of `batch_size` rows is cut: micro-batches of `micro` rows,
    numbered m = 0..count-1 (rows [m*micro, (m+1)*micro)); rank r runs every m with m % world == r (`mine`),
    so 1, 2 or 8 processes read the same global batch, each row exactly once. Computed once per run (`of`)
    and handed to the task."""

    batch_size: int
    micro: int
    world: int
    rank: int

    @staticmethod
    def of(batch_size: int, micro_batch_size: int, world: int, rank: int) -> MicroBatchPlan:
        """The plan for `train.batch_size` and `train.micro_batch_size` (0 = the batch split over the
        processes); a batch that does not split evenly is a RecipeError."""
        micro = micro_batch_size or batch_size // world
        if micro == 0 or batch_size % (micro * world):
            raise RecipeError(f"train.batch_size {batch_size} does not split into micro-batches of {micro or 1} on "
                              f"each of {world} processes; adjust train.micro_batch_size")
        return MicroBatchPlan(batch_size, micro, world, rank)

    @property
    def count(self) -> int:
        """Micro-batches in the global batch."""
        return self.batch_size // self.micro

    @property
    def mine(self) -> list[int]:
        """This rank's micro-batch numbers."""
        return [m for m in range(self.count) if m % self.world == self.rank]

    @property
    def accumulation(self) -> int:
        """Micro-batches this rank runs per optimizer step."""
        return self.count // self.world

    def rows(self, m: int) -> slice:
        """The global batch's rows of micro-batch m."""
        return slice(m * self.micro, (m + 1) * self.micro)


class Batch(NamedTuple):
    """One micro-batch. `slot` names the carried state it continues; `reset` starts that state afresh."""

    x: torch.Tensor
    y: torch.Tensor
    slot: int = 0
    reset: bool = True
    lengths: torch.Tensor | None = None  # real lengths of right-padded rows (classification)
    aux: torch.Tensor | None = None  # per-row numbers a loss needs (preference tuning: the reference log-probs)

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`. To a GPU the copy goes through pinned memory without blocking, so the host
        never waits for the GPU to finish its queue before handing it the next micro-batch."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or t.device == device:
                return t
            if device.type == "cuda":
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        return self._replace(x=move(self.x), y=move(self.y), lengths=move(self.lengths), aux=move(self.aux))


class TaskLoss(nn.Module):
    """A task's training forward as one module: backbone, head and loss together, so `torch.compile` makes one
    graph of all of it (no [B, T, V] logits leave it) and DDP sees every parameter. It holds the model as
    `.model`; checkpoints are written from the model itself, with its plain names."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Batch, State], tuple[torch.Tensor, State]]):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor | None,
                state: State, aux: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        # only tensors cross into the compiled graph (a slot number would be a constant to recompile on)
        return self.loss(self.model, Batch(x, y, lengths=lengths, aux=aux), state)


class Task:
    """The base of every task. The trainer calls these hooks and nothing else; those with a body here are
    optional (their default is what a task without the capability does)."""

    unit: str = "tokens"  # what `items_per_step` counts (tokens, examples), for rates and summaries
    evaluates_train: bool = False  # whether each evaluation also evaluates a fixed slice of the train split
    reports_val_at_end: bool = False  # whether the run's end also reports the best checkpoint's val metrics

    # ------------------------------------------------------------------------------------- required
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def items_per_step(self) -> int:
        """Tokens (or examples, see `unit`) in one optimizer step's global batch."""
        raise NotImplementedError

    def chance_loss(self) -> float:
        """The loss of a uniform guess: a loss ten times this means training diverged."""
        raise NotImplementedError

    def micro_batches(self, step: int, plan: MicroBatchPlan) -> list[Batch]:
        """This rank's micro-batches of optimizer step `step` (a pure function of the step: resuming needs no
        loader state)."""
        raise NotImplementedError

    def loss(self, model: Trainable, batch: Batch, state: State) -> tuple[torch.Tensor, State]:
        """The training loss of a batch (model, head and loss: what TaskLoss compiles) and the new state."""
        raise NotImplementedError

    def evaluate(self, model: Trainable, split: str, device: torch.device, autocast: Autocast = contextlib.nullcontext,
                 rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """This rank's share of a split's sums (they add up over ranks to one process's)."""
        raise NotImplementedError

    def metrics(self, sums: dict[str, float]) -> dict:
        """Metrics from the summed evaluation results; "loss" is always one of them."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- optional
    def flops_per_item(self, model: Trainable) -> float | None:
        """Training FLOPs per item, for MFU; None where it is not known."""
        return None

    def scalars(self, split: str, metrics: dict) -> dict[str, float]:
        """TensorBoard scalars besides loss/<split> for an evaluation of `split`."""
        return {}

    def tracked(self, metrics: dict) -> dict[str, float]:
        """Numbers of an evaluation besides the loss that summary.json reports for the best and the last
        evaluation (language models: bits per byte); checkpoints carry them, so a resumed run reports them."""
        return {}

    def summary(self, split: str, metrics: dict, which: str) -> dict:
        """summary.json fields besides the loss for a final evaluation of `split` (`which`: "best" or "final")."""
        return {}

    def report(self, split: str, metrics: dict) -> str:
        """A progress line besides the loss for a final evaluation, or ""."""
        return ""

    def test_extras(self) -> dict:
        """summary.json fields about the test split itself (e.g. characters per token)."""
        return {}

    def finish(self, model: Trainable, device: torch.device, run_dir, main: bool) -> dict:
        """Work at the run's end with the best checkpoint's weights (answers to write beside the run, written
        by the main rank; every rank computes them, with no collective); returns summary.json fields."""
        return {}

    def sample(self, model: Trainable, step: int, device: torch.device) -> str:
        """A text sample to log at an evaluation, or "" (tasks that generate nothing)."""
        return ""

    def predictions(self, model: Trainable, split: str, device: torch.device,
                    autocast: Autocast = contextlib.nullcontext) -> list[dict]:
        """Every example of a split with its prediction (for `zoo eval --predictions`)."""
        raise ZooError("this task makes no per-example predictions (--predictions is for classifiers and "
                       "instruction runs)")

    def write_predictions(self, rows: list[dict], path: Path, split: str) -> str:
        """Write `predictions`' rows to a file; returns the line that says what was written."""
        raise NotImplementedError


def summarize(loss_sum: float, tokens: int) -> dict[str, float]:
    """Loss, perplexity and bits per token from a summed loss."""
    loss = loss_sum / max(1, tokens)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bits_per_token": loss / math.log(2),
            "tokens": tokens, "loss_sum": loss_sum}
