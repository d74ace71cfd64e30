"""Instruction records (Alpaca-style JSON or JSONL: instruction, optional input, output), their splits, the prompt
formats, and the batches: each example's ids followed by the end-of-text token, padded to the batch's longest with
it, every padding target but the first set to -100 (Raschka's ch. 7 collate), the prompt's targets -100 too where
asked (exercise 7.2), then cut to the allowed length."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.errors import DataError

IGNORE = -100
EMBEDDED = {"instructions": "instruction-data.json", "instructions_preference": "instruction-data-with-preference.json"}
ALPACA_HEAD = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.")


@dataclass(frozen=True)
class Format:
    """A prompt format: the prompt of a record, the header its response follows, and the markers an answer must
    not contain (an answer that writes them is echoing the prompt)."""

    name: str
    instruction: str  # with {instruction}
    input: str  # with {input}; left out when the record has no input
    response: str  # the header before the response
    markers: tuple[str, ...]

    def prompt(self, instruction: str, input_text: str = "") -> str:
        return self.instruction.format(instruction=instruction) + (self.input.format(input=input_text)
                                                                    if input_text else "")

    def full(self, instruction: str, input_text: str, output: str) -> str:
        return self.prompt(instruction, input_text) + self.response + output

    def generation_prompt(self, instruction: str, input_text: str = "") -> str:
        """What an answer continues: the prompt and the response header. A training example's ids start with
        this text's, whatever the tokenizer; the prompt alone may not: a BPE that merges a prompt's last
        character with the header's newlines (".\n") would be asked from a token boundary it never saw."""
        return self.prompt(instruction, input_text) + self.response

    def answer(self, generated: str) -> str:
        """The response in a generated text: a header it wrote removed (the book's rule, for a generation that
        continued the prompt alone), stripped."""
        return generated.replace(self.response.strip(), "", 1).strip()


FORMATS = {
    "alpaca": Format("alpaca", ALPACA_HEAD + "\n\n### Instruction:\n{instruction}", "\n\n### Input:\n{input}",
                     "\n\n### Response:\n", ("### Instruction:", "### Input:", "### Response:")),
    "phi3": Format("phi3", "<|user|>\n{instruction}", "\n{input}", "\n<|assistant|>:\n", ("<|user|>", "<|assistant|>")),
}


def read_records(path: str, fields: tuple[str, str, str], need: tuple[str, ...] = ()) -> list[dict]:
    """The records of a JSON list or a JSONL file, each checked: the instruction and output fields present and
    non-empty strings (the input optional), and any `need`ed fields (a preference file's chosen/rejected)."""
    if path.startswith("embedded:"):
        name = path.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise DataError(f"unknown embedded instruction data {name!r}; embedded: {', '.join(EMBEDDED)}")
        import importlib.resources

        file = Path(str(importlib.resources.files("zoo.data") / "embedded" / EMBEDDED[name]))
    else:
        file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"instruction data {file} does not exist; set data.source to a .json or .jsonl file of "
                        "records with instruction, input and output")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"instruction data {file} is not UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"instruction data {file} is neither a JSON list nor JSONL (line {exc.lineno}: "
                        f"{exc.msg}); give a .json list of records or one JSON object a line") from None
    if not isinstance(records, list) or not records:
        raise DataError(f"instruction data {file} holds no records; it needs a list of objects")
    instruction, input_field, output = fields
    for i, rec in enumerate(records):
        where = f"instruction data {file}, record {i + 1}"
        if not isinstance(rec, dict):
            raise DataError(f"{where} is a {type(rec).__name__}, not an object with {instruction!r} and {output!r}")
        for key in (instruction, output, *need):
            if not isinstance(rec.get(key), str):
                raise DataError(f"{where} has no {key!r} text (fields: {', '.join(rec) or 'none'}); set "
                                f"task.{'instruction' if key == instruction else 'output'}_field or fix the record")
            if not rec[key].strip():
                raise DataError(f"{where} has an empty {key!r}; give it text or remove the record")
        if rec.get(input_field) is not None and not isinstance(rec.get(input_field), str):
            raise DataError(f"{where} has a {input_field!r} that is not text")
    return records


def split_records(records: list, split: str, fractions: tuple[float, float, float]) -> dict[str, list]:
    """train/val/test in file order: the book's 85% / rest / 10% (test before val in the file), or
    data.splits."""
    n = len(records)
    if split == "book":
        a, b = int(n * 0.85), int(n * 0.85) + int(n * 0.1)
        parts = {"train": records[:a], "test": records[a:b], "val": records[b:]}
    else:
        a, b = int(round(n * fractions[0])), int(round(n * (fractions[0] + fractions[1])))
        parts = {"train": records[:a], "val": records[a:b], "test": records[b:]}
    for name, part in parts.items():
        if not part:
            raise DataError(f"the {name} split of the instruction data is empty ({n} records); use more records")
    return parts


@dataclass
class Example:
    ids: list[int]  # prompt and response
    prompt_length: int  # tokens of the prompt alone (the book's instruction_length)


def collate(examples: list[Example], pad_id: int, end_id: int, max_length: int, mask_prompt: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a batch as the book builds them: each example + the end token, padded with pad_id to
    the longest + 1, shifted by one; the targets' padding after the first end token -100, the prompt's targets
    -100 too with `mask_prompt`, then both cut to max_length."""
    longest = max(len(e.ids) + 1 for e in examples)
    xs, ys = [], []
    for e in examples:
        row = e.ids + [end_id] + [pad_id] * (longest - len(e.ids) - 1)
        x, y = torch.tensor(row[:-1]), torch.tensor(row[1:])
        y[len(e.ids):] = IGNORE  # the padding after the first end token (which stays: the model learns to end)
        if mask_prompt:
            y[: max(0, e.prompt_length - 1)] = IGNORE
        xs.append(x[:max_length])
        ys.append(y[:max_length])
    return torch.stack(xs), torch.stack(ys)
