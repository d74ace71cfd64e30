"""Run directories: `runs/<name>/` with the resolved recipe, tokenizer, TensorBoard events, checkpoints and
`summary.json`; loading a trained run back for sampling and evaluation."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import registry
from zoo.checkpoint import Checkpointer, load_model_tensors, read_checkpoint, write_atomic
from zoo.errors import CheckpointError, RecipeError
from zoo.recipe import Recipe, apply_overrides, dumps_toml, read_toml, recipe_changes, recipe_from_dict, recipe_to_dict
from zoo.tokenizers import CharTokenizer, load_tokenizer

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def check_name(name: str) -> str:
    """A run name is one plain path component (no `/`, no `..`)."""
    if not NAME.match(name) or ".." in name:
        raise RecipeError(f"run name {name!r} must be letters, digits and . _ - + = (no slashes or '..')")
    return name


def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on the run directory for this process's lifetime, so two trainings never write
    the same run; returns the open lock file (keep a reference). The lock goes with the process."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CheckpointError(f"{run_dir} is being trained by another process; wait for it, stop it, or choose "
                              f"another --name") from None
    return handle


def prepare_run_dir(recipe: Recipe, run_dir: Path) -> None:
    """Create the run directory and write the resolved recipe; refuse a different recipe in an existing run
    (only limits and cadences may change when a run is resumed)."""
    new = recipe_to_dict(recipe)
    saved = run_dir / "recipe.toml"
    if saved.is_file():
        old = read_toml(saved)
        changes = recipe_changes(old, new)
        if changes:
            a, b = _flat(old), _flat(new)
            shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changes[:4])
            raise CheckpointError(f"{run_dir} holds a run of a different recipe ({shown}); choose another "
                                  f"--name, or delete {run_dir} to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, dumps_toml(new))


def _flat(data: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, t in data.items() if isinstance(t, dict) for k, v in t.items()}


@dataclass
class LoadedRun:
    """A trained run: its recipe, tokenizer and model with a checkpoint's weights."""

    run_dir: Path
    recipe: Recipe
    tokenizer: CharTokenizer
    model: nn.Module
    checkpoint: Path
    meta: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "latest", device: torch.device | str = "cpu",
             overrides: list[str] | None = None) -> LoadedRun:
    """Rebuild the model of `run_dir` and load the `latest`, `best` or `step-N` checkpoint into it;
    `overrides` (`section.key=value`) change the run's recipe first, e.g. `model.impl=scratch`."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a zoo run (no recipe.toml); train one with `zoo train`")
    recipe = recipe_from_dict(apply_overrides(read_toml(run_dir / "recipe.toml"), overrides or []))
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    path = Checkpointer(run_dir).resolve(which)
    tensors, _, meta = read_checkpoint(path)
    model = registry.build_trainable(recipe, tokenizer.vocab_size, torch.device(device))
    load_model_tensors(model, tensors, meta.get("aliases", {}), str(path))
    model.to(device).eval()
    return LoadedRun(run_dir, recipe, tokenizer, model, path, meta)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
