"""Checkpoints: `ckpt/step-N/{model.safetensors, state.pt, meta.json}` plus `latest` and `best` pointers.

A checkpoint is written into a hidden temp folder, each file flushed and fsynced, `meta.json` last, then the
folder is renamed into place: a folder named `step-N` is always complete. Pointers are replaced atomically
and old checkpoints are deleted only after the new one is in place. Weights are safetensors; the rest loads
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from zoo.errors import CheckpointError

STEP_DIR = re.compile(r"^step-(\d+)$")


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace a small text file in one step (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_bytes(tmp, text.encode("utf-8"))
    os.replace(tmp, path)


def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state as contiguous CPU tensors, each shared (tied) tensor stored once; returns the
    tensors and {alias: stored name} for the tied ones."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple], str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str],
                       source: str) -> None:
    """Copy saved tensors into `model`; a mismatch names the missing, unexpected and misshapen tensors."""
    full = dict(tensors)
    for alias, name in aliases.items():
        full[alias] = tensors[name]
    expected = model.state_dict()
    missing = sorted(expected.keys() - full.keys())
    unexpected = sorted(full.keys() - expected.keys())
    shapes = sorted(f"{k} {tuple(full[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                    if k in full and full[k].shape != v.shape)
    if missing or unexpected or shapes:
        def listed(items: list[str], sep: str) -> str:
            more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
            return sep.join(items[:6]) + more

        parts = []
        if missing:
            parts.append(f"missing {listed(missing, ', ')}")
        if unexpected:
            parts.append(f"unexpected {listed(unexpected, ', ')}")
        if shapes:
            parts.append(f"shape (saved vs model) {listed(shapes, '; ')}")
        raise CheckpointError(f"weights in {source} do not fit this model: {' | '.join(parts)}")
    model.load_state_dict(full)


class Checkpointer:
    """Saves and finds the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep_last: int = 2):
        self.root = Path(run_dir) / "ckpt"
        self.keep_last = keep_last

    # -------------------------------------------------------------------------------------- finding
    def complete(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if (m := STEP_DIR.match(p.name)) and (p / "meta.json").is_file()]
        return [p for _, p in sorted(found)]

    def _pointer(self, name: str) -> Path | None:
        pointer = self.root / name
        if pointer.is_file():
            target = self.root / pointer.read_text(encoding="utf-8").strip()
            if STEP_DIR.match(target.name) and (target / "meta.json").is_file():
                return target
        return None

    def latest(self) -> Path | None:
        """The newest complete checkpoint (the `latest` pointer, else a scan)."""
        found = self.complete()
        pointed = self._pointer("latest")
        if found and (pointed is None or pointed != found[-1]):
            return found[-1]
        return pointed

    def best(self) -> Path | None:
        return self._pointer("best")

    def resolve(self, which: str) -> Path:
        """`latest`, `best` or `step-N` -> a complete checkpoint folder."""
        if which in ("latest", "best"):
            path = self.latest() if which == "latest" else self.best()
        elif STEP_DIR.match(which):
            path = self.root / which if (self.root / which / "meta.json").is_file() else None
        else:
            raise CheckpointError(f"checkpoint {which!r} is not latest, best or step-N")
        if path is None:
            raise CheckpointError(f"{self.root.parent} has no {which} checkpoint; train it first")
        return path

    # -------------------------------------------------------------------------------------- writing
    def save(self, step: int, model: nn.Module, state: dict[str, Any], meta: dict[str, Any],
             best: bool = False) -> Path:
        """Write checkpoint `step`, move the pointers, then prune old checkpoints."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        tensors, aliases = model_tensors(model)
        meta = {**meta, "step": step, "aliases": aliases}
        _write_bytes(tmp / "model.safetensors",
                     safetensors_bytes(tensors, metadata={"format": "pt", "aliases": json.dumps(aliases)}))
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _write_bytes(tmp / "meta.json", json.dumps(meta, indent=1).encode("utf-8"))
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
            old = self.root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.root)
        write_atomic(self.root / "latest", final.name)
        if best:
            write_atomic(self.root / "best", final.name)
        self.prune()
        return final

    def prune(self) -> None:
        """Delete all but the newest `keep_last` complete checkpoints and the best; leftovers of
        interrupted saves go too. A failed delete is a warning, never a lost run."""
        keep = set(self.complete()[-self.keep_last:])
        best = self.best()
        if best is not None:
            keep.add(best)
        for path in self.root.iterdir():
            stale_tmp = path.name.startswith((".tmp-", ".old-")) and path.is_dir()
            old_step = STEP_DIR.match(path.name) and path.is_dir() and path not in keep
            if stale_tmp or old_step:
                try:
                    shutil.rmtree(path)
                except OSError as exc:
                    warnings.warn(f"could not delete old checkpoint {path}: {exc}", stacklevel=2)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors, state, meta) of a complete checkpoint folder; nothing is unpickled."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        with safe_open(str(path / "model.safetensors"), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    return tensors, state, meta
