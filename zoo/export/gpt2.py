"""Export of GPT-2-family runs (language models and classifiers), whichever options they use:

- GPT-2's own architecture (learned positions, LayerNorm, GELU; biases and norm gains may be off: zeros and ones
  compute the same) -> native `GPT2LMHeadModel` / `GPT2ForSequenceClassification`;
- Llama's (rotary, RMSNorm, SwiGLU, no biases, no QK-norm, no soft-cap) -> native `LlamaForCausalLM` /
  `LlamaForSequenceClassification`;
- anything else -> `ZooGPTForCausalLM` / `ZooGPTForSequenceClassification`, zoo's remote code
  (zoo/export/remote/modeling_zoo_gpt.py), loaded with trust_remote_code=True.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zoo.errors import ZooError
from zoo.export.common import classifier_parts, export_pad_id, labels, tokenizer_for, transformers_module
from zoo.models.gpt2 import CONV1D


def describe(run) -> str:
    model = getattr(run.model, "backbone", run.model)
    cfg = model.config
    options = [f"{cfg.position} positions", cfg.norm + ("" if cfg.norm_gain else " without gains"), cfg.mlp + " MLP"]
    options += [o for o, on in (("QK-norm", cfg.qk_norm), ("no biases", not cfg.bias),
                                (f"logit soft-cap {cfg.logit_softcap:g}", cfg.logit_softcap),
                                ("tied embedding and head", cfg.tie_weights)) if on]
    return (f"GPT-2 family, {model.n_layer} layers, {model.n_head} heads, width {model.d_model}, context "
            f"{model.max_seq_len}; {', '.join(options)}")


def target(cfg) -> str:
    """gpt2, llama or remote: where a config's architecture goes in transformers."""
    return "gpt2" if cfg.is_gpt2() else "llama" if cfg.is_llama() else "remote"


def _llama_names(name: str, tensor: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """A zoo tensor under Llama's names (c_attn split into q, k and v)."""
    if name == "wte.weight":
        return {"model.embed_tokens.weight": tensor}
    if name == "ln_f.weight":
        return {"model.norm.weight": tensor}
    if name == "lm_head.weight":
        return {name: tensor}
    _, layer, rest = name.split(".", 2)
    prefix = f"model.layers.{layer}."
    if rest == "attn.c_attn.weight":
        q, k, v = tensor.split(width)
        return {prefix + "self_attn.q_proj.weight": q, prefix + "self_attn.k_proj.weight": k,
                prefix + "self_attn.v_proj.weight": v}
    renamed = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
               "attn.c_proj.weight": "self_attn.o_proj.weight", "mlp.c_gate.weight": "mlp.gate_proj.weight",
               "mlp.c_fc.weight": "mlp.up_proj.weight", "mlp.c_proj.weight": "mlp.down_proj.weight"}
    return {prefix + renamed[rest]: tensor}


def _config(transformers, where: str, model, cfg, vocab: int, classifier: bool, extra: dict, eot: int | None):
    if where == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_positions=model.max_seq_len, n_embd=model.d_model, n_layer=model.n_layer,
            n_head=model.n_head, activation_function="gelu_new", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_weights,
            bos_token_id=eot, eos_token_id=eot,
            architectures=["GPT2ForSequenceClassification" if classifier else "GPT2LMHeadModel"], **extra)
    if where == "llama":
        return transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=model.d_model, intermediate_size=cfg.hidden(),
            num_hidden_layers=model.n_layer, num_attention_heads=model.n_head, num_key_value_heads=model.n_head,
            max_position_embeddings=model.max_seq_len,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
            attention_bias=False, mlp_bias=False, hidden_act="silu", attention_dropout=cfg.dropout,
            tie_word_embeddings=cfg.tie_weights, bos_token_id=eot, eos_token_id=eot,
            architectures=["LlamaForSequenceClassification" if classifier else "LlamaForCausalLM"], **extra)
    from zoo.export.remote.configuration_zoo_gpt import ZooGPTConfig

    return ZooGPTConfig(
        vocab_size=vocab, n_layer=model.n_layer, n_head=model.n_head, n_embd=model.d_model,
        n_positions=model.max_seq_len, dropout=cfg.dropout, qkv_bias=cfg.qkv_bias, bias=cfg.bias,
        position=cfg.position, rope_base=cfg.rope_base, norm=cfg.norm, norm_gain=cfg.norm_gain, mlp=cfg.mlp,
        mlp_hidden=cfg.hidden(), qk_norm=cfg.qk_norm, logit_softcap=cfg.logit_softcap,
        tie_word_embeddings=cfg.tie_weights and not classifier, bos_token_id=eot, eos_token_id=eot,
        architectures=["ZooGPTForSequenceClassification" if classifier else "ZooGPTForCausalLM"], **extra)


def _model_class(transformers, where: str, classifier: bool):
    if where == "gpt2":
        return transformers.GPT2ForSequenceClassification if classifier else transformers.GPT2LMHeadModel
    if where == "llama":
        return transformers.LlamaForSequenceClassification if classifier else transformers.LlamaForCausalLM
    from zoo.export.remote.configuration_zoo_gpt import ZooGPTConfig
    from zoo.export.remote.modeling_zoo_gpt import ZooGPTForCausalLM, ZooGPTForSequenceClassification

    cls = ZooGPTForSequenceClassification if classifier else ZooGPTForCausalLM
    ZooGPTConfig.register_for_auto_class()
    cls.register_for_auto_class("AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM")
    return cls


EMBEDDING = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight", "remote": "wte.weight"}


def export(run, out: Path) -> tuple[str, bool]:
    """Write a GPT-2-family run as the transformers model its architecture is (see the module docstring);
    returns (what it is, whether it needs remote code)."""
    transformers = transformers_module()
    classifier, model = classifier_parts(run)
    cfg = model.config
    where = target(cfg)
    vocab = model.vocab_size
    extra = {}
    char_pad = classifier and run.tokenizer.eot is None
    if classifier:
        # sequence classifiers read the last token that is not padding: with characters, padding gets its own id
        # after the vocabulary (an all-zero embedding row), so no real character is mistaken for it
        extra = labels(run, export_pad_id(run, vocab))
        vocab += char_pad
    config = _config(transformers, where, model, cfg, vocab, classifier, extra, run.tokenizer.eot)
    hf = _model_class(transformers, where, classifier)(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and classifier:
            continue  # the classifier does not use the LM head
        if where == "gpt2":
            key = "lm_head.weight" if name == "lm_head.weight" else f"transformer.{name}"
            state[key] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
        elif where == "llama":
            state.update(_llama_names(name, tensor, model.d_model))
        else:
            state[name] = tensor
    if classifier:
        state["score.weight"] = run.model.score.weight.detach()
    if char_pad:
        wte = state[EMBEDDING[where]]
        state[EMBEDDING[where]] = torch.cat([wte, wte.new_zeros(1, wte.shape[1])])
    expected = hf.state_dict()
    for key, tensor in expected.items():  # what zoo's model does without: biases (zeros), norm gains (ones)
        if key not in state and key.endswith(".bias") and not key.endswith((".attn.bias", ".attn.masked_bias")):
            state[key] = torch.zeros_like(tensor)
        elif key not in state and ("ln_" in key or "norm" in key) and key.endswith(".weight"):
            state[key] = torch.ones_like(tensor)
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith((".attn.bias", ".attn.masked_bias"))
                     and not (cfg.tie_weights and k == "lm_head.weight"))
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ZooError(f"cannot export: transformers' model expects {', '.join(missing[:5]) or 'nothing more'} "
                       f"and has no place for {', '.join(unexpected[:5]) or 'nothing'}")
    hf.load_state_dict(state, strict=False)
    if not classifier and cfg.tie_weights and \
            hf.get_output_embeddings().weight.data_ptr() != hf.get_input_embeddings().weight.data_ptr():
        raise ZooError("cannot export: transformers did not tie the LM head to the token embedding")
    if not classifier:
        hf.generation_config.pad_token_id = config.eos_token_id
    hf.save_pretrained(out)
    tokenizer_for(transformers, run, classifier).save_pretrained(out)
    name = {"gpt2": "GPT-2", "llama": "Llama", "remote": "zoo GPT"}[where]
    return f"{name} {'sequence classifier' if classifier else 'language model'}", where == "remote"
