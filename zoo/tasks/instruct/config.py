"""The `[task]` table of instruction fine-tuning (`kind = "instruct"`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from zoo.config import Section, check, doc


@dataclass(frozen=True)
class InstructTaskConfig(Section):
    uses_seq_len: ClassVar[bool] = False  # examples are cut at task.max_length
    kind: str = doc("instruct", "instruct")
    base: str = doc("the pretrained language model: a run directory or hf:gpt2 / hf:PATH "
                    "(zoo finetune-instruct --base sets it)", "")
    base_checkpoint: str = doc("which checkpoint of a base run: best, latest or step-N", "best")
    prompt_format: Literal["alpaca", "phi3"] = doc(
        "alpaca: the book's \"Below is an instruction ...\" with ### Instruction / ### Input / ### Response; "
        "phi3: <|user|> ... <|assistant|>: (the book's exercise 7.1)", "alpaca")
    mask_prompt: bool = doc("leave the prompt's tokens out of the training loss (the book's exercise 7.2); val "
                            "and test losses are on the response tokens either way", False)
    max_length: int = doc("the longest example in tokens, prompt and response (0 = the model's context "
                          "length, or 1,024 for a recurrent model)", 0)
    too_long: Literal["truncate", "refuse"] = doc(
        "an example longer than max_length: truncate it (the book's; counted in the start line) or refuse the data",
        "truncate")
    split: Literal["book", "ordered"] = doc(
        "book: the records in file order, the first 85% train, the next 10% test, the rest val (935 / 110 / 55 of "
        "the book's 1,100); ordered: data.splits (train, val, test) in file order", "book")
    instruction_field: str = doc("the records' instruction field", "instruction")
    input_field: str = doc("the records' optional input field (empty or absent = no input)", "input")
    output_field: str = doc("the records' response field", "output")
    response_tokens: int = doc("answers to the test split stop at <|endoftext|> or after this many tokens", 256)
    answers: bool = doc("write greedy answers to the test split to runs/NAME/test_responses.json at the end", True)

    def validate(self) -> None:
        check(self.max_length >= 0, "task.max_length", f"is {self.max_length}; use 0 (the context) or more")
        check(self.response_tokens > 0, "task.response_tokens", f"is {self.response_tokens}; it must be > 0")
        for key in ("instruction_field", "output_field"):
            check(bool(getattr(self, key)), f"task.{key}", "is empty; name the records' field")
