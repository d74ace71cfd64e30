"""`zoo sample` and `zoo eval` on a trained run."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.generate import sample_next

from .conftest import read_summary


@pytest.fixture
def trained(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), "--set", "train.max_steps=30").code == 0
    return tmp_path / "runs" / "tiny"


def test_sample_continues_the_prompt_deterministically(zoo, trained):
    args = ("sample", trained, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--temperature", "0.8")
    first, second = zoo(*args), zoo(*args)
    assert first.code == 0, first
    text = first.out.rstrip("\n")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40
    assert first.out == second.out  # same seed, same text
    other = zoo(*args, "--seed", "2")
    assert other.out != first.out


def test_greedy_equals_top_k_1(zoo, trained):
    greedy = zoo("sample", trained, "--prompt", "The ", "--temperature", "0", "--max-new-tokens", "30")
    top1 = zoo("sample", trained, "--prompt", "The ", "--top-k", "1", "--max-new-tokens", "30", "--seed", "9")
    assert greedy.code == 0 and greedy.out == top1.out


def test_sample_from_best_and_step_checkpoints(zoo, trained):
    assert zoo("sample", trained, "--checkpoint", "best", "--max-new-tokens", "5").code == 0
    assert zoo("sample", trained, "--checkpoint", "step-00000020", "--max-new-tokens", "5").code == 0
    missing = zoo("sample", trained, "--checkpoint", "step-00000003")
    assert missing.code == 2 and "no step-00000003 checkpoint" in missing.err


def test_prompt_with_unknown_characters_is_a_clear_error(zoo, trained):
    result = zoo("sample", trained, "--prompt", "ROMEO€")
    assert result.code == 2 and "'€'" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("args,fragment", [
    (("--temperature", "-1"), "--temperature"),
    (("--top-p", "0"), "--top-p"),
    (("--top-k", "-2"), "--top-k"),
])
def test_bad_sampling_arguments(zoo, trained, args, fragment):
    result = zoo("sample", trained, *args)
    assert result.code == 2 and fragment in result.err


def test_sample_from_something_that_is_not_a_run(zoo, tmp_path):
    result = zoo("sample", tmp_path / "nowhere")
    assert result.code == 2 and "is not a zoo run" in result.err


def test_eval_reports_the_test_loss_of_the_summary(zoo, trained):
    result = zoo("eval", trained, "--split", "test")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["loss"] == pytest.approx(read_summary(trained)["test_loss"], rel=1e-9)
    assert report["split"] == "test" and report["model"].endswith("(step-00000030)")


def test_top_k_and_top_p_restrict_the_choices():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=gen)) for _ in range(200)}
    assert picks == {0, 1}
    picks = {int(sample_next(logits, 1.0, top_p=0.5, generator=gen)) for _ in range(200)}
    assert picks == {0}  # the most likely token alone holds more than half the mass
    picks = {int(sample_next(logits, 10.0, generator=gen)) for _ in range(400)}
    assert picks == {0, 1, 2, 3}
