"""Tokenizers, one module per kind, and the registry `data.tokenizer` selects from: `char`, `gpt2`, `bpe` (trained
on the recipe's train split) and `hf:PATH` (a transformers folder's tokenizer.json). Adding a kind is one module
with a `SPEC` (zoo.tokenizers.base.TokenizerSpec) and one line in TOKENIZERS."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import RecipeError, ZooError
from zoo.tokenizers import bpe, char, gpt2, hf
from zoo.tokenizers.base import EOT_TEXT, Tokenizer, TokenizerSpec
from zoo.tokenizers.char import CharTokenizer
from zoo.tokenizers.gpt2 import EOT, GPT2_PATTERN, R50K_SHA256, Gpt2Tokenizer, gpt2_encoding

TOKENIZERS: dict[str, TokenizerSpec] = {spec.name: spec for spec in (char.SPEC, gpt2.SPEC, bpe.SPEC, hf.SPEC)}
FIELDS = sorted({f for spec in TOKENIZERS.values() for f in spec.fields})

__all__ = ["TOKENIZERS", "FIELDS", "EOT", "EOT_TEXT", "GPT2_PATTERN", "R50K_SHA256", "CharTokenizer", "Gpt2Tokenizer",
           "Tokenizer", "TokenizerSpec", "gpt2_encoding", "selected", "load_tokenizer", "tokenizer_from_dict"]


def selected(selector: str) -> tuple[TokenizerSpec, str]:
    """(spec, argument) of a `data.tokenizer` value: `char`, `gpt2`, `bpe` or `hf:PATH`."""
    name, _, argument = selector.partition(":")
    if name not in TOKENIZERS:
        known = ", ".join(k + (":PATH" if k == "hf" else "") for k in TOKENIZERS)
        raise RecipeError(f"data.tokenizer is {selector!r}; known: {known}")
    return TOKENIZERS[name], argument


def tokenizer_from_dict(data: dict) -> Tokenizer:
    """Rebuild a tokenizer saved with `to_dict`."""
    kind = data.get("kind")
    if kind not in TOKENIZERS:
        raise ZooError(f"unknown tokenizer kind {kind!r} in a saved tokenizer")
    return TOKENIZERS[kind].from_dict(data)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer saved in a run directory."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"tokenizer file {path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return tokenizer_from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ZooError(f"tokenizer file {path} cannot be read ({type(exc).__name__}: {str(exc)[:120]}); it "
                       "belongs to the run's checkpoints: restore it from a copy") from None
