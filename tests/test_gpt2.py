"""GPT-2: the model against transformers, the tokenizer against tiktoken, the data pipeline, and training,
sampling and evaluation through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.generate import generate
from zoo.models.base import count_parameters
from zoo.models.gpt2 import GPT2, GPT2Config, from_hf
from zoo.tokenizers import Gpt2Tokenizer

from .conftest import REPO, read_summary, scalars, zoo_subprocess

SHARED = REPO.parent / "shared" / "data"
FINEWEB = SHARED / "fineweb_sample"
needs_fineweb = pytest.mark.skipif(not FINEWEB.is_dir(), reason="../shared/data/fineweb_sample is not here")


def test_gpt2_small_has_the_books_parameter_counts():
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        assert count_parameters(GPT2(GPT2Config(), 50257)) == 163_009_536
        assert count_parameters(GPT2(GPT2Config(tie_weights=True), 50257)) == 124_412_160


# ------------------------------------------------------------------------------------ transformers
transformers = pytest.importorskip("transformers")


def _hf_model(tmp_path: Path, n_layer=2, n_head=2, n_embd=32, vocab=101, n_positions=64, seed=0) -> Path:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab,
                                     n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path / f"hf-{n_layer}-{n_head}-{n_embd}"
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("n_layer,n_head,n_embd,vocab", [(1, 1, 16, 50), (2, 2, 32, 101), (3, 4, 64, 300)])
def test_hf_weights_load_with_equal_logits_and_greedy_tokens(tmp_path, n_layer, n_head, n_embd, vocab):
    folder = _hf_model(tmp_path, n_layer, n_head, n_embd, vocab)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ours = from_hf(f"hf:{folder}").eval()
    idx = torch.randint(0, vocab, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        hidden, _ = ours(idx)
        got = ours.lm_head(hidden)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    prompt = idx[0, :5]
    hf_tokens = hf.generate(prompt[None], max_new_tokens=15, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    assert generate(ours, prompt.tolist(), 15, temperature=0) == hf_tokens


def test_loading_into_the_wrong_shape_names_the_tensors(tmp_path):
    folder = _hf_model(tmp_path)
    model = GPT2(GPT2Config(size="", n_layer=2, n_head=2, n_embd=48, context_length=64, qkv_bias=True), 101)
    from zoo.errors import CheckpointError
    from zoo.models.gpt2 import load_hf_weights

    with pytest.raises(CheckpointError, match=r"h.0.attn.c_attn.weight \(96, 32\) vs \(144, 48\).*more\)"):
        load_hf_weights(model, folder)


def test_kv_cache_generation_equals_full_recompute():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(size="gpt2-micro", context_length=16), 40).eval()
    prompt = [1, 2, 3, 4]
    cached = generate(model, prompt, 30, temperature=0)  # runs past the 16-token window (re-primes the cache)
    assert len(cached) == 30
    context, manual = list(prompt), []
    with torch.no_grad():
        for _ in range(12):  # until the window is full, the cache must change nothing
            hidden, _ = model(torch.tensor([context]))
            manual.append(int(model.lm_head(hidden[:, -1]).argmax()))
            context.append(manual[-1])
    assert cached[:12] == manual


def test_generation_runs_one_forward_per_token_it_needs():
    """The prompt's pass, then one per new token except the last, whose id is already chosen."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(size="gpt2-micro", context_length=64), 40).eval()
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    try:
        assert len(generate(model, [1, 2, 3], 5, temperature=0)) == 5
    finally:
        handle.remove()
    assert calls == [3, 1, 1, 1, 1]


@pytest.mark.parametrize("tied", [False, True])
def test_a_large_head_decodes_through_its_transposed_copy_and_refreshes_it(monkeypatch, tied):
    """Whichever layout the head decodes with, the tokens are those of nn.Linear's; an updated weight
    refreshes the copy; the head, its state_dict and the global generator are as they were."""
    import zoo.generate as gen

    torch.manual_seed(0)
    model = GPT2(GPT2Config(size="", n_layer=1, n_head=2, n_embd=256, context_length=64, tie_weights=tied),
                 4096).eval()  # a 4,096 x 256 head: just large enough to be decoded through a copy
    layout = (4096, 256, torch.float32, torch.get_num_threads())
    prompt = [5, 17, 300]

    def tokens(use_copy: bool) -> list[int]:
        monkeypatch.setitem(gen._LAYOUT, layout, use_copy)
        return generate(model, prompt, 20, temperature=0)

    plain = tokens(False)
    assert "_decode_copy" not in model.lm_head.__dict__
    rng = torch.get_rng_state()
    assert tokens(True) == plain and torch.equal(torch.get_rng_state(), rng)
    first = model.lm_head._decode_copy[1]
    assert torch.equal(first, model.lm_head.weight.t()) and "forward" not in model.lm_head.__dict__
    assert tokens(True) == plain and model.lm_head._decode_copy[1] is first  # kept while the weight is unchanged
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # an in-place update, as an optimizer step makes
    flipped = tokens(False)
    assert flipped != plain and tokens(True) == flipped  # a stale copy would still give `plain`
    assert set(model.state_dict()) == set(GPT2(model.config, 4096).state_dict())
    monkeypatch.delitem(gen._LAYOUT, layout)
    assert generate(model, prompt, 20, temperature=0) == flipped  # timed here: either layout, the same tokens
    with torch.inference_mode():  # weights made here keep no version counter: a fresh copy each call
        frozen = GPT2(model.config, 4096).eval()
        frozen.load_state_dict(model.state_dict())
        monkeypatch.setitem(gen._LAYOUT, layout, True)
        assert generate(frozen, prompt, 20, temperature=0) == flipped


def test_stop_token_ends_generation():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(size="gpt2-micro", context_length=32), 10).eval()
    with torch.no_grad():
        hidden, _ = model(torch.tensor([[1, 2]]))
        first = int(model.lm_head(hidden[:, -1]).argmax())
    assert generate(model, [1, 2], 10, temperature=0, stop_token=first) == []


# ------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_matches_tiktoken_gpt2(monkeypatch):
    cache = SHARED / "tiktoken_cache"
    if not cache.is_dir():
        pytest.skip("no tiktoken cache in ../shared/data")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache.resolve()))
    import tiktoken

    reference = tiktoken.get_encoding("gpt2")
    ours = Gpt2Tokenizer()
    text = (REPO / "zoo" / "data" / "embedded" / "tinyshakespeare.txt").read_text()[:20000]
    text += " naïve café 日本語 🤖 <tag>  \n\n\t  x"
    assert ours.encode(text) == reference.encode(text)
    assert ours.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert ours.decode(ours.encode(text)) == text
    assert ours.vocab_size == reference.n_vocab == 50257 and ours.eot == reference.eot_token == 50256


# ------------------------------------------------------------------------------------ data
@needs_fineweb
def test_prepare_data_writes_cached_token_files(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    recipe = REPO / "recipes" / "gpt2_fineweb.toml"
    args = ("--set", f"data.source={FINEWEB / 'validation.parquet'}", "--set", "data.val_fraction=0.1",
            "--set", "data.test_offset=0", "--set", "data.test_tokens=0")
    result = zoo("prepare-data", recipe, *args)
    assert result.code == 0, result
    info = json.loads(result.out)
    folder = Path(info["cache"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["documents"] == {"train": 180, "val": 20}  # every 10th of 200 documents
    assert manifest["tokens"]["train"] + manifest["tokens"]["val"] == 299_187 + 200  # + one <|endoftext|> each
    train = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    assert int((train == 50256).sum()) == 180 and train[-1] == 50256
    import pyarrow.parquet as pq

    first = pq.read_table(FINEWEB / "validation.parquet").column("text")[0].as_py()
    tok = Gpt2Tokenizer()
    assert train[: len(tok.encode(first))].tolist() == tok.encode(first)
    mtime = (folder / "train.bin").stat().st_mtime_ns
    again = json.loads(zoo("prepare-data", recipe, *args).out)
    assert again["cache"] == info["cache"] and (folder / "train.bin").stat().st_mtime_ns == mtime


def test_jsonl_source_and_missing_field(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"document number {i} " * 20}) for i in range(50)))
    recipe = REPO / "recipes" / "gpt2_fineweb.toml"
    result = zoo("prepare-data", recipe, "--set", f"data.source={path}", "--set", "data.test_offset=0",
                 "--set", "data.test_tokens=0")
    assert result.code == 2 and "has no 'text' field (fields: body)" in result.err
    result = zoo("prepare-data", recipe, "--set", f"data.source={path}", "--set", "data.text_field=body",
                 "--set", "data.test_offset=0", "--set", "data.test_tokens=0", "--set", "data.val_fraction=0.1")
    assert result.code == 0, result
    assert json.loads(result.out)["tokens"]["val"] > 0


def test_offline_hub_dataset_is_a_clear_error(tmp_path):
    # a process of its own: the Hub libraries read HF_HUB_OFFLINE when they are imported
    result = zoo_subprocess("prepare-data", REPO / "recipes" / "gpt2_fineweb.toml", cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "ZOO_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2 and "needs a network connection" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("zoo: error: ")


# ------------------------------------------------------------------------------------ training
TOY = ["--set", "model.size=gpt2-micro", "--set", "model.context_length=32", "--set", "train.seq_len=32",
       "--set", "train.batch_size=8", "--set", "train.micro_batch_size=4", "--set", "train.max_tokens=0",
       "--set", "train.max_steps=12", "--set", "eval.interval=6", "--set", "eval.max_tokens=2000",
       "--set", "eval.batch_size=8", "--set", "run.precision=fp32", "--set", "eval.sample_tokens=8"]


@needs_fineweb
def test_train_sample_and_eval_a_toy_gpt2_on_fineweb(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    recipe = REPO / "recipes" / "gpt2_fineweb.toml"
    data = ["--set", f"data.source={FINEWEB / 'validation.parquet'}", "--set", "data.val_fraction=0.1",
            "--set", "data.test_offset=5000", "--set", "data.test_tokens=4000"]
    result = zoo("train", recipe, "--name", "toy", *TOY, *data, "--set", "train.lr=3e-3")
    assert result.code == 0, result
    run = tmp_path / "runs" / "toy"
    summary = read_summary(run)
    assert summary["step"] == 12 and summary["tokens"] == 12 * 8 * 32 and summary["test_loss"] < 10.9
    losses = [v for _, v in scalars(run, "loss/train")]
    assert losses[-1] < losses[0]
    sample = zoo("sample", run, "--prompt", "The law", "--max-new-tokens", "10")
    assert sample.code == 0 and sample.out.startswith("The law")
    report = json.loads(zoo("eval", run, "--split", "test").out)
    assert report["loss"] == pytest.approx(summary["test_loss"], rel=1e-6) and report["tokens"] == (4000 - 1) // 32 * 32


def test_char_gpt_on_shakespeare_resumes_exactly(zoo, tmp_path):
    from .conftest import final_weights

    recipe = REPO / "recipes" / "gpt2_shakespeare_char.toml"
    toy = TOY[:-4] + ["--set", "eval.sample_tokens=8", "--set", "model.dropout=0.1"]
    assert zoo("train", recipe, "--name", "whole", *toy).code == 0
    assert zoo("train", recipe, "--name", "split", *toy, "--set", "train.max_steps=6").code == 0
    assert zoo("train", recipe, "--name", "split", *toy).code == 0
    a, b = final_weights(tmp_path / "runs" / "whole"), final_weights(tmp_path / "runs" / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_summary(tmp_path / "runs" / "whole")["vocab_size"] == 65


def test_init_from_hf_weights(zoo, tmp_path, text_file):
    folder = _hf_model(tmp_path, n_layer=2, n_head=2, n_embd=32, vocab=50257, n_positions=64)
    recipe = REPO / "recipes" / "gpt2_shakespeare_char.toml"
    args = TOY[:-4] + ["--set", "data.tokenizer=gpt2", "--set", f'model.init_from="hf:{folder}"',
                       "--set", f"data.source={text_file}",  # a short test split for a 50,257-row head
                       "--set", "train.max_steps=2", "--set", "train.lr=1e-9", "--set", "schedule.min_lr=0",
                       "--set", "model.dropout=0.0", "--set", "model.tie_weights=true"]
    result = zoo("train", recipe, "--name", "ft", *args)
    assert result.code == 0, result
    assert "starting from the weights of hf:" in result.out
    import tomllib

    saved = tomllib.loads((tmp_path / "runs" / "ft" / "recipe.toml").read_text())["model"]
    assert (saved["n_layer"], saved["n_embd"], saved["qkv_bias"], saved["size"]) == (2, 32, True, "")
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    from zoo.runs import load_run

    ours = load_run(tmp_path / "runs" / "ft").model
    idx = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(ours.lm_head(ours(idx)[0]), hf(idx).logits, rtol=1e-3, atol=1e-3)


def test_eval_with_weights_and_data(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub is never reached from tests
    folder = _hf_model(tmp_path, vocab=50257)
    recipe = REPO / "recipes" / "gpt2_shakespeare_char.toml"
    result = zoo("eval", "--weights", f"hf:{folder}", "--data", recipe, "--split", "val",
                 "--set", "data.tokenizer=gpt2", "--set", "eval.max_tokens=500", "--set", "train.seq_len=64")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["model"] == f"hf:{folder}" and 10 < report["loss"] < 11.5  # ~ln(50257) for random weights
    offline = zoo("sample", "--weights", "no-such-user/no-such-model")
    assert offline.code == 2 and "Hugging Face Hub" in offline.err
