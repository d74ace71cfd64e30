"""The task protocol the trainer knows (and nothing else about what is being learned)."""

from __future__ import annotations

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


class Task(Protocol):
    def steps_per_epoch(self) -> int: ...

    def tokens_per_step(self) -> int: ...

    def micro_batches(self, step: int, rank: int, world_size: int, micro_batch_size: int) -> list[Batch]: ...

    def loss(self, model: nn.Module, batch: Batch, state: State) -> tuple[torch.Tensor, State]: ...

    def evaluate(self, model: nn.Module, split: str, device: torch.device) -> dict[str, float]: ...
