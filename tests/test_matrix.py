"""Every architecture with every task through the CLI: train, resume, sample where the task generates, and
fine-tune a classifier from it, classify with it."""

from __future__ import annotations

import pytest

from .conftest import REPO, read_summary


def lm_recipe(arch: str, make_recipe):
    """(recipe, overrides) of a tiny language model of each architecture on the tiny text."""
    if arch == "gpt2":
        return REPO / "recipes" / "gpt2_shakespeare_char.toml", [
            "--set", f"data.source={make_recipe().parent / 'tiny.txt'}", "--set", "run.precision=fp32",
            "--set", "model.size=gpt2-micro", "--set", "model.context_length=32", "--set", "train.seq_len=32",
            "--set", "train.batch_size=8", "--set", "model.dropout=0.0", "--set", "eval.max_tokens=500"]
    cell, impl = arch.split("-")
    return make_recipe(cell=cell), ["--set", "model.hidden_size=16", "--set", f"model.impl={impl}"]


@pytest.mark.parametrize("arch", ["lstm-torch", "gru-scratch", "rnn-torch", "gpt2"])
def test_every_architecture_with_every_task(zoo, make_recipe, tmp_path, arch):
    recipe, args = lm_recipe(arch, make_recipe)
    args += ["--set", "eval.interval=2", "--set", "eval.sample_tokens=5"]
    lm = zoo("train", recipe, "--name", "lm", *args, "--set", "train.max_steps=2")
    assert lm.code == 0, lm
    more = zoo("train", recipe, "--name", "lm", *args, "--set", "train.max_steps=4")  # restore and go on
    assert more.code == 0 and "resuming" in more.out and read_summary(tmp_path / "runs" / "lm")["step"] == 4
    sample = zoo("sample", tmp_path / "runs" / "lm", "--max-new-tokens", "10", "--prompt", "A")
    assert sample.code == 0 and sample.out.startswith("A")
    fast = ["--set", "train.epochs=0", "--set", "train.max_steps=2", "--set", "eval.interval=2",
            "--set", "task.max_length=32", "--set", "eval.batch_size=64", "--set", "train.seq_len=32"]
    clf = zoo("finetune-classifier", "--base", tmp_path / "runs" / "lm", "--name", "clf", *fast)
    assert clf.code == 0, clf
    summary = read_summary(tmp_path / "runs" / "clf")
    assert summary["test_metrics"]["examples"] == 300 and "examples_per_s" in summary
    again = zoo("finetune-classifier", "--base", tmp_path / "runs" / "lm", "--name", "clf", *fast[:2],
                "--set", "train.max_steps=3", *fast[4:])
    assert again.code == 0 and "resuming" in again.out
    label = zoo("classify", tmp_path / "runs" / "clf", "Free entry to win a prize")
    assert label.code == 0 and label.out.split()[0] in ("ham", "spam")
    refused = zoo("sample", tmp_path / "runs" / "clf")  # a classifier generates nothing
    assert refused.code == 2
