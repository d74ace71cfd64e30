"""Answers to instructions: a prompt in the run's format with its response header (`### Response:`), continued
greedily to the end-of-text token or a token limit (the book generates from the prompt alone and strips the header
the model writes; with a BPE that merges punctuation and newlines, the prompt alone ends at a token boundary no
training example has); and the share of answers that follow the format: they end within the limit and do not
write the prompt's markers again (an answer that starts a new "### Instruction:" is echoing)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from zoo.tasks.instruct.data import Format


def answer(model: nn.Module, tokenizer, fmt: Format, instruction: str, input_text: str, max_new_tokens: int,
           device: torch.device, max_length: int = 0, **sampling) -> tuple[str, bool]:
    """(the response, whether it ended by itself) of a continuation of the prompt: greedy, unless `sampling`
    gives zoo.generate's temperature, top_k, top_p and generator."""
    from zoo.generate import generate

    prompt = fmt.generation_prompt(instruction, input_text)
    ids = tokenizer.encode(prompt)
    if max_length:
        ids = ids[-max_length:]
    end = tokenizer.eot if tokenizer.eot is not None else tokenizer.pad_id
    sampling.setdefault("temperature", 0.0)
    out = generate(model, ids, max_new_tokens, device=device, stop_token=end, **sampling)
    return fmt.answer(tokenizer.decode(out)), len(out) < max_new_tokens


def follows_format(response: str, ended: bool, fmt: Format) -> bool:
    return ended and bool(response) and not any(marker in response for marker in fmt.markers)


def answer_records(model: nn.Module, tokenizer, fmt: Format, records: list[dict], config, device: torch.device,
                   max_length: int = 0) -> tuple[list[dict], dict]:
    """Each record with its `model_response` (the book's field), and the shares for summary.json."""
    rows, ended_n, follow_n = [], 0, 0
    for rec in records:
        response, ended = answer(model, tokenizer, fmt, rec[config.instruction_field],
                                 rec.get(config.input_field) or "", config.response_tokens, device, max_length)
        rows.append({**rec, "model_response": response})
        ended_n += ended
        follow_n += follows_format(response, ended, fmt)
    n = max(1, len(records))
    return rows, {"test_answers": len(records), "answers_ended": ended_n / n, "format_following": follow_n / n}


def write_responses(path: Path, rows: list[dict]) -> None:
    """The answers as the book's instruction-data-with-response.json, written atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows, indent=4, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
