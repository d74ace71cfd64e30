"""The one training loop. It knows the backbone and task protocols, never an architecture.

Per step: the learning rate from the schedule; the micro-batches under autocast, each continuing its carried
state (detached: truncated BPTT); unscale, record the pre-clip gradient norm, clip; a joint finite check;
the optimizer step. Per cadence: evaluation, logging (rank 0), checkpoints (rank 0 writes, all wait).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from zoo import dist, faults, registry
from zoo.checkpoint import Checkpointer, check_state, load_model_tensors, read_checkpoint, warn, write_atomic
from zoo.errors import CheckpointError, RecipeError, TrainingError
from zoo.generate import generate
from zoo.models.base import State, count_parameters, detach_state, flops_per_token, logical_rows
from zoo.optim import (
    build_optimizer,
    hyperparameters,
    implementation,
    load_state_with_padding,
    lr_at,
    reapply,
    state_without_padding,
)
from zoo.recipe import Recipe, flatten, recipe_to_dict
from zoo.runs import (
    check_recipe,
    claim_run_dir,
    clean_run_dir,
    lock_run_dir,
    mark_diverged,
    read_summary,
    record_changes,
    set_aside,
    write_summary,
)
from zoo.tasks.base import TaskLoss
from zoo.tblog import TBLogger
from zoo.tokenizers import load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Dense bf16 peak FLOP/s of common GPUs (vendor specifications), for MFU (the fraction of the peak a run
# achieves); the first name contained in torch.cuda.get_device_name() wins, so variants come first.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "H800": 989e12,
              "GH200": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12, "4090": 165e12}


@dataclass
class TrainResult:
    summary: dict[str, Any]
    signal: int | None = None  # the signal that stopped the run early, if any


class EndInterrupted(BaseException):
    """A signal during the run's end (final evaluation, summary): the trained weights are already saved."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step boundary and exits. A second signal
    aborts at once (the checkpoint writes are atomic, so nothing saved is lost). Once training is over
    (`ending`), a signal stops the final evaluation at once: it is redone by the next run of the command."""

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

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _total_steps(recipe: Recipe, steps_per_epoch: int, tokens_per_step: int) -> int:
    limits = []
    if recipe.train.max_steps:
        limits.append(recipe.train.max_steps)
    if recipe.train.max_tokens:
        limits.append(math.ceil(recipe.train.max_tokens / tokens_per_step))
    if recipe.train.epochs:
        limits.append(math.ceil(recipe.train.epochs * steps_per_epoch))
    return max(1, min(limits))


class _Progress:
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


class _StepRecord(NamedTuple):
    """A finished optimizer step whose loss and gradient norm are still device tensors."""

    step: int
    tokens: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor


def resolve_compile(setting: str | bool, device: torch.device, model: torch.nn.Module) -> bool:
    """run.compile: `auto` compiles attention models on CUDA (where one graph of model, head and loss doubles
    the speed) and nothing on a CPU or recurrent models (long compiles, little gain)."""
    if setting == "auto":
        recurrent = any(getattr(m, "stateful", False) for m in model.modules())  # also inside a task's wrapper
        return device.type == "cuda" and not recurrent
    return bool(setting)


@dataclass
class Counters:
    """Training progress that checkpoints carry (plain numbers, so `weights_only` loading works)."""

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


NEWER_COUNTERS = ("ended", "last_val", "last_train_loss")


def counters_from(saved: dict[str, Any], where: Path) -> Counters:
    """Counters from a checkpoint's state, every field checked."""
    fields = {f.name for f in dataclasses.fields(Counters)}
    extra = sorted(set(saved) - fields)
    missing = sorted(fields - set(saved) - set(NEWER_COUNTERS))
    if extra or missing:
        raise CheckpointError(f"{where}/state.pt has counters that do not fit this zoo (missing "
                              f"{', '.join(missing) or 'none'}; unknown {', '.join(extra) or 'none'})")
    bad = [k for k, v in saved.items() if k != "ended" and v is not None and not isinstance(v, int | float)]
    if bad or not isinstance(saved.get("ended", ""), str):
        raise CheckpointError(f"{where}/state.pt has counters of the wrong type ({', '.join(bad) or 'ended'})")
    return Counters(**saved)


def _available_memory(device: torch.device) -> int | None:
    """Bytes of memory the model could take: the GPU's total, or the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_model_size(recipe: Recipe, vocab_size: int, device: torch.device) -> None:
    """Refuse a model whose fp32 weights alone would not fit in memory (built first on the meta device, which
    allocates nothing), instead of an allocator's traceback."""
    with torch.device("meta"):
        params = count_parameters(registry.build_model(recipe.model, vocab_size, device))
    memory = _available_memory(device)
    if memory and params * 4 > memory:
        raise RecipeError(f"the model would have {params:,} parameters ({params * 4 / 2**30:,.1f} GiB of fp32 weights "
                          f"alone, and about 4x that to train), more than the {memory / 2**30:,.1f} GiB of memory "
                          f"{'on ' + str(device) if device.type == 'cuda' else 'available here'}; make it smaller "
                          "(e.g. model.hidden_size, model.n_embd, model.n_layer)")


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


def train(recipe: Recipe, run_dir: str | Path, restart: bool = False) -> TrainResult:
    """Train (or resume) the run in `run_dir` to the recipe's limits; returns the summary. With `restart`, a
    run's earlier checkpoints and events are set aside (kept in run_dir/abandoned-<time>/) and it starts over."""
    env = dist.environment()
    device = dist.resolve_device(recipe.run.device, env)
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    lock = lock_run_dir(run_dir) if env.is_main else None
    claimed = False
    try:
        dist.init(env, device)
        trainer = Trainer(recipe, run_dir, env, device, restart=restart)
        claimed = True
        result = trainer.run()
        dist.barrier(env)  # leave together: a rank tearing down gloo while a peer still talks to it can abort
        return result
    finally:
        dist.shutdown()
        if lock is not None:
            lock.close()
            if created and not claimed:  # a start that failed leaves no trace, so a corrected retry just works
                (run_dir / ".lock").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    run_dir.rmdir()


class Trainer:
    """One run: builds data, model, task and optimizer from a recipe, restores the latest checkpoint, and
    trains to the recipe's limits."""

    def __init__(self, recipe: Recipe, run_dir: Path, env: dist.DistEnv, device: torch.device,
                 restart: bool = False):
        if hasattr(recipe.model, "resolved"):  # e.g. GPT-2 weights to start from fix the architecture
            recipe = dataclasses.replace(recipe, model=recipe.model.resolved())
        self.recipe, self.run_dir, self.env, self.device = recipe, run_dir, env, device
        self.main = env.is_main
        self.ckpt = Checkpointer(run_dir, recipe.checkpoint.keep_last)
        remedies: dict[str, list] = {}
        if self.main:  # under the run's lock: whatever a killed write left is stale
            for done in self.ckpt.clean_leftovers():
                print(f"{run_dir}: {done} (left by an interrupted save)", flush=True)
            clean_run_dir(run_dir)
            if restart:
                moved = set_aside(run_dir)
                if moved is not None:
                    print(f"--restart: moved the earlier checkpoints, events and summary to {moved}", flush=True)
            remedies = check_recipe(recipe, run_dir, bool(self.ckpt.folders()))
        dist.barrier(env)

        # a resumed run keeps the vocabulary it was trained with
        tok_path = run_dir / "tokenizer.json"
        known = load_tokenizer(tok_path) if tok_path.is_file() and self.ckpt.folders() else None
        if self.main:  # rank 0 prepares token files (if any) first; the others then read its cache
            self.tokenizer, self.splits, self.data_info = registry.load_data(recipe, known)
        dist.barrier(env)
        if not self.main:
            self.tokenizer, self.splits, self.data_info = registry.load_data(recipe, known, progress=False)

        torch.manual_seed(recipe.run.seed)
        check_model_size(recipe, self.tokenizer.vocab_size, device)
        try:
            self.model = registry.build_trainable(recipe, self.tokenizer.vocab_size, device).to(device)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            raise TrainingError(f"cannot build the model on {device} ({str(exc).splitlines()[0][:160]}); make it "
                                "smaller") from None
        self.task = registry.build_task(recipe, self.splits, self.model)
        if device.type == "cuda" and recipe.run.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # the training forward (model, head and loss) is one module: compiled whole when asked, wrapped in DDP
        # with several processes; checkpoints are written from self.model with its plain names
        self.compiled = resolve_compile(recipe.run.compile, device, self.model)
        forward = TaskLoss(self.model, self.task.loss)
        self.train_forward = dist.wrap(torch.compile(forward) if self.compiled else forward, env, device)
        self.padded_rows = logical_rows(self.model)

        train, world = recipe.train, env.world_size
        self.micro = train.micro_batch_size or train.batch_size // world
        if self.micro == 0 or train.batch_size % (self.micro * world):
            raise RecipeError(f"train.batch_size {train.batch_size} does not split into micro-batches of "
                              f"{self.micro or 1} on each of {world} processes; adjust train.micro_batch_size")
        self.accumulation = train.batch_size // (self.micro * world)
        self.steps_per_epoch = self.task.steps_per_epoch()
        self.tokens_per_step = self.task.tokens_per_step()
        self.total_steps = _total_steps(recipe, self.steps_per_epoch, self.tokens_per_step)

        self.optimizer = build_optimizer(self.model, recipe.optim, train.lr, device)
        self.optimizer_impl = implementation(recipe.optim, device)
        self.recipe_groups = hyperparameters(self.optimizer)
        self.scaler = torch.amp.GradScaler(device.type, enabled=recipe.run.precision == "fp16")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_params = count_parameters(self.model)
        self.flops_per_token = flops_per_token(self.model)
        self.peak_flops = _peak_flops(device)
        self.n_trainable = count_parameters(self.model, trainable_only=True)

        self.diverged_above = 10 * self.task.chance_loss()
        self.counters = Counters()
        self.pending: list[_StepRecord] = []  # steps whose loss and gradient norm are still on the device
        self.carried: dict[int, State] = {}
        self.resumed_from, skipped = self._resume()
        self.changes = ""
        if self.main:
            for path, problem in skipped:
                moved = self.ckpt.quarantine(path)
                warn(f"skipped {path.name}, which cannot be resumed ({problem}); kept it as ckpt/{moved.name}")
            claim_run_dir(recipe, run_dir)
            if known is None:
                write_atomic(tok_path, json.dumps(self.tokenizer.to_dict(), ensure_ascii=False))
            if remedies:
                self.changes = record_changes(run_dir, self.counters.step, remedies)
                print(f"changed from step {self.counters.step} on: {self.changes} (recorded in "
                      f"{run_dir / 'recipe_history.json'})", flush=True)
        dist.barrier(env)
        if self.resumed_from is None and hasattr(self.model, "load_pretrained") and self.model.load_pretrained() \
                and self.main:
            base = getattr(recipe.task, "base", "") or getattr(recipe.model, "init_from", "")
            print(f"starting from the weights of {base}", flush=True)

    def setup_line(self) -> str:
        """How the step runs on this device: compilation, optimizer kernels, vocabulary padding."""
        auto = " (auto)" if self.recipe.run.compile == "auto" else ""
        parts = [f"torch.compile {'on' if self.compiled else 'off'}{auto}",
                 f"{self.recipe.optim.name} {self.optimizer_impl}"]
        if self.padded_rows:
            real = self.model.state_dict(keep_vars=True)
            padded = {tuple(p.shape) for n, p in self.model.named_parameters() if tuple(real[n].shape) != p.shape}
            parts.append("padded rows " + ", ".join(f"{r[0]:,}" for r in sorted(padded)) + " (the real ones in "
                         "checkpoints)")
        return "step: " + ", ".join(parts)

    # ------------------------------------------------------------------------------------------ state
    def autocast(self) -> contextlib.AbstractContextManager:
        precision = self.recipe.run.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[precision])

    def _resume(self) -> tuple[Path | None, list[tuple[Path, str]]]:
        """Restore the newest checkpoint that reads back whole, skipping (and reporting) unreadable newer ones.
        A run directory with checkpoint folders of which none can be resumed is refused: zoo never starts over
        on top of weights it cannot explain. Every rank must arrive at the same folder."""
        skipped: list[tuple[Path, str]] = []
        chosen = None
        for path in reversed(self.ckpt.complete()):
            try:
                self._restore(path)
            except CheckpointError as exc:
                skipped.append((path, str(exc)))
                continue
            chosen = path
            break
        if chosen is None and self.ckpt.folders():
            found = ", ".join(p.name for p in self.ckpt.folders()[-4:])
            why = skipped[0][1] if skipped else "none has its meta.json, so none was completed by zoo"
            raise CheckpointError(f"{self.run_dir} holds checkpoint folders ({found}) but none can be resumed "
                                  f"({why}); zoo will not start over on top of them: restore them, or run with "
                                  "--restart to set them aside (kept, not deleted) and start from step 0")
        names = dist.gather_objects(chosen.name if chosen else None, self.env)
        if len(set(names)) > 1:
            raise CheckpointError(f"the processes found different checkpoints to resume ({', '.join(map(str, names))});"
                                  " the run directory must be the same shared folder for every process")
        return chosen, skipped

    def _restore(self, path: Path) -> None:
        """Load a checkpoint into the model, optimizer, RNGs and counters; everything is read and checked
        before anything is changed, so a CheckpointError leaves the trainer as it was."""
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

    def save(self, best: bool = False) -> None:
        """Rank 0 writes a checkpoint of the current step (with every rank's RNG and carried state); every
        rank waits for it."""
        failure = None
        mine = {str(k): [t.detach().cpu() for t in v] for k, v in self.carried.items() if v}
        gathered = dist.gather_objects((torch.get_rng_state(), mine), self.env)
        if self.main:
            rng = {"torch": gathered[0][0], "torch_by_rank": [g[0] for g in gathered]}
            if self.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(self.device)
            carried = {k: v for _, part in gathered for k, v in part.items()}
            state = {
                "optimizer": state_without_padding(self.optimizer, self.padded_rows),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": rng,
                "counters": {**asdict(self.counters), "world_size": self.env.world_size},
                "carried": carried,
            }
            meta = {"recipe": recipe_to_dict(self.recipe), "tokenizer": self.tokenizer.kind, "zoo_format": 1,
                    "best": best, "val_loss": self.counters.best_val if best else None}
            try:
                self.ckpt.save(self.counters.step, self.model, state, meta, best=best)
            except CheckpointError as exc:
                failure = exc
        # every rank learns whether the write worked, so none waits for a peer that has stopped
        if dist.any_rank(failure is not None, self.env, self.device):
            raise failure or CheckpointError("rank 0 could not write the checkpoint; see its message")

    # ------------------------------------------------------------------------------------------ steps
    def train_step(self) -> None:
        """One optimizer step over this rank's micro-batches. Nothing here waits for the GPU: the loss and the
        pre-clip gradient norm stay on the device until `flush` reads a whole window of steps at once."""
        c, recipe = self.counters, self.recipe
        lr = lr_at(c.step, recipe.train.lr, recipe.schedule, self.total_steps, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        faults.step(c.step + 1, self.env.rank)
        loss_sum = None
        batches = self.task.micro_batches(c.step, self.env.rank, self.env.world_size, self.micro)
        for i, batch in enumerate(batches):
            state_in = None if batch.reset else self.carried.get(batch.slot)
            batch = batch.to(self.device)
            # DDP all-reduces gradients only after the last micro-batch's backward
            with dist.no_sync(self.train_forward, skip=i < len(batches) - 1), self.autocast():
                try:
                    loss, new_state = self.train_forward(batch.x, batch.y, batch.lengths, state_in)
                except torch.OutOfMemoryError:
                    raise self._out_of_memory() from None
                except RuntimeError as exc:
                    precision = recipe.run.precision
                    if "can't allocate memory" in str(exc):
                        raise self._out_of_memory() from None
                    if precision == "fp32":
                        raise
                    reason = str(exc).splitlines()[0][:200]
                    others = " or ".join(f'run.precision = "{p}"' for p in ("bf16", "fp32") if p != precision)
                    raise TrainingError(f"{precision} autocast failed on {self.device} ({reason}); this model's "
                                        f"kernels lack {precision} here: use {others}") from None
                self.carried[batch.slot] = detach_state(new_state)
                self.scaler.scale(loss / self.accumulation).backward()
            loss = loss.detach().float()
            loss_sum = loss if loss_sum is None else loss_sum + loss
        self.scaler.unscale_(self.optimizer)
        clip = recipe.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else math.inf)
        try:
            self.scaler.step(self.optimizer)
        except RuntimeError as exc:  # e.g. a learning rate so large that the update overflows float32
            raise TrainingError(f"the optimizer step failed at step {c.step + 1} ({str(exc).splitlines()[0][:160]}) "
                                f"with lr {lr:g}; lower train.lr") from None
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        c.step += 1
        c.tokens += self.tokens_per_step
        self.pending.append(_StepRecord(c.step, c.tokens, lr, loss_sum / self.accumulation, grad_norm))

    def _out_of_memory(self) -> TrainingError:
        return TrainingError(f"out of memory on {self.device} at step {self.counters.step + 1}; lower "
                             f"train.micro_batch_size (now {self.micro}) or train.seq_len, or use a smaller model")

    def _diverged(self, what: str, value: float, step: int, extra: str = "") -> TrainingError:
        """The stop after a non-finite or diverging loss: remembered in the run so its remedies may be applied."""
        if self.main:
            mark_diverged(self.run_dir, {"step": step, what.replace(" ", "_"): value})
        last = self.ckpt.latest()
        kept = f"the last good checkpoint {last.name} is intact" if last else "no checkpoint was written"
        kind = "not finite" if not math.isfinite(value) else f"over {self.diverged_above:.3g}, 10x a uniform guess's"
        return TrainingError(f"{what} is {value:.4g}{extra} at step {step} ({kind}): training diverged; no "
                             f"checkpoint holds that step or a later one and {kept}; run the same command with a "
                             "lower train.lr (--set train.lr=...) or with train.grad_clip set, and it resumes there")

    def flush(self) -> list[tuple[int, float, float]]:
        """Read the pending steps' losses (averaged over ranks) and gradient norms in one transfer, stop on a
        non-finite one, count clipped steps and log each step to TensorBoard; returns (step, loss, norm) of
        each. Called before anything is evaluated or saved, so no checkpoint ever holds a bad update."""
        records, self.pending = self.pending, []
        if not records:
            return []
        losses = dist.mean_tensor(torch.stack([r.loss for r in records]), self.env)
        norms = torch.stack([r.grad_norm.float() for r in records])
        values = torch.stack([losses, norms.to(losses.device)]).tolist()
        c, clip, out = self.counters, self.recipe.train.grad_clip, []
        clipped = c.clipped_steps
        for r, loss, norm in zip(records, *values, strict=True):
            if not math.isfinite(loss) or loss > self.diverged_above or (not math.isfinite(norm)
                                                                            and not self.scaler.is_enabled()):
                raise self._diverged("training loss", loss, r.step, f" (gradient norm {norm:.4g})")
            clipped += clip > 0 and norm > clip
            self.logger.scalars({"loss/train": loss, "optim/lr": r.lr, "optim/grad_norm": norm,
                                 "optim/clipped_frac": clipped / r.step, "progress/tokens": r.tokens}, r.step)
            out.append((r.step, loss, norm))
        c.clipped_steps = clipped
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        """Loss on the fixed slice of a split; with several ranks each evaluates its share and the sums are
        reduced, so the result equals one process's."""
        part = self.task.evaluate(self.model, split, self.device, self.autocast, self.env.rank, self.env.world_size)
        keys = sorted(part)
        sums = dict(zip(keys, dist.sum_all([float(part[k]) for k in keys], self.env, self.device), strict=True))
        return registry.task_module(self.recipe).metrics(self.recipe.task, sums)

    def sample(self) -> str:
        """A short text sample with its own generator, so evaluation never disturbs the training RNG."""
        ev = self.recipe.eval
        if not ev.sample_tokens or not self.main or not hasattr(self.model, "lm_head"):
            return ""
        prompt = self.tokenizer.encode(ev.sample_prompt) or [int(self.splits.val[0])]
        gen = torch.Generator().manual_seed(self.recipe.run.seed + self.counters.step)
        ids = generate(self.model, prompt, ev.sample_tokens, temperature=ev.sample_temperature,
                       generator=gen, device=self.device)
        return self.tokenizer.decode(prompt + ids)

    # ------------------------------------------------------------------------------------------ loop
    def training_done(self) -> bool:
        """Training reached its limits, or stopped early and the patience still says so."""
        c, patience = self.counters, self.recipe.train.early_stop_patience
        early = c.ended == "early_stopped" and bool(patience) and c.evals_since_best >= patience
        return c.step >= self.total_steps or early

    def run(self) -> TrainResult:
        c, recipe = self.counters, self.recipe
        progress = _Progress(self.main, recipe.log.progress, self.total_steps, c.step)
        ending = self.training_done()
        if ending:
            summary = read_summary(self.run_dir)
            if summary and summary.get("status") in ("finished", "early_stopped") and summary.get("step") == c.step:
                progress.line(f"{self.run_dir} already finished at step {c.step}; raise train.max_steps (or "
                              "max_tokens, epochs) to train further, or use a new --name")
                return TrainResult(summary)
            progress.line(f"{self.run_dir}: training ended at step {c.step} but its final evaluation did not; "
                          "doing it now")
        elif self.resumed_from is not None:
            progress.line(f"resuming {self.run_dir} from {self.resumed_from.name} (step {c.step}/"
                          f"{self.total_steps})")
        else:
            progress.line(f"training {self.run_dir}: {self.n_params:,} parameters ({self.n_trainable:,} trainable), "
                          f"{self.flops_per_token / 1e6:,.1f} MFLOPs/token, {self.steps_per_epoch} "
                          f"steps/epoch, {self.total_steps} steps of {self.tokens_per_step:,} tokens on "
                          f"{self.device} ({recipe.run.precision})")
        if not ending:
            progress.line(self.setup_line())
        purge = c.step + 1 if self.resumed_from is not None else None
        self.logger = TBLogger(self.run_dir, enabled=self.main, purge_step=purge)
        status = c.ended or "finished"
        try:
            if self.resumed_from is None:
                self.logger.text("recipe", (self.run_dir / "recipe.toml").read_text(encoding="utf-8"), 0)
            if self.changes:
                self.logger.text("recipe_changes", f"from step {c.step}: {self.changes}", c.step)
            with _StopFlag() as stop:
                if not ending:
                    status = self._loop(progress, stop)
                stop.ending = status != "interrupted"
                summary = self._finish(status, progress)
        except EndInterrupted as exc:
            last = self.ckpt.latest()
            progress.line(f"{signal.Signals(exc.signum).name} during the final evaluation: the trained weights are "
                          f"saved ({last.name if last else 'no checkpoint'}); run the same command to finish it")
            return TrainResult({}, signal=exc.signum)
        finally:
            progress.close()
            self.logger.close()
        return TrainResult(summary, signal=stop.signum if status == "interrupted" else None)

    def _loop(self, progress: _Progress, stop: _StopFlag) -> str:
        """Train to the end of the recipe, or to a stop; returns finished, early_stopped or interrupted."""
        c, recipe, log = self.counters, self.recipe, self.logger
        t_start = time.perf_counter() - c.elapsed
        window_tokens, window_start = 0, time.perf_counter()
        train_loss, grad_norm, tps = c.last_train_loss, math.nan, 0.0
        first = True
        self.model.train()
        while True:
            self.train_step()
            if first:  # the first step compiles (when compiling): time it apart from the rate
                first = False
                dist.synchronize(self.device)
                if self.compiled:
                    progress.line(f"compiled the training step in {time.perf_counter() - window_start:.0f} s "
                                  "(first step)")
                window_start = time.perf_counter()
            else:
                window_tokens += self.tokens_per_step
            c.elapsed = time.perf_counter() - t_start
            is_last = c.step >= self.total_steps
            logging = c.step % recipe.log.interval == 0 or is_last
            evaluating = bool(recipe.eval.interval and c.step % recipe.eval.interval == 0) or is_last
            interval = recipe.checkpoint.interval
            due = (c.step % interval == 0) if interval else evaluating
            # the host reads the device's numbers only at these steps; a stop is asked of every rank at the
            # same steps (with one process, at once)
            syncing = logging or evaluating or due or (not self.env.distributed and stop.signum is not None)
            progress.step(f"loss {train_loss:.4f} | {tps / 1000:.1f}k tok/s")
            if not syncing:
                continue
            flushed = self.flush()
            _, train_loss, grad_norm = flushed[-1]
            c.last_train_loss = train_loss
            c.elapsed = time.perf_counter() - t_start
            if logging and window_tokens:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                log.scalars({"perf/tokens_per_s": tps}, c.step)
                if self.peak_flops:
                    mfu = tps * self.flops_per_token / (self.peak_flops * self.env.world_size)
                    log.scalars({"perf/mfu": mfu}, c.step)
            if logging and progress.bar is None:
                lr = self.optimizer.param_groups[0]["lr"]
                progress.line(f"step {c.step}/{self.total_steps} | epoch {c.step / self.steps_per_epoch:.2f}"
                              f" | loss {train_loss:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | "
                              f"{tps / 1000:.1f}k tok/s | {c.elapsed:.0f}s")

            improved, early_stop = False, False
            if evaluating:
                val = self.evaluate("val")
                last_val = val["loss"]
                if not math.isfinite(last_val) or last_val > self.diverged_above:
                    raise self._diverged("validation loss", last_val, c.step)
                c.last_val = last_val
                if "accuracy" in val:
                    log.scalars({"acc/val": val["accuracy"]}, c.step)
                improved = last_val < c.best_val
                if improved:
                    c.best_val, c.best_step, c.evals_since_best = last_val, c.step, 0
                else:
                    c.evals_since_best += 1
                log.scalars({"loss/val": last_val, "ppl/val": math.exp(min(last_val, 50.0))}, c.step)
                sample = self.sample()
                if sample:
                    log.text("sample", sample, c.step)
                progress.line(f"eval step {c.step}: val loss {last_val:.4f}{' (best)' if improved else ''}")
                patience = recipe.train.early_stop_patience
                early_stop = bool(patience and c.evals_since_best >= patience)

            stopping = dist.any_rank(stop.signum is not None, self.env, self.device)
            if not stopping and (early_stop or is_last):  # saved with the checkpoint: the run's end is due
                c.ended = "early_stopped" if early_stop else "finished"
            if due or improved or is_last or stopping or early_stop:
                self.save(best=improved)
                log.flush()
            if evaluating or due or improved:  # the rate counts training time only
                window_start = time.perf_counter()
            if stopping:
                return "interrupted"
            if early_stop or is_last:
                return c.ended

    def _load_best(self) -> Path | None:
        """Put the best checkpoint's weights into the model, if it is not the last step's; its folder, or None
        when the last weights are the best (or the best cannot be read: then a warning)."""
        best = self.ckpt.best()
        if best is None or self.counters.best_step in (-1, self.counters.step):
            return None
        try:
            path, tensors, meta = self.ckpt.load_weights("best", note=lambda m: None)
            if path != best:
                raise CheckpointError(f"{best} cannot be read")
            load_model_tensors(self.model, tensors, meta.get("aliases", {}), str(path))
        except CheckpointError as exc:
            if self.main:
                warn(f"the test loss is the last weights' ({exc})")
            return None
        return best

    def _finish(self, status: str, progress: _Progress) -> dict:
        """The run's end: test evaluation, hparams and summary.json (written last: it marks the end done)."""
        c, recipe = self.counters, self.recipe
        summary = {
            "run": self.run_dir.name, "status": status, "step": c.step, "total_steps": self.total_steps,
            "epochs": c.step / self.steps_per_epoch, "tokens": c.tokens, "params": self.n_params,
            "trainable_params": self.n_trainable,
            "flops_per_token": self.flops_per_token, "wall_time_s": c.elapsed,
            "tokens_per_s": c.tokens / max(c.elapsed, 1e-9), "device": str(self.device),
            "precision": recipe.run.precision, "vocab_size": self.tokenizer.vocab_size,
            "final_train_loss": c.last_train_loss, "final_val_loss": c.last_val,
            "best_val_loss": c.best_val if math.isfinite(c.best_val) else None, "best_step": c.best_step,
        }
        if status != "interrupted" and recipe.eval.test and hasattr(self.model, "lm_head"):
            # characters per token of the test split (its first million tokens), so runs with different
            # tokenizers compare in bits per character
            ids = self.splits.test[:1_000_000]
            summary["test_chars_per_token"] = len(self.tokenizer.decode([int(i) for i in ids])) / max(1, len(ids))
        if status != "interrupted" and recipe.eval.test:
            # the last weights' test loss, then the best checkpoint's: runs are judged by the best (the one
            # `best` names and every command reads by default), the last beside it under its own name
            final = self.evaluate("test")
            summary["final_test_loss"] = final["loss"]
            self.logger.scalars({"loss/test_final": final["loss"]}, c.step)
            test, val, where = final, None, self.ckpt.latest()
            best = self._load_best()
            if best is not None:
                test, where = self.evaluate("test"), best
            summary["test_loss"] = test["loss"]
            summary["test_checkpoint"] = where.name if where is not None else None
            self.logger.scalars({"loss/test": test["loss"]}, c.step)
            if "accuracy" in test:  # classification: every metric of the best checkpoint on val and test
                val = self.evaluate("val")
                summary["test_metrics"], summary["val_metrics"] = test, val
                summary["final_test_metrics"] = final
                self.logger.scalars({"acc/test": test["accuracy"]}, c.step)
                progress.line(f"test accuracy {test['accuracy']:.4f} (precision {test['precision']:.4f}, recall "
                              f"{test['recall']:.4f}, F1 {test['f1']:.4f}) at {summary['test_checkpoint']}")
            progress.line(f"test loss {summary['test_loss']:.4f} at {summary['test_checkpoint']}"
                          + (f" (the last weights': {final['loss']:.4f})" if best is not None else ""))
        if self.main:
            if status != "interrupted":
                metrics = {f"final/{k}": float(summary[k]) for k in ("final_val_loss", "best_val_loss", "test_loss")
                           if summary.get(k) is not None}
                self.logger.hparams(flatten(recipe_to_dict(recipe)), metrics)
            write_summary(self.run_dir, summary)
        if status == "interrupted":
            progress.line(f"stopped at step {c.step}; checkpoint saved; run the same command to resume")
        else:
            progress.line(f"done: {c.step} steps, {c.tokens:,} tokens in {c.elapsed:.0f}s; best val loss "
                          f"{c.best_val:.4f}")
        return summary
