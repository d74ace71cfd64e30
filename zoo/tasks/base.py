"""The task protocol the trainer knows (and nothing else about what is being learned)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import nn

from zoo.models.base import State


class Batch(NamedTuple):
    """One micro-batch. `slot` names the carried state it continues; `reset` starts that state afresh."""

    x: torch.Tensor
    y: torch.Tensor
    slot: int = 0
    reset: bool = True
    lengths: torch.Tensor | None = None  # real lengths of right-padded rows (classification)

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`. To a GPU the copy goes through pinned memory without blocking, so the host
        never waits for the GPU to finish its queue before handing it the next micro-batch."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or t.device == device:
                return t
            if device.type == "cuda":
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        return self._replace(x=move(self.x), y=move(self.y), lengths=move(self.lengths))


class TaskLoss(nn.Module):
    """A task's training forward as one module: backbone, head and loss together, so `torch.compile` makes one
    graph of all of it (no [B, T, V] logits leave it) and DDP sees every parameter. It holds the model as
    `.model`; checkpoints are written from the model itself, with its plain names."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Batch, State], tuple[torch.Tensor, State]]):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor | None,
                state: State) -> tuple[torch.Tensor, State]:
        # only tensors cross into the compiled graph (a slot number would be a constant to recompile on)
        return self.loss(self.model, Batch(x, y, lengths=lengths), state)


class Task(Protocol):
    def steps_per_epoch(self) -> int: ...

    def tokens_per_step(self) -> int: ...

    def chance_loss(self) -> float:
        """The loss of a uniform guess: a loss ten times this means training diverged."""
        ...

    def micro_batches(self, step: int, rank: int, world_size: int, micro_batch_size: int) -> list[Batch]: ...

    def loss(self, model: nn.Module, batch: Batch, state: State) -> tuple[torch.Tensor, State]: ...

    def evaluate(self, model: nn.Module, split: str, device: torch.device, autocast=None, rank: int = 0,
                 world_size: int = 1) -> dict[str, float]:
        """This rank's share of the metrics of a split; `loss_sum` and `tokens` add up over ranks."""
        ...


def summarize(loss_sum: float, tokens: int) -> dict[str, float]:
    """Loss, perplexity and bits per token from a summed loss."""
    loss = loss_sum / max(1, tokens)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bits_per_token": loss / math.log(2),
            "tokens": tokens, "loss_sum": loss_sum}
