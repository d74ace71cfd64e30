"""TensorBoard writing (rank 0 only). Tags are shared by every architecture so runs compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _wait_for_a_new_second(tb_dir: Path) -> None:
    """Event files are named events.out.tfevents.<unix seconds>.<host>.<pid>.<n> and TensorBoard reads them in
    name order; a resumed run's file must sort after the earlier ones, so never start one in the same second
    as the newest file already there."""
    import time

    stamps = [int(p.name.split(".")[3]) for p in tb_dir.glob("events.out.tfevents.*") if p.name.split(".")[3].isdigit()]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


class TBLogger:
    """A thin SummaryWriter wrapper; disabled (a no-op) on ranks other than 0."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            _wait_for_a_new_second(Path(run_dir) / "tb")

            # purge_step drops events a crashed attempt wrote after the checkpoint we resume from,
            # so no step appears twice.
            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            # four-space indent keeps the sample verbatim in TensorBoard's markdown view
            self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Record the flattened recipe and final metrics for TensorBoard's HParams view."""
        if self.writer is not None:
            clean = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in hparams.items()}
            # run_name="." keeps the hparams in this run's folder instead of a timestamped sub-folder
            self.writer.add_hparams(clean, metrics, run_name=".")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
