"""The model classes every architecture and task head builds on, and helpers they share.

`Trainable` is what the trainer optimises and checkpoints: a backbone, or a task's head around one. It says
whether it is recurrent (`recurrent`) and how to start from pretrained weights (`load_pretrained`).

`Backbone` maps token ids to hidden features: `forward(idx[B, T], state=None) -> (hidden[B, T, D], state)`.
`stateful` backbones (recurrent ones) carry their state from one training batch to the next (truncated BPTT)
and return the new state; the others return None in training and use the state argument only as a
generation cache (GPT-2's KV cache, from `init_state`). Each backbone has `lm_head` (D -> vocab) as a module
attribute so weight tying stays inside the model, `logits(hidden)` (the head applied, exactly `vocab_size`
columns), `d_model`, `vocab_size`, `max_seq_len` (None when any length works) and `layer_groups()` (for
freezing). A backbone may hold more rows than its state_dict shows (GPT-2's padded vocabulary); `logical_rows`
finds them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[torch.Tensor, ...] | None


ROLES = ("matrix", "embedding", "head", "vector")


class Trainable(nn.Module):
    """What the trainer optimises: a backbone, or a task's head around one."""

    def heads(self) -> list[nn.Module]:
        """The output layers (an LM head, a classifier head): their weights have the `head` role."""
        return []

    def parameter_roles(self) -> dict[str, str]:
        """The role of every parameter, by name, for optimizers that treat them apart (Muon): `embedding` (a
        lookup table, also when the head shares it), `head` (an output layer's weight), `vector` (biases, norm
        gains, anything below 2-D) and `matrix` (every other weight: the hidden matrices). Shapes alone cannot
        tell them apart: an embedding and a head are 2-D too."""
        embeddings = {id(p) for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters(False)}
        heads = {id(m.weight) for m in self.heads()}
        roles = {}
        for name, p in self.named_parameters():
            roles[name] = ("embedding" if id(p) in embeddings else "vector" if p.dim() < 2
                           else "head" if id(p) in heads else "matrix")
        return roles

    @property
    def recurrent(self) -> bool:
        """Whether a recurrent network runs inside (then torch.compile is not used by default)."""
        return False

    def load_pretrained(self) -> str:
        """Load the weights the config names as a starting point (a fresh run only); returns what was loaded,
        or "" for none."""
        return ""

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x the matmul parameters (2 forward, 4 backward; lookups are free)."""
        lookups = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return 6.0 * (count_parameters(self) - lookups)


class Backbone(Trainable):
    """The base of every architecture (see the module docstring for the protocol)."""

    stateful: bool = False
    max_seq_len: int | None = None
    d_model: int
    vocab_size: int
    lm_head: nn.Module

    @property
    def recurrent(self) -> bool:
        return self.stateful

    def heads(self) -> list[nn.Module]:
        return [self.lm_head]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits over the vocabulary."""
        return self.lm_head(hidden)

    def next_token_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of `logits(hidden)` [..., V] against `targets` [...] (-100 = ignored), in fp32."""
        logits = self.logits(hidden)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    def init_state(self, batch_size: int, device: torch.device | str) -> State:
        """The state a sequence starts from (recurrent state, or an empty generation cache)."""
        return None

    def layer_groups(self) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
        """Parameters from input to output (one list per layer) and those after the last layer (a final
        norm), for freezing policies."""
        raise NotImplementedError(f"{type(self).__name__} does not say how its layers are grouped")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode (dropout off) inside the block, then back to the mode the model was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def detach_state(state: State) -> State:
    """Cut the graph behind a carried state (truncated backpropagation through time)."""
    if state is None:
        return None
    return tuple(t.detach() for t in state)


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


def flops_per_token(model: Trainable) -> float:
    """Training FLOPs per token of a model (its own estimate)."""
    return float(model.flops_per_token())
