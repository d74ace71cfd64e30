"""Names to builders: `model.arch` -> (config class, builder), `task.kind` -> (config class, builder)."""

from __future__ import annotations

from typing import Any

from zoo.errors import RecipeError


def _models() -> dict[str, tuple[type, Any]]:
    from zoo.models import gpt2, rnn

    return {"char_rnn": (rnn.CharRNNConfig, rnn.build), "gpt2": (gpt2.GPT2Config, gpt2.build)}


def _tasks() -> dict[str, tuple[type, Any]]:
    from zoo.tasks import classify, lm

    return {"lm": (lm.LMTaskConfig, lm), "classify": (classify.ClassifyTaskConfig, classify)}


def model_configs() -> dict[str, type]:
    return {name: spec[0] for name, spec in _models().items()}


def task_configs() -> dict[str, type]:
    return {name: spec[0] for name, spec in _tasks().items()}


def build_model(config: Any, vocab_size: int, device=None):
    """The backbone for a model config, laid out for the device it will run on."""
    models = _models()
    if config.arch not in models:
        raise RecipeError(f"unknown model.arch {config.arch!r}; known: {', '.join(sorted(models))}")
    return models[config.arch][1](config, vocab_size, device)


def task_module(recipe):
    """The module of the recipe's task: `load_data`, `wrap`, `build` and `metrics` live there."""
    tasks = _tasks()
    if recipe.task.kind not in tasks:
        raise RecipeError(f"unknown task.kind {recipe.task.kind!r}; known: {', '.join(sorted(tasks))}")
    return tasks[recipe.task.kind][1]


def load_data(recipe, tokenizer=None, progress: bool = True):
    """(tokenizer, data, info) for a recipe: the task decides what its data is."""
    return task_module(recipe).load_data(recipe, tokenizer, progress)


def build_trainable(recipe, vocab_size: int, device=None):
    """The model the trainer optimises and checkpoints: the backbone, wrapped with the task's head if any."""
    return task_module(recipe).wrap(recipe.task, build_model(recipe.model, vocab_size, device))


def build_task(recipe, data, model):
    """The task for a recipe, over its data, for a built (wrapped) model."""
    return task_module(recipe).build(recipe.task, recipe, data, model)
