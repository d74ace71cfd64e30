"""Karpathy's char-RNN: one-hot or embedded input -> stacked LSTM/GRU/RNN -> dropout -> linear head.

The recurrent stack is torch.nn's (`impl = "torch"`) or zoo's own from-scratch cells (`impl = "scratch"`);
both have the same parameter names, so checkpoints move between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import Section, check, doc
from zoo.models.base import Backbone, State
from zoo.models.cells import ScratchRNN
from zoo.specs import ModelSpec


@dataclass(frozen=True)
class CharRNNConfig(Section):
    arch: str = doc("char_rnn", "char_rnn")
    cell: Literal["lstm", "gru", "rnn"] = doc("recurrent cell", "lstm")
    impl: Literal["torch", "scratch"] = doc(
        "torch: nn.LSTM / nn.GRU / nn.RNN; scratch: zoo.models.cells (same parameters, checkpoints swap)", "torch")
    input: Literal["embedding", "onehot"] = doc("learned embedding, or one-hot vectors (char-rnn's)", "embedding")
    embedding_dim: int = doc("embedding width (0 = hidden_size); ignored for one-hot input", 0)
    hidden_size: int = doc("units per recurrent layer", 256)
    num_layers: int = doc("stacked recurrent layers", 2)
    dropout: float = doc("dropout between layers and before the head", 0.0)
    tie_weights: bool = doc("share the embedding and the head (needs embedding_dim == hidden_size)", False)

    def validate(self) -> None:
        check(self.hidden_size > 0, "model.hidden_size", f"is {self.hidden_size}; it must be > 0")
        check(self.num_layers > 0, "model.num_layers", f"is {self.num_layers}; it must be > 0")
        check(self.embedding_dim >= 0, "model.embedding_dim", f"is {self.embedding_dim}; it must be >= 0")
        check(0 <= self.dropout < 1, "model.dropout", f"is {self.dropout}; it must be in [0, 1)")
        if self.tie_weights:
            check(self.input == "embedding" and self.embedding_dim in (0, self.hidden_size),
                  "model.tie_weights", "needs input = \"embedding\" and embedding_dim equal to hidden_size")


_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(Backbone):
    """A recurrent backbone. Its state is (h, c) for an LSTM and (h,) otherwise, each [layers, B, hidden]."""

    stateful = True
    max_seq_len = None

    def __init__(self, config: CharRNNConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.d_model = config.hidden_size
        if config.input == "embedding":
            in_size = config.embedding_dim or config.hidden_size
            self.embedding = nn.Embedding(vocab_size, in_size)
        else:
            in_size = vocab_size
            self.embedding = None
        between = config.dropout if config.num_layers > 1 else 0.0
        if config.impl == "scratch":
            self.rnn = ScratchRNN(config.cell, in_size, config.hidden_size, config.num_layers, dropout=between)
        else:
            self.rnn = _CELLS[config.cell](in_size, config.hidden_size, config.num_layers, batch_first=True,
                                           dropout=between)
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.hidden_size, vocab_size)
        if config.tie_weights:
            self.lm_head.weight = self.embedding.weight

    def layer_groups(self) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
        """Parameters from input to output (the embedding, then each recurrent layer), for freezing."""
        groups = [list(self.embedding.parameters())] if self.embedding is not None else []
        for k in range(self.config.num_layers):
            groups.append([p for n, p in self.rnn.named_parameters() if n.endswith(f"_l{k}")])
        return groups, []

    def init_state(self, batch_size: int, device: torch.device | str) -> State:
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        n = 2 if self.config.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(n))

    def forward(self, idx: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(idx.shape[0], idx.device)
        rnn_state = state if self.config.cell == "lstm" else state[0]
        if self.embedding is not None and isinstance(self.rnn, ScratchRNN):  # it looks the tokens up itself
            out, new = self.rnn(idx, rnn_state, embedding=self.embedding.weight)
        else:
            x = self.embedding(idx) if self.embedding is not None else F.one_hot(idx, self.vocab_size).to(
                self.lm_head.weight.dtype)
            out, new = self.rnn(x, rnn_state)
        new_state = tuple(new) if self.config.cell == "lstm" else (new,)
        return self.drop(out), new_state


def build(config: CharRNNConfig, vocab_size: int, device: torch.device | None = None) -> CharRNN:
    return CharRNN(config, vocab_size)


def parameters(config: CharRNNConfig, vocab_size: int) -> int:
    """About the parameters a char-RNN of this config has (the memory check)."""
    hidden, gates = config.hidden_size, {"lstm": 4, "gru": 3, "rnn": 1}[config.cell]
    first = vocab_size if config.input == "onehot" else (config.embedding_dim or hidden)
    embedding = 0 if config.input == "onehot" else vocab_size * first
    layers = sum(gates * (hidden * ((first if i == 0 else hidden) + hidden) + 2 * hidden)
                 for i in range(config.num_layers))
    head = 0 if config.tie_weights else hidden * vocab_size + vocab_size
    return embedding + layers + head


SPEC = ModelSpec(name="char_rnn", config=CharRNNConfig, build=build, exporter="zoo.export.rnn", parameters=parameters)
