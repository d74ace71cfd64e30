"""Hugging Face export: `zoo export-hf RUN OUT [--push-to-hub REPO]`.

GPT-2 language models go to the native `GPT2LMHeadModel` layout and GPT-2 classifiers to
`GPT2ForSequenceClassification` (no remote code). Char-RNNs (torch.nn or from-scratch cells) go out with their
own configuration and modelling code (`zoo/export/remote/`, copied into the folder and named in config.json's
`auto_map`), loadable with `trust_remote_code=True` and needing only torch and transformers. Tokenizers go
along: GPT-2 BPE, or the character vocabulary as a `tokenizers`-backed fast tokenizer. Only safetensors,
JSON, the modelling code and a model card are written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint import recover_swap, swap_in
from zoo.errors import ZooError
from zoo.models.base import count_parameters
from zoo.models.gpt2 import CONV1D
from zoo.runs import load_run, read_summary


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ZooError("zoo export-hf needs transformers: pip install 'zoo[hf]'") from None
    return transformers


def gpt2_tokenizer(transformers):
    """OpenAI's GPT-2 tokenizer as transformers' GPT2Tokenizer, from the vocabulary files zoo ships."""
    import importlib.resources

    folder = importlib.resources.files("zoo.data") / "gpt2"
    vocab = json.loads((folder / "encoder.json").read_text("utf-8"))
    merges = [tuple(line.split()) for line in (folder / "vocab.bpe").read_text("utf-8").split("\n")[1:] if line]
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges, eos_token="<|endoftext|>",
                                      bos_token="<|endoftext|>", unk_token="<|endoftext|>")


PAD = "<pad>"


def char_tokenizer(transformers, chars: list[str], pad: bool = False):
    """A character vocabulary as a `tokenizers`-backed fast tokenizer (every character its own token).
    Characters outside the vocabulary become a space (or the first character), as in `zoo classify`; with
    `pad`, a padding token gets the id after the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    unk = " " if " " in chars else chars[0]
    vocab = {c: i for i, c in enumerate(chars)}
    if pad:
        vocab[PAD] = len(chars)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    # the fallback character is not declared as an unk *special* token: decoding would drop it from text
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **({"pad_token": PAD} if pad else {}))


def _tokenizer(transformers, run, classifier: bool):
    if run.tokenizer.kind == "gpt2":
        return gpt2_tokenizer(transformers)
    return char_tokenizer(transformers, run.tokenizer.chars, pad=classifier)


def _labels(run, pad_token_id: int) -> dict:
    labels = run.recipe.task.labels
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}, "pad_token_id": pad_token_id}


def export_gpt2(run, out: Path) -> None:
    """Write a zoo GPT-2 run as a native GPT2LMHeadModel folder (config, safetensors, tokenizer), or a GPT-2
    classifier as GPT2ForSequenceClassification."""
    transformers = _transformers()
    classifier = run.recipe.task.kind == "classify"
    model = run.model.backbone if classifier else run.model
    cfg = model.config
    vocab = model.vocab_size
    extra = {}
    char_pad = classifier and run.tokenizer.kind != "gpt2"
    if classifier:
        # GPT2ForSequenceClassification reads the last token that is not padding: with characters, padding gets
        # its own id after the vocabulary (an all-zero embedding row), so no real character is mistaken for it
        extra = _labels(run, 50256 if run.tokenizer.kind == "gpt2" else vocab)
        vocab += char_pad
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=model.max_seq_len, n_embd=model.d_model, n_layer=model.n_layer,
        n_head=model.n_head, activation_function="gelu_new", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_weights,
        bos_token_id=50256 if vocab > 50256 else None, eos_token_id=50256 if vocab > 50256 else None,
        architectures=["GPT2ForSequenceClassification" if classifier else "GPT2LMHeadModel"], **extra)
    hf = (transformers.GPT2ForSequenceClassification if classifier else transformers.GPT2LMHeadModel)(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and classifier:
            continue  # the classifier does not use the LM head
        key = "lm_head.weight" if name == "lm_head.weight" else f"transformer.{name}"
        state[key] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
    if classifier:
        state["score.weight"] = run.model.score.weight.detach()
    if char_pad:
        wte = state["transformer.wte.weight"]
        state["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(1, wte.shape[1])])
    if not cfg.qkv_bias:  # HF's GPT-2 always has a qkv bias: zeros compute the same thing
        for i in range(model.n_layer):
            state[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(3 * model.d_model)
    expected = hf.state_dict().keys()
    missing = sorted(k for k in expected - state.keys() if not k.endswith((".attn.bias", ".attn.masked_bias")))
    if missing:
        raise ZooError(f"cannot export: transformers' GPT-2 expects {', '.join(missing[:5])}")
    result = hf.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    if result.unexpected_keys:
        raise ZooError(f"cannot export: unexpected tensors {', '.join(result.unexpected_keys[:5])}")
    if not classifier and cfg.tie_weights and not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight):
        raise ZooError("cannot export: transformers did not tie the LM head to the token embedding")
    if not classifier:
        hf.generation_config.pad_token_id = config.eos_token_id
    hf.save_pretrained(out)
    _tokenizer(transformers, run, classifier).save_pretrained(out)


def export_rnn(run, out: Path) -> None:
    """Write a char-RNN run (language model or classifier) with zoo's remote code: ZooRNNForCausalLM or
    ZooRNNForSequenceClassification, loadable with trust_remote_code=True."""
    transformers = _transformers()
    from zoo.export.remote.configuration_zoo_rnn import ZooRNNConfig
    from zoo.export.remote.modeling_zoo_rnn import ZooRNNForCausalLM, ZooRNNForSequenceClassification

    classifier = run.recipe.task.kind == "classify"
    model = run.model.backbone if classifier else run.model
    cfg = model.config
    cls = ZooRNNForSequenceClassification if classifier else ZooRNNForCausalLM
    config = ZooRNNConfig(
        vocab_size=model.vocab_size, cell=cfg.cell, impl=cfg.impl, input=cfg.input, embedding_dim=cfg.embedding_dim,
        hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, dropout=cfg.dropout,
        tie_word_embeddings=cfg.tie_weights and not classifier, architectures=[cls.__name__],
        **(_labels(run, model.vocab_size) if classifier else {}))
    ZooRNNConfig.register_for_auto_class()
    cls.register_for_auto_class("AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM")
    hf = cls(config)
    state = {k: v for k, v in model.state_dict().items() if not (classifier and k.startswith("lm_head."))}
    if classifier:
        state["score.weight"] = run.model.score.weight.detach()
    result = hf.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ZooError(f"cannot export: the exported model lacks {result.unexpected_keys[:5]} "
                       f"or expects {result.missing_keys[:5]}")
    if not classifier and cfg.tie_weights and hf.lm_head.weight is not hf.embedding.weight:
        raise ZooError("cannot export: transformers did not tie the LM head to the embedding")
    hf.save_pretrained(out)
    _tokenizer(transformers, run, classifier).save_pretrained(out)


def _architecture(run) -> str:
    model = getattr(run.model, "backbone", run.model)
    if run.recipe.model.arch == "gpt2":
        return (f"GPT-2, {model.n_layer} layers, {model.n_head} heads, width {model.d_model}, context "
                f"{model.max_seq_len}")
    cfg = model.config
    cells = "torch.nn" if cfg.impl == "torch" else "zoo's from-scratch cells"
    return (f"char-RNN, {cfg.num_layers} x {cfg.hidden_size} {cfg.cell.upper()} ({cells}), {cfg.input} input, "
            f"dropout {cfg.dropout}")


def source_name(source: str) -> str:
    """A data source as a model card may show it: Hub ids and embedded names as they are, a local file or
    folder by its name only (no path of the machine it was trained on)."""
    if source.startswith("embedded:"):
        return source
    if source.startswith("hf:"):
        name = source[3:]
        return source if not name.startswith((".", "/", "~")) and not Path(name).expanduser().exists() \
            else f"hf:{Path(name).name}"
    path = Path(source)
    return f"{path.parent.name}/{path.name}" if any(c in path.name for c in "*?[") else path.name


# recipe fields a card leaves out of its list of choices: data handling, cadences and descriptions
_NOT_CHOICES = ("run.description", "run.device", "run.threads", "run.compile", "data.", "eval.", "checkpoint.",
                "log.", "task.kind", "model.arch", "model.init_from", "model.pad_vocab", "optim.impl")


def _choices(run) -> list[tuple[str, Any]]:
    """The recipe's choices that differ from zoo's defaults for its architecture and task (its
    interventions): (dotted key, value)."""
    from zoo.recipe import Recipe, flatten, matches, recipe_to_dict

    recipe = run.recipe
    default = Recipe(model=type(recipe.model)(), task=type(recipe.task)())
    mine, base = flatten(recipe_to_dict(recipe)), flatten(recipe_to_dict(default))
    return [(k, v) for k, v in mine.items() if v != base.get(k) and not matches(k, _NOT_CHOICES)]


def _card_recipe(run) -> str:
    """The resolved recipe for the card: local paths reduced to names, no description (the shipped recipe's,
    which overrides may have made untrue: a "2 x 256 LSTM" trained with --set model.hidden_size=64)."""
    from zoo.recipe import dumps_toml, recipe_to_dict

    data = recipe_to_dict(run.recipe)
    data["run"].pop("description", None)
    data["data"]["source"] = source_name(data["data"]["source"])
    if data["data"].get("cache_dir"):
        data["data"]["cache_dir"] = ""
    if str(data["model"].get("init_from", "")).startswith("hf:"):
        data["model"]["init_from"] = source_name(data["model"]["init_from"])
    return dumps_toml(data)


def usage_prompt(run) -> str:
    """A prompt for the card's usage example, from the run's own data: eval.sample_prompt, else the start of a
    local or embedded text (a few words), else the tokenizer's end-of-text token."""
    if run.recipe.eval.sample_prompt:
        return run.recipe.eval.sample_prompt
    source = run.recipe.data.source
    local = Path(source).expanduser()
    if source.startswith("embedded:") or (local.is_file() and local.suffix == ".txt"
                                         and local.stat().st_size < 64 * 2**20):
        from zoo.data import read_text
        from zoo.errors import DataError

        try:
            words = read_text(source, "replace").strip().split("\n")[0].split()[:4]
        except (DataError, OSError):
            words = []
        if words:
            return " ".join(words)
    return "<|endoftext|>" if run.tokenizer.kind == "gpt2" else "\n"


def _metrics_table(summary: dict) -> str:
    rows = [("best validation loss", "best_val_loss"), ("test loss (best checkpoint)", "test_loss"),
            ("test loss (last weights)", "final_test_loss"), ("test bits per character", "test_bits_per_char")]
    lines = [f"| {label} | {summary[key]:.4f} |" for label, key in rows if isinstance(summary.get(key), int | float)]
    for key in ("accuracy", "precision", "recall", "f1"):
        if key in summary.get("test_metrics", {}):
            lines.append(f"| test {key} | {summary['test_metrics'][key]:.4f} |")
    for label, key in (("training tokens", "tokens"), ("training examples", "examples"), ("steps", "step")):
        if isinstance(summary.get(key), int):
            lines.append(f"| {label} | {summary[key]:,} |")
    if not lines:
        return "No evaluation yet.\n"
    return "| metric | value |\n|---|---:|\n" + "\n".join(lines) + "\n\nLosses are in nats per token.\n"


def model_card(run, out: Path, kind: str, remote: bool) -> None:
    summary = read_summary(run.run_dir) or {}
    backbone = getattr(run.model, "backbone", run.model)
    classify = run.recipe.task.kind == "classify"
    trust = ", trust_remote_code=True" if remote else ""
    usage = (f'pipe = pipeline("text-classification", model="PATH"{trust})\nprint(pipe("WINNER!! Claim your prize"))'
             if classify else
             f'pipe = pipeline("text-generation", model="PATH"{trust})\n'
             f'print(pipe({json.dumps(usage_prompt(run))}, max_new_tokens=50, do_sample=False)[0]["generated_text"])')
    code = ("\nThe modelling code (`configuration_zoo_rnn.py`, `modeling_zoo_rnn.py`) ships in this folder and needs "
            "only torch and transformers; load it with `trust_remote_code=True`.\n" if remote else "")
    choices = "\n".join(f"- `{k} = {json.dumps(v)}`" for k, v in _choices(run)) or "- none (zoo's defaults)"
    text = f"""---
library_name: transformers
pipeline_tag: {"text-classification" if classify else "text-generation"}
license: mit
---
# {run.run_dir.name}

A {kind} trained with zoo (`zoo train`), exported with `zoo export-hf`.

- Architecture: {_architecture(run)}; vocabulary {backbone.vocab_size} ({run.tokenizer.kind} tokenizer)
- Parameters: {count_parameters(run.model):,}
- Checkpoint: {run.checkpoint.name} (run {summary.get('status', 'still training, or stopped before its end')})
- Data: `{source_name(run.recipe.data.source)}`{f" (labels: {', '.join(run.recipe.task.labels)})" if classify else ""}
- Licence: the weights are released under MIT; the training data keeps its own licence (see zoo's
  data provenance notes).
{code}
## Metrics

{_metrics_table(summary)}
## Training choices

The recipe fields that differ from zoo's defaults for this architecture (its interventions):

{choices}

## Usage

```python
from transformers import pipeline
{usage}
```

## Recipe
```toml
{_card_recipe(run)}```
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def push_to_hub(out: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face Hub; returns the repository's URL. Needs a network and a
    token (`hf auth login` or $HF_TOKEN)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ZooError("--push-to-hub needs huggingface_hub: pip install 'zoo[hf]'") from None
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo_id, commit_message="Upload from zoo export-hf")
    except Exception as exc:  # offline, no token, no permission: the export itself is done and kept
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ZooError(f"could not push {out} to the Hub as {repo_id} ({type(exc).__name__}: {reason}); the "
                       f"export is complete: check the network and your token (hf auth login, or HF_TOKEN) and "
                       f"run the command again, or upload the folder with `hf upload {repo_id} {out}`") from None
    return str(url)


def export_hf(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> Path:
    """Export a run (finished or still training: any checkpoint) to a Hugging Face folder; returns the folder.
    The folder is written under a temporary name and renamed into place, so a failure leaves no half export
    (and an earlier export in OUT stays as it was)."""
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    for stale in (*out.parent.glob(f".{out.name}.old-*"), *out.parent.glob(f".{out.name}.tmp-*")):
        if _alive(stale.name.rsplit("-", 1)[-1]):
            continue
        if ".old-" in stale.name:  # killed between its two renames: the earlier export goes back if needed
            recover_swap(stale)
        else:  # left by an export that was killed
            shutil.rmtree(stale, ignore_errors=True)
    if out.exists() and not out.is_dir():
        raise ZooError(f"{out} is a file; name a folder to export into")
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise ZooError(f"{out} exists and holds other files; choose a new folder or an earlier export's folder")
    run = load_run(run_dir, checkpoint)
    kind = run.recipe.task.kind
    arch = run.recipe.model.arch
    what = "language model" if kind == "lm" else "sequence classifier"
    if arch not in ("gpt2", "char_rnn") or kind not in ("lm", "classify"):
        raise ZooError(f"zoo export-hf exports GPT-2 and char-RNN language models and classifiers; {run_dir} is a "
                       f"{arch} {kind} run")
    if kind == "classify" and (run.recipe.task.pooling != "last_token" or run.recipe.task.head_bias):
        raise ZooError(f"{run_dir} reads the last padded position or has a head bias (the book's settings); "
                       "transformers' sequence classifiers read the last real token with a bias-free head, so the "
                       "export would predict differently: train with task.pooling = \"last_token\" and "
                       "task.head_bias = false to share it")
    logging = _transformers().utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # transformers' "Writing model shards" bars say nothing here
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if arch == "gpt2":
            export_gpt2(run, tmp)
            model_card(run, tmp, f"GPT-2 {what}", remote=False)
        else:
            export_rnn(run, tmp)
            model_card(run, tmp, f"char-RNN {what}", remote=True)
        mode = 0o666 & ~_umask()
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(mode)  # every file readable like any other the user writes (some are saved 0600)
        swap_in(tmp, out)
    except OSError as exc:
        raise ZooError(f"could not write the export to {out} ({exc.filename or ''}: {exc.strerror or exc}); "
                       "nothing was changed there") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            logging.enable_progress_bar()
    return out


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
