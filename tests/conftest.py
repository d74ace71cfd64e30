"""Shared fixtures: a small text file, tiny recipes, and an in-process `zoo` runner."""

from __future__ import annotations

import json
import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.compile's CPU kernels in their scalar C++ form: the vectorised form's headers add ~20 s of C++ compilation
# to each compiled test and test nothing of zoo's (what is compiled, and that it computes what eager does, is
# the same); read when inductor's config is first imported, so set before any test compiles
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "0")
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import cli

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO / "zoo" / "data" / "embedded" / "tinyshakespeare.txt"

TINY_RECIPE = """
[run]
description = "tiny test recipe"
seed = 7

[model]
arch = "char_rnn"
cell = "{cell}"
hidden_size = 16
num_layers = 2
dropout = 0.1

[data]
source = "{source}"

[train]
batch_size = 8
seq_len = 16
lr = 1e-2
max_steps = 20
grad_clip = 1.0

[optim]
name = "adam"

[eval]
interval = 10
max_tokens = 400
sample_tokens = 20

[checkpoint]
keep_last = 2

[log]
interval = 5
"""


def write_text_file(folder: Path) -> Path:
    """The first 20,000 characters of Tiny Shakespeare, as folder/tiny.txt."""
    path = folder / "tiny.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def write_recipe(folder: Path, source: Path, name: str = "tiny", cell: str = "lstm", extra: str = "") -> Path:
    """The tiny recipe on `source` (with extra text appended), as folder/NAME.toml."""
    path = folder / f"{name}.toml"
    path.write_text(TINY_RECIPE.format(cell=cell, source=source.as_posix()) + extra, encoding="utf-8")
    return path


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """The first 20,000 characters of Tiny Shakespeare."""
    return write_text_file(tmp_path)


@pytest.fixture
def make_recipe(tmp_path: Path, text_file: Path):
    """Write a tiny recipe (with extra text appended) and return its path."""

    def make(name: str = "tiny", cell: str = "lstm", extra: str = "") -> Path:
        return write_recipe(tmp_path, text_file, name, cell, extra)

    return make


def one_process(*args, cwd: Path) -> subprocess.CompletedProcess:
    """`zoo ARGS` in this process, in `cwd`, its output captured (runs outside the `zoo` fixture: module-wide
    runs, and single-process references beside DDP launches, which need no process of their own: the worker
    count, not the thread count, is what those tests compare)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def train_once(tmp_path_factory, name: str, *args: str) -> Path:
    """Train the tiny LSTM recipe on the tiny text once, in a folder of its own (for module-scoped fixtures
    whose tests only read the run); returns the run directory."""
    root = tmp_path_factory.mktemp(name)
    result = one_process("train", write_recipe(root, write_text_file(root)), "--name", name, *args, cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "runs" / name


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def zoo(capsys, monkeypatch, tmp_path: Path):
    """Run `zoo ARGS...` in-process in tmp_path; returns exit code and captured output."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def zoo_subprocess(*args: str, cwd: Path, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m zoo ARGS...` as a separate process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300, **kwargs)


class Forked:
    """`zoo ARGS` in a forked child of this test process: a real process to signal or kill outright, without a
    fresh interpreter's start-up (importing torch and, at the first optimizer, its compiler front end: ~5 s of
    CPU each). Like Popen: `stdout` (a pipe, line by line), `send_signal`, `communicate`, `returncode` (minus
    the signal's number when a signal ended it). Use `zoo_process`, which forks only where that is safe."""

    def __init__(self, *args: str, cwd: Path, env: dict | None = None):
        import tempfile

        read, write = os.pipe()
        self._err = tempfile.TemporaryFile()
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.close(read)
                os.dup2(write, 1)
                os.dup2(self._err.fileno(), 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                os.chdir(cwd)
                os.environ.update(env or {})
                from zoo import faults

                faults._counts.clear()  # fault counts start at zero, as in a new process
                code = cli.main([str(a) for a in args])
            except BaseException:  # noqa: BLE001 - shown to the test through stderr
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(write)
        self.stdout = os.fdopen(read, "r", encoding="utf-8", errors="replace")

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 300) -> int:
        import time

        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            elif time.monotonic() > deadline:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                raise subprocess.TimeoutExpired(["zoo (forked)"], timeout)
            else:
                time.sleep(0.02)
        return self.returncode

    def communicate(self, timeout: float = 300) -> tuple[str, str]:
        out = self.stdout.read()  # until the child's end of the pipe closes
        self.stdout.close()
        self.wait(timeout)
        self._err.seek(0)
        err = self._err.read().decode("utf-8", errors="replace")
        self._err.close()
        return out, err


def zoo_process(*args: str, cwd: Path, env: dict | None = None):
    """A real `zoo ARGS` process to signal or kill, started as Popen would (text pipes for stdout and stderr).
    In a test worker with one torch thread (pytest -n N) it is a fork of this process (see Forked); where this
    process may have started a team of OpenMP threads (pytest -n 0) a fork's first parallel region would hang
    on them, so it is a fresh `python -m zoo`. Where a fresh interpreter is the point (exit handlers, settings
    read at import, torchrun), tests start `python -m zoo` themselves."""
    import torch

    if torch.get_num_threads() == 1:
        return Forked(*args, cwd=cwd, env=env)
    return subprocess.Popen([sys.executable, "-m", "zoo", *map(str, args)], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def zoo_killed(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `zoo ARGS` to its end, or to the signal that ends it, in a real process (see zoo_process)."""
    child = zoo_process(*args, cwd=cwd, env=env)
    out, err = child.communicate(timeout=300)
    return subprocess.CompletedProcess(list(args), child.returncode, out, err)


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a TensorBoard scalar tag, as a user's TensorBoard would read them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    latest = (run_dir / "ckpt" / "latest").read_text().strip()
    return load_file(run_dir / "ckpt" / latest / "model.safetensors")


def poison_loss(monkeypatch, at_call: int):
    """Make the language-model loss NaN at its `at_call`-th computation; returns the real loss function."""
    from zoo.tasks.lm import LMTask

    original = LMTask.loss
    calls = {"n": 0}

    def poisoned(self, model, batch, state):
        calls["n"] += 1
        loss, new_state = original(self, model, batch, state)
        return (loss * float("nan") if calls["n"] == at_call else loss), new_state

    monkeypatch.setattr(LMTask, "loss", poisoned)
    return original
