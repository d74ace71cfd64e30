"""The classifier: a linear head on a backbone's hidden state (last real token or last position), its padding
length, its starting weights (the base) and the freezing policy (`task.trainable`)."""

from __future__ import annotations

import torch
from torch import nn

from zoo.bases import resolve_base
from zoo.models.base import Backbone, Trainable
from zoo.tasks.classify.config import ClassifyTaskConfig


class Classifier(Trainable):
    """A backbone plus a linear head (`score`; no bias by default, like GPT2ForSequenceClassification's) on
    the hidden state at each sequence's last real token, or at the last position of the padded row
    (`task.pooling`). With `task.padding = "longest_train"` it keeps the length every input is padded to as a
    buffer (`pad_to`, saved with the weights), so inference pads as training did."""

    stateful = False

    def __init__(self, config: ClassifyTaskConfig, backbone: nn.Module):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.max_seq_len = backbone.max_seq_len
        self.score = nn.Linear(backbone.d_model, len(config.labels), bias=config.head_bias)
        nn.init.normal_(self.score.weight, std=0.02)
        if self.score.bias is not None:
            nn.init.zeros_(self.score.bias)
        if config.padding == "longest_train":
            self.register_buffer("pad_to", torch.zeros((), dtype=torch.long))

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.backbone(idx)
        if self.config.pooling == "last_position":
            return self.score(hidden[:, -1])
        last = hidden[torch.arange(idx.shape[0], device=idx.device), lengths - 1]
        return self.score(last)

    @property
    def recurrent(self) -> bool:
        return self.backbone.recurrent

    def heads(self) -> list[nn.Module]:
        return [self.score, *self.backbone.heads()]

    def padded_length(self) -> int | None:
        """The fixed length inputs are padded to, or None for per-batch padding."""
        return int(self.pad_to) if self.config.padding == "longest_train" else None

    def fit(self, ids: list[int]) -> list[int]:
        """A message's ids cut to what the classifier reads: task.max_length (or the backbone's context) and
        the padded length, if fixed. The one truncation rule for training, evaluation and inference."""
        limits = [n for n in (self.config.max_length or self.max_seq_len, self.padded_length()) if n]
        return ids[: min(limits)] if limits else ids

    def load_pretrained(self) -> str:
        """Start from the base: a zoo run's checkpoint, or GPT-2 weights (zoo.bases)."""
        if not self.config.base:
            return self.backbone.load_pretrained()
        return resolve_base(self.config.base).load_into(self.backbone, self.config.base_checkpoint)

    def freeze(self) -> None:
        """Apply the trainable policy. The LM head is never trained: the classifier does not use it."""
        policy, cfg = self.config.trainable, self.config
        groups, final = self.backbone.layer_groups()
        train = [self.score]
        if policy == "all":
            train = [self]
        elif policy in ("default", "last_n"):
            n = 1 if policy == "default" else cfg.last_n
            train += [p for group in groups[-n:] for p in group] + list(final)
        for p in self.parameters():
            p.requires_grad = False
        for item in train:
            for p in item.parameters() if isinstance(item, nn.Module) else [item]:
                p.requires_grad = True
        lm_head = self.backbone.lm_head.weight
        if not any(lm_head is p for g in groups for p in g):  # an untied head is unused: out of the optimizer
            lm_head.requires_grad = False
            if getattr(self.backbone.lm_head, "bias", None) is not None:
                self.backbone.lm_head.bias.requires_grad = False


def wrap(config: ClassifyTaskConfig, backbone: Backbone) -> Classifier:
    model = Classifier(config, backbone)
    model.freeze()
    return model
