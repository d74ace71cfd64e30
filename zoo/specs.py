"""The kinds of registry entry: an architecture (ModelSpec), a task (TaskSpec) and an optimizer
(OptimizerSpec). Each model, task or optimizer module defines its own as `SPEC` (or `SPECS`); zoo/registry.py
lists them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# the tasks whose runs are language models (their model is the backbone with its own LM head): what sampling,
# evaluation, export and fine-tuning accept as a base
LANGUAGE_MODELS = ("lm", "instruct", "preference")
# the language models tuned to answer instructions: their recipe's tokenizer is the base's, their card has a
# prompt format
INSTRUCTION_TUNED = ("instruct", "preference")


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: its `[model]` config class (selected by `arch = name`), its builder,
    `build(config, vocab_size, device) -> Backbone` (the device lets it lay itself out for that device, e.g.
    GPT-2's padded vocabulary on CUDA), and `exporter`, the module that writes its runs as a transformers
    folder (`export(run, out) -> (what, needs remote code)`, `describe(run)`), imported only when exporting."""

    name: str
    config: type
    build: Callable[..., Any]
    exporter: str = ""
    # `parameters(config, vocab_size) -> int`: about how many parameters `build` makes (within a few percent),
    # without building it: the memory check before a run builds its model once
    parameters: Callable[..., int] | None = None


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer: its `[optim]` config class (selected by `name`) and
    `build(config, model, lr, device) -> (optimizer, how)`: the optimizer over the model's trainable
    parameters, each parameter group with its own base rate as `initial_lr` (the schedule scales every group's
    rate by the same factor) and, where groups differ by what they hold, its `role`; `how` says how it runs
    (e.g. "fused", "foreach"), for the start line."""

    name: str
    config: type
    build: Callable[..., Any]


@dataclass(frozen=True)
class TaskSpec:
    """A task: its `[task]` config class (selected by `kind = name`) and four functions:

    - `load_data(recipe, tokenizer | None, progress) -> (tokenizer, data, info)`: the task's data (a resumed run
      passes the tokenizer it was trained with);
    - `wrap(config, backbone) -> Trainable`: the model the trainer optimises (the backbone itself, or a head
      around it);
    - `build(config, recipe, tokenizer, data, model, plan) -> Task`: the batching, loss, evaluation and
      reporting;
    - `finetune(raw_recipe, base, recipe_stem) -> (raw_recipe, run_name)` (optional): how
      `zoo finetune-classifier --base` turns a task recipe and a base model (zoo.bases.Base) into a complete
      recipe and the run's default name;
    - `pretrained(config, model) -> str` (optional): load a fresh run's starting weights into the model the
      task wraps (a base's, for a task whose model is the backbone itself); the model's own
      `load_pretrained` otherwise."""

    name: str
    config: type
    load_data: Callable[..., Any]
    wrap: Callable[..., Any]
    build: Callable[..., Any]
    finetune: Callable[..., Any] | None = None
    pretrained: Callable[..., Any] | None = None  # (config, model) -> what was loaded: a fresh run's start
