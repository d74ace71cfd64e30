"""Hugging Face export: `zoo export-hf RUN OUT`. GPT-2 language models go to the native `GPT2LMHeadModel`
layout (no remote code); the other models are not exported yet and are refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zoo.errors import ZooError
from zoo.runs import load_run, read_summary

CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


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
    """Write a zoo GPT-2 run as a native GPT2LMHeadModel folder (config, safetensors, tokenizer)."""
    transformers = _transformers()
    model, cfg = run.model, run.model.config
    vocab = model.vocab_size
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=model.max_seq_len, n_embd=model.d_model, n_layer=model.n_layer,
        n_head=model.n_head, activation_function="gelu_new", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_weights,
        bos_token_id=50256 if vocab > 50256 else None, eos_token_id=50256 if vocab > 50256 else None,
        architectures=["GPT2LMHeadModel"])
    hf = transformers.GPT2LMHeadModel(config)
    state = {}
    for name, tensor in model.state_dict().items():
        key = "lm_head.weight" if name == "lm_head.weight" else f"transformer.{name}"
        state[key] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
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
    if cfg.tie_weights and not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight):
        raise ZooError("cannot export: transformers did not tie the LM head to the token embedding")
    hf.generation_config.pad_token_id = config.eos_token_id
    hf.save_pretrained(out)
    tok = gpt2_tokenizer(transformers) if run.tokenizer.kind == "gpt2" else char_tokenizer(transformers,
                                                                                          run.tokenizer.chars)
    tok.save_pretrained(out)


def model_card(run, out: Path, kind: str) -> None:
    summary = read_summary(run.run_dir) or {}
    metrics = {k: summary[k] for k in ("best_val_loss", "test_loss", "tokens", "params") if k in summary}
    recipe = (run.run_dir / "recipe.toml").read_text(encoding="utf-8")
    text = f"""---
library_name: transformers
pipeline_tag: text-generation
---
# {run.run_dir.name}

A {kind} trained with [zoo](https://pypi.org/project/zoo/) (`zoo train`), exported with `zoo export-hf`.

- Architecture: GPT-2, {run.model.n_layer} layers, {run.model.n_head} heads, width {run.model.d_model}, context
  {run.model.max_seq_len}, vocabulary {run.model.vocab_size} ({run.tokenizer.kind} tokenizer)
- Parameters: {summary.get('params', 'n/a'):,}
- Data: `{run.recipe.data.source}`
- Metrics (nats per token): {json.dumps(metrics)}

```python
from transformers import pipeline
pipe = pipeline("text-generation", model="PATH")
print(pipe("ROMEO:", max_new_tokens=50, do_sample=False)[0]["generated_text"])
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
    if run.recipe.task.kind == "lm" and run.recipe.model.arch == "gpt2":
        out.mkdir(parents=True, exist_ok=True)
        export_gpt2(run, out)
        model_card(run, out, "GPT-2 language model")
        return out
    raise ZooError(f"zoo export-hf supports GPT-2 language-model runs so far; {run_dir} is a "
                   f"{run.recipe.model.arch} {run.recipe.task.kind} run")
