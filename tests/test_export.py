"""`zoo export-hf`: transformers loads each exported folder (native GPT-2, or zoo's remote code for char-RNNs)
and agrees with zoo: logits, greedy text through `pipeline`, classifier labels; `Trainer` trains it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from .conftest import REPO

transformers = pytest.importorskip("transformers")

TOY = ["--set", "model.size=gpt2-micro", "--set", "model.context_length=32", "--set", "train.seq_len=32",
       "--set", "train.batch_size=8", "--set", "run.precision=fp32", "--set", "train.max_steps=12",
       "--set", "eval.interval=6", "--set", "eval.max_tokens=2000", "--set", "eval.sample_tokens=0",
       "--set", "train.lr=3e-3"]


@pytest.mark.parametrize("tokenizer,tie,qkv", [("char", False, False), ("gpt2", True, True), ("gpt2", False, False)])
def test_native_gpt2_export_matches_zoo(zoo, tmp_path, text_file, tokenizer, tie, qkv):
    recipe = REPO / "recipes" / "gpt2_shakespeare_char.toml"
    args = [*TOY, "--set", f"data.tokenizer={tokenizer}", "--set", f"model.tie_weights={str(tie).lower()}",
            "--set", f"model.qkv_bias={str(qkv).lower()}", "--set", f"data.source={text_file}"]  # a short text:
    # GPT-2's 50,257-row head makes evaluating the whole play's test split the slowest part otherwise
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
    if tokenizer == "char":
        assert_trainer_lowers_the_loss(hf, transformers.AutoTokenizer.from_pretrained(out), tmp_path)


# zoo's classifier defaults (the shipped recipe is the book's: last padded position, head bias), which
# transformers' sequence classifiers compute the same way
EXPORTABLE = ["--set", "task.pooling=last_token", "--set", "task.head_bias=false", "--set", "task.padding=batch"]

def assert_trainer_lowers_the_loss(model, tokenizer, tmp_path, steps: int = 12):
    """transformers' Trainer fits a few steps on a fixed batch of Shakespeare; the loss must fall."""
    text = (REPO / "zoo" / "data" / "embedded" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:4000]
    ids = tokenizer(text)["input_ids"]
    rows = [ids[i : i + 32] for i in range(0, 8 * 32, 32)]
    data = [{"input_ids": torch.tensor(r), "labels": torch.tensor(r)} for r in rows]
    model.train()
    with torch.no_grad():
        before = sum(model(input_ids=d["input_ids"][None], labels=d["labels"][None]).loss for d in data) / len(data)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=8,
                                          max_steps=steps, learning_rate=1e-2, report_to=[], save_strategy="no",
                                          logging_steps=1, use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == steps and losses[-1] < losses[0] and losses[-1] < float(before), (float(before), losses)


RNN_CASES = [  # cell, impl, input, tied
    ("lstm", "torch", "embedding", False),
    ("lstm", "scratch", "onehot", False),
    ("gru", "scratch", "embedding", True),
]


@pytest.mark.parametrize("cell,impl,inputs,tied", RNN_CASES)
def test_char_rnn_exports_with_its_own_code(zoo, make_recipe, tmp_path, cell, impl, inputs, tied):
    recipe = make_recipe(cell=cell)
    args = ["--set", f"model.impl={impl}", "--set", f"model.input={inputs}",
            "--set", f"model.tie_weights={str(tied).lower()}", "--set", "train.max_steps=30"]
    assert zoo("train", recipe, "--name", "r", *args).code == 0
    out = tmp_path / "out"
    result = zoo("export-hf", tmp_path / "runs" / "r", out)
    assert result.code == 0, result
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "configuration_zoo_rnn.py", "modeling_zoo_rnn.py", "model.safetensors",
            "tokenizer.json", "generation_config.json", "README.md"} <= names, names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_zoo_rnn.ZooRNNConfig",
                                  "AutoModelForCausalLM": "modeling_zoo_rnn.ZooRNNForCausalLM"}
    assert (config["cell"], config["impl"], config["input"], config["use_cache"]) == (cell, impl, inputs, False)
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and f"{cell.upper()}" in card and "| best validation loss |" in card

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "ZooRNNForCausalLM" and hf.can_generate()
    if tied:
        assert hf.lm_head.weight.data_ptr() == hf.embedding.weight.data_ptr()
    from zoo.runs import load_run

    run = load_run(tmp_path / "runs" / "r", "best")
    idx = torch.tensor([run.tokenizer.encode("ROMEO: what say you")])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, run.model.lm_head(run.model(idx)[0]), rtol=1e-5, atol=1e-5)
    ours = zoo("sample", tmp_path / "runs" / "r", "--checkpoint", "best", "--prompt", "ROMEO:", "--temperature", "0",
               "--max-new-tokens", "15").out.removesuffix("\n")
    pipe = transformers.pipeline("text-generation", model=str(out), trust_remote_code=True)
    assert pipe("ROMEO:", max_new_tokens=15, do_sample=False)[0]["generated_text"] == ours
    assert_trainer_lowers_the_loss(hf, transformers.AutoTokenizer.from_pretrained(out), tmp_path)


def test_exported_folder_needs_no_zoo(zoo, make_recipe, tmp_path):
    """A fresh Python in which `import zoo` fails loads the export and generates."""
    assert zoo("train", make_recipe(), "--name", "r", "--set", "model.impl=scratch", "--set",
               "train.max_steps=5").code == 0
    assert zoo("export-hf", tmp_path / "runs" / "r", tmp_path / "out").code == 0
    script = (
        "import sys; sys.modules['zoo'] = None\n"  # any import of zoo now raises ImportError
        "from transformers import pipeline\n"
        f"pipe = pipeline('text-generation', model={str(tmp_path / 'out')!r}, trust_remote_code=True)\n"
        "print(repr(pipe('ROMEO:', max_new_tokens=5, do_sample=False)[0]['generated_text']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1",
                               "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("'ROMEO:") and len(eval(done.stdout.strip())) == 11


def test_export_refuses_a_folder_with_other_files(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), "--set", "train.max_steps=2").code == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = zoo("export-hf", tmp_path / "runs" / "tiny", tmp_path / "out")
    assert result.code == 2 and "holds other files" in result.err and "Traceback" not in result.err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_push_to_hub_offline_is_a_clear_error_and_keeps_the_export(zoo, make_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert zoo("train", make_recipe(), "--set", "train.max_steps=2").code == 0
    result = zoo("export-hf", tmp_path / "runs" / "tiny", tmp_path / "out", "--push-to-hub", "someone/tiny")
    assert result.code == 2, result
    assert "could not push" in result.err and "someone/tiny" in result.err and "export is complete" in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert (tmp_path / "out" / "model.safetensors").exists() and "exported" in result.out


def test_gpt2_classifier_exports_as_sequence_classification(zoo, tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    fast = ["--set", "train.epochs=0", "--set", "train.max_steps=30", "--set", "task.max_length=64",
            "--set", "eval.batch_size=64", "--set", "eval.interval=30", "--set", "train.lr=1e-3", *EXPORTABLE]
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


MESSAGES = ["WINNER!! Claim your free prize now", "Are we still on for lunch?", "URGENT call 09061701461",
            "ok see you at 5", "Free entry in 2 a wkly comp to win FA Cup final tkts"]
CLASSIFY_FAST = ["--set", "train.epochs=0", "--set", "train.max_steps=30", "--set", "task.max_length=64",
                 "--set", "eval.batch_size=64", "--set", "eval.interval=30", "--set", "train.lr=3e-3",
                 "--set", "task.trainable=all", *EXPORTABLE]


def assert_classifier_agrees_with_zoo(zoo, run, out, tmp_path, remote: bool):
    """Single messages through `pipeline` and a padded batch through the model give zoo classify's labels and
    probabilities."""
    (tmp_path / "m.txt").write_text("\n".join(MESSAGES))
    ours = [line.split("\t")[:2] for line in zoo("classify", run, "--file", tmp_path / "m.txt").out.splitlines()]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=remote).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=remote)
    pipe = transformers.pipeline("text-classification", model=hf, tokenizer=tok)
    for message, (label, prob), got in zip(MESSAGES, ours, pipe(MESSAGES), strict=True):
        assert got["label"] == label and got["score"] == pytest.approx(float(prob), abs=1e-4), (message, got)
    batch = tok(MESSAGES, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] > min(len(m) for m in MESSAGES)  # padding really happened
    with torch.no_grad():
        probs = hf(**batch).logits.softmax(-1)
    for (label, prob), row in zip(ours, probs, strict=True):
        assert hf.config.id2label[int(row.argmax())] == label and float(row.max()) == pytest.approx(float(prob),
                                                                                                     abs=1e-4)


def test_char_rnn_classifier_exports_with_its_own_code(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), "--name", "base", "--set", "train.max_steps=30").code == 0
    result = zoo("finetune-classifier", "--base", tmp_path / "runs" / "base", "--name", "spam", *CLASSIFY_FAST)
    assert result.code == 0, result
    out = tmp_path / "out"
    assert zoo("export-hf", tmp_path / "runs" / "spam", out).code == 0
    config = json.loads((out / "config.json").read_text())
    auto = config["auto_map"]["AutoModelForSequenceClassification"]
    assert auto == "modeling_zoo_rnn.ZooRNNForSequenceClassification"
    assert config["id2label"] == {"0": "ham", "1": "spam"} and "lm_head" not in str(config)
    assert_classifier_agrees_with_zoo(zoo, tmp_path / "runs" / "spam", out, tmp_path, remote=True)


def test_char_gpt2_classifier_exports_natively(zoo, tmp_path):
    recipe = REPO / "recipes" / "gpt2_shakespeare_char.toml"
    base = [*TOY, "--set", "train.max_steps=5", "--set", "model.context_length=64"]
    assert zoo("train", recipe, "--name", "base", *base).code == 0
    result = zoo("finetune-classifier", "--base", tmp_path / "runs" / "base", "--name", "spam", *CLASSIFY_FAST,
                 "--set", "train.seq_len=64")
    assert result.code == 0, result
    out = tmp_path / "out"
    assert zoo("export-hf", tmp_path / "runs" / "spam", out).code == 0
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["pad_token_id"] == config["vocab_size"] - 1  # its own id, after the characters
    assert_classifier_agrees_with_zoo(zoo, tmp_path / "runs" / "spam", out, tmp_path, remote=False)


def test_export_of_a_run_still_training_and_file_modes(zoo, make_recipe, tmp_path):
    """A run with checkpoints but no summary.json yet (still training, or stopped in its final evaluation)
    exports; the card says what it knows, and every file is as readable as the user's others."""
    import os

    assert zoo("train", make_recipe(), "--set", "train.max_steps=4").code == 0
    (tmp_path / "runs" / "tiny" / "summary.json").unlink()
    result = zoo("export-hf", tmp_path / "runs" / "tiny", tmp_path / "out")
    assert result.code == 0, result
    card = (tmp_path / "out" / "README.md").read_text()
    assert "still training, or stopped before its end" in card and "description =" not in card
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left
