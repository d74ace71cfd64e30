"""The tokenizer axis: the registry's kinds (char, gpt2, a BPE trained on the train split, hf:PATH), token files
of either width, bits per byte against independent arithmetic, and each kind used through the CLI (train,
resume, sample, eval, compare, sweep, export)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data import TokenSplits, load_splits
from zoo.recipe import DataConfig
from zoo.tasks.lm import LMTask, LMTaskConfig
from zoo.tokenizers import CharTokenizer, Gpt2Tokenizer, load_tokenizer, tokenizer_from_dict
from zoo.tokenizers.bpe import train as train_bpe

from .conftest import REPO, SHAKESPEARE, read_summary, scalars

TEXT = SHAKESPEARE.read_text(encoding="utf-8")[:20_000]
GPT = ["--set", "model.size=", "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=32",
       "--set", "model.context_length=32", "--set", "train.seq_len=32", "--set", "train.batch_size=8",
       "--set", "run.precision=fp32", "--set", "train.max_steps=8", "--set", "eval.interval=4",
       "--set", "eval.max_tokens=1500", "--set", "eval.sample_tokens=0", "--set", "train.lr=3e-3"]
RECIPE = REPO / "recipes" / "gpt2_shakespeare_char.toml"


@pytest.fixture(scope="module")
def bpe():
    """A 512-id BPE trained on the tiny text."""
    return train_bpe(iter([TEXT]), 512)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Uniform(torch.nn.Module):
    """A language model that gives every id the same logit (a uniform guess)."""

    stateful, max_seq_len = False, 0

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab_size = vocab

    def forward(self, x, state=None):
        return torch.zeros(*x.shape, 1), state

    def logits(self, hidden):
        return hidden.expand(*hidden.shape[:-1], self.vocab_size)


def _task(ids: np.ndarray, tokenizer, seq_len: int = 16) -> LMTask:
    splits = TokenSplits(train=ids, val=ids, test=ids)
    return LMTask(LMTaskConfig(sampling="windows"), splits, stateful=False, batch_size=2, seq_len=seq_len, seed=0,
                  eval_batch_size=4, eval_max_tokens=0, vocab_size=tokenizer.vocab_size,
                  token_bytes=tokenizer.token_bytes())


def _independent_bpb(model, ids: np.ndarray, seq_len: int, token_bytes_of) -> float:
    """bpb as a reader would compute it: the windows' targets scored one by one in float64, their bytes
    counted from the tokenizer's own decoding of each id."""
    n = (len(ids) - 1) // seq_len
    nats, n_bytes = 0.0, 0
    with torch.no_grad():
        for w in range(n):
            x = torch.as_tensor(ids[w * seq_len:(w + 1) * seq_len].astype(np.int64))[None]
            y = ids[w * seq_len + 1:(w + 1) * seq_len + 1]
            logp = torch.log_softmax(model.logits(model(x)[0]).double(), -1)[0]
            for t, target in enumerate(y):
                size = token_bytes_of(int(target))
                if size:
                    nats -= float(logp[t, int(target)])
                    n_bytes += size
    return nats / math.log(2) / n_bytes


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_bits_per_byte_equals_an_independent_computation(kind, bpe):
    text = TEXT[:3000] + " café naïve 日本語 😀"
    if kind == "char":
        tok = CharTokenizer.from_text(text)
        size_of = lambda i: len(tok.chars[i].encode("utf-8"))  # noqa: E731
    else:
        tok = Gpt2Tokenizer() if kind == "gpt2" else bpe
        size_of = lambda i: len(tok.enc.decode_single_token_bytes(i)) if i != tok.eot else 0  # noqa: E731
    ids = np.asarray(tok.encode(text + "<|endoftext|>" if tok.eot is not None else text), dtype=np.int64)
    torch.manual_seed(0)
    model = torch.nn.Module()
    emb = torch.nn.Embedding(tok.vocab_size, 8)
    head = torch.nn.Linear(8, tok.vocab_size)
    model.forward = lambda x, state=None: (emb(x), state)
    model.logits = head
    model.max_seq_len = 0
    task = _task(ids, tok)
    got = task.metrics(task.evaluate(model, "val", torch.device("cpu")))
    assert got["bpb"] == pytest.approx(_independent_bpb(model, ids, 16, size_of), rel=1e-6)
    if kind == "char":  # ASCII and non-ASCII characters alike: bits per byte is not bits per character here
        ascii_only = CharTokenizer.from_text(TEXT[:3000])
        plain = _task(np.asarray(ascii_only.encode(TEXT[:3000])), ascii_only)
        m = plain.metrics(plain.evaluate(Uniform(ascii_only.vocab_size), "val", torch.device("cpu")))
        assert m["bpb"] == pytest.approx(m["loss"] / math.log(2), rel=1e-12)


def test_one_text_through_two_tokenizers_by_a_uniform_model(bpe):
    """A uniform guess costs ln V nats per token, so bpb = tokens x log2 V / bytes, whatever the tokenizer."""
    text = TEXT[:4000]
    seq = 16
    for tok in (CharTokenizer.from_text(text), bpe):
        ids = np.asarray(tok.encode_ordinary(text), dtype=np.int64)
        task = _task(ids, tok, seq)
        m = task.metrics(task.evaluate(Uniform(tok.vocab_size), "val", torch.device("cpu")))
        n = (len(ids) - 1) // seq * seq
        targets = ids[1:n + 1]
        expected = n * math.log2(tok.vocab_size) / len(tok.decode(targets.tolist()).encode("utf-8"))
        assert m["bpb"] == pytest.approx(expected, rel=1e-6)  # the loss is float32's ln V
        assert m["loss"] == pytest.approx(math.log(tok.vocab_size))


def test_a_trained_bpe_round_trips_any_text_and_saves_whole(bpe):
    assert bpe.vocab_size == 512 and bpe.eot == 511 and bpe.decode([bpe.eot]) == "<|endoftext|>"
    for text in ["", "ROMEO: wherefore art thou", "日本語のテキスト, 中文, 한국어", "emoji 😀👍🏽 and ZWJ 👨‍👩‍👧",
                 "tabs\tand\r\nnewlines\n\n  spaces", "digits 1234567 and 3.14159", "\x00\x01 control"]:
        assert bpe.decode(bpe.encode(text)) == text
        assert sum(bpe.token_bytes()[bpe.encode(text)]) == len(text.encode("utf-8"))
    # a lone surrogate is not UTF-8: tiktoken encodes it as U+FFFD, as it does for its own encodings
    assert bpe.decode(bpe.encode("a\ud800b")) == "a\ufffdb"
    assert bpe.encode("x<|endoftext|>y")[1] == bpe.eot and bpe.eot not in bpe.encode_ordinary("x<|endoftext|>y")
    again = tokenizer_from_dict(json.loads(json.dumps(bpe.to_dict())))
    assert again.fingerprint == bpe.fingerprint and again.encode(TEXT[:500]) == bpe.encode(TEXT[:500])
    assert len(bpe.encode(TEXT)) < len(TEXT) / 2  # it compresses the text it was trained on


def test_the_tokenizer_learns_from_the_train_split_only(tmp_path, cache):
    """Words that occur only in the val and test parts of a text never become tokens."""
    train = TEXT[:18_000]
    held_out = " zqxvb" * 400
    path = tmp_path / "t.txt"
    path.write_text(train + held_out, encoding="utf-8")
    fractions = (len(train) / len(train + held_out), 0.5 * len(held_out) / len(train + held_out))
    data = DataConfig(source=str(path), tokenizer="bpe", vocab_size=2000,
                      splits=(fractions[0], fractions[1], 1 - fractions[0] - fractions[1]))
    tok, splits, _ = load_splits(data)
    assert len(tok.encode(" zqxvb")) >= 3 and len(tok.encode(" the")) == 1
    assert tok.decode(splits.val.tolist()) + tok.decode(splits.test.tolist()) == held_out
    # a corpus: documents go to validation by index, and the tokenizer never sees them
    docs = tmp_path / "docs.jsonl"
    rows = [{"text": (" zqxvb" * 50 if i % 4 == 3 else TEXT[i * 900:(i + 1) * 900])} for i in range(20)]
    docs.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    tok, splits, info = load_splits(DataConfig(source=str(docs), tokenizer="bpe", vocab_size=1000, val_fraction=0.25))
    assert len(tok.encode(" zqxvb")) >= 3
    assert info["manifest"]["tokenizer"] == tok.fingerprint and info["manifest"]["dtype"] == "uint16"
    assert len(list(cache.glob("tokenizers/bpe-*.json"))) == 2  # trained once each, then read back
    again, _, _ = load_splits(DataConfig(source=str(docs), tokenizer="bpe", vocab_size=1000, val_fraction=0.25))
    assert again.fingerprint == tok.fingerprint


def _big_hf_folder(folder: Path, size: int = 70_000) -> Path:
    """A transformers tokenizer folder with more ids than uint16 holds: a word-level vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size - 1)} | {"<|endoftext|>": size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>"])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder


def test_a_vocabulary_above_65536_gets_uint32_token_files(tmp_path, cache):
    folder = _big_hf_folder(tmp_path / "big")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": " ".join(f"w{(i * 7919 + j * 104729) % 69999}" for j in range(40))})
                              for i in range(30)), encoding="utf-8")
    tok, splits, info = load_splits(DataConfig(source=str(docs), tokenizer=f"hf:{folder}", val_fraction=0.2))
    assert tok.vocab_size == 70_000 and tok.eot == 69_999 and info["manifest"]["dtype"] == "uint32"
    assert splits.train.dtype == np.uint32 and int(splits.train.max()) > 65_535
    assert tok.encode(" ".join(f"w{i}" for i in (0, 65_536, 69_998))) == [0, 65_536, 69_998]
    assert list(splits.train[:40]) == tok.encode(json.loads(docs.read_text().splitlines()[0])["text"])
    assert splits.train[40] == tok.eot
    assert tok.token_bytes()[69_999] == 0 and tok.token_bytes()[65_536] == len("w65536")


def test_a_bpe_run_resumes_samples_evaluates_and_compares_with_its_own_tokenizer(zoo, tmp_path, text_file, cache):
    args = [*GPT, "--set", f"data.source={text_file}", "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=400"]
    first = zoo("train", RECIPE, "--name", "b", *args, "--set", "train.max_steps=4")
    assert first.code == 0, first
    run = tmp_path / "runs" / "b"
    saved = load_tokenizer(run / "tokenizer.json")
    assert saved.vocab_size == 400 and read_summary(run)["vocab_size"] == 400
    # the cache may go: the run has its own tokenizer, and resuming, sampling and evaluation read that
    for p in cache.glob("tokenizers/*"):
        p.rename(p.with_suffix(".moved"))
    resumed = zoo("train", RECIPE, "--name", "b", *args)
    assert resumed.code == 0 and "resuming" in resumed.out, resumed
    assert not list(cache.glob("tokenizers/*.json"))  # nothing was trained again
    summary = read_summary(run)
    assert {"best_val_bpb", "final_val_bpb", "final_train_bpb", "test_bpb", "final_test_bpb"} <= summary.keys()
    assert [s for s, _ in scalars(run, "bpb/val")] == [4, 8] and [s for s, _ in scalars(run, "bpb/train")] == [4, 8]
    assert scalars(run, "bpb/test")[-1] == (8, pytest.approx(summary["test_bpb"]))
    ev = json.loads(zoo("eval", run, "--split", "test").out)
    assert ev["bpb"] == pytest.approx(summary["test_bpb"], rel=1e-6)
    assert ev["bpb"] == pytest.approx(ev["loss"] / math.log(2) / ev["bytes_per_token"], rel=1e-9)
    from zoo.generate import generate
    from zoo.runs import load_run

    loaded = load_run(run, "best")
    out = zoo("sample", run, "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "10").out
    prompt = saved.encode("ROMEO:")
    ids = generate(loaded.model, prompt, 10, temperature=0.0, device=torch.device("cpu"))
    assert out.removesuffix("\n") == saved.decode(prompt + ids)
    # a char run on the same text: compare judges them in bits per byte, and says so
    char = zoo("train", RECIPE, "--name", "c", *GPT, "--set", f"data.source={text_file}")
    assert char.code == 0, char
    table = zoo("compare", tmp_path / "runs" / "c", run, "--format", "json")
    rows = json.loads(table.out)
    assert "judged by bits per byte" in table.err and rows[1]["test_bpb"] == pytest.approx(summary["test_bpb"])
    char_bpb = read_summary(tmp_path / "runs" / "c")["test_bpb"]
    assert rows[1]["delta_test"] == pytest.approx(summary["test_bpb"] - char_bpb)
    forced = zoo("compare", tmp_path / "runs" / "c", run, "--metric", "loss")
    assert forced.code == 0 and "do not compare" in forced.err
    # a changed tokenizer on resume is refused, naming the field
    changed = zoo("train", RECIPE, "--name", "b", *args, "--set", "data.vocab_size=300", "--set", "train.max_steps=12")
    assert changed.code == 2 and "data.vocab_size" in changed.err, changed


def test_vocabulary_size_is_an_intervention_a_sweep_compares_in_bpb(zoo, tmp_path, text_file, cache):
    args = [*GPT, "--set", f"data.source={text_file}", "--set", "data.tokenizer=bpe", "--set", "train.max_steps=4",
            "--set", "eval.interval=2"]
    result = zoo("sweep", RECIPE, *args, "--vary", "data.vocab_size=300,600", "--format", "json", "--metric", "bpb",
                 "--target-loss", "9.0", "--plot", tmp_path / "bpb.png", "--x", "bytes")
    assert result.code == 0, result
    rows = json.loads(result.out[result.out.index("\n[\n") + 1:])  # after the progress lines
    assert [r["data.vocab_size"] for r in rows] == [300, 600] and all(r["test_bpb"] > 0 for r in rows)
    assert [r["target_reached"] for r in rows] == ["1/1", "1/1"] and rows[0]["target_bpb"] == 9.0
    assert (tmp_path / "bpb.png").stat().st_size > 10_000
    assert len(list(cache.glob("tokenizers/bpe-*.json"))) == 2


@pytest.mark.parametrize("value,message", [
    ("data.vocab_size=200", "at least 257"),
    ("data.vocab_size=5000000000", "at most 4,294,967,296"),
    ("data.tokenizer=wordpiece", "known: char, gpt2, bpe, hf:PATH"),
    ("data.tokenizer=hf:", "without a folder"),
])
def test_bad_tokenizer_settings_are_one_line(zoo, tmp_path, text_file, value, message):
    result = zoo("train", RECIPE, *GPT, "--set", f"data.source={text_file}", "--set", "data.tokenizer=bpe",
                 "--set", value)
    assert result.code == 2 and result.err.count("\n") == 1 and message in result.err, result
    assert not (tmp_path / "runs").exists()


def test_tokenizer_fields_on_another_kind_and_missing_folders_are_one_line(zoo, tmp_path, text_file, cache):
    char = zoo("train", RECIPE, *GPT, "--set", f"data.source={text_file}", "--set", "data.vocab_size=1024")
    assert char.code == 2 and "data.vocab_size is for data.tokenizer = 'bpe', not 'char'" in char.err, char
    (tmp_path / "empty").mkdir()
    hf = zoo("train", RECIPE, *GPT, "--set", f"data.source={text_file}", "--set", f"data.tokenizer=hf:{tmp_path}/empty")
    assert hf.code == 2 and "has no tokenizer.json" in hf.err and hf.err.count("\n") == 1, hf
    assert not (tmp_path / "runs" / RECIPE.stem).exists()


def test_a_token_cache_made_by_another_tokenizer_is_refused_and_kept(tmp_path, cache, bpe):
    from zoo.data import tokens

    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": TEXT[i * 500:(i + 1) * 500]}) for i in range(10)), encoding="utf-8")
    folder = tokens.prepare(str(docs), Gpt2Tokenizer(), val_fraction=0.2, progress=False, workers=1)
    with pytest.raises(Exception, match="was made by the gpt2 tokenizer, not this run's bpe512"):
        tokens.load(folder, bpe)
    assert (folder / "train.bin").is_file()


def test_train_tokenizer_prints_the_compression_table(zoo, tmp_path, text_file, cache):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\nsource = "{text_file}"\ntokenizer = "bpe"\nvocab_size = 600\n'
                      '[model]\narch = "gpt2"\n[train]\nmax_steps = 1\n', encoding="utf-8")
    result = zoo("train-tokenizer", recipe, "--json", tmp_path / "t.json")
    assert result.code == 0, result
    assert "trained in" in result.err and "bpe (600) bytes/token" in result.out and "gpt2 (50,257)" in result.out
    numbers = json.loads((tmp_path / "t.json").read_text())
    assert set(numbers["bytes_per_token"]) == {"val split", "tinyshakespeare"}
    assert 1.5 < numbers["bytes_per_token"]["val split"]["bpe (600)"]["bytes_per_token"] < 4
    assert "cached" in zoo("train-tokenizer", recipe).err


def test_a_bpe_run_exports_with_its_tokenizer(zoo, tmp_path, text_file, cache):
    transformers = pytest.importorskip("transformers")
    args = [*GPT, "--set", f"data.source={text_file}", "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=700"]
    assert zoo("train", RECIPE, "--name", "b", *args).code == 0
    result = zoo("export-hf", tmp_path / "runs" / "b", tmp_path / "out")
    assert result.code == 0, result
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    ours = load_tokenizer(tmp_path / "runs" / "b" / "tokenizer.json")
    sample = SHAKESPEARE.read_text(encoding="utf-8")[-6000:] + " 2024 numbers 12345, ümlauts, 日本語 and 😀 ok"
    assert hf_tok(sample)["input_ids"] == ours.encode(sample)
    assert hf_tok.eos_token_id == ours.eot and hf_tok.decode(ours.encode(sample)) == sample
    zoo_text = zoo("sample", tmp_path / "runs" / "b", "--prompt", "ROMEO:", "--temperature", "0",
                   "--max-new-tokens", "12").out.removesuffix("\n")
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "out"))
    assert pipe("ROMEO:", max_new_tokens=12, do_sample=False)[0]["generated_text"] == zoo_text
    # the exported folder's tokenizer, read back as data.tokenizer = "hf:PATH", is the same vocabulary
    again = zoo("train", RECIPE, "--name", "h", *GPT, "--set", f"data.source={text_file}", "--set",
                f"data.tokenizer=hf:{tmp_path / 'out'}", "--set", "train.max_steps=2", "--set", "eval.interval=2")
    assert again.code == 0, again
    hf_run = load_tokenizer(tmp_path / "runs" / "h" / "tokenizer.json")
    assert hf_run.kind == "hf" and hf_run.vocab_size == 700 and hf_run.eot == ours.eot
    assert hf_run.encode(sample) == ours.encode(sample) and list(hf_run.token_bytes()) == list(ours.token_bytes())
    ev = json.loads(zoo("eval", tmp_path / "runs" / "h", "--split", "test").out)
    assert ev["bytes"] > 0 and ev["bpb"] == pytest.approx(read_summary(tmp_path / "runs" / "h")["test_bpb"], rel=1e-6)
