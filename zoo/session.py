"""The composition of a training run: from a recipe, a run directory and a device to the parts the trainer
drives (data, tokenizer, model, task, micro-batch plan, training forward, optimizer, train state), with the
run directory prepared (leftovers cleaned, the recipe checked against the run's) and the checkpoint to resume
from restored. The directory is claimed (its recipe and tokenizer written) only once all of that worked, so
a start that fails leaves nothing in the way of the corrected retry."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo import dist, registry
from zoo.checkpoint import Checkpointer, warn, write_atomic
from zoo.errors import RecipeError, TrainingError
from zoo.models.base import Trainable, count_parameters
from zoo.recipe import Recipe
from zoo.runs import check_recipe, claim_run_dir, clean_run_dir, lock_run_dir, record_changes, set_aside
from zoo.tasks.base import MicroBatchPlan, Task, TaskLoss
from zoo.tokenizers import load_tokenizer
from zoo.train_state import TrainState

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Session:
    """A run's parts, ready to train."""

    recipe: Recipe
    run_dir: Path
    env: dist.DistEnv
    device: torch.device
    ckpt: Checkpointer
    tokenizer: Any
    model: Trainable
    task: Task
    plan: MicroBatchPlan
    train_forward: torch.nn.Module  # model + head + loss, compiled and/or DDP-wrapped as the run asks
    compiled: bool
    optimizer: torch.optim.Optimizer
    optimizer_impl: str
    scaler: torch.amp.GradScaler
    state: TrainState
    total_steps: int
    resumed_from: Path | None
    changes: str  # remedies applied on this resume, for the record
    precision: str = "fp32"  # run.precision resolved for the device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's precision: nothing for fp32, else bf16/fp16 autocast."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.precision])


def resolve_compile(setting: str | bool, device: torch.device, model: Trainable) -> bool:
    """run.compile: `auto` compiles on CUDA (where one graph of model, head and loss doubles the speed of an
    attention model) unless a recurrent network runs inside (long compiles, little gain); never on a CPU, where
    inductor's step ran 0.61-0.86x the eager one for gpt2-micro, the laptop study's model and the main job's
    LSTM (benchmarks/cpu_compile.py), so it never pays back whatever the run's length."""
    if setting == "auto":
        return device.type == "cuda" and not model.recurrent
    return bool(setting)


TORCH_THREADS = torch.get_num_threads()  # torch's own choice, before any run changed it


def set_threads(threads: int) -> None:
    """run.threads, or torch's own choice capped at the CPUs this process may run on (its affinity: a container
    or `taskset` may give it fewer than the machine has)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU
    allowed = len(affinity(0)) if affinity else os.cpu_count() or 1
    wanted = threads or min(TORCH_THREADS, allowed)
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)


def resolve_precision(setting: str, device: torch.device) -> str:
    """run.precision: `auto` is bf16 autocast on a GPU that has bf16 (most since 2020) and fp32 elsewhere, where
    bf16 matmuls are usually slower than fp32 ones."""
    if setting != "auto":
        return setting
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def total_steps(recipe: Recipe, steps_per_epoch: int, items_per_step: int) -> int:
    """The step the recipe's limits (steps, tokens, epochs: whichever comes first) end at."""
    limits = []
    if recipe.train.max_steps:
        limits.append(recipe.train.max_steps)
    if recipe.train.max_tokens:
        limits.append(math.ceil(recipe.train.max_tokens / items_per_step))
    if recipe.train.epochs:
        limits.append(math.ceil(recipe.train.epochs * steps_per_epoch))
    return max(1, min(limits))


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
    """Refuse a model whose fp32 weights alone would not fit in memory, instead of an allocator's traceback:
    counted from the config where the architecture can (the model is then built once), else built on the meta
    device, which allocates nothing."""
    spec = registry.model_spec(recipe.model.arch)
    if spec.parameters is not None:
        params = spec.parameters(recipe.model, vocab_size)
    else:
        with torch.device("meta"):
            params = count_parameters(registry.build_model(recipe.model, vocab_size, device))
    memory = _available_memory(device)
    if memory and params * 4 > memory:
        raise RecipeError(f"the model would have {params:,} parameters ({params * 4 / 2**30:,.1f} GiB of fp32 weights "
                          f"alone, and about 4x that to train), more than the {memory / 2**30:,.1f} GiB of memory "
                          f"{'on ' + str(device) if device.type == 'cuda' else 'available here'}; make it smaller "
                          "(e.g. model.hidden_size, model.n_embd, model.n_layer)")


@contextlib.contextmanager
def run_directory(run_dir: Path, env: dist.DistEnv) -> Iterator[Callable[[], None]]:
    """Hold the run directory's lock (rank 0) while the run lives; yields `started()`, to be called once the
    run has started. A directory this start created is removed again if the start fails before that, so a
    corrected retry finds nothing in its way."""
    created = not run_dir.exists()
    lock = lock_run_dir(run_dir) if env.is_main else None
    started: list[bool] = []
    try:
        yield lambda: started.append(True)
    finally:
        if lock is not None:
            lock.close()
            if created and not started:
                (run_dir / ".lock").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    run_dir.rmdir()


def open_session(recipe: Recipe, run_dir: Path, env: dist.DistEnv, device: torch.device,
                 restart: bool = False) -> Session:
    """Prepare the run directory, build every part, restore the checkpoint to resume from, then claim the
    directory. Rank 0 writes; the other ranks wait for it where they read what it wrote."""
    recipe = dataclasses.replace(recipe, model=recipe.model.resolved())  # e.g. init_from fixes the architecture
    main = env.is_main
    ckpt = Checkpointer(run_dir, recipe.checkpoint.keep_last)
    remedies: dict[str, list] = {}
    if main:  # under the run's lock: whatever a killed write left is stale
        for done in ckpt.clean_leftovers():
            print(f"{run_dir}: {done} (left by an interrupted save)", flush=True)
        clean_run_dir(run_dir)
        if restart and (moved := set_aside(run_dir)) is not None:
            print(f"--restart: moved the earlier checkpoints, events and summary to {moved}", flush=True)
        remedies = check_recipe(recipe, run_dir, bool(ckpt.folders()))
    dist.barrier(env)

    # a resumed run keeps the vocabulary it was trained with
    tok_path = run_dir / "tokenizer.json"
    known = load_tokenizer(tok_path) if tok_path.is_file() and ckpt.folders() else None
    if main:  # rank 0 prepares token files (if any) first; the others then read its cache
        tokenizer, data, _ = registry.load_data(recipe, known)
    dist.barrier(env)
    if not main:
        tokenizer, data, _ = registry.load_data(recipe, known, progress=False)

    set_threads(recipe.run.threads)
    torch.manual_seed(recipe.run.seed)
    check_model_size(recipe, tokenizer.vocab_size, device)
    try:
        model = registry.build_trainable(recipe, tokenizer.vocab_size, device).to(device)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        raise TrainingError(f"cannot build the model on {device} ({str(exc).splitlines()[0][:160]}); make it "
                            "smaller") from None
    plan = MicroBatchPlan.of(recipe.train.batch_size, recipe.train.micro_batch_size, env.world_size, env.rank)
    task = registry.build_task(recipe, tokenizer, data, model, plan)
    if device.type == "cuda" and recipe.run.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # the training forward (model, head and loss) is one module: compiled whole when asked, wrapped in DDP with
    # several processes; checkpoints are written from the model itself, with its plain names
    compiled = resolve_compile(recipe.run.compile, device, model)
    forward = TaskLoss(model, task.loss)
    train_forward = dist.wrap(torch.compile(forward) if compiled else forward, env, device)
    optimizer, optimizer_impl = registry.build_optimizer(model, recipe.optim, recipe.train.lr, device)
    precision = resolve_precision(recipe.run.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = TrainState(model, optimizer, scaler, env, device)

    resumed_from, skipped = state.resume(ckpt)
    changes = ""
    if main and resumed_from is None and (moved := set_aside(run_dir, ("tb", "summary.json"))) is not None:
        # a fresh start where an earlier one left events or a summary but no checkpoint: they are set aside, so
        # TensorBoard shows one curve and summary.json describes this run
        print(f"{run_dir} has no checkpoint to resume but an earlier start's events or summary: moved them to "
              f"{moved} and starting from step 0", flush=True)
    if main:
        for path, problem in skipped:
            moved = ckpt.quarantine(path)
            warn(f"skipped {path.name}, which cannot be resumed ({problem}); kept it as ckpt/{moved.name}")
        claim_run_dir(recipe, run_dir)
        if known is None:
            write_atomic(tok_path, json.dumps(tokenizer.to_dict(), ensure_ascii=False))
        if remedies:
            changes = record_changes(run_dir, state.counters.step, remedies)
            print(f"changed from step {state.counters.step} on: {changes} (recorded in "
                  f"{run_dir / 'recipe_history.json'})", flush=True)
    dist.barrier(env)
    if resumed_from is None and (source := registry.load_pretrained(recipe, model)) and main:
        print(f"starting from the weights of {source}", flush=True)
    return Session(recipe=recipe, run_dir=run_dir, env=env, device=device, ckpt=ckpt, tokenizer=tokenizer,
                   model=model, task=task, plan=plan, train_forward=train_forward, compiled=compiled,
                   optimizer=optimizer, optimizer_impl=optimizer_impl, scaler=scaler,
                   state=state, total_steps=total_steps(recipe, task.steps_per_epoch(), task.items_per_step()),
                   resumed_from=resumed_from, changes=changes, precision=precision)
