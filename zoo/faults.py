"""Fault injection for tests of failure handling, driven by the environment variable ZOO_FAULT.

    crash@STEP[:RANK]    the process exits (as a lost worker would) at the start of optimizer step STEP
    raise@STEP[:RANK]    an exception at the start of that step
    abort@teardown[:RANK] SIGABRT once a DDP worker has finished and said so, before its process group is torn
                         down (as gloo's C++ abort "terminate called without an active exception" does)
    kill@EVENT[:N]       SIGKILL at the N-th (default 1st) file event named EVENT of this process
    torn@EVENT[:N]       the file being written is cut to half its bytes, then SIGKILL
    enospc@EVENT[:N]     OSError ENOSPC (a full disk) at that event

File events, in the order a checkpoint save makes them: `save.mkdir` (the temp folder), `save.model`,
`save.state`, `save.meta` (each file's bytes written, before its fsync), `save.rename` (before the folder
is renamed into place), `pointer` (before the latest/best pointer is replaced), `prune` (before old
checkpoints are deleted); `write` before any other small file (recipe, tokenizer, summary) is replaced.
Step faults act on a launch's first attempt only, so an elastic restart can recover.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

_counts: dict[str, int] = {}


def _spec() -> tuple[str, str, str] | None:
    spec = os.environ.get("ZOO_FAULT")
    if not spec or "@" not in spec:
        return None
    kind, _, where = spec.partition("@")
    at, _, extra = where.partition(":")
    return kind, at, extra


def step(number: int, rank: int) -> None:
    """The hook at the start of optimizer step `number` (1-based) on `rank`."""
    spec = _spec()
    if spec is None or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    kind, at, only_rank = spec
    if kind not in ("crash", "raise") or not at.isdigit() or int(at) != number:
        return
    if only_rank and int(only_rank) != rank:
        return
    if kind == "crash":
        os._exit(1)
    raise RuntimeError(f"injected fault at step {number} on rank {rank}")


def teardown(rank: int) -> None:
    """The hook between a DDP worker's finished work and its teardown."""
    spec = _spec()
    if spec is None or spec[0] != "abort" or spec[1] != "teardown" or (spec[2] and int(spec[2]) != rank):
        return
    os.abort()


def file_event(event: str, path: Path | None = None) -> None:
    """The hook at a file event of a save; `path` is the file being written, if any."""
    spec = _spec()
    if spec is None:
        return
    kind, at, nth = spec
    if kind not in ("kill", "torn", "enospc") or at != event:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] != (int(nth) if nth else 1):
        return
    if kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)
    if kind == "torn" and path is not None and path.is_file():
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    os.kill(os.getpid(), signal.SIGKILL)
