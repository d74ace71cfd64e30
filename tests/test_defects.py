"""The last fault paths and bad inputs, each through the CLI: transformers folders as --weights, a fresh start in
an old run folder, signals at any moment, checkpoints whose weights belong to another model, classify's inputs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import read_summary, scalars

FAST = ["--set", "train.max_steps=8", "--set", "eval.interval=4", "--set", "eval.sample_tokens=0"]


def test_weights_may_be_a_transformers_folder_and_a_wrong_folder_says_what_was_expected(zoo, tmp_path, text_file):
    pytest.importorskip("transformers")
    recipe = tmp_path / "gpt.toml"
    recipe.write_text(f'[model]\narch = "gpt2"\nsize = "gpt2-micro"\ncontext_length = 32\n[data]\nsource = '
                      f'"{text_file.as_posix()}"\ntokenizer = "gpt2"\n[train]\nbatch_size = 4\nseq_len = 32\n'
                      'max_steps = 3\n[eval]\nsample_tokens = 0\nmax_tokens = 200\n', encoding="utf-8")
    assert zoo("train", recipe, "--name", "g").code == 0
    assert zoo("export-hf", "runs/g", tmp_path / "hf").code == 0
    ours = zoo("sample", "runs/g", "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "8")
    folder = zoo("sample", "--weights", tmp_path / "hf", "--prompt", "ROMEO:", "--temperature", "0",
                 "--max-new-tokens", "8")
    assert folder.code == 0, folder
    assert folder.out == ours.out  # the exported weights sample as the run does
    scores = zoo("eval", "--weights", tmp_path / "hf", "--data", recipe, "--split", "val")
    assert scores.code == 0 and '"loss"' in scores.out
    (tmp_path / "empty").mkdir()
    for args in (["sample", "--weights", tmp_path / "empty"], ["eval", "--weights", "no/such/folder", "--data",
                                                                recipe]):
        result = zoo(*args)
        assert result.code == 2 and result.err.count("\n") == 1 and "--base" not in result.err, result.err
    wrong = zoo("sample", "--weights", tmp_path / "empty")
    assert "neither a zoo run (no recipe.toml) nor Hugging Face weights (no config.json)" in wrong.err


def test_a_fresh_start_in_an_old_run_folder_sets_its_events_and_summary_aside(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    assert zoo("train", recipe, *FAST).code == 0
    run = tmp_path / "runs" / "tiny"
    old_summary = (run / "summary.json").read_text()
    for step in (run / "ckpt").glob("step-*"):
        shutil.rmtree(step)
    again = zoo("train", recipe, *FAST, "--set", "train.max_steps=6")
    assert again.code == 0, again
    assert "has no checkpoint to resume but an earlier start's events or summary: moved them to" in again.out
    aside = next(run.glob("abandoned-*"))
    assert (aside / "summary.json").read_text() == old_summary and (aside / "tb").is_dir()
    steps = [s for s, _ in scalars(run, "loss/train")]
    assert steps == list(range(1, 7))  # one curve, no step twice
    assert read_summary(run)["step"] == 6


def test_any_number_of_signals_at_any_moment_is_one_line(make_recipe, tmp_path):
    """SIGINTs in quick succession (two at once, two 20 ms apart, three 20 ms apart, two 0.3 s apart), around
    the stop and the exit: each time one line and exit 130, no traceback from an exit handler."""
    recipe = make_recipe()
    args = ["--set", "train.max_steps=3000", "--set", "log.interval=1", "--set", "eval.interval=0"]
    for trial, (count, gap) in enumerate([(2, 0.0), (2, 0.02), (3, 0.02), (2, 0.3)]):
        proc = subprocess.Popen([sys.executable, "-m", "zoo", "train", str(recipe), "--name", f"s{trial}", *args],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            if line.startswith("step 3/"):
                break
        for _ in range(count):
            proc.send_signal(signal.SIGINT)
            time.sleep(gap)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (count, gap, err)
        assert "Traceback" not in err and "Exception ignored" not in err, err
        assert len([line for line in err.splitlines() if line.strip()]) <= 2, err  # the notice and one line


def test_readers_fall_back_past_weights_of_another_model_and_say_what_is_wrong(zoo, make_recipe, tmp_path):
    pytest.importorskip("transformers")
    recipe = make_recipe()
    assert zoo("train", recipe, *FAST).code == 0
    assert zoo("train", recipe, "--name", "wide", *FAST, "--set", "model.hidden_size=24").code == 0
    run = tmp_path / "runs" / "tiny"
    newest = run / "ckpt" / "step-00000008"
    shutil.copy(tmp_path / "runs" / "wide" / "ckpt" / "step-00000008" / "model.safetensors",
                newest / "model.safetensors")
    for command in (["sample", run, "--max-new-tokens", "5"], ["eval", run, "--split", "val"],
                    ["export-hf", run, tmp_path / "out"]):
        result = zoo(*command)
        assert result.code == 0, (command, result)
        assert "skipped 1 checkpoint(s) that cannot be used" in result.err and "do not fit" in result.err
        assert "using step-00000004" in result.err, result.err
    (run / "ckpt" / "best").write_text("step-00000099")
    result = zoo("sample", run, "--max-new-tokens", "3")
    assert "its ckpt/best pointer names step-00000099, which is gone; using the latest" in result.err
    assert "no evaluation" not in result.err


def test_classify_refuses_empty_files_and_text_outside_the_vocabulary(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), "--name", "base", "--set", "train.max_steps=4").code == 0
    spam = zoo("finetune-classifier", "--base", "runs/base", "--set", "train.max_steps=2", "--set", "train.epochs=0",
               "--set", "task.max_length=64", "--set", "eval.interval=2")
    assert spam.code == 0, spam
    (tmp_path / "empty.txt").write_text("\n  \n")
    empty = zoo("classify", "runs/spam_base", "--file", tmp_path / "empty.txt")
    assert empty.code == 2 and "has no lines to classify" in empty.err
    foreign = zoo("classify", "runs/spam_base", "日本語")
    assert foreign.code == 2 and "has no character the run's vocabulary knows besides spaces ('日', '本', '語')" \
        in foreign.err
    spaced = zoo("classify", "runs/spam_base", "テキスト 日本語")  # its one known character is a space
    assert spaced.code == 2 and spaced.err.count("\n") == 1 and "besides spaces" in spaced.err and not spaced.out
    mixed = zoo("classify", "runs/spam_base", "win 日本 now")
    assert mixed.code == 0 and mixed.out.split()[0] in ("ham", "spam")
    assert "the text has characters the run's vocabulary lacks ('日', '本'); they are read as ' '" in mixed.err
