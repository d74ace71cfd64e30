"""Data and tokenizer: deterministic vocabulary and splits, char-rnn batching, clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from zoo.data import char_data, read_text
from zoo.recipe import TrainConfig
from zoo.tasks.base import MicroBatchPlan
from zoo.tasks.lm import LMTask, LMTaskConfig
from zoo.tokenizers import CharTokenizer

from .conftest import SHAKESPEARE


def plan(task, micro: int, world: int = 1, rank: int = 0) -> MicroBatchPlan:
    """The micro-batch plan the trainer hands a task."""
    return MicroBatchPlan.of(task.batch_size, micro, world, rank)

def test_embedded_tiny_shakespeare_is_the_real_file():
    text = read_text("embedded:tinyshakespeare")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    assert len(set(text)) == 65


def test_vocabulary_is_sorted_and_identical_across_processes():
    code = ("from zoo.data import char_data; t, _ = char_data('embedded:tinyshakespeare', (0.9, 0.05, 0.05));"
            "print(t.fingerprint, ''.join(t.chars).encode().hex())")
    outs = {subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed, "PATH": ""},
                           capture_output=True, text=True, check=True).stdout for seed in ("0", "1")}
    assert len(outs) == 1
    chars = bytes.fromhex(outs.pop().split()[1]).decode()
    assert list(chars) == sorted(chars)


def test_splits_are_90_5_5_by_position():
    tok, splits = char_data("embedded:tinyshakespeare", (0.9, 0.05, 0.05))
    n = 1_115_394
    assert len(splits.train) + len(splits.val) + len(splits.test) == n
    assert abs(len(splits.val) - 0.05 * n) <= 1 and abs(len(splits.test) - 0.05 * n) <= 1
    text = SHAKESPEARE.read_text()
    assert tok.decode(splits.train[:14].tolist()) == "First Citizen:"
    assert tok.decode(splits.test[-20:].tolist()) == text[-20:]


def _task(ids, batch_size=4, seq_len=5, stateful=True):
    from zoo.data import TokenSplits

    splits = TokenSplits(train=ids, val=ids[:50], test=ids[:50])
    return LMTask(LMTaskConfig(), splits, stateful=stateful, batch_size=batch_size, seq_len=seq_len, seed=0,
                  eval_batch_size=2, eval_max_tokens=0)


def test_stream_batches_continue_every_row_and_reset_each_epoch():
    ids = torch.arange(203)
    task = _task(ids)
    spe = task.steps_per_epoch()
    assert spe == (202 // 4) // 5
    first = task.micro_batches(0, plan(task, 4, 1, 0))
    second = task.micro_batches(1, plan(task, 4, 1, 0))
    assert len(first) == 1 and first[0].reset and not second[0].reset
    # each row of batch 1 continues the same row of batch 0, and targets are inputs shifted by one
    assert torch.equal(second[0].x[:, 0], first[0].x[:, -1] + 1)
    assert torch.equal(first[0].y, first[0].x + 1)
    # rows are contiguous streams spaced a row length apart
    assert torch.equal(first[0].x[:, 0], torch.arange(4) * (202 // 4))
    assert task.micro_batches(spe, plan(task, 4, 1, 0))[0].reset  # a new epoch starts from zero state
    assert torch.equal(task.micro_batches(spe, plan(task, 4, 1, 0))[0].x, first[0].x)


def test_micro_batches_split_the_global_batch_by_rows():
    task = _task(torch.arange(203))
    whole = task.micro_batches(3, plan(task, 4, 1, 0))[0]
    parts = task.micro_batches(3, plan(task, 2, 1, 0))
    assert [b.slot for b in parts] == [0, 1]
    assert torch.equal(torch.cat([b.x for b in parts]), whole.x)
    # two ranks together read exactly the rows of one process
    ranks = task.micro_batches(3, plan(task, 2, 2, 0)) + task.micro_batches(3, plan(task, 2, 2, 1))
    assert torch.equal(torch.cat([b.x for b in sorted(ranks, key=lambda b: b.slot)]), whole.x)


def test_random_windows_are_a_function_of_the_step():
    task = _task(torch.arange(1000), stateful=False)
    a, b = task.micro_batches(5, plan(task, 4, 1, 0))[0], task.micro_batches(5, plan(task, 4, 1, 0))[0]
    assert torch.equal(a.x, b.x) and torch.equal(a.y, a.x + 1)
    assert not torch.equal(a.x, task.micro_batches(6, plan(task, 4, 1, 0))[0].x)


def test_unknown_prompt_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(Exception, match="'z'"):
        tok.encode("abz")
    assert CharTokenizer(["a", "b", "?"], fallback="?").encode("az") == [0, 2]


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b"hello \xff\xfe world " * 100, "not UTF-8 (invalid byte at offset 6)"),
    (b"too short", "fewer than one batch needs"),
])
def test_bad_data_is_a_clear_error(zoo, make_recipe, tmp_path, text_file, content, fragment):
    if content is None:
        text_file.unlink()
    else:
        text_file.write_bytes(content)
    result = zoo("train", make_recipe())
    assert result.code == 2, result
    assert fragment in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_invalid_utf8_can_be_replaced(zoo, make_recipe, text_file):
    text_file.write_bytes(text_file.read_bytes() + b"\xff")
    result = zoo("train", make_recipe(), "--set", 'data.encoding_errors="replace"', "--set", "train.max_steps=2")
    assert result.code == 0, result


def test_train_config_rejects_micro_batch_that_does_not_divide():
    with pytest.raises(Exception, match="must divide"):
        TrainConfig(batch_size=10, micro_batch_size=3, max_steps=1).validate()
