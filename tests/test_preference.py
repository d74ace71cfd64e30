"""Preference tuning (DPO) through `zoo finetune-preference`: the loss, reward margin and accuracy against an
independent computation with the run's weights and the base's, the reference equal to the policy at the start
(loss ln 2), answers written like an instruction run's, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zoo.tasks.instruct.data import FORMATS

from .conftest import REPO, one_process, read_summary
from .test_instruct import train_base

RECORDS = json.loads((REPO / "zoo" / "data" / "embedded" / "instruction-data-with-preference.json")
                     .read_text(encoding="utf-8"))
TUNE = ["--set", "train.epochs=0", "--set", "train.max_steps=6", "--set", "eval.interval=3", "--set",
        "task.response_tokens=6", "--set", "train.lr=1e-3", "--set", "eval.batch_size=8"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    train_base(root)
    (root / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS[:40]), encoding="utf-8")
    result = one_process("finetune-preference", "--base", root / "runs" / "base", *TUNE, "--set",
                         f"data.source={root / 'prefs.jsonl'}", "--name", "dpo", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def _logprob(model, tok, prompt: str, full: str) -> float:
    """Mean log-probability of a response's tokens (and the end token), one unpadded sequence at a time."""
    ids = tok.encode(full) + [tok.eot]
    start = len(tok.encode(prompt))
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model(torch.tensor([ids[:-1]]))[0])[0].double(), -1)
    picked = [float(logp[j, ids[j + 1]]) for j in range(start - 1, len(ids) - 1)]
    return sum(picked) / len(picked)


def test_dpo_metrics_equal_an_independent_computation(tuned):
    from zoo.runs import load_run

    summary = read_summary(tuned / "runs" / "dpo")
    policy = load_run(tuned / "runs" / "dpo", "best")
    reference = load_run(tuned / "runs" / "base", "best")
    fmt, tok, beta = FORMATS["alpaca"], policy.tokenizer, 0.1
    losses, margins, correct = [], [], 0
    for r in RECORDS[34:38]:  # the book's split of 40 records: 34 train, 4 test, 2 val
        prompt = fmt.prompt(r["instruction"], r["input"])
        rewards = []
        for key in ("chosen", "rejected"):
            full = fmt.full(r["instruction"], r["input"], r[key])
            rewards.append(beta * (_logprob(policy.model, tok, prompt, full) - _logprob(reference.model, tok,
                                                                                        prompt, full)))
        margin = rewards[0] - rewards[1]
        losses.append(-math.log(1 / (1 + math.exp(-margin))))
        margins.append(margin)
        correct += margin > 0
    assert summary["test_loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert summary["test_reward_margin"] == pytest.approx(sum(margins) / 4, rel=1e-4, abs=1e-7)
    assert summary["test_reward_accuracy"] == correct / 4
    assert {"best_val_reward_accuracy", "final_train_reward_accuracy", "test_answers"} <= summary.keys()
    rows = json.loads((tuned / "runs" / "dpo" / "test_responses.json").read_text())
    assert len(rows) == 4 and all("model_response" in r and "chosen" in r for r in rows)


def test_the_policy_starts_as_the_reference(tuned):
    """Before any step the policy is the base, so every margin is 0 and the loss ln 2."""
    from zoo.registry import build_task
    from zoo.runs import load_run

    run = load_run(tuned / "runs" / "dpo", "best")
    base = load_run(tuned / "runs" / "base", "best")
    from zoo import registry

    _, data, _ = registry.load_data(run.recipe, run.tokenizer)
    task = build_task(run.recipe, run.tokenizer, data, base.model)
    m = task.metrics(task.evaluate(base.model, "val", torch.device("cpu")))
    assert m["loss"] == pytest.approx(math.log(2), rel=1e-9) and m["reward_accuracy"] == 0
    assert m["reward_margin"] == pytest.approx(0, abs=1e-12)


def test_bad_preference_input_is_one_line(tuned, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{k: v for k, v in RECORDS[0].items() if k != "rejected"}]), encoding="utf-8")
    result = one_process("finetune-preference", "--base", tuned / "runs" / "base", *TUNE, "--set",
                         f"data.source={bad}", cwd=tmp_path)
    assert result.returncode == 2 and "has no 'rejected' text" in result.stderr, result.stderr
    masked = one_process("finetune-preference", "--base", tuned / "runs" / "base", *TUNE, "--set",
                         "task.mask_prompt=true", cwd=tmp_path)
    assert masked.returncode == 2 and "task.mask_prompt" in masked.stderr
    beta = one_process("finetune-preference", "--base", tuned / "runs" / "base", *TUNE, "--set", "task.beta=0",
                       cwd=tmp_path)
    assert beta.returncode == 2 and "task.beta" in beta.stderr


def test_an_instruction_tuned_run_exports_with_its_prompt_format(tuned, tmp_path):
    """The pipeline's greedy answer to a wrapped instruction is `zoo sample --instruction`'s."""
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    result = one_process("export-hf", tuned / "runs" / "dpo", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    card = (out / "README.md").read_text()
    assert "## Prompt format" in card and "### Instruction:" in card and "### Response:" in card
    fmt = FORMATS["alpaca"]
    prompt = fmt.generation_prompt("Name a primary colour.", "")
    pipe = transformers.pipeline("text-generation", model=str(out))
    text = pipe(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"][len(prompt):]
    ours = one_process("sample", tuned / "runs" / "dpo", "--instruction", "Name a primary colour.",
                       "--max-new-tokens", "8", cwd=tmp_path)
    assert ours.returncode == 0 and ours.stdout.removesuffix("\n") == fmt.answer(text), ours.stderr
