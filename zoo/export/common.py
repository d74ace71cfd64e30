"""What every architecture's exporter shares: transformers itself, the tokenizers (GPT-2 BPE from the files zoo
ships, or a run's character vocabulary), and a classifier's labels."""

from __future__ import annotations

import json

from zoo.errors import ZooError


def transformers_module():
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


def tokenizer_for(transformers, run, classifier: bool):
    if run.tokenizer.kind == "gpt2":
        return gpt2_tokenizer(transformers)
    return char_tokenizer(transformers, run.tokenizer.chars, pad=classifier)


def labels(run, pad_token_id: int) -> dict:
    names = run.recipe.task.labels
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)}, "pad_token_id": pad_token_id}



def classifier_parts(run) -> tuple[bool, object]:
    """(is a classifier, the backbone) of a loaded run."""
    classifier = run.recipe.task.kind == "classify"
    return classifier, run.model.backbone if classifier else run.model
