"""The process environment: rank, world size, device. The only module that imports torch.distributed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from zoo.errors import ZooError


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
    """Join the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    if env.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def mean(value: float, env: DistEnv, device: torch.device) -> float:
    """The mean of a per-rank number over all ranks."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / env.world_size


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (joint stop decisions never hang DDP)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
