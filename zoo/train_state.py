"""What a checkpoint carries besides the weights, and how it goes back: the optimizer (with padded rows cut
off), the grad scaler, every rank's RNG, the counters and the carried recurrent state. Restoring reads and
checks every part before changing anything, so an unreadable checkpoint leaves the run as it was and the
resume can fall back to an older one."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from zoo import dist
from zoo.checkpoint import Checkpointer, check_state, load_model_tensors, read_checkpoint, warn
from zoo.errors import CheckpointError
from zoo.models.base import State, Trainable, logical_rows
from zoo.optim import hyperparameters, load_state_with_padding, reapply, state_without_padding


@dataclass
class Counters:
    """Training progress that checkpoints carry (plain numbers, so `weights_only` loading works). `tokens`
    counts the task's items (tokens, or examples for classification)."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    clipped_steps: int = 0
    best_val: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    # how training ended (finished, early_stopped) once it has, and the last losses, so that a run stopped
    # during its final evaluation can do that evaluation again (optional in older checkpoints)
    ended: str = ""
    last_val: float | None = None
    last_train_loss: float = math.nan
    # the task's tracked numbers (bits per byte) of the best and the last evaluation, by summary.json name
    best_tracked: dict[str, float] = dataclasses.field(default_factory=dict)
    last_tracked: dict[str, float] = dataclasses.field(default_factory=dict)


NEWER_COUNTERS = ("ended", "last_val", "last_train_loss", "best_tracked", "last_tracked")
TRACKED = ("best_tracked", "last_tracked")


def counters_from(saved: dict[str, Any], where: Path) -> Counters:
    """Counters from a checkpoint's state, every field checked."""
    fields = {f.name for f in dataclasses.fields(Counters)}
    extra = sorted(set(saved) - fields)
    missing = sorted(fields - set(saved) - set(NEWER_COUNTERS))
    if extra or missing:
        raise CheckpointError(f"{where}/state.pt has counters that do not fit this zoo (missing "
                              f"{', '.join(missing) or 'none'}; unknown {', '.join(extra) or 'none'})")
    bad = [k for k, v in saved.items() if k not in ("ended", *TRACKED) and v is not None
           and not isinstance(v, int | float)]
    bad += [k for k in TRACKED if k in saved and not (isinstance(saved[k], dict) and all(
        isinstance(n, str) and isinstance(v, int | float) for n, v in saved[k].items()))]
    if bad or not isinstance(saved.get("ended", ""), str):
        raise CheckpointError(f"{where}/state.pt has counters of the wrong type ({', '.join(bad) or 'ended'})")
    return Counters(**saved)


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, where: Path) -> None:
    """A saved optimizer state must have this optimizer's groups and per-parameter tensors of its parameters'
    shapes (with fewer rows for padded ones); otherwise a CheckpointError, before anything is loaded."""
    groups, state = saved.get("param_groups"), saved.get("state")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not isinstance(groups, list) or not isinstance(state, dict) or len(groups) != len(optimizer.param_groups) \
            or [len(g.get("params", [])) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{where}/state.pt holds the state of another optimizer (its parameter groups differ)")
    for index, entry in state.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise CheckpointError(f"{where}/state.pt names an optimizer parameter {index!r} this model lacks")
        p = params[index]
        for key, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0 and (value.dim() != p.dim() or value.shape[1:] != p.shape[1:]
                                                                or value.shape[0] > p.shape[0]):
                raise CheckpointError(f"{where}/state.pt has optimizer state {key} of shape {tuple(value.shape)} for "
                                      f"a parameter of shape {tuple(p.shape)}")


class TrainState:
    """The run's state besides the weights, on this rank."""

    def __init__(self, model: Trainable, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 env: dist.DistEnv, device: torch.device):
        self.model, self.optimizer, self.scaler, self.env, self.device = model, optimizer, scaler, env, device
        self.counters = Counters()
        self.carried: dict[int, State] = {}
        self.padded_rows = logical_rows(model)
        self.recipe_groups = hyperparameters(optimizer)  # the recipe's settings, reapplied after loading

    def state_dict(self) -> dict[str, Any] | None:
        """The state to checkpoint, with every rank's RNG and carried state (a collective: every rank calls
        it); the dict on rank 0, None elsewhere."""
        mine = {str(k): [t.detach().cpu() for t in v] for k, v in self.carried.items() if v}
        gathered = dist.gather_objects((torch.get_rng_state(), mine), self.env)
        if not self.env.is_main:
            return None
        rng = {"torch": gathered[0][0], "torch_by_rank": [g[0] for g in gathered]}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "optimizer": state_without_padding(self.optimizer, self.padded_rows),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng,
            "counters": {**asdict(self.counters), "world_size": self.env.world_size},
            "carried": {k: v for _, part in gathered for k, v in part.items()},
        }

    def save(self, ckpt: Checkpointer, meta: dict[str, Any], best: bool = False) -> None:
        """Rank 0 writes a checkpoint of the current step (a collective: every rank calls it); every rank
        learns whether that worked, so none waits for a peer that has stopped."""
        state, failure = self.state_dict(), None
        if self.env.is_main:
            try:
                ckpt.save(self.counters.step, self.model, state, meta, best=best)
            except CheckpointError as exc:
                failure = exc
        if dist.any_rank(failure is not None, self.env, self.device):
            raise failure or CheckpointError("rank 0 could not write the checkpoint; see its message")

    def load_best_weights(self, ckpt: Checkpointer) -> Path | None:
        """Put the best checkpoint's weights into the model, if it is not the last step's; its folder, or None
        when the last weights are the best (or the best cannot be read: then a warning)."""
        best, c = ckpt.best(), self.counters
        if best is None or c.best_step in (-1, c.step):
            return None
        try:
            path, tensors, meta = ckpt.load_weights("best", note=lambda m: None)
            if path != best:
                raise CheckpointError(f"{best} cannot be read")
            load_model_tensors(self.model, tensors, meta.get("aliases", {}), str(path))
        except CheckpointError as exc:
            if self.env.is_main:
                warn(f"the test loss is the last weights' ({exc})")
            return None
        return best

    def resume(self, ckpt: Checkpointer) -> tuple[Path | None, list[tuple[Path, str]]]:
        """Restore the newest checkpoint that reads back whole, skipping (and returning, with the reason)
        unreadable newer ones. A run directory with checkpoint folders of which none can be resumed is
        refused: zoo never starts over on top of weights it cannot explain. Every rank must arrive at the same
        folder."""
        skipped: list[tuple[Path, str]] = []
        chosen = None
        for path in reversed(ckpt.complete()):
            try:
                self.load(path)
            except CheckpointError as exc:
                skipped.append((path, str(exc)))
                continue
            chosen = path
            break
        if chosen is None and ckpt.folders():
            found = ", ".join(p.name for p in ckpt.folders()[-4:])
            why = skipped[0][1] if skipped else "none has its meta.json, so none was completed by zoo"
            raise CheckpointError(f"{ckpt.root.parent} holds checkpoint folders ({found}) but none can be resumed "
                                  f"({why}); zoo will not start over on top of them: restore them, or run with "
                                  "--restart to set them aside (kept, not deleted) and start from step 0")
        names = dist.gather_objects(chosen.name if chosen else None, self.env)
        if len(set(names)) > 1:
            raise CheckpointError(f"the processes found different checkpoints to resume ({', '.join(map(str, names))});"
                                  " the run directory must be the same shared folder for every process")
        return chosen, skipped

    def load(self, path: Path) -> None:
        """Load a checkpoint into the model, optimizer, RNGs and counters; everything is read and checked
        before anything is changed, so a CheckpointError leaves the state as it was."""
        tensors, state, meta = read_checkpoint(path)
        check_state(state, path)
        saved = dict(state["counters"])
        saved_world = saved.pop("world_size", None)
        counters = counters_from(saved, path)
        if saved_world != self.env.world_size and any(state["carried"].values()):
            raise CheckpointError(f"{path} was written by {saved_world} processes; a recurrent run resumes "
                                  f"only with the same number (not {self.env.world_size})")
        check_optimizer_state(self.optimizer, state["optimizer"], path)
        rng = state["rng"]
        by_rank = rng.get("torch_by_rank")
        same_world = isinstance(by_rank, list) and len(by_rank) == self.env.world_size
        torch_rng = by_rank[self.env.rank] if same_world else rng.get("torch")
        if not torch.is_tensor(torch_rng) or torch_rng.dtype != torch.uint8:
            raise CheckpointError(f"{path}/state.pt has no usable RNG state")
        try:
            carried = {int(k): tuple(t.to(self.device) for t in v) for k, v in state["carried"].items()}
        except (TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{path}/state.pt has a carried state zoo cannot read") from None
        load_model_tensors(self.model, tensors, meta.get("aliases", {}), str(path))
        try:
            load_state_with_padding(self.optimizer, state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(torch_rng)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}/state.pt does not fit this run ({str(exc).splitlines()[0][:160]})") \
                from None
        reapply(self.optimizer, self.recipe_groups)
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.counters = counters
        self.carried = carried
