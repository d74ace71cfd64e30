"""The process environment: torchrun's rank and world size, the device, the process group, DDP wrapping and
the collectives the trainer needs. The only module that imports torch.distributed."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record  # noqa: F401  (re-exported for cli.py)
from torch.nn.parallel import DistributedDataParallel

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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


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


def launch(nproc: int, argv: list[str], max_restarts: int = 0, run_dir: str | os.PathLike | None = None) -> int:
    """Run `python -m zoo ARGV` under torchrun's launcher with `nproc` processes on this machine. The workers'
    progress (stdout) passes through; their stderr and torchrun's own reports go to a log file (`launch.log` in
    the run directory), and only zoo's own lines (`zoo: ...`, a stop notice) reach the terminal, once each. A
    failed job ends with one `zoo:` line: the failed rank, why, and the command that resumes it."""
    import tempfile
    import threading

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}", "-m", "zoo", *argv]
    log = tempfile.NamedTemporaryFile("w+", encoding="utf-8", prefix="zoo-launch-", suffix=".log", delete=False)
    # if this process is killed outright (kill -9), torchrun gets SIGTERM and takes its workers down with it
    child = subprocess.Popen(cmd, preexec_fn=lambda: die_with_parent(signal.SIGTERM), stderr=subprocess.PIPE,
                             text=True, errors="replace", bufsize=1)
    received: list[int] = []
    shown: set[str] = set()

    def relay() -> None:  # torchrun's and the workers' stderr: all to the log, zoo's own lines to the terminal
        for line in child.stderr:
            log.write(line)
            if line.startswith(("zoo:", "SIGINT:", "SIGTERM:")) and line not in shown:
                shown.add(line)
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()

    def forward(signum, frame):  # Ctrl-C / SIGTERM reach the workers through torchrun: they checkpoint and stop
        received.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
        reader.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.close()
    report = _read(log.name) if code != 0 and not received else ""  # this launch's part, before it is appended
    where = _keep_log(log.name, run_dir)
    if received:
        return 128 + received[0]
    if code != 0:
        resume = " ".join(["zoo", *argv, f"--nproc-per-node {nproc}"])
        already = any(line.startswith("zoo: error:") for line in shown)
        print(f"zoo: error: {failure(report)}; the other ranks were stopped and the checkpoints written so far are "
              f"intact: fix {'that' if already else 'the cause'} and resume with `{resume}` (torchrun's full report: "
              f"{where})", file=sys.stderr, flush=True)
    return code


def _keep_log(path: str, run_dir: str | os.PathLike | None) -> str:
    """Append a launch's log to the run directory's launch.log (if the run directory exists), else keep it where
    it is; returns where it is."""
    import shutil
    from pathlib import Path

    target = Path(run_dir) / "launch.log" if run_dir is not None else None
    if target is None or not target.parent.is_dir():
        return path
    try:
        with open(target, "a", encoding="utf-8") as out, open(path, encoding="utf-8") as src:
            shutil.copyfileobj(src, out)
        os.unlink(path)
    except OSError:
        return path
    return str(target)


def _read(path: str) -> str:
    """A launch log's text ('' if it cannot be read: the failure line then says less)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# A rank whose collective failed because a peer was lost: a consequence of another rank's failure, named only when
# no rank failed otherwise (torchrun's "first observed failure" can be such a rank when both end in the same second)
_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited",
              "NCCL communicator was aborted")


def _failures(text: str) -> list[tuple[str | None, str | None, str]]:
    """torchrun's failure entries, its root cause first, then the other failures: (rank, exit code, the last line
    of the rank's Python traceback or '')."""
    import re

    root_at, others_at = text.find("Root Cause"), text.find("Failures:")
    if root_at < 0:
        return []
    parts = [text[root_at:], text[others_at:root_at] if 0 <= others_at < root_at else ""]
    entries = []
    for block in (b for part in parts for b in re.split(r"\n\[\d+\]:\n", part)[1:]):
        rank = re.search(r"rank\s*:\s*(\d+)", block)
        code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
        trace = [ln.strip() for ln in block.partition("traceback :")[2].splitlines()]
        trace = [ln for ln in trace if ln and not ln.startswith(("=", "-"))]
        if rank or code:
            entries.append((rank and rank.group(1), code and code.group(1),
                            trace[-1] if trace and trace[0].startswith("Traceback") else ""))
    return entries


def failure(text: str) -> str:
    """Which rank failed and why, from torchrun's report (its "Root Cause" and "Failures" blocks) and the workers'
    stderr: the first entry whose error is not merely a lost peer."""
    entries = _failures(text)
    rank, code, error = next((e for e in entries if not any(m in e[2] for m in _PEER_LOST)),
                             entries[0] if entries else (None, None, ""))
    died = signal.Signals(-int(code)).name if code and int(code) < 0 else ""
    zoo_errors = [ln.strip() for ln in text.splitlines() if ln.startswith("zoo: error:")]
    if error:  # the rank's own Python error (a signal may end it later: gloo aborts a process that exits with a
        # process group still up)
        cause = error[:200] + (f", then {died} as it exited" if died else "")
    elif died:
        cause = f"killed by {died}"
    elif zoo_errors:
        cause = zoo_errors[-1].removeprefix("zoo: error: ")[:200]
    else:
        cause = "it exited without a Python error" if entries else "see the report"
    exit_code = f"; exit code {code}" if code else ""
    return f"{f'rank {rank}' if rank else 'a worker'} failed ({cause}{exit_code})"


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to send this process `signum` when its parent dies (no orphans after a kill -9 of the
    launcher); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signum))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), int(signum))


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
