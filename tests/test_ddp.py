"""DDP under torchrun on CPU (gloo): two processes equal one with the same global batch; restarts resume;
a failing rank ends the job."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import torch

from zoo.data import TokenSplits
from zoo.tasks.base import MicroBatchPlan
from zoo.tasks.lm import LMTask, LMTaskConfig

from .conftest import REPO, final_weights, one_process, read_summary, scalars, zoo_subprocess

ENV = {"ZOO_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
def plan(task, micro: int, world: int = 1, rank: int = 0) -> MicroBatchPlan:
    """The micro-batch plan the trainer hands a task."""
    return MicroBatchPlan.of(task.batch_size, micro, world, rank)


def _close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max(a, key=lambda k: (a[k] - b[k]).abs().max().item())
    assert (a[worst] - b[worst]).abs().max().item() <= atol, (worst, (a[worst] - b[worst]).abs().max().item())


@pytest.mark.parametrize("model", ["char_rnn", "gpt2", "gpt2_modern_muon"])
def test_two_processes_equal_one_and_resume(make_recipe, tmp_path, model):
    extra = ["--set", "model.dropout=0.0", "--set", "train.max_steps=12", "--set", "eval.interval=6"]
    if model == "gpt2_modern_muon":  # rotary, RMSNorm, ReLU^2, QK-norm, no biases, soft-cap, zero-init; Muon
        extra += ["--set", "model.position=rotary", "--set", "model.norm=rmsnorm", "--set", "model.mlp=relu2",
                  "--set", "model.qk_norm=true", "--set", "model.bias=false", "--set", "model.logit_softcap=15.0",
                  "--set", "model.zero_init_proj=true", "--set", 'optim={name = "muon", embedding_lr = 0.05}',
                  "--set", "train.lr=0.02"]
    if model == "gpt2":  # with a BPE trained on the text (rank 0 trains it, the other reads it back)
        extra += ["--set", "data.tokenizer=bpe", "--set", "data.vocab_size=320", "--set",
                  f"data.cache_dir={tmp_path / 'cache'}"]
    if model.startswith("gpt2"):
        recipe = REPO / "recipes" / "gpt2_shakespeare_char.toml"
        extra += ["--set", f"data.source={make_recipe().parent / 'tiny.txt'}", "--set", "model.size=gpt2-micro",
                  "--set", "model.context_length=32", "--set", "train.seq_len=32", "--set", "train.batch_size=8",
                  "--set", "run.precision=fp32", "--set", "eval.max_tokens=1000", "--set", "eval.batch_size=4"]
    else:
        recipe = make_recipe()
        extra += ["--set", "checkpoint.interval=5"]
    one = one_process("train", recipe, "--name", "one", *extra, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = zoo_subprocess("train", recipe, "--name", "two", "--nproc-per-node", "2", *extra, cwd=tmp_path, env=ENV)
    assert two.returncode == 0, two.stdout + two.stderr
    # Muon's Newton-Schulz runs in fp32 on a CPU (optim.ns_precision = auto); in torch's bf16 the last-bit
    # differences of a 2-rank gradient sum round apart and the weights agree only to bf16's resolution (4.9e-4
    # after these 12 steps, measured with ns_precision = "bf16")
    tolerance = 1e-5
    _close(final_weights(tmp_path / "runs" / "one"), final_weights(tmp_path / "runs" / "two"), tolerance)
    curve_one = [v for _, v in scalars(tmp_path / "runs" / "one", "loss/train")]
    curve_two = [v for _, v in scalars(tmp_path / "runs" / "two", "loss/train")]
    assert len(curve_two) == 12 and curve_two == pytest.approx(curve_one, rel=tolerance)
    s1, s2 = read_summary(tmp_path / "runs" / "one"), read_summary(tmp_path / "runs" / "two")
    assert s2["tokens"] == s1["tokens"] and s2["test_loss"] == pytest.approx(s1["test_loss"], rel=tolerance)
    for key in ("test_bpb", "best_val_bpb", "final_train_bpb", "test_bytes_per_token"):  # bytes summed over ranks
        assert s2[key] == pytest.approx(s1[key], rel=tolerance), key
    if model == "char_rnn":  # a recurrent run's hidden state is split by rank: it resumes only on as many
        # processes as it ran on (a killed worker's restart, which resumes on the same number, is in the two-node
        # test below)
        one = one_process("train", recipe, "--name", "two", *extra, "--set", "train.max_steps=16", cwd=tmp_path)
        assert one.returncode == 2 and "resumes only with the same number (not 1)" in one.stderr
    else:  # an attention run resumes on another world size: the two-process run on one
        longer = [*extra, "--set", "train.max_steps=16"]
        resumed = one_process("train", recipe, "--name", "two", *longer, cwd=tmp_path)
        assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
        assert one_process("train", recipe, "--name", "one", *longer, cwd=tmp_path).returncode == 0
        _close(final_weights(tmp_path / "runs" / "one"), final_weights(tmp_path / "runs" / "two"), tolerance)


@pytest.mark.parametrize("sampling,stateful", [("auto", True), ("windows", False), ("sequential", False)])
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_read_the_single_process_batch_exactly_once(sampling, stateful, world):
    ids = np.arange(5000, dtype=np.int32)
    splits = TokenSplits(train=ids, val=ids[:100], test=ids[:100])
    task = LMTask(LMTaskConfig(sampling=sampling), splits, stateful=stateful, batch_size=8, seq_len=10, seed=3,
                  eval_batch_size=2, eval_max_tokens=0)
    seen = []
    for step in range(task.steps_per_epoch()):
        single = torch.cat([b.x for b in task.micro_batches(step, plan(task, 2, 1, 0))])
        parts = [b for r in range(world) for b in task.micro_batches(step, plan(task, 2, world, r))]
        assert sorted(b.slot for b in parts) == list(range(4))  # every micro-batch on exactly one rank
        union = torch.cat([b.x for b in sorted(parts, key=lambda b: b.slot)])
        assert torch.equal(union, single)
        seen.append(single.flatten())
    if sampling == "sequential":  # one pass: every token of the budget once, none twice
        tokens = torch.cat(seen)
        assert len(torch.unique(tokens)) == len(tokens) == task.steps_per_epoch() * 8 * 10


def test_a_failing_rank_ends_the_job_with_one_line_naming_it(make_recipe, tmp_path):
    start = time.monotonic()
    recipe = make_recipe()
    result = zoo_subprocess("train", recipe, "--nproc-per-node", "2", "--set", "checkpoint.interval=2", cwd=tmp_path,
                            env={**ENV, "ZOO_FAULT": "raise@3:1"})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # the rank's error, and its exit code: 1, or -6 where gloo aborted the process as it exited (see below)
    assert len(lines) == 1 and lines[0].startswith("zoo: error: rank 1 failed (RuntimeError: injected fault at step 3 "
                                                   "on rank 1"), result.stderr
    assert "; exit code 1)" in lines[0] or ", then SIGABRT as it exited; exit code -6)" in lines[0], lines[0]
    assert (f"resume with `zoo train {recipe} --name tiny --runs-dir runs --set checkpoint.interval=2 "
            "--nproc-per-node 2`") in lines[0]
    log = tmp_path / "runs" / "tiny" / "launch.log"
    assert f"torchrun's full report: {log.relative_to(tmp_path)}" in lines[0]
    assert "Traceback" in log.read_text() and "Traceback" not in result.stderr  # the detail is kept, not shown
    assert time.monotonic() - start < 90
    killed = zoo_subprocess("train", recipe, "--nproc-per-node", "2", "--name", "killed", cwd=tmp_path,
                            env={**ENV, "ZOO_FAULT": "crash@3:1"})
    lines = [line for line in killed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zoo: error: rank 1 failed (it exited without a Python error; "
                                                   "exit code 1)"), killed.stderr


def test_a_worker_aborted_after_every_rank_finished_is_a_finished_job(make_recipe, tmp_path):
    """gloo may abort a worker in C++ as it tears its process group down ("terminate called without an active
    exception"); once every rank has saved its work and said so, the job is finished: exit 0, the summary
    written, a note naming the log."""
    result = zoo_subprocess("train", make_recipe(), "--nproc-per-node", "2", "--set", "train.max_steps=4",
                            "--set", "eval.interval=4", cwd=tmp_path, env={**ENV, "ZOO_FAULT": "abort@teardown:1"})
    assert result.returncode == 0, result.stderr
    assert read_summary(tmp_path / "runs" / "tiny")["status"] == "finished"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["zoo: note: every rank finished and saved the run; a worker then aborted while leaving the "
                     "process group (torchrun's report: runs/tiny/launch.log)"], result.stderr
    assert "SIGABRT" in (tmp_path / "runs" / "tiny" / "launch.log").read_text()


def test_the_failure_line_names_a_ranks_python_error_before_a_signal_at_its_exit():
    """torchrun's root cause as it reads when a rank raised and gloo then aborted it at exit (seen on this VM),
    and when a rank was killed outright."""
    from zoo.dist import failure

    raised_then_aborted = """Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -6 (pid: 22483)  (SIGABRT)
  error_file: /tmp/torchelastic_x/attempt_0/1/error.json
  traceback : Traceback (most recent call last):
    File "zoo/faults.py", line 47, in step
      raise RuntimeError(f"injected fault at step {number} on rank {rank}")
  RuntimeError: injected fault at step 3 on rank 1

============================================================"""
    assert failure(raised_then_aborted) == ("rank 1 failed (RuntimeError: injected fault at step 3 on rank 1, then "
                                            "SIGABRT as it exited; exit code -6)")
    killed = raised_then_aborted.split("  error_file")[0].replace("-6 (pid: 22483)  (SIGABRT)", "-9 (pid: 7)")
    killed += "\n  error_file: <N/A>\n  traceback : Signal 9 (SIGKILL) received by PID 7\n" + "=" * 60
    assert failure(killed) == "rank 1 failed (killed by SIGKILL; exit code -9)"
    # a rank that exited without a Python error, and rank 0's lost-peer error reported as the first failure (both
    # ended in the same second, as seen on CI): the rank that failed first in fact is named
    exited = """Failures:
[1]:
  time      : 2026-11-30_20:37:12
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 28888)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_20:37:12
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 28887)
  error_file: /tmp/torchelastic_x/attempt_0/0/error.json
  traceback : Traceback (most recent call last):
    File "zoo/trainer.py", line 112, in train_step
  RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:20896: Connection reset by peer.
============================================================"""
    assert failure(exited) == "rank 1 failed (it exited without a Python error; exit code 1)"
    only_peer = "Root Cause" + exited.split("Root Cause")[1]
    assert failure(only_peer).startswith("rank 0 failed (RuntimeError: [gloo")


def _processes_mentioning(text: str) -> list[int]:
    """PIDs (other than this one) whose command line contains `text`."""
    import os
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux's parent-death signal")
def test_sigterm_on_the_launcher_checkpoints_every_rank_and_a_launcher_killed_outright_leaves_no_process(
        make_recipe, tmp_path):
    """SIGTERM to the launcher: every rank checkpoints, exit 143, and the same command resumes from there; then
    kill -9 of that resumed launcher takes torchrun and both workers with it."""
    import os
    import signal
    import sys

    recipe = make_recipe()
    command = [sys.executable, "-m", "zoo", "train", str(recipe), "--name", "sig", "--nproc-per-node", "2",
               "--set", "train.max_steps=100000", "--set", "log.interval=1", "--set", "eval.interval=0"]
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    for line in proc.stdout:
        if line.startswith("step 20/"):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "checkpoint saved" in out
    assert out.count("SIGTERM: saving a checkpoint at the next step boundary") == 1, out  # the user's stop, once
    run = tmp_path / "runs" / "sig"
    stopped = read_summary(run)["step"]
    assert (run / "ckpt" / "latest").read_text() == f"step-{stopped:08d}"

    log_path = tmp_path / "launcher.log"
    log = open(log_path, "w")  # noqa: SIM115 - a file, so no one blocks on a full pipe
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while f"step {stopped + 3}/" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log_path.read_text()
    assert f"resuming runs/sig from step-{stopped:08d}" in text, text[-3000:]
    steps = [int(line.split()[1].split("/")[0]) for line in text.splitlines() if line.startswith("step ")]
    assert steps and steps[0] == stopped + 1, steps  # the resumed job goes on from the step it stopped at
    assert len(_processes_mentioning(str(recipe))) >= 3  # the launcher, torchrun and two workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _processes_mentioning(str(recipe)) and time.monotonic() < deadline:
        time.sleep(0.5)
    log.close()
    left = _processes_mentioning(str(recipe))
    for pid in left:  # do not leave them to the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert left == [], log_path.read_text()[-3000:]


def test_two_nodes_with_c10d_rendezvous_equal_one_process_and_survive_a_lost_node(make_recipe, tmp_path):
    """The README's multi-node command, with two torchrun "nodes" on this machine (one process each)."""
    import os
    import socket
    import sys

    recipe = make_recipe()
    args = ["--set", "checkpoint.interval=5", "--set", "eval.interval=0", "--set", "model.dropout=0.0"]
    one = one_process("train", recipe, "--name", "one", *args, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=zoo-nodes", "--max-restarts=1",
            "-m", "zoo", "train", str(recipe), "--name", "nodes", *args]
    env = {**os.environ, **ENV, "ZOO_FAULT": "crash@13:1", "PYTHONUNBUFFERED": "1"}
    nodes = [subprocess.Popen(node, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [n.communicate(timeout=240)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n----\n".join(o[-2500:] for o in outs)
    both = "".join(outs)
    assert "resuming" in both and "step-00000010" in both  # the lost node came back and both resumed
    _close(final_weights(tmp_path / "runs" / "one"), final_weights(tmp_path / "runs" / "nodes"))
    curve_one = [v for _, v in scalars(tmp_path / "runs" / "one", "loss/train")]
    curve_two = [v for _, v in scalars(tmp_path / "runs" / "nodes", "loss/train")]
    assert len(curve_two) == len(curve_one) == 20 and curve_two == pytest.approx(curve_one, rel=1e-5)


def test_two_processes_fine_tune_a_classifier_as_one_does(make_recipe, tmp_path):
    import sys

    recipe = make_recipe()
    base = one_process("train", recipe, "--name", "base", "--set", "model.hidden_size=16", "--set",
                       "train.max_steps=10", cwd=tmp_path)
    assert base.returncode == 0, base.stderr
    args = ["finetune-classifier", "--base", "runs/base", "--set", "train.epochs=0", "--set", "train.max_steps=6",
            "--set", "eval.interval=3", "--set", "task.max_length=64", "--set", "train.micro_batch_size=4",
            "--set", "task.trainable=all", "--set", "model.dropout=0.0"]  # each rank draws its own dropout
    one = one_process(*args, "--name", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr

    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                          "zoo", *args, "--name", "two"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, **ENV})
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    _close(final_weights(tmp_path / "runs" / "one"), final_weights(tmp_path / "runs" / "two"))
    s1, s2 = read_summary(tmp_path / "runs" / "one"), read_summary(tmp_path / "runs" / "two")
    assert s1["test_metrics"]["confusion"] == s2["test_metrics"]["confusion"]
    assert s2["test_loss"] == pytest.approx(s1["test_loss"], rel=1e-5)
