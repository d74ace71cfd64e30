"""The process environment: torchrun's rank and world size, the device, the process group, DDP wrapping and
the collectives the trainer needs. The only module that imports torch.distributed."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record  # noqa: F401  (re-exported for cli.py)
from torch.nn.parallel import DistributedDataParallel

from zoo.errors import ZooError
from zoo.launch import die_with_parent, failure, launch  # noqa: F401  (the launcher is torch-free)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def environment() -> DistEnv:
    """Rank and world size from torchrun's environment (one process when it is absent)."""
    if "RANK" not in os.environ:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)))


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; under torchrun each rank takes its local GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ZooError(f"run.device is {name!r} but CUDA is not available here; use auto or cpu")
        if name == "cuda":
            name = f"cuda:{env.local_rank}"
        torch.cuda.set_device(torch.device(name))
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ZooError("run.device is 'mps' but MPS is not available here; use auto or cpu")
    return torch.device(name)


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group when launched by torchrun (nccl on CUDA, gloo on CPU). A rank that waits
    longer than $ZOO_DIST_TIMEOUT seconds (default 600) for the others fails instead of hanging."""
    if env.distributed and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("ZOO_DIST_TIMEOUT", 600)))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                store=_store(env, timeout), rank=env.rank, world_size=env.world_size)


def _store(env: DistEnv, timeout: datetime.timedelta) -> dist.Store:
    """torchrun's key-value store, under a prefix of its own for each attempt: after an elastic restart the
    new workers must not read the addresses the dead attempt's workers published there (torchrun's shared
    store outlives attempts). The attempt is counted per rank in the store itself, not taken from
    TORCHELASTIC_RESTART_COUNT: with several nodes, a node restarted because another one failed keeps its
    count, so the counts differ between nodes, while every rank starts once in every attempt."""
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env.world_size,
                          is_master=env.rank == 0 and not agent_store, timeout=timeout)
    attempt = store.add(f"zoo/starts/world-{env.world_size}/rank-{env.rank}", 1)
    return dist.PrefixStore(f"zoo/attempt-{attempt}", store)


def wrap(model: torch.nn.Module, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel when there is more than one process."""
    if not env.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(model: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce for this forward/backward (all but the last micro-step)."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def sum_all(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Element-wise sums of per-rank numbers over all ranks."""
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj, env: DistEnv) -> list:
    """Every rank's `obj` (small picklable values such as RNG states), in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def mean_tensor(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The element-wise mean of a per-rank tensor over all ranks (no host sync)."""
    if not env.distributed:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / env.world_size


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (joint stop decisions never hang DDP)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
