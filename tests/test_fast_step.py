"""The training step as it is built for GPU speed, checked on CPU: a padded vocabulary that changes no result,
model + head + loss as one compiled function, fused/foreach optimizers chosen by device, and no host reads of
device values between log intervals."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zoo import trainer as trainer_module
from zoo.errors import RecipeError
from zoo.generate import generate
from zoo.models import gpt2
from zoo.models.base import count_parameters, flops_per_token
from zoo.models.rnn import CharRNN, CharRNNConfig
from zoo.optim import implementation
from zoo.recipe import OptimConfig, load_recipe
from zoo.registry import build_optimizer
from zoo.session import resolve_compile

from .conftest import SHAKESPEARE, final_weights, scalars

REPO = Path(__file__).resolve().parent.parent
CHAR_GPT = REPO / "recipes" / "gpt2_shakespeare_char.toml"
ZOO_DIR = str(REPO / "zoo")


def toy_gpt(source: Path) -> list[str]:
    return ["--set", f"data.source={source}", "--set", "model.size=gpt2-micro", "--set", "model.context_length=32",
            "--set", "train.seq_len=32", "--set", "train.batch_size=8", "--set", "train.micro_batch_size=4",
            "--set", "run.precision=fp32", "--set", "eval.max_tokens=1000", "--set", "eval.interval=10",
            "--set", "eval.sample_tokens=0", "--set", "model.dropout=0.0", "--set", "log.interval=5"]


@pytest.mark.parametrize("tied", [False, True])
def test_a_padded_gpt2_computes_what_the_unpadded_one_does(tied):
    config = gpt2.GPT2Config(size="gpt2-micro", context_length=32, tie_weights=tied, qkv_bias=True)
    torch.manual_seed(0)
    plain = gpt2.build(config, 65)
    torch.manual_seed(0)
    padded = gpt2.build(dataclasses.replace(config, pad_vocab=64), 65)
    assert padded.wte.weight.shape[0] == padded.lm_head.weight.shape[0] == 128 and plain.wte.weight.shape[0] == 65
    assert padded.wte.weight[65:].abs().sum() == 0  # zero rows that nothing looks up
    # the same seed gives the same real weights, and the state_dict shows only the real rows
    a, b = plain.state_dict(), padded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert count_parameters(plain) == count_parameters(padded) and flops_per_token(plain) == flops_per_token(padded)
    x, y = torch.randint(0, 65, (3, 32)), torch.randint(0, 65, (3, 32))

    def loss(model):
        logits = model.logits(model(x)[0])
        assert logits.shape[-1] == 65
        return F.cross_entropy(logits.reshape(-1, 65), y.reshape(-1))

    assert abs(loss(plain).item() - loss(padded).item()) < 1e-6
    for temperature in (0.0, 1.0):  # sampling never picks a padded id, and picks what the plain model picks
        out = [generate(m, [1, 2, 3], 40, temperature=temperature, generator=torch.Generator().manual_seed(5))
               for m in (plain, padded)]
        assert out[0] == out[1] and max(out[1]) < 65
    # weights round-trip through the real-rows state_dict into a padded model
    again = gpt2.build(dataclasses.replace(config, pad_vocab=64), 65)
    again.load_state_dict(plain.state_dict())
    assert again.wte.weight.shape[0] == 128 and abs(loss(again).item() - loss(plain).item()) < 1e-6


def test_openai_layout_weights_load_into_a_padded_model_and_export_unchanged(zoo, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=100)
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    base = gpt2.hf_config(tmp_path / "hf", gpt2.GPT2Config(tie_weights=True))
    ours = gpt2.build(dataclasses.replace(base, pad_vocab=64), 100).eval()
    gpt2.load_hf_weights(ours, tmp_path / "hf")
    assert ours.wte.weight.shape[0] == 128
    x = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(ours(x)[0]), hf(x).logits, atol=1e-5, rtol=1e-5)

    # a run trained with padding exports the tokenizer's rows only, and transformers computes zoo's logits
    source = tmp_path / "tiny.txt"
    source.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    assert zoo("train", CHAR_GPT, "--name", "p", *toy_gpt(source), "--set", "train.max_steps=2",
               "--set", "model.pad_vocab=64").code == 0
    assert zoo("export-hf", "runs/p", "out").code == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    from zoo.runs import load_run

    run = load_run(tmp_path / "runs" / "p", "latest")
    vocab = run.tokenizer.vocab_size  # 58 characters in this text
    assert exported.config.vocab_size == vocab and exported.lm_head.weight.shape[0] == vocab
    assert run.model.wte.weight.shape[0] == 64  # rebuilt padded from the recipe, real rows from the checkpoint
    x = torch.randint(0, vocab, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, run.model.logits(run.model(x)[0]), atol=1e-5, rtol=1e-5)


def test_compiled_padded_fused_run_equals_the_eager_unpadded_one(zoo, tmp_path, text_file):
    common = [*toy_gpt(text_file), "--set", "train.max_steps=20", "--set", "optim.weight_decay=0.1"]
    fast = zoo("train", CHAR_GPT, "--name", "fast", *common, "--set", "run.compile=true",
               "--set", "model.pad_vocab=64", "--set", "optim.impl=fused")
    assert fast.code == 0, fast
    assert "torch.compile on" in fast.out and "adamw fused" in fast.out and "padded rows 64" in fast.out
    assert "compiled the training step in" in fast.out
    plain = zoo("train", CHAR_GPT, "--name", "plain", *common, "--set", "run.compile=false",
                "--set", "model.pad_vocab=1", "--set", "optim.impl=loop")
    assert plain.code == 0, plain
    assert "torch.compile off" in plain.out and "adamw loop" in plain.out and "padded" not in plain.out
    a = scalars(tmp_path / "runs" / "fast", "loss/train")
    b = scalars(tmp_path / "runs" / "plain", "loss/train")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 21))
    assert max(abs(u - v) for (_, u), (_, v) in zip(a, b, strict=True)) < 1e-3
    wa, wb = final_weights(tmp_path / "runs" / "fast"), final_weights(tmp_path / "runs" / "plain")
    assert wa["wte.weight"].shape == wb["wte.weight"].shape == (58, 64)  # the text's 58 characters
    assert not any("_orig_mod" in k for k in wa)  # plain checkpoints: the compiled run resumes uncompiled
    more = zoo("train", CHAR_GPT, "--name", "fast", *common[:-4], "--set", "train.max_steps=22",
               "--set", "optim.weight_decay=0.1", "--set", "run.compile=false", "--set", "model.pad_vocab=64",
               "--set", "optim.impl=fused")
    assert more.code == 0 and "resuming" in more.out and "torch.compile off" in more.out, more


def test_padded_runs_resume_exactly_and_across_a_change_of_padding(zoo, tmp_path, text_file):
    common = [*toy_gpt(text_file), "--set", "model.pad_vocab=64"]
    assert zoo("train", CHAR_GPT, "--name", "whole", *common, "--set", "train.max_steps=8").code == 0
    assert zoo("train", CHAR_GPT, "--name", "parts", *common, "--set", "train.max_steps=4").code == 0
    assert zoo("train", CHAR_GPT, "--name", "parts", *common, "--set", "train.max_steps=8").code == 0
    whole, parts = final_weights(tmp_path / "runs" / "whole"), final_weights(tmp_path / "runs" / "parts")
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    # the same run resumed without padding (as on a CPU after a GPU): the optimizer state fits, training goes on
    other = [a if a != "model.pad_vocab=64" else "model.pad_vocab=1" for a in common]
    assert zoo("train", CHAR_GPT, "--name", "parts", *other, "--set", "train.max_steps=12").code == 0
    assert zoo("train", CHAR_GPT, "--name", "whole", *common, "--set", "train.max_steps=12").code == 0
    whole, parts = final_weights(tmp_path / "runs" / "whole"), final_weights(tmp_path / "runs" / "parts")
    assert all(torch.allclose(whole[k], parts[k], atol=1e-5) for k in whole)


def test_the_trainer_reads_device_values_only_when_it_logs(zoo, make_recipe, tmp_path, monkeypatch):
    """A host read (`.item()`, `.tolist()`, `float(t)`, `bool(t)`...) made by zoo's code waits for the GPU; the
    training step makes none, and each log interval makes exactly one."""
    reads: list[tuple[str, set[str]]] = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(ZOO_DIR):
                stack, frame = set(), caller
                while frame is not None:
                    stack.add(frame.f_code.co_name)
                    frame = frame.f_back
                reads.append((name, stack))
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    flushes = []
    original_flush = trainer_module.Trainer.flush
    monkeypatch.setattr(trainer_module.Trainer, "flush", lambda self: flushes.append(1) or original_flush(self))
    recipe = make_recipe(extra="")
    result = zoo("train", recipe, "--set", "eval.interval=0", "--set", "log.interval=5", "--set",
                 "train.max_steps=20", "--set", "eval.sample_tokens=0")
    assert result.code == 0, result
    in_step = [name for name, stack in reads if "train_step" in stack]
    assert in_step == [], f"host reads inside the training step: {in_step}"
    in_flush = [name for name, stack in reads if "flush" in stack]
    assert len(flushes) == 4 and in_flush == ["tolist"] * 4  # steps 5, 10, 15, 20: one transfer each
    assert [s for s, _ in scalars(tmp_path / "runs" / "tiny", "loss/train")] == list(range(1, 21))


def test_compile_and_optimizer_kernels_are_chosen_by_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    attention = gpt2.build(gpt2.GPT2Config(size="gpt2-micro", context_length=16), 65)
    recurrent = CharRNN(CharRNNConfig(hidden_size=8), 65)
    assert resolve_compile("auto", cuda, attention) is True
    assert resolve_compile("auto", cpu, attention) is False
    assert resolve_compile("auto", cuda, recurrent) is False
    assert resolve_compile(True, cpu, recurrent) is True
    assert implementation("adamw", "auto", cuda) == "fused"
    assert implementation("rmsprop", "auto", cuda) == "foreach"  # torch has no fused RMSprop
    assert implementation("adamw", "auto", cpu) == "fused"  # torch's CPU kernel: one pass over each tensor
    assert implementation("rmsprop", "auto", cpu) == "foreach"
    opt, how = build_optimizer(recurrent, OptimConfig(name="adamw"), 1e-3, cpu)
    assert opt.defaults["fused"] is True and how == "fused"
    opt, how = build_optimizer(recurrent, OptimConfig(name="adamw", impl="foreach"), 1e-3, cpu)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"] and how == "foreach"
    with pytest.raises(RecipeError, match="no fused rmsprop"):
        build_optimizer(recurrent, OptimConfig(name="rmsprop", impl="fused"), 1e-3, cpu)
    # cuda padding by default, none elsewhere
    config = gpt2.GPT2Config(size="gpt2-micro", context_length=16)
    assert gpt2.build(config, 50257, torch.device("meta")).wte.weight.shape[0] == 50257
    with torch.device("meta"):
        assert gpt2.build(config, 50257, cuda).wte.weight.shape[0] == 50304


def test_compile_setting_in_recipes(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[model]\narch = "char_rnn"\n[train]\nmax_steps = 1\n', encoding="utf-8")
    assert load_recipe(path).run.compile == "auto"
    assert load_recipe(path, ["run.compile=true"]).run.compile is True
    with pytest.raises(RecipeError, match="run.compile"):
        load_recipe(path, ["run.compile=1"])
    with pytest.raises(RecipeError, match="optim.impl"):
        load_recipe(path, ["optim.impl=fast"])


FINEWEB = REPO.parent / "shared" / "data" / "fineweb_sample"


@pytest.mark.skipif(not FINEWEB.is_dir(), reason="../shared/data/fineweb_sample is not here")
def test_the_gpu_benchmark_runs_its_cpu_smoke_test(tmp_path, monkeypatch, capsys):
    """benchmarks/gpu_train.py drives the real Trainer and the reference step; without a GPU, a tiny model (run
    here as `python benchmarks/gpu_train.py ...` would run it, in this process)."""
    import json
    import runpy

    out = tmp_path / "bench.json"
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "fineweb"  # the sample's 200 validation documents: enough for a smoke test, quick to tokenise
    data.mkdir()
    (data / "docs.parquet").symlink_to(FINEWEB / "validation.parquet")
    script = REPO / "benchmarks" / "gpu_train.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--data", str(data), "--models", "163M", "--steps", "3",
                                      "--log-interval", "3", "--warmup", "1", "--modern", "--race", "2",
                                      "--eval-tokens", "257", "--json", str(out)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repository first on it
    runpy.run_path(str(script), run_name="__main__")
    stdout = capsys.readouterr().out
    report = json.loads(out.read_text())
    result = report["results"][0]
    assert report["modern"]["tokens_per_s"] > 0 and report["modern"]["vs_gpt2_recipe"] > 0
    assert {"gpt2", "modern", "target"} <= report["race"].keys() and report["race"]["gpt2"]["reached_step"] <= 2
    assert "modern recipe (" in stdout and "race over 2 steps" in stdout
    assert result["zoo_tokens_per_s"] > 0 and result["ref_tokens_per_s"] > 0 and result["ratio"] > 0
    # the trainer's own TensorBoard rate agrees with the outside measurement of the same steps
    assert abs(result["zoo_tb_tokens_per_s"] / result["zoo_tokens_per_s"] - 1) < 0.5
    assert "zoo/ref" in stdout
