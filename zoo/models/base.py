"""The backbone protocol and helpers every architecture shares.

A backbone maps token ids to hidden features: `forward(idx[B, T], state=None) -> (hidden[B, T, D], state)`.
Recurrent backbones return their new state (a tuple of tensors), others return None. Each backbone has
`lm_head` (D -> vocab) as a module attribute so weight tying stays inside the model, `logits(hidden)` (the head
applied, exactly `vocab_size` columns), and the attributes `stateful`, `d_model`, `vocab_size`, `max_seq_len`
(None when any length works). A backbone may hold more rows than its state_dict shows (GPT-2's padded
vocabulary); `logical_rows` finds them.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

State = tuple[torch.Tensor, ...] | None


class Backbone(Protocol):
    stateful: bool
    d_model: int
    vocab_size: int
    max_seq_len: int | None
    lm_head: nn.Module

    def __call__(self, idx: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def init_state(self, batch_size: int, device: torch.device | str) -> State: ...


def detach_state(state: State) -> State:
    """Cut the graph behind a carried state (truncated backpropagation through time)."""
    if state is None:
        return None
    return tuple(t.detach() for t in state)


def select_state(state: State, rows: torch.Tensor | slice) -> State:
    """The carried state of some batch rows (recurrent states are laid out [layers, batch, hidden])."""
    if state is None:
        return None
    return tuple(t[:, rows] for t in state)


def logical_rows(model: nn.Module) -> dict[int, int]:
    """{id(parameter): rows its state_dict entry has} for the parameters stored with more rows than they
    show (padding that takes part in nothing); empty for most models."""
    shapes = {name: t.shape for name, t in model.state_dict(keep_vars=True).items()}
    return {id(p): shapes[name][0] for name, p in model.named_parameters(remove_duplicate=False)
            if name in shapes and shapes[name] != p.shape}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters (a tied weight counts once; padded rows do not count)."""
    rows = logical_rows(model)
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel() // p.shape[0] * rows[id(p)] if id(p) in rows else p.numel()
    return total


def flops_per_token(model: nn.Module) -> float:
    """Training FLOPs per token: the model's own estimate if it has one, else 6 x its matmul parameters
    (2 for the forward pass, 4 for the backward; embedding lookups cost nothing)."""
    if hasattr(model, "flops_per_token"):
        return float(model.flops_per_token())
    lookups = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return 6.0 * (count_parameters(model) - lookups)
