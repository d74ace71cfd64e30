"""Names to builders: `model.arch` -> (config class, builder), `task.kind` -> (config class, builder)."""

from __future__ import annotations

from typing import Any

from zoo.errors import RecipeError


def _models() -> dict[str, tuple[type, Any]]:
    from zoo.models import gpt2, rnn

    return {"char_rnn": (rnn.CharRNNConfig, rnn.build), "gpt2": (gpt2.GPT2Config, gpt2.build)}


def _tasks() -> dict[str, tuple[type, Any]]:
    from zoo.tasks import lm

    return {"lm": (lm.LMTaskConfig, lm.build)}


def model_configs() -> dict[str, type]:
    return {name: spec[0] for name, spec in _models().items()}


def task_configs() -> dict[str, type]:
    return {name: spec[0] for name, spec in _tasks().items()}


def build_model(config: Any, vocab_size: int):
    """The backbone for a model config."""
    models = _models()
    if config.arch not in models:
        raise RecipeError(f"unknown model.arch {config.arch!r}; known: {', '.join(sorted(models))}")
    return models[config.arch][1](config, vocab_size)


def build_task(recipe, splits, model):
    """The task for a recipe, over token splits, for a built model."""
    tasks = _tasks()
    if recipe.task.kind not in tasks:
        raise RecipeError(f"unknown task.kind {recipe.task.kind!r}; known: {', '.join(sorted(tasks))}")
    return tasks[recipe.task.kind][1](recipe.task, recipe, splits, model)
