"""Hugging Face export: `zoo export-hf RUN OUT`. GPT-2 language models go to the native `GPT2LMHeadModel`
layout and GPT-2 (BPE) classifiers to `GPT2ForSequenceClassification` (no remote code); the other models are
not exported yet and are refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zoo.errors import ZooError
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


def char_tokenizer(transformers, chars: list[str]):
    """A character vocabulary as a `tokenizers`-backed fast tokenizer (every character its own token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    unk = "<unk>"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[unk] = len(chars)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk)


def export_gpt2(run, out: Path) -> None:
    """Write a zoo GPT-2 run as a native GPT2LMHeadModel folder (config, safetensors, tokenizer), or a GPT-2
    classifier as GPT2ForSequenceClassification."""
    transformers = _transformers()
    classifier = run.recipe.task.kind == "classify"
    model = run.model.backbone if classifier else run.model
    cfg = model.config
    vocab = model.vocab_size
    extra = {}
    if classifier:
        labels = run.recipe.task.labels
        extra = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                 "label2id": {name: i for i, name in enumerate(labels)}, "pad_token_id": 50256}
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
    tok = gpt2_tokenizer(transformers) if run.tokenizer.kind == "gpt2" else char_tokenizer(transformers,
                                                                                          run.tokenizer.chars)
    tok.save_pretrained(out)


def model_card(run, out: Path, kind: str) -> None:
    summary = read_summary(run.run_dir) or {}
    metrics = {k: summary[k] for k in ("best_val_loss", "test_loss", "tokens", "params") if k in summary}
    if "test_metrics" in summary:
        metrics.update({f"test_{k}": summary["test_metrics"][k] for k in ("accuracy", "precision", "recall", "f1")})
    recipe = (run.run_dir / "recipe.toml").read_text(encoding="utf-8")
    backbone = getattr(run.model, "backbone", run.model)
    usage = ('pipe = pipeline("text-classification", model="PATH")\nprint(pipe("WINNER!! Claim your prize"))'
             if run.recipe.task.kind == "classify" else
             'pipe = pipeline("text-generation", model="PATH")\n'
             'print(pipe("ROMEO:", max_new_tokens=50, do_sample=False)[0]["generated_text"])')
    text = f"""---
library_name: transformers
pipeline_tag: {"text-classification" if run.recipe.task.kind == "classify" else "text-generation"}
---
# {run.run_dir.name}

A {kind} trained with [zoo](https://pypi.org/project/zoo/) (`zoo train`), exported with `zoo export-hf`.

- Architecture: GPT-2, {backbone.n_layer} layers, {backbone.n_head} heads, width {backbone.d_model}, context
  {backbone.max_seq_len}, vocabulary {backbone.vocab_size} ({run.tokenizer.kind} tokenizer)
- Parameters: {summary.get('params', 'n/a'):,}
- Data: `{run.recipe.data.source}`
- Metrics (nats per token): {json.dumps(metrics)}

```python
from transformers import pipeline
{usage}
```

## Recipe
```toml
{recipe}```
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def export_hf(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> Path:
    """Export a run to a Hugging Face folder; returns the folder."""
    run = load_run(run_dir, checkpoint)
    out = Path(out_dir)
    kind = run.recipe.task.kind
    if run.recipe.model.arch == "gpt2" and (kind == "lm" or (kind == "classify" and run.tokenizer.kind == "gpt2")):
        out.mkdir(parents=True, exist_ok=True)
        export_gpt2(run, out)
        model_card(run, out, "GPT-2 language model" if kind == "lm" else "GPT-2 sequence classifier")
        return out
    raise ZooError(f"zoo export-hf supports GPT-2 language models and GPT-2 (BPE) classifiers so far; {run_dir} is "
                   f"a {run.recipe.model.arch} {kind} run with a {run.tokenizer.kind} tokenizer")
