"""Sequence classification (Raschka ch. 6): a linear head on the backbone's hidden state at the last non-pad
token, trained on labelled texts (the SMS Spam Collection by default, or any CSV/TSV with a text and a label
column), with a freezing policy. The backbone and its tokenizer come from a base: a zoo language-model run or
GPT-2 weights in the Hugging Face layout.

The parts, each in its module: `config` (the [task] table), `data` (reading CSV/TSV files, the seeded and the
book split), `head` (the Classifier and freezing), `task` (batches, loss, evaluation, predictions of a split),
`predict` (labels for new texts), `metrics` (accuracy, precision, recall, F1, confusion).
"""

from __future__ import annotations

import json

from zoo.bases import Base
from zoo.specs import TaskSpec
from zoo.tasks.classify.config import ClassifyTaskConfig
from zoo.tasks.classify.data import Examples, base_tokenizer, load_data, read_labelled, split_texts
from zoo.tasks.classify.head import Classifier, wrap
from zoo.tasks.classify.metrics import metrics_for
from zoo.tasks.classify.predict import predict
from zoo.tasks.classify.task import ClassifyTask, build, pad, pad_id_for

__all__ = ["ClassifyTaskConfig", "Examples", "base_tokenizer", "load_data", "read_labelled", "split_texts",
           "Classifier", "wrap", "metrics_for", "predict", "ClassifyTask", "build", "pad", "pad_id_for", "finetune",
           "SPEC"]


def finetune(raw: dict, base: Base, recipe_stem: str) -> tuple[dict, str]:
    """A classification recipe (parsed TOML) completed for a base model: the base's architecture and
    tokenizer and `task.base`; with the run's default name (`spam_<base>` for the SMS data)."""
    raw = json.loads(json.dumps(raw))
    raw["model"] = base.model_section()
    raw.setdefault("data", {}).update(base.tokenizer_fields())
    raw.setdefault("task", {})["base"] = base.spec
    source = raw["data"].get("source", "embedded:sms_spam")
    return raw, (f"spam_{base.name}" if source == "embedded:sms_spam" else f"{recipe_stem}_{base.name}")


SPEC = TaskSpec(name="classify", config=ClassifyTaskConfig, load_data=load_data, wrap=wrap, build=build,
                finetune=finetune)
