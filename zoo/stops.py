"""Why a run stops, and how it says so: SIGINT/SIGTERM set a flag the loop reads at step boundaries (once
training is over, a signal ends the final evaluation at once: the next run of the command redoes it); and the
one-line errors for a run that cannot go on (out of memory, a kernel without the precision, divergence)."""

from __future__ import annotations

import math
import signal
import sys
import threading
from typing import Any

import torch

from zoo.errors import TrainingError


class EndInterrupted(BaseException):
    """A signal during the run's end (final evaluation, summary): the trained weights are already saved."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopFlag:
    """SIGINT/SIGTERM set `signum`; the loop checkpoints at the next step boundary and exits. A second signal
    aborts at once (the checkpoint writes are atomic, so nothing saved is lost). Once training is over
    (`ending`), a signal raises EndInterrupted at once."""

    def __init__(self):
        self.signum: int | None = None
        self.ending = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.ending:
            self.signum = signum
            raise EndInterrupted(signum)
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next step boundary "
              "(send it again to abort now)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def out_of_memory(device: torch.device, step: int, micro: int) -> TrainingError:
    return TrainingError(f"out of memory on {device} at step {step}; lower train.micro_batch_size (now {micro}) or "
                         "train.seq_len, or use a smaller model")


def forward_failed(exc: RuntimeError, precision: str, device: torch.device, step: int,
                   micro: int) -> BaseException:
    """The error a failed forward pass becomes: out of memory, or a kernel without the run's precision (one
    line each); anything else as it was."""
    if "can't allocate memory" in str(exc):
        return out_of_memory(device, step, micro)
    if precision == "fp32":
        return exc
    reason = str(exc).splitlines()[0][:200]
    others = " or ".join(f'run.precision = "{p}"' for p in ("bf16", "fp32") if p != precision)
    return TrainingError(f"{precision} autocast failed on {device} ({reason}); this model's kernels lack {precision} "
                         f"here: use {others}")


def diverged(what: str, value: float, step: int, limit: float, last_checkpoint: str | None,
             extra: str = "") -> TrainingError:
    """The stop after a non-finite or diverging loss, naming the remedies the next run accepts."""
    kept = f"the last good checkpoint {last_checkpoint} is intact" if last_checkpoint else "no checkpoint was written"
    kind = "not finite" if not math.isfinite(value) else f"over {limit:.3g}, 10x a uniform guess's"
    return TrainingError(f"{what} is {value:.4g}{extra} at step {step} ({kind}): training diverged; no checkpoint "
                         f"holds that step or a later one and {kept}; run the same command with a lower train.lr "
                         "(--set train.lr=...) or with train.grad_clip set, and it resumes there")
