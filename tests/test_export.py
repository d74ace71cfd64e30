"""`zoo export-hf` for GPT-2 runs: transformers loads the folder natively (no remote code) and agrees with zoo."""

from __future__ import annotations

import pytest
import torch

from .conftest import REPO

transformers = pytest.importorskip("transformers")

TOY = ["--set", "model.size=gpt2-micro", "--set", "model.context_length=32", "--set", "train.seq_len=32",
       "--set", "train.batch_size=8", "--set", "run.precision=fp32", "--set", "train.max_steps=30",
       "--set", "eval.interval=15", "--set", "eval.max_tokens=2000", "--set", "eval.sample_tokens=0",
       "--set", "train.lr=3e-3"]


@pytest.mark.parametrize("tokenizer,tie,qkv", [("char", False, False), ("gpt2", True, True), ("gpt2", False, False)])
def test_native_gpt2_export_matches_zoo(zoo, tmp_path, tokenizer, tie, qkv):
    recipe = REPO / "recipes" / "gpt2_shakespeare_char.toml"
    args = [*TOY, "--set", f"data.tokenizer={tokenizer}", "--set", f"model.tie_weights={str(tie).lower()}",
            "--set", f"model.qkv_bias={str(qkv).lower()}"]
    assert zoo("train", recipe, "--name", "g", *args).code == 0
    result = zoo("export-hf", tmp_path / "runs" / "g", tmp_path / "out")
    assert result.code == 0, result
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "README.md" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    from zoo.runs import load_run

    run = load_run(tmp_path / "runs" / "g", "best")
    idx = torch.tensor([run.tokenizer.encode("ROMEO: what say")[:16]])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, run.model.lm_head(run.model(idx)[0]), rtol=1e-5, atol=1e-5)
    # same text from pipeline as from zoo sample at temperature 0
    ours = zoo("sample", tmp_path / "runs" / "g", "--checkpoint", "best", "--prompt", "ROMEO:", "--temperature", "0",
               "--max-new-tokens", "12").out.removesuffix("\n")  # print's own newline
    pipe = transformers.pipeline("text-generation", model=str(out))
    text = pipe("ROMEO:", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert text == ours


def test_export_refuses_what_it_cannot_export(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), "--set", "train.max_steps=2").code == 0
    result = zoo("export-hf", tmp_path / "runs" / "tiny", tmp_path / "out")
    assert result.code == 2 and "supports GPT-2 language models and GPT-2 (BPE) classifiers so far" in result.err


def test_gpt2_classifier_exports_as_sequence_classification(zoo, tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    fast = ["--set", "train.epochs=0", "--set", "train.max_steps=30", "--set", "task.max_length=64",
            "--set", "eval.batch_size=64", "--set", "eval.interval=30", "--set", "train.lr=1e-3"]
    assert zoo("finetune-classifier", "--base", f"hf:{tmp_path / 'hf'}", "--name", "spam", *fast).code == 0
    result = zoo("export-hf", tmp_path / "runs" / "spam", tmp_path / "out")
    assert result.code == 0, result
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert type(hf).__name__ == "GPT2ForSequenceClassification" and hf.config.id2label == {0: "ham", 1: "spam"}
    messages = ["WINNER!! Claim your free prize now", "Are we still on for lunch?", "URGENT call 09061701461",
                "ok see you at 5", "Free entry in 2 a wkly comp to win FA Cup final tkts"]
    (tmp_path / "m.txt").write_text("\n".join(messages))
    ours = zoo("classify", tmp_path / "runs" / "spam", "--file", tmp_path / "m.txt").out.splitlines()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for message, line in zip(messages, ours, strict=True):
        with torch.no_grad():
            probs = hf(**tok(message, return_tensors="pt")).logits.softmax(-1)[0]
        label, prob = line.split("\t")[:2]
        assert hf.config.id2label[int(probs.argmax())] == label
        assert float(probs.max()) == pytest.approx(float(prob), abs=1e-4)
