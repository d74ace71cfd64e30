"""Base models: what `--base` (fine-tuning), `task.base` (a classifier's backbone) and `--weights` (sampling or
evaluating pretrained weights) name. One resolver for every consumer: a zoo language-model run directory, or
GPT-2 weights in the Hugging Face layout (`hf:gpt2`, a Hub id downloaded when online, or `hf:PATH`)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint import Checkpointer
from zoo.errors import ZooError
from zoo.models import gpt2
from zoo.specs import LANGUAGE_MODELS
from zoo.tokenizers import FIELDS, Gpt2Tokenizer, Tokenizer, load_tokenizer


@dataclass(frozen=True)
class Base:
    """A resolved base model. `spec` is what the user wrote; `name` names runs made from it."""

    spec: str
    hub: bool
    folder: Path

    @property
    def name(self) -> str:
        return self.spec.removeprefix("hf:").rstrip("/").split("/")[-1] if self.hub else self.folder.resolve().name

    def _recipe(self) -> dict[str, Any]:
        return tomllib.loads((self.folder / "recipe.toml").read_text(encoding="utf-8"))

    def model_section(self) -> dict[str, Any]:
        """The [model] table that builds this base's architecture (a recipe's raw TOML table)."""
        if self.hub:
            return gpt2.hub_section(self.spec)
        return dict(self._recipe()["model"])

    def tokenizer_fields(self) -> dict[str, Any]:
        """The [data] fields that name the base's tokenizer (`tokenizer` and its own fields), for a recipe made
        from this base."""
        if self.hub:
            return {"tokenizer": "gpt2"}
        data = self._recipe().get("data", {})
        return {k: data[k] for k in ("tokenizer", *FIELDS) if k in data} | {"tokenizer": data.get("tokenizer", "char")}

    def tokenizer(self, any_text: bool = True) -> Tokenizer:
        """The base's tokenizer: a run's own, saved in it (with `any_text`, a character vocabulary gets a fallback
        for characters it lacks, so any text encodes); GPT-2's for Hugging Face GPT-2 weights."""
        if self.hub:
            return Gpt2Tokenizer()
        tok = load_tokenizer(self.folder / "tokenizer.json")
        return tok.for_any_text() if any_text else tok

    def load_into(self, backbone: torch.nn.Module, checkpoint: str = "best") -> str:
        """Copy the base's weights into a backbone of its architecture; returns what was loaded."""
        if self.hub:
            gpt2.load_hf_weights(backbone, gpt2.hf_folder(self.spec))
            return self.spec
        path, _ = Checkpointer(self.folder).load_into(backbone, checkpoint)
        return f"{self.folder} ({path.name})"


def resolve_base(spec: str) -> Base:
    """A base model from `hf:...`, a run directory or a transformers folder (config.json and safetensors, as
    `save_pretrained` writes it); anything else, or a run that is not a language model, is a one-line error
    that names none of the commands' flags (sampling, evaluation and fine-tuning all come here)."""
    if not spec:
        raise ZooError("no base model given; name a language-model run (runs/NAME) or hf:gpt2 / hf:PATH")
    if spec.startswith("hf:"):
        folder = Path(spec.removeprefix("hf:")).expanduser()
        return Base(spec, True, folder)
    folder = Path(spec)
    if folder.is_dir() and not (folder / "recipe.toml").is_file():
        if (folder / "config.json").is_file():  # Hugging Face weights, as save_pretrained writes them
            return Base(f"hf:{spec}", True, folder)
        raise ZooError(f"{spec} is a folder but neither a zoo run (no recipe.toml) nor Hugging Face weights (no "
                       "config.json); name a run directory (runs/NAME), a transformers folder or hf:gpt2")
    if not (folder / "recipe.toml").is_file():
        raise ZooError(f"{spec} does not exist; name a run directory (runs/NAME, trained with `zoo train`), a "
                       "transformers folder (config.json + model.safetensors) or hf:gpt2")
    base = Base(spec, False, folder)
    try:
        kind = base._recipe().get("task", {}).get("kind", "lm")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ZooError(f"base run {spec}: its recipe.toml cannot be read ({exc})") from None
    if kind not in LANGUAGE_MODELS:
        raise ZooError(f"base run {spec} is not a language model (its task is {kind!r}); fine-tune from a "
                       "language-model run")
    return base
