"""torch's classic optimizers: AdamW, Adam, RMSprop and SGD, over weight-decay groups by tensor rank. They share
one `[optim]` config class (every recipe and run written before other optimizers existed has exactly these
fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from zoo.config import Section, check, doc
from zoo.errors import RecipeError
from zoo.optimizers.base import FUSED, KERNEL, implementation, parameter_groups
from zoo.specs import OptimizerSpec


@dataclass(frozen=True)
class OptimConfig(Section):
    name: Literal["adamw", "adam", "rmsprop", "sgd"] = doc(
        "the optimizer: adamw, adam, rmsprop, sgd (these fields), or muon (its own fields)", "adamw")
    weight_decay: float = doc("decoupled (adamw) or L2 (others) weight decay", 0.0)
    decay_all: bool = doc("decay every parameter, not only matrices and embeddings (tensors >= 2D)", False)
    betas: tuple[float, float] = doc("Adam/AdamW betas", (0.9, 0.999))
    eps: float = doc("Adam/AdamW/RMSprop epsilon", 1e-8)
    momentum: float = doc("SGD/RMSprop momentum", 0.0)
    alpha: float = doc("RMSprop smoothing constant (char-rnn's decay_rate)", 0.99)
    impl: Literal["auto", "fused", "foreach", "loop"] = doc(
        "how the update runs: fused (one kernel; adam, adamw, sgd), foreach (batched over tensors) or loop (per "
        "tensor); auto: fused on CUDA where the optimizer has it, foreach elsewhere", "auto")

    def validate(self) -> None:
        check(self.weight_decay >= 0, "optim.weight_decay", f"is {self.weight_decay}; it must be >= 0")
        check(all(0 <= b < 1 for b in self.betas), "optim.betas", f"is {list(self.betas)}; each in [0, 1)")
        check(self.eps > 0, "optim.eps", f"is {self.eps}; it must be > 0")
        check(0 <= self.momentum < 1, "optim.momentum", f"is {self.momentum}; it must be in [0, 1)")
        check(0 < self.alpha < 1, "optim.alpha", f"is {self.alpha}; it must be in (0, 1)")


def build(config: OptimConfig, model: nn.Module, lr: float, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer the config names over the model's trainable parameters, with the kernel for `device`."""
    groups = parameter_groups(model, config.weight_decay, config.decay_all)
    for group in groups:
        group["initial_lr"] = lr
    impl = implementation(config.name, config.impl, device)
    if impl == "fused" and config.name not in FUSED:
        raise RecipeError(f"recipe value optim.impl is \"fused\" but torch has no fused {config.name}; use one of "
                          f"{', '.join(FUSED)}, or optim.impl = \"foreach\"")
    kind = KERNEL[impl]
    if config.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=config.betas, eps=config.eps, **kind)
    elif config.name == "adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=config.betas, eps=config.eps, **kind)
    elif config.name == "rmsprop":
        opt = torch.optim.RMSprop(groups, lr=lr, alpha=config.alpha, eps=config.eps, momentum=config.momentum, **kind)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=config.momentum, **kind)
    return opt, impl


SPECS = [OptimizerSpec(name=name, config=OptimConfig, build=build) for name in ("adamw", "adam", "rmsprop", "sgd")]
