"""Published numbers compared on the same split and measure: the book's spam split and classifier, nanoGPT's
Shakespeare cut, Giles Thomas's FineWeb test slice, and test losses of the best checkpoint."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from zoo.data import split_tokens
from zoo.errors import RecipeError
from zoo.recipe import load_recipe, read_toml, recipe_from_dict
from zoo.tasks.classify import read_labelled, split_texts

from .conftest import REPO, SHAKESPEARE, read_summary, scalars

FIXTURE = REPO / "tests" / "data" / "book_spam_split.json"


def test_the_book_split_is_the_books_message_for_message():
    """tests/data/book_spam_split.json was written once by the book's own code (pandas read_csv,
    create_balanced_dataset, random_split; see its "source") on the same file."""
    book = json.loads(FIXTURE.read_text())
    recipe = load_recipe(REPO / "recipes" / "gpt2_spam_classifier.toml")
    assert recipe.task.split == "book"
    rows = read_labelled(recipe.data.source, recipe.task)
    assert len(rows) == book["rows"] == 5572 and sum(label == "ham" for _, label, _ in rows) == book["ham"] == 4825
    index = {where: i for i, (_, _, where) in enumerate(rows)}
    parts = split_texts(recipe)
    for split in ("train", "val", "test"):
        ours = [[index[where], label, hashlib.sha1(text.encode()).hexdigest()[:12]]
                for text, label, where in parts[split]]
        assert ours == book[split], split
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1045, 149, 300]
    # the message that pandas reads across three lines (a quote opens it) is one message in both
    merged = [text for text, _, _ in rows if "\n" in text]
    assert len(merged) == len(book["rows_with_newlines"]) == 1
    # zoo's own split stays available by name, and follows run.seed
    seeded = recipe_from_dict({**read_toml(REPO / "recipes" / "gpt2_spam_classifier.toml"),
                               "task": {"kind": "classify", "split": "seeded"}})
    assert [len(p) for p in split_texts(seeded).values()] == [1046, 149, 299]


@pytest.fixture
def base(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), "--name", "base", "--set", "model.hidden_size=32",
               "--set", "train.max_steps=60").code == 0
    return tmp_path / "runs" / "base"


FAST = ["--set", "train.epochs=0", "--set", "train.max_steps=40", "--set", "eval.interval=20",
        "--set", "eval.batch_size=64", "--set", "task.trainable=all", "--set", "train.lr=3e-3"]


def test_the_books_classifier_settings_train_classify_and_list_predictions(zoo, base, tmp_path):
    result = zoo("finetune-classifier", "--base", base, "--name", "book", *FAST)
    assert result.code == 0, result
    run = tmp_path / "runs" / "book"
    from zoo.runs import load_run

    loaded = load_run(run)
    model = loaded.model
    assert model.score.bias is not None and model.config.pooling == "last_position"
    train_texts = [t for t, _, _ in split_texts(loaded.recipe)["train"]]
    assert model.padded_length() == max(len(loaded.tokenizer.encode(t)) for t in train_texts)  # the longest
    # every message of the test split with its prediction; the wrong ones match the accuracy
    listed = zoo("eval", run, "--split", "test", "--predictions", tmp_path / "pred.csv")
    assert listed.code == 0, listed
    report = json.loads(listed.out)
    with open(tmp_path / "pred.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and set(rows[0]) == {"where", "text", "label", "predicted", "probability"}
    assert rows[0]["where"].startswith("sms_spam.tsv:") and rows[0]["text"]
    wrong = sum(r["label"] != r["predicted"] for r in rows)
    assert wrong == round((1 - report["accuracy"]) * 300) and f"({wrong} wrong)" in listed.err
    # zoo classify pads as training did, so it gives the listed probability for the same message
    one = next(r for r in rows if "\n" not in r["text"])
    said = zoo("classify", run, one["text"])
    label, prob = said.out.split()
    assert label == one["predicted"] and float(prob) == pytest.approx(float(one["probability"]), abs=0.006)
    refused = zoo("eval", base, "--predictions", tmp_path / "x.csv")
    assert refused.code == 2 and "classifier" in refused.err
    # transformers would read another position: the export says so instead of changing the predictions
    exported = zoo("export-hf", run, tmp_path / "out")
    assert exported.code == 2 and "last padded position" in exported.err


def test_test_loss_comes_from_the_best_checkpoint(zoo, make_recipe, tmp_path):
    # a large model on 4,000 characters overfits: val loss rises after its best (step 150 of 300)
    recipe = make_recipe()
    result = zoo("train", recipe, "--set", "model.hidden_size=128", "--set", "train.max_steps=300",
                 "--set", "eval.interval=25", "--set", "model.dropout=0.0", "--set", "data.splits=[0.2, 0.4, 0.4]",
                 "--set", "eval.sample_tokens=0", "--set", "train.grad_clip=0")
    assert result.code == 0, result
    run = tmp_path / "runs" / "tiny"
    summary = read_summary(run)
    assert summary["best_step"] < 300 and summary["final_val_loss"] > summary["best_val_loss"], summary
    assert summary["test_checkpoint"] == f"step-{summary['best_step']:08d}"
    assert summary["test_loss"] != summary["final_test_loss"]
    assert scalars(run, "loss/test")[-1][1] == pytest.approx(summary["test_loss"])
    assert scalars(run, "loss/test_final")[-1][1] == pytest.approx(summary["final_test_loss"])
    best = json.loads(zoo("eval", run, "--split", "test").out)  # every command reads the best by default
    last = json.loads(zoo("eval", run, "--split", "test", "--checkpoint", "latest").out)
    assert best["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert last["loss"] == pytest.approx(summary["final_test_loss"], rel=1e-6)
    table = zoo("compare", run, run, "--format", "json")
    assert json.loads(table.out)[0]["test_loss"] == pytest.approx(summary["test_loss"])


def test_nanogpts_cut_and_its_recipe():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    ids = np.arange(len(text))
    n = len(text)
    splits = split_tokens(ids, (0.9, 0.1, 0.0), cut="floor")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (int(n * 0.9), n - int(n * 0.9), 0)
    assert len(splits.val) == 111_540  # nanoGPT's prepare.py: "val has 111,540 tokens"
    rounded = split_tokens(ids, (0.9, 0.05, 0.05))
    assert len(rounded.train) == int(round(n * 0.9)) == int(n * 0.9) + 1  # zoo's own cut, one character on
    recipe = load_recipe(REPO / "recipes" / "nanogpt_shakespeare_char.toml")
    assert (recipe.data.splits, recipe.data.cut, recipe.eval.max_tokens, recipe.eval.test) == (
        (0.9, 0.1, 0.0), "floor", 0, False)
    with pytest.raises(RecipeError, match="eval.test = false"):
        load_recipe(REPO / "recipes" / "nanogpt_shakespeare_char.toml", ["eval.test=true"])


def test_the_fineweb_test_slice_is_giles_thomas_s_window_count():
    # his test_loss.py: 3,200 batches of 6 x 1,024 tokens from token 50,000,000 of his validation split, with
    # one more token for the targets; zoo evaluates non-overlapping windows of the slice the same way
    for name in ("gpt2_fineweb.toml", "gpt2_fineweb_ddp.toml"):
        recipe = load_recipe(REPO / "recipes" / name)
        assert recipe.data.test_offset == 50_000_000
        assert (recipe.data.test_tokens - 1) // recipe.train.seq_len == 3200 * 6
    from zoo.data import TokenSplits
    from zoo.tasks.lm import LMTask, LMTaskConfig

    ids = np.arange(3200 * 6 * 16 + 1) % 50
    task = LMTask(LMTaskConfig(), TokenSplits(ids, ids[:100], ids), stateful=False, batch_size=6, seq_len=16, seed=0,
                  eval_batch_size=6, eval_max_tokens=0)
    model = torch.nn.Module()
    model.max_seq_len = 16
    windows = sum(x.shape[0] for x, _, _ in task._eval_batches(task.eval_tokens("test"), model))
    assert windows == 3200 * 6
