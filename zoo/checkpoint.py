"""Checkpoints: `ckpt/step-N/{model.safetensors, state.pt, meta.json}` plus `latest` and `best` pointers.

A checkpoint is written into a hidden temp folder, each file flushed and fsynced, `meta.json` last, then the
folder is renamed into place: a folder named `step-N` is complete when written by zoo. It is *trusted* only
once read back: `read_weights` and `read_state` check every file (JSON types, the safetensors header and
sizes, aliases, the state's parts) and turn any fault into one `CheckpointError` line. Pointers are replaced
atomically; old checkpoints are deleted only when older than the one just written, and a step folder zoo
cannot explain (no `meta.json`) is never deleted. Any OSError while saving (a full disk, no permission) is one
line naming the path and the errno, and leaves no temp file behind. Weights are safetensors with sorted,
single-key metadata, so a deterministic run writes byte-identical files; the rest loads with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from zoo.errors import CheckpointError
from zoo.faults import file_event

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_PARTS = ("optimizer", "rng", "counters", "carried")


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"zoo: warning: {message}", file=sys.stderr, flush=True)


def describe(exc: OSError) -> str:
    """An OSError as `PATH: [Errno N] reason`."""
    where = exc.filename or ""
    code = f"[Errno {exc.errno}] " if exc.errno else ""
    return f"{where}: {code}{exc.strerror or exc}" if where else f"{code}{exc.strerror or exc}"


def _write_bytes(path: Path, data: bytes | memoryview, event: str) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        file_event(event, path)
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
    """Replace a small text file in one step (temp file, fsync, rename); a failure leaves the old file as it
    was, removes the temp file and is one CheckpointError line."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        file_event("pointer" if path.parent.name == "ckpt" else "write", path)
        _write_bytes(tmp, text.encode("utf-8"), "write.bytes")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path} ({describe(exc)}); it is unchanged") from None


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
        if name not in tensors:
            raise CheckpointError(f"weights in {source} name {alias} as a copy of {name}, which is not there")
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


def swap_in(tmp: Path, final: Path) -> None:
    """Put the fully written folder `tmp` at `final`. An existing `final` is moved aside first and deleted only
    once the new one is in place; a kill in between leaves it as `.NAME.old-PID`, which `recover_swap` puts
    back."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def recover_swap(old: Path) -> str:
    """A `.NAME.old-PID` folder a killed `swap_in` left: put back where its name says if nothing is there now,
    else delete it (the new folder is in place); returns what was done."""
    final = old.parent / old.name[1:].rsplit(".old-", 1)[0]
    if not final.exists():
        os.replace(old, final)
        return f"restored {final.name}"
    shutil.rmtree(old, ignore_errors=True)
    return f"removed {old.name}"


# ------------------------------------------------------------------------------------------- reading
def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a checkpoint folder, checked: a JSON object whose step matches the folder's name."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no meta.json (it was never completed)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}/meta.json cannot be read ({_short(exc)})") from None
    match = STEP_DIR.match(path.name)
    aliases = meta.get("aliases", {}) if isinstance(meta, dict) else None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise CheckpointError(f"{path}/meta.json is not a zoo checkpoint description (a JSON object)")
    if match and meta.get("step") != int(match.group(1)):
        raise CheckpointError(f"{path}/meta.json names step {meta.get('step')!r}, not {int(match.group(1))}")
    return meta


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a checkpoint folder, every file checked; what inference needs (no optimizer)."""
    meta = read_meta(path)
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no mapping
    except Exception as exc:  # safetensors raises its own error type for a torn, zeroed or garbage file
        raise CheckpointError(f"{path}/model.safetensors cannot be read ({_short(exc)})") from None
    aliases = meta.get("aliases", {})
    lost = [f"{alias} -> {name}" for alias, name in aliases.items() if name not in tensors]
    if lost:
        raise CheckpointError(f"{path}/model.safetensors lacks the tensors its aliases name ({', '.join(lost)})")
    return tensors, meta


def read_state(path: Path) -> dict[str, Any]:
    """The training state (optimizer, RNG, counters, carried state) of a checkpoint folder; nothing is
    unpickled. `check_state` checks that it has every part."""
    try:
        with warnings.catch_warnings():  # a garbage file makes torch warn about its "pickle protocol"
            warnings.simplefilter("ignore")
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no state.pt, so it cannot be resumed (its weights can be sampled)") \
            from None
    except Exception as exc:  # noqa: BLE001 - garbage bytes fail torch's unpickler in any way (IndexError, KeyError...)
        raise CheckpointError(f"{path}/state.pt cannot be read ({_short(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}/state.pt is not a zoo training state")
    return state


def check_state(state: dict[str, Any], path: Path) -> None:
    """A state a run can resume from exactly has every part."""
    missing = [k for k in STATE_PARTS if not isinstance(state.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}/state.pt lacks its {', '.join(missing)} state and cannot be resumed exactly")


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors, state, meta) of a checkpoint folder, all checked."""
    tensors, meta = read_weights(path)
    return tensors, read_state(path), meta


# ------------------------------------------------------------------------------------------- the folder
def _step_of(path: Path) -> int:
    return int(STEP_DIR.match(path.name).group(1))


class Checkpointer:
    """Saves and finds the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep_last: int = 2):
        self.root = Path(run_dir) / "ckpt"
        self.keep_last = keep_last

    # -------------------------------------------------------------------------------------- finding
    def folders(self) -> list[Path]:
        """Every `step-N` folder, complete or not, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if STEP_DIR.match(p.name) and p.is_dir()), key=_step_of)

    def complete(self) -> list[Path]:
        """Folders with their completeness marker (meta.json), oldest first; not yet read, so not yet trusted."""
        return [p for p in self.folders() if (p / "meta.json").is_file()]

    def unexplained(self) -> list[Path]:
        """Step folders without meta.json: zoo's saves never leave one, so they are not zoo's to delete."""
        return [p for p in self.folders() if not (p / "meta.json").is_file()]

    def _pointer(self, name: str) -> Path | None:
        """The folder a pointer names, if the pointer is readable and names a complete folder."""
        pointer = self.root / name
        try:
            target = self.root / pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):  # missing, a directory, unreadable, not text
            return None
        if STEP_DIR.match(target.name) and (target / "meta.json").is_file():
            return target
        return None

    def latest(self) -> Path | None:
        """The newest complete checkpoint (found by a scan; the `latest` pointer is for people)."""
        found = self.complete()
        return found[-1] if found else None

    def best(self) -> Path | None:
        return self._pointer("best")

    def available(self) -> str:
        """The checkpoints a user can name, for messages."""
        names = [p.name for p in self.complete()]
        if not names:
            odd = self.unexplained()
            return (f"its step folders ({', '.join(p.name for p in odd[-3:])}) have no meta.json, so none is complete"
                    if odd else "it has none yet")
        shown = ", ".join(names[-6:])
        return f"it has {shown}" + (" and best" if self.best() else "")

    def resolve(self, which: str) -> Path:
        """`latest`, `best` or `step-N` -> a complete checkpoint folder (not yet read)."""
        if which in ("latest", "best"):
            path = self.latest() if which == "latest" else self.best()
        elif STEP_DIR.match(which):
            path = self.root / which if (self.root / which / "meta.json").is_file() else None
        else:
            raise CheckpointError(f"checkpoint {which!r} is not latest, best or step-N")
        if path is None:
            raise CheckpointError(f"{self.root.parent} has no {which} checkpoint ({self.available()})")
        return path

    def _best_problem(self) -> str:
        """Why `best` names no usable checkpoint: never written (no evaluation yet), or what is wrong with it."""
        pointer = self.root / "best"
        if not pointer.exists() and not pointer.is_symlink():
            return "no evaluation has chosen a best checkpoint yet"
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return "its ckpt/best pointer cannot be read"
        if not STEP_DIR.match(name):
            return f"its ckpt/best pointer names {name[:40]!r}, not a step folder"
        if not (self.root / name).is_dir():
            return f"its ckpt/best pointer names {name}, which is gone"
        return f"its ckpt/best pointer names {name}, which has no meta.json (incomplete)"

    def load_weights(self, which: str, note: Callable[[str], None] = warn,
                     accept: Callable[[Path, dict[str, torch.Tensor], dict[str, Any]], None] | None = None
                     ) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
        """(folder, tensors, meta) for `best`, `latest` or `step-N`. `best` falls back to the newest complete
        checkpoint where the run has no usable best (saying why); a checkpoint that cannot be read, or whose
        weights `accept` refuses (a CheckpointError: e.g. they do not fit the model), falls back to the next
        older one, each with one `note` line. A named step-N never falls back."""
        if which == "best" and self.best() is None and self.latest() is not None:
            note(f"{self.root.parent}: {self._best_problem()}; using the latest checkpoint, {self.latest().name}")
            which = "latest"
        first = self.resolve(which)
        if STEP_DIR.match(which):
            tensors, meta = read_weights(first)
            if accept is not None:
                accept(first, tensors, meta)
            return first, tensors, meta
        candidates = [first] + [p for p in reversed(self.complete()) if p != first and _step_of(p) < _step_of(first)]
        problems = []
        for path in candidates:
            try:
                tensors, meta = read_weights(path)
                if accept is not None:
                    accept(path, tensors, meta)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if problems:
                note(f"skipped {len(problems)} checkpoint(s) that cannot be used ({problems[0]}); using {path.name}")
            return path, tensors, meta
        raise CheckpointError(f"no usable {which} checkpoint in {self.root.parent}: {problems[0]}")

    def load_into(self, model: nn.Module, which: str, note: Callable[[str], None] = warn
                  ) -> tuple[Path, dict[str, Any]]:
        """Load the `which` checkpoint's weights into `model`, falling back (as load_weights does) past
        checkpoints that cannot be read or whose weights do not fit the model; returns (folder, meta)."""
        def fits(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
            load_model_tensors(model, tensors, meta.get("aliases", {}), str(path))

        path, _, meta = self.load_weights(which, note, accept=fits)
        return path, meta

    # -------------------------------------------------------------------------------------- writing
    def save(self, step: int, model: nn.Module, state: dict[str, Any], meta: dict[str, Any],
             best: bool = False) -> Path:
        """Write checkpoint `step`, move the pointers, then prune old checkpoints. Any OSError is one
        CheckpointError line; the previous checkpoints stay as they were and no temp folder is left."""
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        previous = self.latest()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            file_event("save.mkdir", tmp)
            tensors, aliases = model_tensors(model)
            meta = {**meta, "step": step, "aliases": aliases}
            _write_bytes(tmp / "model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt"}),
                         "save.model")
            buffer = io.BytesIO()  # serialised first, so a failed write is a plain OSError with its errno
            torch.save(state, buffer)
            _write_bytes(tmp / "state.pt", buffer.getbuffer(), "save.state")
            del buffer
            _write_bytes(tmp / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode("utf-8"), "save.meta")
            _fsync_dir(tmp)
            file_event("save.rename", tmp)
            swap_in(tmp, final)  # the same step may be saved again (e.g. a stop right after a periodic save)
            _fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            kept = f"the previous checkpoint {previous.name} is intact" if previous else "no checkpoint was written"
            raise CheckpointError(f"could not save checkpoint {final} ({describe(exc)}); {kept}; fix that "
                                  "(e.g. free disk space) and run the same command to resume") from None
        for name in ("latest", "best") if best else ("latest",):
            self._clear_pointer(name)
            write_atomic(self.root / name, final.name)
        self.prune(final)
        return final

    def _clear_pointer(self, name: str) -> None:
        """A pointer path that is not a file (a directory, say) cannot be replaced by a rename: move it aside as
        ckpt/unreadable-NAME (kept, not deleted), with one warning; the checkpoints are found by a scan anyway."""
        path = self.root / name
        if not path.exists() and not path.is_symlink() or path.is_file():
            return
        target = self.root / f"unreadable-{name}"
        n = 1
        while target.exists():
            n += 1
            target = self.root / f"unreadable-{name}-{n}"
        try:
            os.replace(path, target)
        except OSError as exc:
            raise CheckpointError(f"{path} is not a pointer file and cannot be moved aside ({describe(exc)}); "
                                  "remove it and run the same command again") from None
        warn(f"{path} was not a pointer file (a {'folder' if target.is_dir() else 'special file'}); moved it to "
             f"ckpt/{target.name}; the next checkpoint writes a new pointer")

    def prune(self, newest: Path) -> None:
        """Delete complete checkpoints older than `newest` (just written) beyond the newest `keep_last` and
        the best. Folders without meta.json are never deleted. A failed delete is a warning."""
        keep = set(self.complete()[-self.keep_last:]) | {newest}
        best = self.best()
        if best is not None:
            keep.add(best)
        file_event("prune")
        for path in self.complete():
            if path not in keep and _step_of(path) < _step_of(newest):
                try:
                    shutil.rmtree(path)
                except OSError as exc:
                    warn(f"could not delete old checkpoint {path} ({describe(exc)})")

    def clean_leftovers(self) -> list[str]:
        """Remove what interrupted saves left (temp folders, temp pointer files) and put back a step folder
        that a kill caught between the two renames of a same-step save; returns what was done. Call only
        while holding the run's lock."""
        done = []
        if not self.root.is_dir():
            return done
        for name in ("latest", "best"):
            self._clear_pointer(name)
        for path in sorted(self.root.iterdir()):
            name = path.name
            if ".old-" in name and path.is_dir():
                done.append(recover_swap(path))
            elif name.startswith(".tmp-") and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {name}")
            elif name.startswith(".") and ".tmp-" in name and path.is_file():
                path.unlink(missing_ok=True)
                done.append(f"removed {name}")
        return done

    def quarantine(self, path: Path) -> Path:
        """Move a checkpoint that cannot be resumed out of the way (never deleted): ckpt/unreadable-step-N."""
        target = self.root / f"unreadable-{path.name}"
        n = 1
        while target.exists():
            n += 1
            target = self.root / f"unreadable-{path.name}-{n}"
        os.replace(path, target)
        return target
