"""The `[task]` table of sequence classification (`kind = "classify"`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from zoo.config import Section, check, doc


@dataclass(frozen=True)
class ClassifyTaskConfig(Section):
    kind: str = doc("classify", "classify")
    base: str = doc("the pretrained language model: a run directory or hf:gpt2 / hf:PATH "
                    "(zoo finetune-classifier --base sets it)", "")
    base_checkpoint: str = doc("which checkpoint of a base run: best, latest or step-N", "best")
    labels: tuple[str, ...] = doc("the class names, in the order of the head's outputs", ("ham", "spam"))
    positive: str = doc("the class precision/recall/F1 are about (empty = the last label)", "")
    text_column: str = doc("text column of a CSV/TSV with a header row", "text")
    label_column: str = doc("label column of a CSV/TSV with a header row", "label")
    balance: bool = doc("undersample every class to the smallest one (the book's 747 + 747)", True)
    max_length: int = doc("truncate texts to this many tokens (0 = the model's context length, or no limit)", 0)
    trainable: Literal["default", "last_n", "head_only", "all"] = doc(
        "default: the last block/recurrent layer, the final norm and the head; last_n: the last `last_n` "
        "blocks too; head_only; all", "default")
    last_n: int = doc("blocks or recurrent layers trained with trainable = \"last_n\"", 1)
    split: Literal["seeded", "book"] = doc(
        "seeded: balance and shuffle with run.seed, cut by rounding; book: Raschka ch. 6 exactly (the file read "
        "as pandas reads it, ham sampled and the set shuffled with numpy's RandomState(123) as pandas' sample "
        "does, cut by truncation: the same messages in the same order as the book's train/val/test)", "seeded")
    pooling: Literal["last_token", "last_position"] = doc(
        "the hidden state the head reads: last_token (each message's last real token) or last_position (the "
        "last position of the padded row, the book's)", "last_token")
    padding: Literal["batch", "longest_train"] = doc(
        "batch: pad each batch to its longest message; longest_train: pad (and truncate) every message to the "
        "longest training message, the book's", "batch")
    head_bias: bool = doc("give the classification head a bias (the book's nn.Linear has one)", False)

    def validate(self) -> None:
        check(len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels), "task.labels",
              f"is {list(self.labels)}; give at least two distinct class names")
        check(not self.positive or self.positive in self.labels, "task.positive",
              f"is {self.positive!r}; use one of {', '.join(self.labels)}")
        check(self.max_length >= 0 and self.last_n >= 1, "task.max_length",
              "and task.last_n must be >= 0 and >= 1")


