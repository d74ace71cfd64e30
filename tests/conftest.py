"""Shared fixtures: a small text file, tiny recipes, and an in-process `zoo` runner."""

from __future__ import annotations

import json
import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
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


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """The first 20,000 characters of Tiny Shakespeare."""
    path = tmp_path / "tiny.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


@pytest.fixture
def make_recipe(tmp_path: Path, text_file: Path):
    """Write a tiny recipe (with extra text appended) and return its path."""

    def make(name: str = "tiny", cell: str = "lstm", extra: str = "") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(TINY_RECIPE.format(cell=cell, source=text_file.as_posix()) + extra, encoding="utf-8")
        return path

    return make


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
