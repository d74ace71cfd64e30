"""What every tokenizer is to the rest of zoo (the `Tokenizer` base class) and what the registry knows of a kind
(`TokenizerSpec`), plus the byte-level helpers shared by the BPE kinds and their Hugging Face export.

Nothing outside zoo/tokenizers/ branches on a tokenizer's kind: data preparation, tasks, bits per byte,
checkpoints and the export read the attributes and methods below."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

EOT_TEXT = "<|endoftext|>"


class Tokenizer:
    """A tokenizer: text <-> ids, each id's UTF-8 byte length (bits per byte), and how it is saved in a run
    (`to_dict`, rebuilt by its spec's `from_dict`) and exported (`to_hf`)."""

    kind: ClassVar[str] = ""
    # where a single text (one document) is cut into train/val/test: "text" cuts its characters by position and
    # encodes each part (the same val/test text for every tokenizer); "tokens" cuts the ids (GPT-2's, as before)
    split_by: ClassVar[str] = "text"
    # whether folders of documents (.jsonl/.parquet, hf:) can be prepared with it (documents end with `eot`)
    corpus: ClassVar[bool] = True
    vocab_size: int
    eot: int | None = None  # the end-of-text id between documents (None: generation stops only at its length)

    @property
    def pad_id(self) -> int:
        """The id that pads a batch (the end-of-text token where there is one)."""
        return self.eot if self.eot is not None else 0

    @property
    def eot_text(self) -> str:
        """The end-of-text token as text ("" where there is none)."""
        return "" if self.eot is None else self.decode([self.eot])

    @property
    def fingerprint(self) -> str:
        """A short name of exactly this vocabulary (cache keys, messages)."""
        raise NotImplementedError

    @property
    def dtype(self) -> type:
        """The numpy dtype of its token files: uint16 while every id fits, uint32 above 65,536 ids."""
        return np.uint16 if self.vocab_size <= 2**16 else np.uint32

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` it cannot encode (a byte-level BPE encodes everything)."""
        return []

    def for_any_text(self) -> Tokenizer:
        """This tokenizer made to encode any text (a character vocabulary reads unknown characters as a
        fallback one); itself where it already does."""
        return self

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; its end-of-text token written in the text is encoded as that token."""
        raise NotImplementedError

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text`, special tokens in it read as plain text."""
        return self.encode(text)

    def encode_batch(self, texts: list[str], threads: int = 8) -> list[list[int]]:
        """Ids of many documents (special tokens in them read as plain text)."""
        return [self.encode_ordinary(t) for t in texts]

    def encode_array(self, text: str) -> np.ndarray:
        """A large text's ids as a numpy array of `dtype`."""
        return np.asarray(self.encode_ordinary(text), dtype=self.dtype)

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        """The UTF-8 byte length of every id (int64, `vocab_size` long); special tokens count 0."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_hf(self, transformers, pad: bool = False):
        """The tokenizer as a transformers tokenizer (the export's); with `pad`, one with a padding token."""
        raise NotImplementedError


@dataclass(frozen=True)
class TokenizerSpec:
    """A kind of tokenizer, as the registry knows it:

    - `fields`: the [data] fields it reads besides `data.tokenizer` (any other tokenizer field set is an error);
    - `check(data) -> str`: what is wrong with the [data] section for it ("" when nothing);
    - `fit(data, argument, documents, cache) -> Tokenizer`: the tokenizer for a recipe. `argument` is what
      follows `kind:` in `data.tokenizer` (`hf:PATH`), `documents(which)` yields the source's documents
      ("train": the train split only; "all": every document), `cache` is the folder trained tokenizers are
      kept in;
    - `key(data, argument) -> dict`: the settings that make two fits of one source the same (cache keys);
    - `from_dict(saved) -> Tokenizer`: the tokenizer a run saved."""

    name: str
    fields: tuple[str, ...]
    fit: Callable[..., Tokenizer]
    from_dict: Callable[[dict], Tokenizer]
    key: Callable[[Any, str], dict]
    check: Callable[[Any, str], str] = lambda data, argument: ""
    summary: str = ""
    corpus: bool = True  # whether it can prepare folders of documents (.jsonl/.parquet, hf:)
    trained: bool = False  # fitting learns from the data (cached under `key`, never fitted twice)


Documents = Callable[[str], Iterator[str]]


# ------------------------------------------------------------------------------------------ byte level
@functools.cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (the byte-level BPE files write tokens with them)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@functools.cache
def alphabet_bytes() -> dict[str, int]:
    return {c: b for b, c in byte_alphabet().items()}


def to_printable(token: bytes) -> str:
    table = byte_alphabet()
    return "".join(table[b] for b in token)


def from_printable(token: str) -> bytes | None:
    """The bytes a byte-level token string stands for (None if it is not written in the byte alphabet)."""
    table = alphabet_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return None


def merges_of(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merge rules that make a rank-based BPE (tiktoken's: merge the adjacent pair whose concatenation has the
    lowest rank) out of a merge-list BPE (transformers'): every way of writing each multi-byte token as two
    tokens of lower rank, ordered by the token's rank. Applying them by priority gives tiktoken's ids."""
    out: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        for cut in range(1, len(token)):
            a, b = token[:cut], token[cut:]
            ra, rb = ranks.get(a), ranks.get(b)
            if ra is not None and rb is not None and ra < rank and rb < rank:
                out.append((rank, a, b))
    out.sort(key=lambda m: (m[0], ranks[m[1]], ranks[m[2]]))
    return [(a, b) for _, a, b in out]


def byte_level_hf(transformers, ranks: dict[bytes, int], pattern: str, specials: dict[str, int], pad: bool):
    """A transformers fast tokenizer equal to a tiktoken encoding (its ranks, split pattern and special
    tokens): byte-level BPE with the pattern as a regex split, GPT-2's byte alphabet, and the merges of
    `merges_of`; `pad` adds a padding token after the vocabulary unless an end-of-text token can serve."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HfTokenizer

    vocab = {to_printable(t): r for t, r in ranks.items()}
    merges = [(to_printable(a), to_printable(b)) for a, b in merges_of(ranks)]
    tok = HfTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                                 ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sorted(specials, key=specials.get)])
    kwargs: dict[str, Any] = {}
    if EOT_TEXT in specials:
        kwargs = {"eos_token": EOT_TEXT, "bos_token": EOT_TEXT, "unk_token": EOT_TEXT}
        if pad:
            kwargs["pad_token"] = EOT_TEXT
    elif pad:
        kwargs["pad_token"] = "<pad>"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
