"""What the trainer does with any optimizer: learning-rate schedules (one factor for every group's own base rate),
the optimizer state without padded rows for checkpoints, and putting the recipe's settings back after a
checkpoint is loaded. The optimizers themselves are in zoo/optimizers/ (one module each, chosen by optim.name
through the registry)."""

from __future__ import annotations

import math

import torch

from zoo.errors import RecipeError
from zoo.optimizers.base import FUSED, implementation, parameter_groups  # noqa: F401 - what optimizers share


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def state_without_padding(optimizer: torch.optim.Optimizer, rows: dict[int, int]) -> dict:
    """The optimizer's state_dict with the padded rows of parameters (`rows`: see models.base.logical_rows)
    cut off, so it fits the real-rows weights of a checkpoint and any padding on resume. Padded rows never get
    a gradient, so their state is zero and nothing is lost."""
    state = optimizer.state_dict()
    if not rows:
        return state
    packed = dict(state["state"])
    for index, p in enumerate(_optimizer_params(optimizer)):
        if id(p) in rows and index in packed:
            packed[index] = {k: v[: rows[id(p)]].clone() if torch.is_tensor(v) and v.shape == p.shape else v
                             for k, v in packed[index].items()}
    return {**state, "state": packed}


def load_state_with_padding(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state_dict written by `state_without_padding`: state tensors of padded parameters get zero rows
    appended up to the parameter's size."""
    optimizer.load_state_dict(state)
    for p in _optimizer_params(optimizer):
        for k, v in optimizer.state.get(p, {}).items():
            if torch.is_tensor(v) and v.dim() == p.dim() and v.shape[1:] == p.shape[1:] and v.shape[0] < p.shape[0]:
                optimizer.state[p][k] = torch.cat([v, v.new_zeros(p.shape[0] - v.shape[0], *v.shape[1:])])


def warmup_steps(config, total_steps: int) -> int:
    """The schedule's warmup in steps: warmup_steps, or warmup_frac of all steps (rounded)."""
    return config.warmup_steps or int(round(config.warmup_frac * total_steps))


def lr_at(step: int, base_lr: float, config, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`: a pure function, so resuming
    needs no state. Every kind but `step` starts with the linear warmup; cosine, linear and wsd end at min_lr
    (reached at step `total_steps`, one past the last)."""
    warmup = warmup_steps(config, total_steps)
    if config.kind != "step" and step < warmup:
        if config.warmup_start > 0:  # torch.optim.lr_scheduler.LinearLR(start_factor=warmup_start)
            return base_lr * (config.warmup_start + (1 - config.warmup_start) * step / warmup)
        return base_lr * (step + 1) / warmup
    if config.kind == "constant":
        return base_lr
    if config.kind == "step":
        decays = max(0, step // max(1, steps_per_epoch) - config.decay_after_epoch + 1)
        return base_lr * config.decay_rate**decays
    floor = config.min_lr
    if config.kind == "wsd":
        start = max(warmup, total_steps - int(round(config.decay_frac * total_steps)))
        if step < start:
            return base_lr
        return floor + (base_lr - floor) * max(0.0, 1.0 - (step - start) / max(1, total_steps - start))
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if config.kind == "linear":
        return floor + (base_lr - floor) * (1.0 - progress)
    return floor + 0.5 * (base_lr - floor) * (1.0 + math.cos(math.pi * progress))


def set_rates(optimizer, lr: float, base_lr: float) -> None:
    """Give every parameter group the schedule's rate: `lr` is the rate for the recipe's base `train.lr`, and a
    group with its own base rate (`initial_lr`) gets that rate times the same factor."""
    for group in optimizer.param_groups:
        own = group.get("initial_lr", base_lr)
        group["lr"] = lr if own == base_lr else own * (lr / base_lr)


def role_rates(optimizer, lr: float, base_lr: float) -> dict[str, float]:
    """{role: rate} of groups that say their role (an optimizer whose groups have different base rates)."""
    return {g["role"]: g.get("initial_lr", base_lr) * (lr / base_lr) for g in optimizer.param_groups if "role" in g}


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The optimizer's parameter groups without their parameters (what the recipe set)."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def reapply(optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    """After `load_state_dict` (which brings back the saved groups' settings), put back the settings the
    recipe asks for now (`hyperparameters` of a freshly built optimizer): a remedy such as another weight
    decay or another `optim.impl` takes effect on resume. The step counters move to where that kernel wants
    them (on the parameter's device for fused, on the CPU otherwise)."""
    if len(groups) != len(optimizer.param_groups):
        raise RecipeError("the optimizer's parameter groups differ from the checkpoint's (weight decay switched "
                          "on or off, or optim.decay_all changed); these cannot change when a run resumes")
    for group, fresh in zip(optimizer.param_groups, groups, strict=True):
        group.update(fresh)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if torch.is_tensor(step):
                optimizer.state[p]["step"] = step.to(p.device if on_device else "cpu", torch.float32)
