"""What optimizers share: weight-decay groups by tensor rank, groups by parameter role, the kernel choice, and
`Chain`, several torch optimizers that the trainer, the grad scaler and checkpoints see as one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

FUSED = ("adamw", "adam", "sgd")  # the optimizers torch has a fused kernel for


def implementation(name: str, impl: str, device: torch.device) -> str:
    """fused, foreach or loop: the recipe's choice, or for `auto` fused on CUDA and CPU where the optimizer has a
    fused kernel (on CUDA one launch for every tensor; on a CPU one pass over each tensor's memory, 3.3x faster
    than foreach for GPT-2 small's AdamW step, benchmarks/gpt2_train_step.py) and foreach elsewhere."""
    if impl != "auto":
        return impl
    return "fused" if device.type in ("cuda", "cpu") and name in FUSED else "foreach"


KERNEL = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


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


def by_role(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters grouped by the role the model gives each (models.base.ROLES), in the model's
    parameter order."""
    roles = model.parameter_roles()
    out: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.setdefault(roles[name], []).append(p)
    return out


class Chain:
    """Several torch optimizers stepped as one (e.g. Muon for the hidden matrices and AdamW for the rest). To the
    trainer, the grad scaler and checkpoints it is one optimizer: `param_groups` and `state` are the members'
    together, and `state_dict` numbers parameters across members in `param_groups` order, as one optimizer's
    would, so the checks and the padded-row handling of checkpoints apply unchanged."""

    def __init__(self, members: list[torch.optim.Optimizer]):
        self.members = members

    @property
    def param_groups(self) -> list[dict]:
        return [g for m in self.members for g in m.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for m in self.members for p, s in m.state.items()}

    def step(self, closure: Any = None) -> None:
        for m in self.members:
            m.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for m in self.members:
            m.zero_grad(set_to_none=set_to_none)

    def _offsets(self) -> Iterator[tuple[torch.optim.Optimizer, int]]:
        offset = 0
        for m in self.members:
            yield m, offset
            offset += sum(len(g["params"]) for g in m.param_groups)

    def state_dict(self) -> dict:
        state, groups = {}, []
        for m, offset in self._offsets():
            own = m.state_dict()
            state.update({offset + i: s for i, s in own["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in own["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        groups = list(saved["param_groups"])
        for m, offset in self._offsets():
            mine, groups = groups[:len(m.param_groups)], groups[len(m.param_groups):]
            count = sum(len(g["params"]) for g in m.param_groups)
            m.load_state_dict({
                "state": {i - offset: s for i, s in saved["state"].items() if offset <= i < offset + count},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine]})
