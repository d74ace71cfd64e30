"""Classification: fine-tuning a language model into an SMS-spam classifier through the CLI."""

from __future__ import annotations

import json

import pytest

from zoo.recipe import read_toml, recipe_from_dict

from .conftest import REPO, read_summary, train_once

BASE_RNN = ["--set", "model.hidden_size=32", "--set", "train.max_steps=100"]
FAST = ["--set", "train.epochs=0", "--set", "task.max_length=160", "--set", "eval.batch_size=64",
        "--set", "eval.interval=100"]


@pytest.fixture(scope="module")
def rnn_base(tmp_path_factory):
    """A small char-RNN language model, trained once for the module (the tests only read it)."""
    return train_once(tmp_path_factory, "base", *BASE_RNN)


def test_char_rnn_classifier_beats_the_majority_and_classify_agrees_with_eval(zoo, rnn_base, tmp_path):
    result = zoo("finetune-classifier", "--base", rnn_base, *FAST, "--set", "train.max_steps=300",
                 "--set", "task.trainable=all", "--set", "train.lr=3e-3")
    assert result.code == 0, result
    run = tmp_path / "runs" / "spam_base"
    summary = read_summary(run)
    test = summary["test_metrics"]
    assert test["examples"] == 300 and test["accuracy"] > 0.75, test  # the book's split; the majority gets 0.50
    assert sum(map(sum, test["confusion"])) == 300 and 0 <= test["f1"] <= 1
    report = json.loads(zoo("eval", run, "--split", "test", "--checkpoint", "best").out)
    # zoo classify on the same test messages agrees with zoo eval
    from zoo.tasks.classify import split_texts

    recipe = recipe_from_dict(read_toml(run / "recipe.toml"))
    texts = split_texts(recipe)["test"]
    (tmp_path / "msgs.txt").write_text("\n".join(t.replace("\n", " ") for t, _, _ in texts))
    out = zoo("classify", run, "--file", tmp_path / "msgs.txt")
    assert out.code == 0, out
    predicted = [line.split("\t")[0] for line in out.out.splitlines()]
    accuracy = sum(p == recipe.task.labels[y] for p, (_, y, _) in zip(predicted, texts, strict=True)) / len(texts)
    assert accuracy == pytest.approx(report["accuracy"], abs=2 / len(texts))  # newlines in 2-3 texts differ
    one = zoo("classify", run, "WINNER!! Claim your free prize now, call 09061701461")
    label, prob = one.out.split()
    assert label in ("ham", "spam") and 0.5 <= float(prob) <= 1.0


transformers = pytest.importorskip("transformers")


def test_gpt2_from_hf_weights_trains_only_the_last_block_norm_and_head(zoo, tmp_path):
    import torch

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    result = zoo("finetune-classifier", "--base", f"hf:{tmp_path / 'hf'}", "--name", "spam_gpt2", *FAST,
                 "--set", "train.max_steps=20", "--set", "task.max_length=64")
    assert result.code == 0, result
    summary = read_summary(tmp_path / "runs" / "spam_gpt2")
    block = 4 * 32 + 3 * 32 * 32 + 3 * 32 + 32 * 32 + 32 + 4 * 32 * 32 + 4 * 32 + 4 * 32 * 32 + 32
    # last block + ln_f + the book's 2-class head with its bias
    assert summary["trainable_params"] == block + 2 * 32 + 2 * 32 + 2
    assert 0 <= summary["test_metrics"]["accuracy"] <= 1
    out = zoo("classify", tmp_path / "runs" / "spam_gpt2", "Are we still on for lunch?")
    assert out.code == 0 and out.out.split()[0] in ("ham", "spam")
    refused = zoo("sample", tmp_path / "runs" / "spam_gpt2")
    assert refused.code == 2 and "use `zoo classify`" in refused.err


@pytest.mark.parametrize("rows,fragment", [
    ("message,category\nhello,ham\n", "no column 'text', 'label' (columns: message, category)"),
    ("text,label\nhello,ham\nbuy now,spamm\n", "data.csv:3: label 'spamm' is not one of ham, spam"),
    ("text,label\nhello,ham\n,spam\n", "data.csv:3: the text is empty"),
    ("text,label\nhello,ham\nhi,ham\n", "has no examples of class 'spam'"),
    # a quote left open would swallow every later row into one field: an error naming the file and line
    ("text,label\nhello,ham\n\"buy now,spam\nhi,ham\nwin,spam\n", "data.csv:5: unexpected end of data"),
    ("text,label\n\"" + "x" * 200_000 + "\",spam\nhi,hamm\n", "data.csv:3: label 'hamm'"),  # long fields read
])
def test_bad_classification_data(zoo, rnn_base, tmp_path, rows, fragment):
    (tmp_path / "data.csv").write_text(rows)
    result = zoo("finetune-classifier", "--base", rnn_base, "--set", f"data.source={tmp_path / 'data.csv'}")
    assert result.code == 2 and fragment in result.err and "Traceback" not in result.err, result


def test_user_csv_with_its_own_columns_and_labels(zoo, rnn_base, tmp_path):
    rows = ["review,verdict"] + [f"great film number {i},good" for i in range(30)]
    rows += [f"awful boring film {i},bad" for i in range(30)]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    result = zoo("finetune-classifier", "--base", rnn_base, "--name", "reviews", *FAST,
                 "--set", f"data.source={tmp_path / 'reviews.csv'}", "--set", "task.text_column=review",
                 "--set", "task.label_column=verdict", "--set", 'task.labels=["bad", "good"]',
                 "--set", "train.max_steps=60", "--set", "task.trainable=all", "--set", "train.lr=3e-3")
    assert result.code == 0, result
    test = read_summary(tmp_path / "runs" / "reviews")["test_metrics"]
    assert test["labels"] == ["bad", "good"] and test["examples"] == 12 and test["accuracy"] >= 0.75


def test_bad_bases(zoo, rnn_base, tmp_path):
    missing = zoo("finetune-classifier", "--base", tmp_path / "runs" / "nothing")
    assert missing.code == 2 and "does not exist" in missing.err
    assert zoo("finetune-classifier", "--base", rnn_base, *FAST, "--set", "train.max_steps=2").code == 0
    not_lm = zoo("finetune-classifier", "--base", tmp_path / "runs" / "spam_base")
    assert not_lm.code == 2 and "is not a language model" in not_lm.err


def test_shipped_classifier_recipe_is_the_books():
    raw = read_toml(REPO / "recipes" / "gpt2_spam_classifier.toml")
    recipe = recipe_from_dict(raw)
    assert (recipe.train.batch_size, recipe.train.lr, recipe.train.epochs) == (8, 5e-5, 5)
    assert (recipe.optim.name, recipe.optim.weight_decay, recipe.task.trainable) == ("adamw", 0.1, "default")
