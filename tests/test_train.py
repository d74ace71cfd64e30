"""Training end to end through the CLI: run layout, learning, TensorBoard, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from zoo.tasks.lm import LMTask

from .conftest import final_weights, poison_loss, read_summary, scalars, zoo_process


def test_train_writes_the_run_directory(zoo, make_recipe, tmp_path):
    result = zoo("train", make_recipe())
    assert result.code == 0, result
    run = tmp_path / "runs" / "tiny"
    assert {p.name for p in run.iterdir()} >= {"recipe.toml", "tokenizer.json", "tb", "ckpt", "summary.json"}
    ckpts = sorted(p.name for p in (run / "ckpt").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-00000010", "step-00000020"]
    assert (run / "ckpt" / "latest").read_text() == "step-00000020"
    for ck in ckpts:
        assert {p.name for p in (run / "ckpt" / ck).iterdir()} == {"model.safetensors", "state.pt", "meta.json"}
        torch.load(run / "ckpt" / ck / "state.pt", weights_only=True)  # loads without unpickling code
    summary = read_summary(run)
    assert summary["status"] == "finished" and summary["step"] == 20
    assert summary["tokens"] == 20 * 8 * 16
    for key in ("final_val_loss", "best_val_loss", "test_loss", "params", "wall_time_s", "tokens_per_s"):
        assert summary[key] is not None and summary[key] > 0, key
    tok = json.loads((run / "tokenizer.json").read_text())
    assert tok["chars"] == sorted(tok["chars"])
    assert "step 20/20" in result.out and "test loss" in result.out
    assert summary["precision"] == "fp32" and "on cpu (fp32, auto)" in result.out  # run.precision = auto


def test_tensorboard_has_the_shared_tags_and_a_sample(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe()).code == 0
    run = tmp_path / "runs" / "tiny"
    for tag in ("loss/train", "optim/lr", "optim/grad_norm", "optim/clipped_frac", "progress/tokens",
                "progress/seconds"):
        assert [s for s, _ in scalars(run, tag)] == list(range(1, 21)), tag
    seconds = [v for _, v in scalars(run, "progress/seconds")]
    assert 0 < seconds[0] and seconds == sorted(seconds)  # training time, for compare --x time
    assert [s for s, _ in scalars(run, "loss/val")] == [10, 20]
    assert [s for s, _ in scalars(run, "perf/tokens_per_s")] == [5, 10, 15, 20]
    assert scalars(run, "loss/test")[0][1] == pytest.approx(read_summary(run)["test_loss"], rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "sample/text_summary" in acc.Tags()["tensors"]
    assert "recipe/text_summary" in acc.Tags()["tensors"]
    assert "_hparams_/session_start_info" in acc.summary_metadata


def test_model_learns(zoo, make_recipe, tmp_path):
    result = zoo("train", make_recipe(), "--set", "train.max_steps=200", "--set", "eval.interval=50",
                 "--set", "model.hidden_size=64", "--set", "train.lr=1e-2")
    assert result.code == 0, result
    val = [v for _, v in scalars(tmp_path / "runs" / "tiny", "loss/val")]
    # well below the unigram entropy of English characters (~3.3 nats) and still improving
    assert val[-1] < 2.6 and val[-1] < val[0] - 0.3, val


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_resumed_run_equals_uninterrupted_run(zoo, make_recipe, tmp_path, cell):
    recipe = make_recipe(cell=cell)
    assert zoo("train", recipe, "--name", "whole").code == 0
    assert zoo("train", recipe, "--name", "split", "--set", "train.max_steps=10").code == 0
    if cell == "lstm":
        time.sleep(2.0)  # time stopped is not training time
    second = zoo("train", recipe, "--name", "split")
    assert second.code == 0 and "resuming" in second.out and "step-00000010" in second.out
    whole, split = final_weights(tmp_path / "runs" / "whole"), final_weights(tmp_path / "runs" / "split")
    assert whole.keys() == split.keys()
    for key in whole:
        assert torch.equal(whole[key], split[key]), key
    curve_whole = scalars(tmp_path / "runs" / "whole", "loss/train")
    curve_split = scalars(tmp_path / "runs" / "split", "loss/train")
    assert curve_whole == curve_split and len(curve_split) == 20  # no step logged twice
    seconds = [v for _, v in scalars(tmp_path / "runs" / "split", "progress/seconds")]
    assert seconds == sorted(seconds) and seconds[10] - seconds[9] < 1.0
    assert read_summary(tmp_path / "runs" / "whole")["test_loss"] == read_summary(tmp_path / "runs" / "split")[
        "test_loss"]


def test_resume_with_accumulation_and_step_schedule(zoo, make_recipe, tmp_path):
    extra = '\n[schedule]\nkind = "step"\ndecay_after_epoch = 0\ndecay_rate = 0.5\n'
    recipe = make_recipe(extra=extra)
    args = ("--set", "train.micro_batch_size=4", "--set", "train.seq_len=64", "--set", "train.max_steps=40")
    assert zoo("train", recipe, "--name", "whole", *args).code == 0
    assert zoo("train", recipe, "--name", "split", *args, "--set", "train.max_steps=17",
               "--set", "checkpoint.interval=17").code == 0
    assert zoo("train", recipe, "--name", "split", *args).code == 0
    whole, split = final_weights(tmp_path / "runs" / "whole"), final_weights(tmp_path / "runs" / "split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    lrs = dict(scalars(tmp_path / "runs" / "whole", "optim/lr"))
    steps_per_epoch = (17_999 // 8) // 64
    assert lrs[1] == pytest.approx(5e-3) and lrs[steps_per_epoch + 1] == pytest.approx(2.5e-3)


def test_finished_run_says_so_and_extending_it_continues(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    assert zoo("train", recipe).code == 0
    again = zoo("train", recipe)
    assert again.code == 0 and "already finished at step 20" in again.out
    more = zoo("train", recipe, "--set", "train.max_steps=25")
    assert more.code == 0 and "resuming" in more.out
    assert read_summary(tmp_path / "runs" / "tiny")["step"] == 25


def test_a_different_recipe_is_refused_in_an_existing_run(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    assert zoo("train", recipe, "--set", "train.max_steps=2").code == 0
    result = zoo("train", recipe, "--set", "model.hidden_size=32")
    assert result.code == 2
    assert "different recipe (model.hidden_size: 16 -> 32)" in result.err and "--name" in result.err


def test_keep_last_and_best_pointer(zoo, make_recipe, tmp_path, monkeypatch):
    losses = iter([2.0, 1.0, 1.5, 1.6, 1.7])
    original = LMTask.evaluate

    def scripted(self, model, split, device, autocast=None, rank=0, world_size=1):
        result = original(self, model, split, device)
        if split == "val":
            result["loss_sum"] = next(losses) * result["tokens"]
        return result

    monkeypatch.setattr(LMTask, "evaluate", scripted)
    result = zoo("train", make_recipe(), "--set", "train.max_steps=10", "--set", "eval.interval=2",
                 "--set", "checkpoint.keep_last=2")
    assert result.code == 0, result
    ckpt = tmp_path / "runs" / "tiny" / "ckpt"
    assert (ckpt / "best").read_text() == "step-00000004"
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000004", "step-00000008", "step-00000010"]
    assert read_summary(tmp_path / "runs" / "tiny")["best_val_loss"] == 1.0


def test_early_stopping(zoo, make_recipe, tmp_path, monkeypatch):
    losses = iter([2.0, 1.5, 1.6, 1.7, 1.8, 1.9])

    def scripted(self, model, split, device, autocast=None, rank=0, world_size=1):
        return {"loss_sum": next(losses) if split == "val" else 1.0, "tokens": 1}

    monkeypatch.setattr(LMTask, "evaluate", scripted)
    result = zoo("train", make_recipe(), "--set", "train.max_steps=50", "--set", "eval.interval=2",
                 "--set", "train.early_stop_patience=2")
    assert result.code == 0, result
    summary = read_summary(tmp_path / "runs" / "tiny")
    assert summary["status"] == "early_stopped" and summary["step"] == 8 and summary["best_step"] == 4


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(zoo, make_recipe, tmp_path, monkeypatch):
    original = poison_loss(monkeypatch, at_call=13)
    recipe = make_recipe()
    result = zoo("train", recipe)
    assert result.code == 2
    assert "training loss is nan" in result.err and "at step 13" in result.err
    assert "step-00000010 is intact" in result.err
    ckpt = tmp_path / "runs" / "tiny" / "ckpt"
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000010"]
    monkeypatch.setattr(LMTask, "loss", original)
    resumed = zoo("train", recipe)
    assert resumed.code == 0 and "resuming" in resumed.out


def test_clipping_logs_pre_clip_norm_and_fraction(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), "--set", "train.grad_clip=1e-4", "--set", "train.max_steps=4").code == 0
    run = tmp_path / "runs" / "tiny"
    norms = [v for _, v in scalars(run, "optim/grad_norm")]
    assert all(n > 1e-4 for n in norms)
    assert [v for _, v in scalars(run, "optim/clipped_frac")] == [1.0] * 4
    assert zoo("train", make_recipe(), "--name", "noclip", "--set", "train.grad_clip=0",
               "--set", "train.max_steps=4").code == 0
    assert [v for _, v in scalars(tmp_path / "runs" / "noclip", "optim/clipped_frac")] == [0.0] * 4


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "rmsprop", "sgd"])
def test_each_optimizer_trains(zoo, make_recipe, tmp_path, optimizer):
    lr = "0.5" if optimizer == "sgd" else "1e-2"
    result = zoo("train", make_recipe(), "--set", f"optim.name={optimizer}", "--set", f"train.lr={lr}",
                 "--set", "optim.weight_decay=0.01")
    assert result.code == 0, result
    losses = [v for _, v in scalars(tmp_path / "runs" / "tiny", "loss/train")]
    assert sum(losses[-5:]) < sum(losses[:5])


def _cpu_has_kernel(precision: str, cell: str) -> bool:
    """Whether this CPU's oneDNN has the reduced-precision kernel of nn.LSTM/GRU/RNN (bf16 LSTM needs AVX-512)."""
    layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](4, 4)
    try:
        with torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision]):
            layer(torch.randn(1, 2, 4))
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("precision,cell", [("bf16", "lstm"), ("bf16", "gru"), ("fp16", "rnn")])
def test_reduced_precision_trains_on_cpu(zoo, make_recipe, tmp_path, precision, cell):
    result = zoo("train", make_recipe(cell=cell), "--set", f"run.precision={precision}", "--set", "train.max_steps=10")
    if not _cpu_has_kernel(precision, cell):  # then the run must say so in one line
        assert result.code == 2 and f"{precision} autocast failed on cpu" in result.err, result
        assert 'run.precision = "fp32"' in result.err and "Traceback" not in result.err
        return
    assert result.code == 0, result
    summary = read_summary(tmp_path / "runs" / "tiny")
    assert summary["precision"] == precision and math.isfinite(summary["test_loss"])
    assert f"{precision} on a CPU: its {precision} matmuls are usually slower than fp32" in result.out
    if precision == "fp16":  # the grad scaler's state is checkpointed
        state = torch.load(tmp_path / "runs" / "tiny" / "ckpt" / "step-00000010" / "state.pt", weights_only=True)
        assert state["scaler"]["scale"] > 0


def test_unsupported_precision_is_a_clear_error(zoo, make_recipe):
    # PyTorch's CPU LSTM kernels have no fp16 variant
    result = zoo("train", make_recipe(cell="lstm"), "--set", "run.precision=fp16", "--set", "train.max_steps=2")
    assert result.code == 2 and "fp16 autocast failed on cpu" in result.err and "bf16" in result.err


def test_one_hot_input_and_epoch_limit(zoo, make_recipe, tmp_path):
    result = zoo("train", make_recipe(), "--set", "model.input=onehot", "--set", "train.max_steps=0",
                 "--set", "train.epochs=0.1")
    assert result.code == 0, result
    steps_per_epoch = (18_000 // 8) // 16
    assert read_summary(tmp_path / "runs" / "tiny")["step"] == math.ceil(0.1 * steps_per_epoch)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_and_the_run_resumes_exactly(zoo, make_recipe, tmp_path, signum, code):
    recipe = make_recipe(extra="")
    args = ["--set", "train.max_steps=3000", "--set", "log.interval=1", "--set", "eval.interval=0"]
    proc = zoo_process("train", recipe, "--name", "sig", *args, cwd=tmp_path)  # a real process to signal
    for line in proc.stdout:
        if line.startswith("step 5/"):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    assert "checkpoint saved" in out
    run = tmp_path / "runs" / "sig"
    stopped_at = read_summary(run)["step"]
    assert read_summary(run)["status"] == "interrupted" and 5 <= stopped_at < 3000
    assert (run / "ckpt" / "latest").read_text() == f"step-{stopped_at:08d}"
    # finish both the resumed run and an uninterrupted one at a nearby step, and compare them
    end = stopped_at + 5
    resumed = zoo("train", recipe, "--name", "sig", *args, "--set", f"train.max_steps={end}")
    assert resumed.code == 0, resumed
    whole = zoo("train", recipe, "--name", "whole", *args, "--set", f"train.max_steps={end}")
    assert whole.code == 0, whole
    a, b = final_weights(run), final_weights(tmp_path / "runs" / "whole")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accumulation_matches_one_big_batch(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    common = ("--set", "model.dropout=0.0", "--set", "train.max_steps=8")
    assert zoo("train", recipe, "--name", "big", *common).code == 0
    assert zoo("train", recipe, "--name", "accum", *common, "--set", "train.micro_batch_size=2").code == 0
    big, accum = final_weights(tmp_path / "runs" / "big"), final_weights(tmp_path / "runs" / "accum")
    for key in big:
        torch.testing.assert_close(accum[key], big[key], rtol=1e-4, atol=1e-5)
    curve_big = [v for _, v in scalars(tmp_path / "runs" / "big", "loss/train")]
    curve_accum = [v for _, v in scalars(tmp_path / "runs" / "accum", "loss/train")]
    assert curve_accum == pytest.approx(curve_big, rel=1e-5)


def test_a_run_directory_is_trained_by_one_process_at_a_time(zoo, make_recipe, tmp_path):
    from zoo.runs import lock_run_dir

    held = lock_run_dir(tmp_path / "runs" / "tiny")  # as another training process would
    try:
        result = zoo("train", make_recipe())
        assert result.code == 2 and "is being trained by another process" in result.err
    finally:
        held.close()
    assert zoo("train", make_recipe(), "--set", "train.max_steps=2").code == 0


def test_thread_settings_for_a_shared_machine(zoo, make_recipe, tmp_path, monkeypatch):
    import zoo as package
    from zoo import session

    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "ZOO_THREADS"):
        monkeypatch.delenv(name, raising=False)
    package.configure_threads()
    assert os.environ["GOMP_SPINCOUNT"] == "1000"  # idle OpenMP threads sleep soon instead of spinning
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    package.configure_threads()
    assert os.environ["GOMP_SPINCOUNT"] == "5"  # the user's own setting wins
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("ZOO_THREADS", "off")
    package.configure_threads()
    assert "GOMP_SPINCOUNT" not in os.environ

    assert zoo("train", make_recipe(), "--set", "run.threads=1", "--set", "train.max_steps=2").code == 0
    try:
        assert torch.get_num_threads() == 1
        again = zoo("train", make_recipe(), "--set", "train.max_steps=4")  # run.threads changes no result
        assert again.code == 0 and "resuming" in again.out, again
        assert torch.get_num_threads() == min(session.TORCH_THREADS, len(os.sched_getaffinity(0)))
    finally:
        torch.set_num_threads(session.TORCH_THREADS)


def test_big_tensors_come_from_the_heap_not_fresh_mappings(tmp_path):
    """zoo turns glibc's mmap for big blocks off, so a freed 200 MB tensor's memory stays in the process for the
    next one instead of being unmapped and faulted in again page by page; ZOO_MALLOC=off keeps glibc's
    defaults. mallinfo2 tells where the live tensor's bytes are: the heap (arena) or mappings (hblkhd)."""
    code = ("import ctypes, zoo, torch\n"
            "class Info(ctypes.Structure):\n"
            "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena ordblks smblks hblks hblkhd usmblks fsmblks '\n"
            "                                               'uordblks fordblks keepcost').split()]\n"
            "libc = ctypes.CDLL('libc.so.6')\n"
            "libc.mallinfo2.restype = Info\n"
            "x = torch.ones(50_000_000)\n"
            "info = libc.mallinfo2()\n"
            "print(info.arena, info.hblkhd)\n")
    where = {}
    for setting in ("on", "off"):
        env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")}
        out = subprocess.run([sys.executable, "-c", code], env={**env, "ZOO_MALLOC": setting}, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        where[setting] = [int(v) for v in out.stdout.split()]
    assert where["on"][0] > 200_000_000 and where["on"][1] < 10_000_000, where  # on the heap, reused when freed
    assert where["off"][1] > 200_000_000, where  # a fresh mapping, unmapped when freed
