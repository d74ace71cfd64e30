"""How well a tokenizer compresses text: UTF-8 bytes per token on the recipe's own val split and on Tiny
Shakespeare, beside GPT-2's (the table `zoo train-tokenizer` and `zoo prepare-data` print, in nanochat's style:
more bytes per token is better compression)."""

from __future__ import annotations

import time

from zoo.data import _cut, _single_text, read_text
from zoo.tokenizers import Gpt2Tokenizer, Tokenizer

MAX_CHARS = 4_000_000  # enough text to measure on, at most


def val_text(data) -> str:
    """The recipe's validation text (the val part of a single text, or the val documents of a corpus, joined;
    at most MAX_CHARS characters)."""
    if _single_text(data.source):
        text = read_text(data.source, data.encoding_errors)
        a, b = _cut(len(text), data.splits, data.cut)
        return text[a:b][:MAX_CHARS]
    from zoo.data import tokens

    out, size = [], 0
    for doc in tokens.documents(data.source, "val", text_field=data.text_field, val_fraction=data.val_fraction,
                                errors=data.encoding_errors):
        out.append(doc)
        size += len(doc)
        if size >= MAX_CHARS:
            break
    return "\n".join(out)[:MAX_CHARS]


def bytes_per_token(tokenizer: Tokenizer, text: str) -> float:
    ids = tokenizer.encode_ordinary(text)
    return len(text.encode("utf-8", "surrogatepass")) / max(1, len(ids))


def table(data, tokenizer: Tokenizer) -> tuple[str, dict]:
    """The compression table (text) and its numbers (dict) for the recipe's tokenizer beside GPT-2's."""
    texts = {"val split": val_text(data), "tinyshakespeare": read_text("embedded:tinyshakespeare")}
    tokenizers = {f"{tokenizer.kind} ({tokenizer.vocab_size:,})": tokenizer}
    if tokenizer.fingerprint != "gpt2":
        tokenizers["gpt2 (50,257)"] = Gpt2Tokenizer()
    numbers: dict = {}
    for text_name, text in texts.items():
        if not text or tokenizer.unknown(text):
            continue
        for name, tok in tokenizers.items():
            start = time.perf_counter()
            bpt = bytes_per_token(tok, text)
            numbers.setdefault(text_name, {})[name] = {"bytes_per_token": bpt,
                                                       "seconds": time.perf_counter() - start}
    names = list(tokenizers)
    head = ["text", "bytes", *[f"{n} bytes/token" for n in names]]
    if len(names) > 1:
        head.append(f"vs {names[1]}")
    rows = []
    for text_name, row in numbers.items():
        cells = [text_name, f"{len(texts[text_name].encode('utf-8', 'surrogatepass')):,}",
                 *[f"{row[n]['bytes_per_token']:.2f}" for n in names]]
        if len(names) > 1:
            cells.append(f"{row[names[0]]['bytes_per_token'] / row[names[1]]['bytes_per_token'] - 1:+.1%}")
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines), numbers
