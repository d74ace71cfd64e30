"""Names to specs: `model.arch` -> ModelSpec, `task.kind` -> TaskSpec, `optim.name` -> OptimizerSpec. Adding an
architecture, a task or an optimizer is one file in zoo/models/, zoo/tasks/ or zoo/optimizers/ that provides a
spec, plus one line in MODELS, TASKS or OPTIMIZERS below.

The registry imports the model and task modules; they import only lower layers (zoo.config, zoo.data,
zoo.tokenizers, zoo.checkpoint), never the recipe parser, the registry or the trainer."""

from __future__ import annotations

from typing import Any

import torch

from zoo.errors import RecipeError
from zoo.models import gpt2, rnn
from zoo.models.base import Trainable
from zoo.optimizers import classic, muon
from zoo.specs import ModelSpec, OptimizerSpec, TaskSpec
from zoo.tasks import classify, instruct, lm, preference
from zoo.tasks.base import MicroBatchPlan

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (rnn.SPEC, gpt2.SPEC)}
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (lm.SPEC, classify.SPEC, instruct.SPEC, preference.SPEC)}
OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in (*classic.SPECS, muon.SPEC)}


def model_spec(arch: str) -> ModelSpec:
    if arch not in MODELS:
        raise RecipeError(f"unknown model.arch {arch!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[arch]


def task_spec(kind: str) -> TaskSpec:
    if kind not in TASKS:
        raise RecipeError(f"unknown task.kind {kind!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[kind]


def optimizer_spec(name: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise RecipeError(f"unknown optim.name {name!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name]


def optimizer_configs() -> dict[str, type]:
    return {name: spec.config for name, spec in OPTIMIZERS.items()}


def build_optimizer(model: torch.nn.Module, config: Any, lr: float, device: torch.device | None = None):
    """(optimizer, how it runs) for the recipe's [optim] over the model's trainable parameters."""
    return optimizer_spec(config.name).build(config, model, lr, device or torch.device("cpu"))


def model_configs() -> dict[str, type]:
    return {name: spec.config for name, spec in MODELS.items()}


def task_configs() -> dict[str, type]:
    return {name: spec.config for name, spec in TASKS.items()}


def build_model(config: Any, vocab_size: int, device: torch.device | None = None):
    """The backbone for a model config, laid out for the device it will run on."""
    return model_spec(config.arch).build(config, vocab_size, device)


def load_data(recipe, tokenizer=None, progress: bool = True):
    """(tokenizer, data, info) for a recipe: the task decides what its data is."""
    return task_spec(recipe.task.kind).load_data(recipe, tokenizer, progress)


def build_trainable(recipe, vocab_size: int, device: torch.device | None = None) -> Trainable:
    """The model the trainer optimises and checkpoints: the backbone, wrapped with the task's head if any."""
    return task_spec(recipe.task.kind).wrap(recipe.task, build_model(recipe.model, vocab_size, device))


def load_pretrained(recipe, model: Trainable) -> str:
    """A fresh run's starting weights: the task's (a base) where it says, else the model's own (init_from)."""
    spec = task_spec(recipe.task.kind)
    return spec.pretrained(recipe.task, model) if spec.pretrained else model.load_pretrained()


def build_task(recipe, tokenizer, data, model, plan: MicroBatchPlan | None = None):
    """The task for a recipe, over its data, for a built (wrapped) model; `plan` is the micro-batch plan
    (the recipe's, on one process, if not given)."""
    plan = plan or MicroBatchPlan.of(recipe.train.batch_size, recipe.train.micro_batch_size, 1, 0)
    return task_spec(recipe.task.kind).build(recipe.task, recipe, tokenizer, data, model, plan)
