"""The multi-process launcher: `zoo train --nproc-per-node N` runs torchrun with N workers, relays their lines,
and turns a failed job into one line. Torch-free, so the launching process does not import torch (seconds of
CPU) only to start torchrun, which imports it again in every worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

# what a DDP worker writes to its stderr (the launch log) once its work is saved and it only has to leave
FINISHED_MARK = "zoo-worker: finished rank"


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
    held: list[str] = []  # workers' stop notices while this launcher has had no signal (torchrun stopping them)

    def show(line: str) -> None:
        if line not in shown:
            shown.add(line)
            sys.stderr.write(line)
            sys.stderr.flush()

    def relay() -> None:  # torchrun's and the workers' stderr: all to the log, zoo's own lines to the terminal
        for line in child.stderr:
            log.write(line)
            if line.startswith(("SIGINT:", "SIGTERM:")) and not received:
                held.append(line)  # torchrun's SIGTERM to the survivors of a failed rank: not the user's stop
            elif line.startswith(("zoo:", "SIGINT:", "SIGTERM:")):
                show(line)

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
    for line in held if received else []:  # a worker saw the user's Ctrl-C before this process did
        show(line)
    report = _read(log.name) if code != 0 and not received else ""  # this launch's part, before it is appended
    where = _keep_log(log.name, run_dir)
    if received:
        return 128 + received[0]
    if code != 0 and _all_finished(report, nproc):
        # every rank saved its work and said so; one then died as torch.distributed tore down (gloo's C++
        # abort at exit): the job is done, and a rerun would only redo the end
        print(f"zoo: note: every rank finished and saved the run; a worker then aborted while leaving the process "
              f"group (torchrun's report: {where})", file=sys.stderr, flush=True)
        return 0
    if code != 0:
        resume = " ".join(["zoo", *argv, f"--nproc-per-node {nproc}"])
        already = any(line.startswith("zoo: error:") for line in shown)
        entries = _failures(report)
        if already and entries and all(c == "2" for _, c, _ in entries):
            return 2  # every worker refused the input (a bad recipe, a name in use): their line says it all
        print(f"zoo: error: {failure(report)}; the other ranks were stopped and the checkpoints written so far are "
              f"intact: fix {'that' if already else 'the cause'} and resume with `{resume}` (torchrun's full report: "
              f"{where})", file=sys.stderr, flush=True)
    return code


def _all_finished(text: str, nproc: int) -> bool:
    """Whether every rank wrote FINISHED_MARK (a restarted job's ranks write it in its last attempt only: one
    that finished everywhere does not fail)."""
    done = {line.rsplit(" ", 1)[-1].strip() for line in text.splitlines() if line.startswith(FINISHED_MARK)}
    return done >= {str(r) for r in range(nproc)}


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
