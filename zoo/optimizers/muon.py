"""Muon (Keller Jordan, 2024) for the hidden weight matrices and AdamW for everything else, as modded-nanogpt and
nanochat train: `optim.name = "muon"`.

Muon (`torch.optim.Muon`) takes SGD-momentum's update of a 2-D weight (Nesterov, momentum 0.95) and replaces it
by the nearest semi-orthogonal matrix (five Newton-Schulz iterations in bf16), scaled by sqrt(max(1,
rows/cols)). It suits the hidden matrices only: embeddings are lookups, the LM head is an output layer, and
gains and biases are vectors, so those go to AdamW, each with its own rate. Which tensor is which is said by
the model (`parameter_roles`: matrix, embedding, head, vector), not guessed from shapes, since the embedding
and head are 2-D too. The matrices' rate is `train.lr` (0.02 in modded-nanogpt's and nanochat's runs); the
schedule scales every group's rate by the same factor.

Defaults, where the field docs name them: modded-nanogpt's record of 2024-11-03 (untied embedding and head, 10.8
minutes on 8 x H100): Muon lr 0.02, momentum 0.95, Nesterov, 5 steps; Adam for the embedding at 0.3 and the
head at 0.002, betas (0.9, 0.95); no weight decay. nanochat (gpt.py `setup_optimizer`): Muon 0.02, embedding
0.2, head 0.004, betas (0.8, 0.95), eps 1e-10, scaled by (width / 768)^-0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from zoo.config import Section, check, doc
from zoo.errors import RecipeError
from zoo.models.base import ROLES
from zoo.optimizers.base import KERNEL, Chain, by_role, implementation
from zoo.specs import OptimizerSpec


@dataclass(frozen=True)
class MuonConfig(Section):
    name: Literal["muon"] = doc("muon: Muon for the hidden matrices (rate train.lr), AdamW for the other roles", "muon")
    momentum: float = doc("Muon's momentum (modded-nanogpt, nanochat: 0.95)", 0.95)
    nesterov: bool = doc("Muon's Nesterov momentum (modded-nanogpt, nanochat: on)", True)
    ns_steps: int = doc("Newton-Schulz iterations (5 in every reference)", 5)
    adjust_lr: Literal["original", "match_rms_adamw"] = doc(
        "how Muon scales its rate per matrix: original, sqrt(max(1, rows/cols)) (Keller Jordan's, modded-nanogpt); "
        "match_rms_adamw, 0.2 x sqrt(max(rows, cols)) (Moonshot's, so AdamW's rate and decay carry over)",
        "original")
    weight_decay: float = doc("decoupled weight decay of the Muon matrices (modded-nanogpt 2024-11: 0)", 0.0)
    muon_roles: tuple[str, ...] = doc("the roles Muon optimises (the rest go to AdamW): matrix; adding head or "
                                      "embedding tries Muon on those 2-D tensors too", ("matrix",))
    embedding_lr: float = doc("AdamW rate of the embeddings (modded-nanogpt 0.3; nanochat 0.2 at width 768)", 0.3)
    head_lr: float = doc("AdamW rate of the LM head or classifier head (modded-nanogpt 0.002; nanochat 0.004)",
                         0.002)
    vector_lr: float = doc("AdamW rate of norm gains, biases and other vectors (modded-nanogpt's scalars: 0.04)",
                           0.04)
    embedding_weight_decay: float = doc("AdamW weight decay of the embeddings", 0.0)
    head_weight_decay: float = doc("AdamW weight decay of the head", 0.0)
    vector_weight_decay: float = doc("AdamW weight decay of the vectors", 0.0)
    adam_betas: tuple[float, float] = doc("AdamW betas (modded-nanogpt 2024-11: 0.9, 0.95)", (0.9, 0.95))
    adam_eps: float = doc("AdamW epsilon", 1e-8)
    impl: Literal["auto", "fused", "foreach", "loop"] = doc(
        "AdamW's kernel: auto (fused on CUDA, foreach elsewhere), fused, foreach or loop", "auto")
    ns_precision: Literal["auto", "bf16", "fp32"] = doc(
        "the Newton-Schulz iterations' precision: bf16 is torch.optim.Muon's own (fast on GPUs); fp32 runs the "
        "same algorithm in fp32 (zoo's step: a CPU has no fast bf16 matmul, and there it is 4-10x faster); "
        "auto: bf16 on CUDA, fp32 elsewhere", "auto")

    def validate(self) -> None:
        check(0 <= self.momentum < 1, "optim.momentum", f"is {self.momentum}; it must be in [0, 1)")
        check(1 <= self.ns_steps < 100, "optim.ns_steps", f"is {self.ns_steps}; use 1 to 99 (5 is usual)")
        for key in ("weight_decay", "embedding_weight_decay", "head_weight_decay", "vector_weight_decay"):
            check(getattr(self, key) >= 0, f"optim.{key}", f"is {getattr(self, key)}; it must be >= 0")
        for key in ("embedding_lr", "head_lr", "vector_lr"):
            value = getattr(self, key)
            check(value > 0 and math.isfinite(value), f"optim.{key}", f"is {value}; it must be > 0")
        check(all(0 <= b < 1 for b in self.adam_betas), "optim.adam_betas",
              f"is {list(self.adam_betas)}; each in [0, 1)")
        check(self.adam_eps > 0, "optim.adam_eps", f"is {self.adam_eps}; it must be > 0")
        unknown = [r for r in self.muon_roles if r not in ROLES]
        check(not unknown, "optim.muon_roles", f"names the unknown role {', '.join(map(repr, unknown))}; roles: "
                                               f"{', '.join(ROLES)}")
        check("vector" not in self.muon_roles, "optim.muon_roles",
              "includes vector; Muon orthogonalises 2-D matrices, vectors (gains, biases) need AdamW")
        check(len(self.muon_roles) > 0, "optim.muon_roles", "is empty; Muon needs at least the matrix role")


def newton_schulz_fp32(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                       eps: float) -> torch.Tensor:
    """torch.optim.Muon's orthogonalisation (the quintic Newton-Schulz iteration on the wide orientation, after
    scaling to unit norm) in fp32 instead of bf16."""
    a, b, c = coefficients
    x = g.float()
    wide = x.shape[0] > x.shape[1]
    if wide:
        x = x.T.contiguous()  # a contiguous copy: CPU matmuls on the transposed view are 4x slower
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


class MuonFP32(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iterations in fp32: the same state (`momentum_buffer`), groups
    and update rule (momentum by lerp, Nesterov, the per-shape rate adjustment, decoupled weight decay), so
    checkpoints move between the two."""

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import _adjust_lr

        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz_fp32(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))


def build(config: MuonConfig, model: nn.Module, lr: float, device: torch.device) -> tuple[Chain, str]:
    """torch.optim.Muon over the roles in muon_roles, AdamW (one group per other role, each with its rate and
    weight decay) over the rest."""
    groups = by_role(model)
    unknown = sorted(set(groups) - set(ROLES))
    if unknown:
        raise RecipeError(f"the model gives parameters the unknown role {', '.join(unknown)}; optim.name = \"muon\" "
                          f"knows {', '.join(ROLES)}")
    muon = [p for role in config.muon_roles for p in groups.get(role, [])]
    if not any(p.dim() == 2 for p in groups.get("matrix", [])):
        raise RecipeError("recipe value optim.name is \"muon\" but this model has no trainable hidden 2-D weight "
                          "matrices for it (only embeddings, heads and vectors); use adamw")
    bad = [p for p in muon if p.dim() != 2]
    if bad:
        raise RecipeError(f"recipe value optim.muon_roles gives Muon a tensor of shape {tuple(bad[0].shape)}; Muon "
                          "takes 2-D matrices only")
    fp32 = config.ns_precision == "fp32" or (config.ns_precision == "auto" and device.type != "cuda")
    members: list[torch.optim.Optimizer] = [(MuonFP32 if fp32 else torch.optim.Muon)(
        [{"params": muon, "role": "muon" if len(config.muon_roles) > 1 else "matrix", "initial_lr": lr}], lr=lr,
        weight_decay=config.weight_decay, momentum=config.momentum, nesterov=config.nesterov,
        ns_steps=config.ns_steps, adjust_lr_fn=config.adjust_lr)]
    rates = {"embedding": (config.embedding_lr, config.embedding_weight_decay),
             "head": (config.head_lr, config.head_weight_decay), "vector": (config.vector_lr,
                                                                             config.vector_weight_decay)}
    adam = [{"params": groups[role], "lr": rates[role][0], "initial_lr": rates[role][0],
             "weight_decay": rates[role][1], "role": role}
            for role in ("embedding", "head", "vector") if role not in config.muon_roles and groups.get(role)]
    impl = implementation("adamw", config.impl, device)
    if adam:
        members.append(torch.optim.AdamW(adam, betas=config.adam_betas, eps=config.adam_eps, **KERNEL[impl]))
    return Chain(members), (f"(Muon for {' and '.join(config.muon_roles)}, Newton-Schulz in "
                            f"{'fp32' if fp32 else 'bf16'}, AdamW {impl} for the rest)")


SPEC = OptimizerSpec(name="muon", config=MuonConfig, build=build)
