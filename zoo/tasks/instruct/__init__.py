"""Instruction fine-tuning (`task.kind = "instruct"`; Raschka's ch. 7, and how Giles Thomas judges a base model):
a base language model (a zoo run or hf: GPT-2 weights) trained on instruction / input / output records in a
prompt format, then asked the test split's instructions. `zoo finetune-instruct --base` runs it."""

from __future__ import annotations

from zoo.bases import Base, resolve_base
from zoo.errors import DataError, RecipeError
from zoo.models.base import Backbone
from zoo.specs import TaskSpec
from zoo.tasks.base import MicroBatchPlan
from zoo.tasks.instruct.config import InstructTaskConfig
from zoo.tasks.instruct.data import FORMATS, Example, read_records, split_records
from zoo.tasks.instruct.task import Instructions, InstructTask

__all__ = ["InstructTaskConfig", "InstructTask", "Instructions", "FORMATS", "SPEC", "load_data", "build"]

KEPT_MODEL_FIELDS = ("dropout",)  # what an instruction recipe's [model] may set over the base's architecture


def base_tokenizer(recipe):
    """The base's own tokenizer, strict (text it cannot encode is an error, not a fallback character)."""
    if recipe.task.base:
        return resolve_base(recipe.task.base).tokenizer(any_text=False)
    from zoo.tokenizers import selected

    spec, argument = selected(recipe.data.tokenizer)
    if spec.trained or not spec.corpus:
        raise RecipeError(f"an instruction recipe with data.tokenizer = {recipe.data.tokenizer!r} needs task.base "
                          "(the base's own tokenizer); use zoo finetune-instruct --base")
    return spec.fit(recipe.data, argument, lambda which: iter(()))


def load_data(recipe, tokenizer=None, progress: bool = True):
    """(tokenizer, Instructions, info): the records read, checked, split and encoded with the base's tokenizer."""
    cfg: InstructTaskConfig = recipe.task
    tokenizer = tokenizer or base_tokenizer(recipe)
    fields = (cfg.instruction_field, cfg.input_field, cfg.output_field)
    records = read_records(recipe.data.source, fields)
    fmt = FORMATS[cfg.prompt_format]
    missing = sorted({c for rec in records for key in fields for c in tokenizer.unknown(rec.get(key) or "")}
                     | set(tokenizer.unknown(fmt.full("", "x", ""))))
    if missing:
        shown = ", ".join(repr(c) for c in missing[:12]) + (" ..." if len(missing) > 12 else "")
        raise DataError(f"the base's vocabulary cannot encode {len(missing)} characters of the instruction data "
                        f"({shown}); fine-tune a base whose tokenizer covers the data (a BPE or GPT-2 run)")
    parts = split_records(records, cfg.split, recipe.data.splits)

    def encode(rec: dict) -> Example:
        instruction, text = rec[cfg.instruction_field], rec.get(cfg.input_field) or ""
        ids = tokenizer.encode(fmt.full(instruction, text, rec[cfg.output_field]))
        return Example(ids, len(tokenizer.encode(fmt.prompt(instruction, text))))

    data = Instructions(**{split: [encode(r) for r in part] for split, part in parts.items()}, records=parts)
    return tokenizer, data, {"source": recipe.data.source, "examples": {s: len(p) for s, p in parts.items()}}


def wrap(config: InstructTaskConfig, backbone: Backbone) -> Backbone:
    """The backbone with its own LM head: the tuned model is a language model like its base."""
    return backbone


def pretrained(config: InstructTaskConfig, model: Backbone) -> str:
    """Start from the base's weights."""
    if not config.base:
        return model.load_pretrained()
    return resolve_base(config.base).load_into(model, config.base_checkpoint)


def build(config: InstructTaskConfig, recipe, tokenizer, data: Instructions, model: Backbone,
          plan: MicroBatchPlan) -> InstructTask:
    limit = model.max_seq_len
    if config.max_length and limit and config.max_length > limit:
        raise RecipeError(f"recipe value task.max_length is {config.max_length}, longer than the model's context "
                          f"({limit}); lower it (0 = the context)")
    max_length = config.max_length or limit or 1024
    too_long = {split: sum(len(e.ids) + 1 > max_length for e in data[split]) for split in ("train", "val", "test")}
    data.truncated = sum(too_long.values())
    if data.truncated and config.too_long == "refuse":
        raise DataError(f"{data.truncated} instruction examples are longer than {max_length} tokens ({too_long}); "
                        "shorten them, raise task.max_length, or set task.too_long = \"truncate\"")
    no_response = {split: sum(e.prompt_length >= max_length for e in data[split]) for split in ("train", "val", "test")}
    for split in ("train", "val", "test"):
        if no_response[split] == len(data[split]):
            raise DataError(f"every {split} example's prompt is {max_length} tokens or longer, so no response token "
                            f"is left to {'train' if split == 'train' else 'score'}; use a base with a longer context "
                            "or raise task.max_length")
    if data.truncated and plan.rank == 0:
        print(f"note: {data.truncated} examples longer than {max_length} tokens are cut to it ({too_long}; "
              f"{sum(no_response.values())} of them keep no response token)", flush=True)
    return InstructTask(config, data, tokenizer=tokenizer, batch_size=recipe.train.batch_size,
                        seed=recipe.data.order_seed(recipe.run.seed), eval_batch_size=recipe.eval.batch_size,
                        max_length=max_length, vocab_size=model.vocab_size)


def finetune(raw: dict, base: Base, recipe_stem: str) -> tuple[dict, str]:
    """An instruction recipe completed for a base: the base's architecture (with the recipe's dropout) and
    tokenizer, and `task.base`; the run's default name is `<recipe>_<base>`."""
    import copy

    raw = copy.deepcopy(raw)
    kept = {k: v for k, v in (raw.get("model") or {}).items() if k in KEPT_MODEL_FIELDS}
    raw["model"] = {**base.model_section(), **kept}
    raw.setdefault("data", {}).update(base.tokenizer_fields())
    raw.setdefault("task", {})["base"] = base.spec
    return raw, f"{recipe_stem}_{base.name}"


SPEC = TaskSpec(name="instruct", config=InstructTaskConfig, load_data=load_data, wrap=wrap, build=build,
                finetune=finetune, pretrained=pretrained)
