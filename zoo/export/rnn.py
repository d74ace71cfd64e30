"""Export of char-RNN runs (language models and classifiers) with zoo's remote code: `ZooRNNForCausalLM` or
`ZooRNNForSequenceClassification` (zoo/export/remote/), loadable with trust_remote_code=True."""

from __future__ import annotations

from pathlib import Path

from zoo.errors import ZooError
from zoo.export.common import export_pad_id, labels, tokenizer_for, transformers_module


def describe(run) -> str:
    cfg = getattr(run.model, "backbone", run.model).config
    cells = "torch.nn" if cfg.impl == "torch" else "zoo's from-scratch cells"
    return (f"char-RNN, {cfg.num_layers} x {cfg.hidden_size} {cfg.cell.upper()} ({cells}), {cfg.input} input, "
            f"dropout {cfg.dropout}")


def export(run, out: Path) -> tuple[str, bool]:
    """Write a char-RNN run (language model or classifier) with zoo's remote code: ZooRNNForCausalLM or
    ZooRNNForSequenceClassification, loadable with trust_remote_code=True."""
    transformers = transformers_module()
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
        **(labels(run, export_pad_id(run, model.vocab_size)) if classifier else {}))
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
    tokenizer_for(transformers, run, classifier).save_pretrained(out)
    return f"char-RNN {'sequence classifier' if classifier else 'language model'}", True
