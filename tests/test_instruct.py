"""Instruction fine-tuning (Raschka's ch. 7) through the CLI: the book's batches, response-only evaluation, greedy
answers to the test split, early stopping that keeps the best checkpoint, `zoo sample --instruction`, `zoo chat`,
and one-line errors for bad records and bases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from zoo.tasks.instruct.data import FORMATS, Example, collate, read_records, split_records
from zoo.tokenizers import Gpt2Tokenizer

from .conftest import REPO, one_process, read_summary, write_text_file

RECORDS = json.loads((REPO / "zoo" / "data" / "embedded" / "instruction-data.json").read_text(encoding="utf-8"))
BASE = ["--set", "model.size=", "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=32",
        "--set", "model.context_length=256", "--set", "train.seq_len=64", "--set", "train.batch_size=8",
        "--set", "run.precision=fp32", "--set", "train.max_steps=4", "--set", "eval.interval=4",
        "--set", "eval.max_tokens=500", "--set", "eval.sample_tokens=0", "--set", "data.tokenizer=bpe",
        "--set", "data.vocab_size=300"]
TUNE = ["--recipe", REPO / "recipes" / "instruct_laptop.toml", "--set", "train.epochs=0", "--set",
        "train.early_stop_patience=0", "--set", "eval.batch_size=8", "--set", "task.response_tokens=6",
        "--set", "train.max_steps=2"]  # later --sets win


def book_format(entry: dict) -> str:
    """The book's Alpaca prompt, written out as its text reads."""
    text = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{entry['instruction']}")
    return text + (f"\n\n### Input:\n{entry['input']}" if entry["input"] else "")


def book_batch(items: list[list[int]], lengths: list[int] | None, pad: int, limit: int):
    """The book's collate rule, stated independently: every example plus one pad, padded to the longest + 1,
    shifted; each target row's pad tokens after its first become -100; with masking, targets before the
    instruction's end too; then cut to the allowed length."""
    longest = max(len(i) + 1 for i in items)
    xs, ys = [], []
    for n, item in enumerate(items):
        row = item + [pad] * (longest - len(item) + 0)
        x, y = list(row[:-1]), list(row[1:])
        pads = [j for j, t in enumerate(y) if t == pad]
        for j in pads[1:]:
            y[j] = -100
        if lengths is not None:
            for j in range(lengths[n] - 1):
                y[j] = -100
        xs.append(x[:limit])
        ys.append(y[:limit])
    return torch.tensor(xs), torch.tensor(ys)


@pytest.mark.parametrize("mask", [False, True])
def test_batches_equal_the_books_collate(mask):
    tok = Gpt2Tokenizer()
    fmt = FORMATS["alpaca"]
    chosen = RECORDS[:5] + [r for r in RECORDS if r["input"]][:3]
    full = [book_format(r) + f"\n\n### Response:\n{r['output']}" for r in chosen]
    ids = [tok.encode(t) for t in full]
    for r, t in zip(chosen, full, strict=True):
        assert fmt.full(r["instruction"], r["input"], r["output"]) == t
    lengths = [len(tok.encode(book_format(r))) for r in chosen]
    examples = [Example(i, n) for i, n in zip(ids, lengths, strict=True)]
    for limit in (1024, 40):  # the book's allowed length, and one that cuts
        x, y = collate(examples, tok.eot, tok.eot, limit, mask_prompt=mask)
        bx, by = book_batch(ids, lengths if mask else None, tok.eot, limit)
        assert torch.equal(x, bx) and torch.equal(y, by)
        if limit == 1024:  # padding beyond each example's first end token is ignored (and the prompt if masked)
            padding = sum(y.shape[1] - len(i) for i in ids)
            assert int((y == -100).sum()) == padding + (sum(n - 1 for n in lengths) if mask else 0)


def test_the_books_split_and_the_phi3_format():
    parts = split_records(RECORDS, "book", (0.9, 0.05, 0.05))
    assert [len(parts[s]) for s in ("train", "val", "test")] == [935, 55, 110]
    assert parts["test"][0] is RECORDS[935] and parts["val"][0] is RECORDS[1045]
    phi = FORMATS["phi3"]
    assert phi.full("Name a colour.", "", "Red.") == "<|user|>\nName a colour.\n<|assistant|>:\nRed."
    assert phi.prompt("Translate.", "hola") == "<|user|>\nTranslate.\nhola"
    assert FORMATS["alpaca"].answer("\n\n### Response:\nBlue.\n") == "Blue."


def train_base(root: Path) -> None:
    """A tiny BPE GPT base run, root/runs/base, trained on the tiny text."""
    text = write_text_file(root)
    result = one_process("train", REPO / "recipes" / "gpt2_shakespeare_char.toml", "--name", "base", *BASE,
                         "--set", f"data.source={text}", "--set", f"data.cache_dir={root / 'cache'}", cwd=root)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny BPE GPT base run, and a 60-record instruction file (book split: 51 train, 6 test, 3 val)."""
    root = tmp_path_factory.mktemp("instruct")
    train_base(root)
    data = root / "records.json"
    data.write_text(json.dumps(RECORDS[:60]), encoding="utf-8")
    return root


def _tune(base: Path, name: str, *extra) -> object:
    return one_process("finetune-instruct", "--base", base / "runs" / "base", *TUNE, "--set",
                       f"data.source={base / 'records.json'}", "--name", name, *extra, cwd=base)


def test_finetune_instruct_answers_the_test_split_from_the_best_checkpoint(base):
    result = _tune(base, "ift", "--set", "train.max_steps=12", "--set", "eval.interval=4", "--set", "train.lr=3e-3")
    assert result.returncode == 0, result.stderr
    run = base / "runs" / "ift"
    summary = read_summary(run)
    assert summary["examples"] == 96 and summary["test_answers"] == 6
    assert 0 <= summary["format_following"] <= summary["answers_ended"] <= 1
    rows = json.loads((run / "test_responses.json").read_text())
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in RECORDS[51:57]]
    assert all(set(r) >= {"instruction", "input", "output", "model_response"} for r in rows)
    # the answers are the best checkpoint's greedy continuation, as `zoo sample --instruction` gives it
    for row in rows[:2]:
        args = ["sample", run, "--instruction", row["instruction"], "--max-new-tokens", "6"]
        if row["input"]:
            args += ["--input", row["input"]]
        out = one_process(*args, cwd=base)
        assert out.returncode == 0 and out.stdout.removesuffix("\n") == row["model_response"], out.stderr
    # response-only losses: val and test count the response tokens and the end token of each example
    from zoo.runs import load_run

    loaded = load_run(run, "best")
    tok = loaded.tokenizer
    fmt = FORMATS["alpaca"]
    nats, count = 0.0, 0
    with torch.no_grad():
        for r in RECORDS[51:57]:
            ids = tok.encode(fmt.full(r["instruction"], r["input"], r["output"])) + [tok.eot]
            prompt = len(tok.encode(fmt.prompt(r["instruction"], r["input"])))
            ids = ids[:257]
            logp = torch.log_softmax(loaded.model.logits(loaded.model(torch.tensor([ids[:-1]]))[0])[0].double(), -1)
            for j in range(prompt - 1, len(ids) - 1):
                nats -= float(logp[j, ids[j + 1]])
                count += 1
    assert summary["test_response_tokens"] == count
    assert summary["test_loss"] == pytest.approx(nats / count, rel=1e-5)
    # zoo eval gives the same loss and, with --predictions, the same answers; a base before tuning is evaluated
    # on an instruction recipe's data with its own tokenizer
    out = one_process("eval", run, "--checkpoint", "best", "--predictions", base / "answers.json", cwd=base)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert (base / "answers.json").read_text() == (run / "test_responses.json").read_text()
    assert "wrote 6 answers to the test split" in out.stderr and "follow the format" in out.stderr
    recipe = base / "ift_data.toml"
    recipe.write_text((REPO / "recipes" / "instruct_laptop.toml").read_text().replace(
        'source = "embedded:instructions"', f"source = {json.dumps(str(base / 'records.json'))}")
        .replace("response_tokens = 64", "response_tokens = 6"))
    before = one_process("eval", base / "runs" / "base", "--data", recipe, "--predictions", base / "b.json", cwd=base)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["tokens"] == count and len(json.loads((base / "b.json").read_text())) == 6
    # a second run with the same seed answers the same
    again = _tune(base, "ift2", "--set", "train.max_steps=12", "--set", "eval.interval=4", "--set", "train.lr=3e-3")
    assert again.returncode == 0
    assert (base / "runs" / "ift2" / "test_responses.json").read_text() == (run / "test_responses.json").read_text()
    # zoo chat answers each line, instruction<TAB>input
    import subprocess
    import sys

    chat = subprocess.run([sys.executable, "-m", "zoo", "chat", run, "--max-new-tokens", "6"], cwd=base, text=True,
                          input=f"{rows[0]['instruction']}\t{rows[0]['input']}\n\n{rows[1]['instruction']}\t"
                                f"{rows[1]['input']}\n", capture_output=True, timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.splitlines() == [rows[0]["model_response"], rows[1]["model_response"]]


def test_early_stopping_keeps_the_best_epochs_weights(base, monkeypatch):
    """A rate that makes validation worse after the first evaluation: the run stops after the patience and its
    test loss and answers are the first evaluation's weights'."""
    result = _tune(base, "es", "--set", "train.max_steps=0", "--set", "train.epochs=20", "--set", "train.lr=0.05",
                   "--set", "eval.interval=2",
                   "--set", "train.early_stop_patience=2", "--set", "schedule.kind=constant",
                   "--set", "schedule.warmup_frac=0")
    assert result.returncode == 0, result.stderr
    summary = read_summary(base / "runs" / "es")
    assert summary["status"] == "early_stopped" and summary["step"] < 6 * 20
    assert summary["test_checkpoint"] == f"step-{summary['best_step']:08d}" != f"step-{summary['step']:08d}"
    assert summary["final_test_loss"] != summary["test_loss"]


def test_two_processes_tune_as_one_does(base):
    from .test_ddp import ENV

    args = ["--set", "train.max_steps=4", "--set", "eval.interval=2", "--set", "train.micro_batch_size=4",
            "--set", "task.answers=false"]
    one = _tune(base, "one", *args)
    assert one.returncode == 0, one.stderr
    import os
    import subprocess
    import sys

    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                          "zoo", "finetune-instruct", "--base", str(base / "runs" / "base"), *map(str, TUNE), "--set",
                          f"data.source={base / 'records.json'}", "--name", "two", *args], cwd=base,
                         capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
    if "terminate called without an active exception" in two.stderr and two.returncode != 0:
        pytest.skip("gloo aborted a worker while a process group was set up or torn down")
    assert two.returncode == 0, two.stdout + two.stderr
    s1, s2 = read_summary(base / "runs" / "one"), read_summary(base / "runs" / "two")
    for key in ("test_loss", "best_val_loss", "final_train_loss"):
        assert s2[key] == pytest.approx(s1[key], rel=1e-5), key


@pytest.mark.parametrize("content,message", [
    ('[{"instruction": "a", "input": ""}]', "has no 'output' text"),
    ('[{"instruction": "a", "input": "", "output": "  "}]', "has an empty 'output'"),
    ("not json at all", "neither a JSON list nor JSONL"),
    ('{"instruction": "a", "output": "b"}\n[1, 2]', "record 2 is a list"),
    ("[]", "holds no records"),
])
def test_bad_records_are_one_line(base, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    result = one_process("finetune-instruct", "--base", base / "runs" / "base", *TUNE, "--set",
                         f"data.source={bad}", "--name", "bad", cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "runs" / "bad").exists()
    with pytest.raises(Exception, match=message.split("'")[0]):
        read_records(str(bad), ("instruction", "input", "output"))


def test_bases_that_cannot_serve_are_one_line(tmp_path):
    text = write_text_file(tmp_path)
    char = one_process("train", REPO / "recipes" / "char_rnn_shakespeare.toml", "--name", "char", "--set",
                       f"data.source={text}", "--set", "train.max_steps=2", "--set", "eval.interval=2", "--set",
                       "model.hidden_size=16", "--set", "eval.sample_tokens=0", cwd=tmp_path)
    assert char.returncode == 0, char.stderr
    refused = one_process("finetune-instruct", "--base", tmp_path / "runs" / "char", *TUNE, cwd=tmp_path)
    assert refused.returncode == 2 and "cannot encode" in refused.stderr and "'#'" in refused.stderr, refused.stderr
    missing = one_process("finetune-instruct", "--base", tmp_path / "nowhere", *TUNE, cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    wrong = one_process("finetune-instruct", "--base", tmp_path / "runs" / "char", "--recipe",
                        REPO / "recipes" / "gpt2_spam_classifier.toml", cwd=tmp_path)
    assert wrong.returncode == 2 and "use zoo finetune-classifier" in wrong.stderr
    assert not (tmp_path / "runs" / "instruct_laptop_char").exists()


def test_examples_longer_than_the_context_are_cut_with_a_count_or_refused(base):
    short = ["--set", "train.max_steps=2", "--set", "eval.interval=2", "--set", "task.answers=false"]
    cut = _tune(base, "cut", *short, "--set", "task.max_length=160")
    assert cut.returncode == 0 and "examples longer than 160 tokens are cut to it" in cut.stdout, cut.stdout
    refused = _tune(base, "refused", "--set", "task.too_long=refuse", "--set", "task.max_length=160")
    assert refused.returncode == 2 and "longer than 160 tokens" in refused.stderr
    nothing = _tune(base, "nothing", *short, "--set", "task.max_length=40")
    assert nothing.returncode == 2 and "no response token is left" in nothing.stderr, nothing.stderr
    assert math.isfinite(read_summary(base / "runs" / "cut")["test_loss"])
