"""What a run tells its user: the progress bar or lines, throughput and MFU, and the summary's common fields."""

from __future__ import annotations

import collections
import math
import sys
import time

import torch

from zoo.models.base import count_parameters

# Dense bf16 peak FLOP/s of common GPUs (vendor specifications), for MFU (the fraction of the peak a run
# achieves); the first name contained in torch.cuda.get_device_name() wins, so variants come first.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "H800": 989e12,
              "GH200": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s, where known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (rank 0 only)."""

    def __init__(self, enabled: bool, mode: str, total: int, initial: int):
        self.bar = None
        self.enabled = enabled
        if enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty())):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def step(self, postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(postfix, refresh=False)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """Items (tokens or examples) per second over a window of training steps; evaluation, checkpoints and the
    first (compiling) step are left out by restarting the window after them. MFU where FLOPs per item and the
    device's peak are known."""

    def __init__(self, flops_per_item: float | None, peak: float | None, world_size: int):
        self.flops_per_item, self.peak, self.world_size = flops_per_item, peak, world_size
        self.items, self.start, self.rate = 0, time.perf_counter(), 0.0
        self.recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=20)

    def restart(self) -> None:
        self.items, self.start = 0, time.perf_counter()
        self.recent.clear()
        self.recent.append((self.start, 0))

    def add(self, items: int) -> None:
        self.items += items
        self.recent.append((time.perf_counter(), items))

    @property
    def running(self) -> float:
        """The rate over the last (up to 20) steps, for the progress bar from the second step on; 0 before."""
        if len(self.recent) < 2:
            return 0.0
        span = self.recent[-1][0] - self.recent[0][0]
        return sum(n for _, n in list(self.recent)[1:]) / max(span, 1e-9)

    def measure(self) -> float | None:
        """The window's rate (and start a new window); None if it holds no step."""
        if not self.items:
            return None
        now = time.perf_counter()
        self.rate = self.items / max(now - self.start, 1e-9)
        self.items, self.start = 0, now
        return self.rate

    @property
    def mfu(self) -> float | None:
        if not (self.flops_per_item and self.peak):
            return None
        return self.rate * self.flops_per_item / (self.peak * self.world_size)


def start_line(session, counters) -> str:
    """The first line of a run: what is trained, how big, how long, where (or where it resumes from)."""
    s, task = session, session.task
    if s.resumed_from is not None:
        return f"resuming {s.run_dir} from {s.resumed_from.name} (step {counters.step}/{s.total_steps})"
    flops = task.flops_per_item(s.model)
    cost = f"{flops / 1e6:,.1f} MFLOPs/token, " if flops else ""
    return (f"training {s.run_dir}: {count_parameters(s.model):,} parameters "
            f"({count_parameters(s.model, trainable_only=True):,} trainable), {cost}{task.steps_per_epoch()} "
            f"steps/epoch, {s.total_steps} steps of {task.items_per_step():,} {task.unit} on {s.device} "
            f"({s.precision}{', auto' if s.recipe.run.precision == 'auto' else ''})")


def setup_line(session) -> str:
    """How the step runs on this device: compilation, optimizer kernels, vocabulary padding."""
    s = session
    auto = " (auto)" if s.recipe.run.compile == "auto" else ""
    if s.recipe.run.compile == "auto" and s.device.type == "cpu":  # benchmarks/cpu_compile.py
        auto = " (auto: on a CPU a compiled step ran 0.6-0.9x the eager one and never paid its compile back)"
    parts = [f"torch.compile {'on' if s.compiled else 'off'}{auto}", f"{s.recipe.optim.name} {s.optimizer_impl}"]
    if s.device.type == "cpu" and s.precision in ("bf16", "fp16"):
        parts.append(f"{s.precision} on a CPU: its {s.precision} matmuls are usually slower than fp32 (run.precision = "
                     "auto picks fp32 here)")
    if s.state.padded_rows:
        real = s.model.state_dict(keep_vars=True)
        padded = {tuple(p.shape) for n, p in s.model.named_parameters() if tuple(real[n].shape) != p.shape}
        parts.append("padded rows " + ", ".join(f"{r[0]:,}" for r in sorted(padded)) + " (the real ones in "
                     "checkpoints)")
    return "step: " + ", ".join(parts)


def base_summary(session, counters, status: str) -> dict:
    """summary.json's fields every run has (the test evaluation adds its own)."""
    s, c, unit = session, counters, session.task.unit
    return {
        "run": s.run_dir.name, "status": status, "step": c.step, "total_steps": s.total_steps,
        "epochs": c.step / s.task.steps_per_epoch(), unit: c.tokens, "params": count_parameters(s.model),
        "trainable_params": count_parameters(s.model, trainable_only=True),
        "flops_per_token": s.task.flops_per_item(s.model), "wall_time_s": c.elapsed,
        f"{unit}_per_s": c.tokens / max(c.elapsed, 1e-9), "device": str(s.device),
        "precision": s.precision, "vocab_size": s.tokenizer.vocab_size,
        "final_train_loss": c.last_train_loss, "final_val_loss": c.last_val,
        "best_val_loss": c.best_val if math.isfinite(c.best_val) else None, "best_step": c.best_step,
        **c.best_tracked, **c.last_tracked,
    }
