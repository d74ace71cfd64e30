"""What every architecture's exporter shares: transformers itself, the run's tokenizer (its own `to_hf`), and a
classifier's labels."""

from __future__ import annotations

from zoo.errors import ZooError


def transformers_module():
    try:
        import transformers
    except ImportError:
        raise ZooError("zoo export-hf needs transformers: pip install 'zoo[hf]'") from None
    return transformers


def tokenizer_for(transformers, run, classifier: bool):
    """The run's own tokenizer as a transformers tokenizer (a classifier's with a padding token)."""
    return run.tokenizer.to_hf(transformers, pad=classifier)


def export_pad_id(run, vocab: int) -> int:
    """The padding id of an exported classifier: the tokenizer's end-of-text token, or (a character vocabulary
    has none) the id after the vocabulary, which the exported tokenizer adds as its padding token."""
    return run.tokenizer.eot if run.tokenizer.eot is not None else vocab


def labels(run, pad_token_id: int) -> dict:
    names = run.recipe.task.labels
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)}, "pad_token_id": pad_token_id}



def classifier_parts(run) -> tuple[bool, object]:
    """(is a classifier, the backbone) of a loaded run."""
    classifier = run.recipe.task.kind == "classify"
    return classifier, run.model.backbone if classifier else run.model
