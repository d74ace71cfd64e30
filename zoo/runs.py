"""Run directories: `runs/<name>/` with the resolved recipe, tokenizer, TensorBoard events, checkpoints and
`summary.json`; loading a trained run back for sampling and evaluation."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import registry
from zoo.checkpoint import Checkpointer, describe, write_atomic
from zoo.config import check_name  # noqa: F401  (the run-name rule, re-exported)
from zoo.errors import CheckpointError, RecipeError
from zoo.recipe import (
    Recipe,
    completed,
    dumps_toml,
    flatten,
    matches,
    read_toml,
    recipe_changes,
    recipe_to_dict,
    recipe_with_overrides,
)
from zoo.tokenizers import Tokenizer, load_tokenizer


def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on the run directory for this process's lifetime, so two trainings never write
    the same run; returns the open lock file (keep a reference). The lock goes with the process."""
    import fcntl

    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run directory; choose another --name or --runs-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held open on purpose
    except OSError as exc:
        raise CheckpointError(f"cannot create the run directory {run_dir} ({describe(exc)}); choose another "
                              "--runs-dir") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CheckpointError(f"{run_dir} is being trained by another process; wait for it, stop it, or choose "
                              f"another --name") from None
    return handle


# Settings a run may change when it resumes after a non-finite or diverging loss stopped it: the remedies
# the stop message names (learning rate, clipping, schedule, optimizer hyperparameters).
REMEDIES = ("train.lr", "train.grad_clip", "schedule.", "optim.betas", "optim.eps", "optim.momentum",
            "optim.alpha", "optim.weight_decay")
DIVERGED = "diverged.json"
HISTORY = "recipe_history.json"


def _is_remedy(key: str) -> bool:
    return matches(key, REMEDIES)


def check_recipe(recipe: Recipe, run_dir: Path, has_checkpoints: bool) -> dict[str, list]:
    """Compare the recipe with the one saved in an existing run. Returns the changes to record (remedies after
    a divergence, {key: [old, new]}); refuses any other change to a run that has checkpoints. A run with no
    checkpoint yet may start over with another recipe."""
    saved = run_dir / "recipe.toml"
    if not saved.is_file():
        return {}
    try:
        old = read_toml(saved)
    except RecipeError:
        old = None
    new = recipe_to_dict(recipe)
    if old is None:
        if has_checkpoints:
            raise CheckpointError(f"{saved} cannot be read, so the run's checkpoints cannot be matched to a recipe; "
                                  f"restore it from a copy, or start over with --restart")
        return {}
    changes = recipe_changes(old, new)
    if not changes:
        return {}
    a, b = flatten(completed(old)), flatten(new)
    if not has_checkpoints:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changes[:4])
        print(f"{run_dir} has no checkpoint yet: starting it with the new recipe ({shown})", flush=True)
        return {}
    diverged = (run_dir / DIVERGED).is_file()
    if diverged and all(_is_remedy(k) for k in changes):
        return {k: [a.get(k), b.get(k)] for k in changes}
    shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changes[:4])
    remedies = [k for k in changes if _is_remedy(k)]
    hint = (f" ({', '.join(remedies)} may change only after a non-finite or diverging loss stopped the run)"
            if remedies and not diverged else "")
    raise CheckpointError(f"{run_dir} holds a run of a different recipe ({shown}){hint}; to resume it with its own "
                          f"recipe: `zoo train {run_dir}`; otherwise choose another --name, or run with --restart "
                          "to set its checkpoints aside and start over")


def claim_run_dir(recipe: Recipe, run_dir: Path) -> None:
    """Write the resolved recipe: from here on the directory holds this run."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the run directory {run_dir} ({describe(exc)})") from None
    write_atomic(run_dir / "recipe.toml", dumps_toml(recipe_to_dict(recipe)))


def record_changes(run_dir: Path, step: int, changes: dict[str, list]) -> str:
    """Append a recipe change (remedies after a divergence) to recipe_history.json; returns its text."""
    path = run_dir / HISTORY
    try:
        history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        history = []
    reason = {}
    try:
        reason = json.loads((run_dir / DIVERGED).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    entry = {"from_step": step, "changes": changes, "after": reason}
    history = (history if isinstance(history, list) else []) + [entry]
    write_atomic(path, json.dumps(history, indent=1) + "\n")
    (run_dir / DIVERGED).unlink(missing_ok=True)
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def mark_diverged(run_dir: Path, info: dict[str, Any]) -> None:
    """Remember that a non-finite or diverging loss stopped the run (so its remedies may be applied)."""
    try:
        write_atomic(run_dir / DIVERGED, json.dumps(info) + "\n")
    except CheckpointError:
        pass  # the stop message says what to do either way


ABANDONABLE = ("ckpt", "tb", "summary.json", "recipe.toml", "tokenizer.json", HISTORY, DIVERGED)


def set_aside(run_dir: Path, names: tuple[str, ...] = ABANDONABLE) -> Path | None:
    """--restart: move a run's checkpoints, events, summary and recipe (or the `names` given) into
    run_dir/abandoned-<time>/ (nothing is deleted); returns that folder, or None if there was nothing to move."""
    import time

    present = [run_dir / n for n in names if (run_dir / n).exists()]
    if not present:
        return None
    target = run_dir / time.strftime("abandoned-%Y%m%d-%H%M%S")
    n = 1
    while target.exists():
        n += 1
        target = run_dir / (time.strftime("abandoned-%Y%m%d-%H%M%S") + f"-{n}")
    try:
        target.mkdir()
        for path in present:
            os.replace(path, target / path.name)
    except OSError as exc:
        raise CheckpointError(f"cannot set {run_dir}'s files aside ({describe(exc)})") from None
    return target


def unclaimed(folder: Path) -> bool:
    """Whether a folder holds no run: empty, or only what a training killed before it wrote its recipe leaves
    (the lock file, temp files, empty folders), so a new run may take it."""
    if not folder.is_dir():
        return False
    for path in folder.rglob("*"):
        if path.is_dir():
            continue
        if path.parent != folder or not (path.name == ".lock" or re.fullmatch(r"\..*\.tmp(-.*)?", path.name)):
            return False
    return True


def clean_run_dir(run_dir: Path) -> None:
    """Remove temp files that a killed write left in the run directory (only while holding its lock)."""
    for path in run_dir.glob(".*.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)


@dataclass
class LoadedRun:
    """A trained run: its recipe, tokenizer and model with a checkpoint's weights."""

    run_dir: Path
    recipe: Recipe
    tokenizer: Tokenizer
    model: nn.Module
    checkpoint: Path
    meta: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "best", device: torch.device | str = "cpu",
             overrides: list[str] | None = None) -> LoadedRun:
    """Rebuild the model of `run_dir` and load the `best` (the default; the latest where there is no best),
    `latest` or `step-N` checkpoint into it; a best/latest that cannot be read, or whose weights do not fit the
    model, falls back to the newest one that does, with a warning (as `zoo train` does). Only the weights are
    read, not the optimizer state. `overrides` (`section.key=value`) change the run's recipe first, e.g.
    `model.impl=scratch`."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a zoo run (no recipe.toml); train one with `zoo train`")
    recipe = recipe_with_overrides(read_toml(run_dir / "recipe.toml"), overrides or [], str(run_dir / "recipe.toml"))
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model = registry.build_trainable(recipe, tokenizer.vocab_size, torch.device(device))
    path, meta = Checkpointer(run_dir).load_into(model, which)
    model.to(device).eval()
    return LoadedRun(run_dir, recipe, tokenizer, model, path, meta)


def load_base_model(spec: str, device: torch.device | str = "cpu", which: str = "best"):
    """(model, tokenizer, recipe or None, label) of a base model (zoo.bases): a run directory's `which`
    checkpoint, or GPT-2 weights in the Hugging Face layout (`hf:gpt2`, `hf:PATH`)."""
    from zoo.bases import resolve_base
    from zoo.models.gpt2 import from_hf

    base = resolve_base(spec)
    if not base.hub:
        run = load_run(base.folder, which, device)
        return run.model, run.tokenizer, run.recipe, f"{run.run_dir} ({run.checkpoint.name})"
    model, tokenizer = from_hf(base.spec), base.tokenizer()
    if model.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"{spec} holds a GPT-2 with {model.vocab_size:,} token ids, not the "
                              f"{tokenizer.vocab_size:,} of GPT-2's BPE tokenizer that Hugging Face weights are read "
                              "with; for a model with its own vocabulary, use its zoo run directory")
    return model.to(device).eval(), tokenizer, None, spec


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json of a run, or None if it is missing or unreadable (not a JSON object)."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None
