"""Optimizers, parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.recipe import OptimConfig, ScheduleConfig


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Decay matrices and embeddings (tensors of rank >= 2), not biases or norms, unless `decay_all`.
    The rule is by tensor rank, not module type, so it holds for every architecture."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer the recipe names, over the model's trainable parameters."""
    groups = parameter_groups(model, config.weight_decay, config.decay_all)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=config.betas, eps=config.eps)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=config.betas, eps=config.eps)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=config.alpha, eps=config.eps, momentum=config.momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)


def lr_at(step: int, base_lr: float, config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate for optimizer step `step` (0-based): a pure function, so resuming needs no state."""
    warmup = config.warmup_steps or int(round(config.warmup_frac * total_steps))
    if config.kind != "step" and step < warmup:
        return base_lr * (step + 1) / warmup
    if config.kind == "constant":
        return base_lr
    if config.kind == "step":
        decays = max(0, step // max(1, steps_per_epoch) - config.decay_after_epoch + 1)
        return base_lr * config.decay_rate**decays
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return config.min_lr + 0.5 * (base_lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))
