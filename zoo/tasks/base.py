"""The task protocol the trainer knows (and nothing else about what is being learned)."""

from __future__ import annotations

import math
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
        lengths = self.lengths.to(device) if self.lengths is not None else None
        return self._replace(x=self.x.to(device), y=self.y.to(device), lengths=lengths)


class Task(Protocol):
    def steps_per_epoch(self) -> int: ...

    def tokens_per_step(self) -> int: ...

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
