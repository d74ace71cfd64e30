"""Recipes: TOML files parsed into frozen, typed dataclasses.

Precedence is CLI (`--set a.b=v`) > file > dataclass defaults. Unknown sections and keys, wrong types and
impossible values are `RecipeError`s that name the key and what would be valid. Each field documents itself
through `metadata["doc"]`; `zoo recipes --fields` prints that reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zoo import registry, tokenizers
from zoo.config import Section, check, doc
from zoo.errors import RecipeError
from zoo.optimizers.classic import OptimConfig  # the default [optim] (adamw); others come from the registry


def valid_device(name: str) -> bool:
    """auto, cpu, cuda, cuda:N or mps."""
    return name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())


# --------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class RunConfig(Section):
    description: str = doc("one line shown by `zoo recipes`", "")
    seed: int = doc("seed for initialisation and dropout (and the data order while data.seed is -1)", 1337)
    device: str = doc("auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", "auto")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = doc(
        "auto: bf16 autocast on GPUs that support it, fp32 elsewhere; fp32; or bf16/fp16 autocast (fp16 uses a "
        "grad scaler)", "auto")
    compile: Literal["auto", True, False] = doc(
        "torch.compile the training step (model, head and loss as one graph); auto: on for attention models on "
        "CUDA, off on CPU and for recurrent models. Checkpoints load either way", "auto")
    tf32: bool = doc("allow TF32 matmuls on CUDA (faster fp32 on Ampere and newer)", True)
    threads: int = doc("CPU threads for torch (0 = torch's choice, capped at the CPUs this process may use)", 0)

    def validate(self) -> None:
        check(valid_device(self.device), "run.device", f"is {self.device!r}; use auto, cpu, cuda, cuda:N or mps")
        check(0 <= self.seed < 2**32, "run.seed", f"is {self.seed}; use a whole number from 0 to 4294967295")
        check(self.threads >= 0, "run.threads", f"is {self.threads}; use 0 (automatic) or a number of threads")


@dataclass(frozen=True)
class DataConfig(Section):
    source: str = doc(
        "embedded:tinyshakespeare; a local file, folder or glob of .txt/.jsonl/.parquet; or hf:NAME[:CONFIG] "
        "(streamed from the Hugging Face Hub)", "embedded:tinyshakespeare")
    tokenizer: str = doc(
        "char: the training text's characters, sorted; gpt2: OpenAI's GPT-2 BPE (50,257 ids); bpe: a byte-level "
        "BPE trained on the train split (data.vocab_size, data.tokenizer_pattern); hf:PATH: the tokenizer.json of a "
        "transformers folder", "char")
    vocab_size: int = doc("bpe: ids in the trained vocabulary, the 256 bytes and <|endoftext|> included (0 = 4,096)",
                          0)
    tokenizer_pattern: Literal["gpt4", "gpt2"] = doc(
        "bpe: the split pattern merges never cross: gpt4 (cl100k's: digits in pieces of 1-3, contractions in any "
        "case) or gpt2 (GPT-2's)", "gpt4")
    tokenizer_max_chars: int = doc("bpe: train the tokenizer on at most this many characters of the train split "
                                   "(0 = all of it)", 2_000_000_000)
    splits: tuple[float, float, float] = doc(
        "train/val/test fractions of a single text, cut by position (test may be 0 with eval.test = false)",
        (0.9, 0.05, 0.05))
    cut: Literal["round", "floor"] = doc(
        "where a fraction cuts a single text: round(n * f), or floor, int(n * f), as nanoGPT's prepare.py", "round")
    encoding_errors: Literal["strict", "replace"] = doc(
        "strict: invalid UTF-8 is an error; replace: decode it as U+FFFD", "strict")
    text_field: str = doc("the text column of .jsonl/.parquet/Hub datasets", "text")
    val_fraction: float = doc("share of a corpus's documents held out for validation (every 1/x-th)", 0.01)
    max_tokens: int = doc("stop preparing a corpus once its train split has this many tokens (0 = all)", 0)
    test_offset: int = doc("the fixed test slice starts this many tokens into the validation split", 0)
    test_tokens: int = doc("length of the fixed test slice (0 = the second half of the validation split)", 0)
    cache_dir: str = doc("where prepared token files go (empty = $ZOO_CACHE or ~/.cache/zoo)", "")
    seed: int = doc(
        "seed of the data order, apart from run.seed: which random windows each step reads (windows), a shuffled "
        "window order per epoch (sequential; unshuffled while -1), the example order (classification); -1 = "
        "run.seed's order, as before data.seed existed. Streams (recurrent models) read the text in order", -1)

    def order_seed(self, run_seed: int) -> int:
        """The seed of the data order: data.seed, or run.seed while data.seed is -1."""
        return self.seed if self.seed >= 0 else run_seed

    def validate(self) -> None:
        check(self.splits[0] > 0 and self.splits[1] > 0 and self.splits[2] >= 0, "data.splits",
              f"is {list(self.splits)}; train and val must be > 0 (test >= 0)")
        check(math.isclose(sum(self.splits), 1.0, abs_tol=1e-6), "data.splits",
              f"is {list(self.splits)}; the fractions must add up to 1")
        check(bool(self.source), "data.source", "is empty; name a text file or embedded:tinyshakespeare")
        check(0 < self.val_fraction < 0.5, "data.val_fraction", f"is {self.val_fraction}; use (0, 0.5)")
        for key in ("max_tokens", "test_offset", "test_tokens"):
            check(getattr(self, key) >= 0, f"data.{key}", f"is {getattr(self, key)}; it must be >= 0")
        check(-1 <= self.seed < 2**32, "data.seed", f"is {self.seed}; use -1 (run.seed's order) or 0 to 4294967295")
        spec, argument = tokenizers.selected(self.tokenizer)
        defaults = DataConfig()
        for key in tokenizers.FIELDS:
            if key not in spec.fields and getattr(self, key) != getattr(defaults, key):
                users = [s.name for s in tokenizers.TOKENIZERS.values() if key in s.fields]
                raise RecipeError(f"recipe value data.{key} is for data.tokenizer = {' or '.join(map(repr, users))}, "
                                  f"not {self.tokenizer!r}; remove it, or set data.tokenizer = \"{users[0]}\"")
        if problem := spec.check(self, argument):
            raise RecipeError(f"recipe value {problem}")
        check(self.tokenizer_max_chars >= 0, "data.tokenizer_max_chars", f"is {self.tokenizer_max_chars}; use >= 0")


@dataclass(frozen=True)
class TrainConfig(Section):
    batch_size: int = doc("sequences per optimizer step (the global batch, over all processes)", 64)
    micro_batch_size: int = doc("sequences per forward pass; 0 = the whole batch (no accumulation)", 0)
    seq_len: int = doc("tokens per sequence (the truncated-BPTT length for recurrent models)", 100)
    lr: float = doc("peak learning rate", 2e-3)
    max_steps: int = doc("stop after this many optimizer steps (0 = no limit)", 0)
    max_tokens: int = doc("stop after this many training tokens (0 = no limit)", 0)
    epochs: float = doc("stop after this many passes over the training split (0 = no limit)", 0.0)
    grad_clip: float = doc("clip the global gradient norm to this (0 = off); the pre-clip norm is logged", 0.0)
    early_stop_patience: int = doc("stop after this many evaluations without a better val loss (0 = off)", 0)

    def validate(self) -> None:
        check(self.batch_size > 0, "train.batch_size", f"is {self.batch_size}; it must be > 0")
        check(self.micro_batch_size >= 0, "train.micro_batch_size", f"is {self.micro_batch_size}; use >= 0")
        if self.micro_batch_size:
            check(self.batch_size % self.micro_batch_size == 0, "train.micro_batch_size",
                  f"is {self.micro_batch_size}; it must divide train.batch_size ({self.batch_size})")
        check(self.seq_len > 0, "train.seq_len", f"is {self.seq_len}; it must be > 0")
        check(self.lr > 0 and math.isfinite(self.lr), "train.lr", f"is {self.lr}; it must be > 0")
        for key in ("max_steps", "max_tokens", "epochs", "grad_clip", "early_stop_patience"):
            value = getattr(self, key)
            check(value >= 0, f"train.{key}", f"is {value}; it must be >= 0")
        check(bool(self.max_steps or self.max_tokens or self.epochs), "train.max_steps",
              "is 0 and so are train.max_tokens and train.epochs; set at least one limit")


@dataclass(frozen=True)
class ScheduleConfig(Section):
    kind: Literal["constant", "step", "cosine", "linear", "wsd"] = doc(
        "constant; step (char-rnn: x decay_rate per epoch after decay_after_epoch); cosine (warmup, then cosine "
        "to min_lr); linear (warmup, then a straight line to min_lr); wsd (warmup-stable-decay: warmup, the peak "
        "rate, then a straight line to min_lr over the last decay_frac of the steps, as modded-nanogpt and "
        "nanochat do)", "constant")
    warmup_steps: int = doc("linear warmup steps (every kind but step)", 0)
    warmup_frac: float = doc("warmup as a fraction of all steps, if warmup_steps is 0 (rounded to a step)", 0.0)
    warmup_start: float = doc(
        "the warmup's first rate as a fraction of the peak: 0 = zoo's ramp, peak x (step + 1) / warmup, reaching "
        "the peak at the warmup's last step; > 0 = torch's LinearLR(start_factor=warmup_start), peak x (start + "
        "(1 - start) x step / warmup), reaching it right after (Giles Thomas uses 1e-5)", 0.0)
    min_lr: float = doc("the floor that cosine, linear and wsd decay to (an absolute learning rate)", 0.0)
    decay_frac: float = doc("wsd: the fraction of all steps (at the end) over which the rate falls to min_lr", 0.2)
    decay_rate: float = doc("step: multiply the lr by this once per epoch", 0.97)
    decay_after_epoch: int = doc("step: start decaying after this many epochs", 10)

    def validate(self) -> None:
        check(self.warmup_steps >= 0, "schedule.warmup_steps", f"is {self.warmup_steps}; it must be >= 0")
        check(0 <= self.warmup_frac < 1, "schedule.warmup_frac", f"is {self.warmup_frac}; use [0, 1)")
        check(0 <= self.warmup_start < 1, "schedule.warmup_start", f"is {self.warmup_start}; use [0, 1)")
        check(self.min_lr >= 0, "schedule.min_lr", f"is {self.min_lr}; it must be >= 0")
        check(0 < self.decay_frac <= 1, "schedule.decay_frac", f"is {self.decay_frac}; use (0, 1]")
        check(0 < self.decay_rate <= 1, "schedule.decay_rate", f"is {self.decay_rate}; use (0, 1]")
        check(self.decay_after_epoch >= 0, "schedule.decay_after_epoch",
              f"is {self.decay_after_epoch}; it must be >= 0")


@dataclass(frozen=True)
class EvalConfig(Section):
    interval: int = doc("evaluate every this many steps (0 = only at the end)", 200)
    max_tokens: int = doc("tokens of the fixed validation slice (0 = the whole split)", 0)
    batch_size: int = doc("streams (or windows) per evaluation batch", 16)
    test: bool = doc("compute the test-split loss at the end (written to summary.json)", True)
    train: bool = doc("language models: also evaluate a fixed slice of the train split at each evaluation (as many "
                      "tokens as the val slice; bpb/train beside bpb/val)", True)
    sample_tokens: int = doc("length of the text sample logged at each evaluation (0 = none)", 200)
    sample_prompt: str = doc("prompt of that sample (empty = the first character of the val split)", "")
    sample_temperature: float = doc("temperature of that sample", 0.8)

    def validate(self) -> None:
        for key in ("interval", "max_tokens", "sample_tokens"):
            check(getattr(self, key) >= 0, f"eval.{key}", f"is {getattr(self, key)}; it must be >= 0")
        check(self.batch_size > 0, "eval.batch_size", f"is {self.batch_size}; it must be > 0")
        check(self.sample_temperature >= 0, "eval.sample_temperature",
              f"is {self.sample_temperature}; it must be >= 0")


@dataclass(frozen=True)
class CheckpointConfig(Section):
    interval: int = doc("save every this many steps (0 = at each evaluation); always at the end", 0)
    keep_last: int = doc("how many of the newest checkpoints to keep (the best is kept as well)", 2)

    def validate(self) -> None:
        check(self.interval >= 0, "checkpoint.interval", f"is {self.interval}; it must be >= 0")
        check(self.keep_last >= 1, "checkpoint.keep_last", f"is {self.keep_last}; it must be >= 1")


@dataclass(frozen=True)
class LogConfig(Section):
    interval: int = doc("print a progress line every this many steps", 50)
    progress: Literal["auto", "bar", "lines"] = doc("auto: a tqdm bar on a terminal, else lines", "auto")

    def validate(self) -> None:
        check(self.interval > 0, "log.interval", f"is {self.interval}; it must be > 0")


@dataclass(frozen=True)
class Recipe:
    """A whole recipe. `model`, `task` and `optim` are the config classes their registries name (by arch, kind
    and name)."""

    model: Any
    task: Any
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: Any = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


SECTIONS = [f.name for f in dataclasses.fields(Recipe)]
POLYMORPHIC = ("model", "task", "optim")  # sections whose config class a selector field chooses
# Kinds of fields (a name ending in "." covers a whole section or prefix):
# - presentation: they describe, re-cadence or display a run, never change what it computes;
PRESENTATION = ("run.description", "run.threads", "log.", "checkpoint.", "eval.interval", "eval.batch_size",
                "eval.sample_")
# - implementation: they swap how the step is computed for an equivalent way (results equal up to rounding);
IMPLEMENTATION = ("model.impl", "run.compile", "model.pad_vocab", "optim.impl")
# - limits: how far a run goes.
LIMITS = ("train.max_steps", "train.max_tokens", "train.epochs", "train.early_stop_patience", "eval.test")
# What a resumed run may change, and what never makes two runs different experiments (zoo compare).
RESUMABLE_CHANGES = LIMITS + PRESENTATION + IMPLEMENTATION
NOT_AN_EXPERIMENT = PRESENTATION + ("run.seed", "data.seed")


def matches(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether a dotted key is one of `patterns` (or under one ending in ".")."""
    return any(key == p or (p.endswith((".", "_")) and key.startswith(p)) for p in patterns)


# ------------------------------------------------------------------------------------------- building
# Names people bring from other trainers (nanoGPT, the book, Hugging Face), for "did you mean"
ALIASES = {
    "learning_rate": "lr", "lr_rate": "lr", "rate": "lr", "num_epochs": "epochs", "epoch": "epochs",
    "max_iters": "max_steps", "iters": "max_steps", "steps": "max_steps", "num_steps": "max_steps",
    "bs": "batch_size", "batch": "batch_size", "block_size": "seq_len", "seq_length": "seq_len",
    "sequence_length": "seq_len", "context": "context_length", "n_positions": "context_length",
    "clip": "grad_clip", "clip_grad": "grad_clip", "gradient_clip": "grad_clip", "max_grad_norm": "grad_clip",
    "wd": "weight_decay", "n_layers": "n_layer", "layers": "num_layers", "hidden": "hidden_size",
    "hidden_dim": "hidden_size", "optimizer": "name", "warmup": "warmup_steps", "warmup_iters": "warmup_steps",
    "drop_rate": "dropout", "dtype": "precision", "amp": "precision", "mixed_precision": "precision",
    "gradient_accumulation_steps": "micro_batch_size", "emb_dim": "n_embd", "n_heads": "n_head",
    "data": "source", "path": "source", "file": "source", "dataset": "source", "data_path": "source",
}


def _suggest(name: str, valid: list[str], elsewhere: dict[str, list[str]] | None = None) -> str:
    """"; did you mean 'x'? (valid: ...)": close names (difflib), known aliases, a valid name the unknown one
    starts with (lr_rate -> lr), and the same name in another section (epochs -> train.epochs)."""
    target = ALIASES.get(name.lower(), name)
    found = [target] if target in valid and target != name else []
    found += difflib.get_close_matches(name, valid, n=2, cutoff=0.6)
    found += [v for v in valid if len(v) > 1 and (name.startswith(v + "_") or (len(name) > 2 and v.startswith(name)))]
    for section, names in (elsewhere or {}).items():
        found += [f"{section}.{n}" for n in (target, name) if n in names]
    found = list(dict.fromkeys(found))[:3]
    hint = "; did you mean " + " or ".join(f"'{f}'" for f in found) + "?" if found else ""
    return f"{hint} (valid: {', '.join(valid)})"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (tuple, list):
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if not any(type(value) is type(c) and value == c for c in choices):
            raise RecipeError(f"recipe value {key} is {value!r}; use one of {', '.join(map(repr, choices))}")
        return value
    if origin in (tuple, list):
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise RecipeError(f"recipe value {key} must be a {_type_name(annotation)}, got {value!r}")
        fixed = [a for a in args if a is not Ellipsis]
        if origin is tuple and Ellipsis not in args and len(value) != len(args):
            raise RecipeError(f"recipe value {key} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, fixed[0] if len(fixed) == 1 else fixed[i], f"{key}[{i}]")
                     for i, v in enumerate(value))
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a config class used an annotation this parser does not know
        raise TypeError(f"unsupported annotation {annotation!r} for {key}")
    if not ok:
        raise RecipeError(
            f"recipe value {key} must be {_type_name(annotation)}, got {type(value).__name__} {value!r}"
        )
    return value


def build_config(cls: type, raw: dict[str, Any], section: str, elsewhere: dict[str, list[str]] | None = None) -> Any:
    """Build the dataclass `cls` from `raw`, rejecting unknown keys (with suggestions, also from the `elsewhere`
    sections' names) and wrong types, then validate it."""
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe section [{section}] must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise RecipeError(f"unknown recipe key {section}.{key}{_suggest(key, names, elsewhere)}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    config = cls(**kwargs)
    config.validate()
    return config


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as TOML, or the bare string if it is not TOML); `a={...}` (an
    inline TOML table) -> (["a"], the table), which replaces the whole section (e.g. another optimizer, whose
    fields differ: `optim={name = "muon"}`)."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like section.key=value (e.g. train.lr=1e-3)")
    key, raw = item.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    if len(path) == 1 and path[0] and isinstance(value, dict):
        return path, value
    if len(path) < 2 or not all(path):
        raise RecipeError(f"override {item!r} must name section.key (e.g. train.lr=1e-3), or replace a whole "
                          "section with an inline table (e.g. optim={name = \"muon\"})")
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b=value` applied."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {part} is not a section")
        node[path[-1]] = value
    return raw


def _polymorphic(raw: dict[str, Any], section: str, selector: str, known: dict[str, type],
                 default: str | None = None) -> Any:
    table = raw.get(section, {})
    if not isinstance(table, dict):
        raise RecipeError(f"recipe section [{section}] must be a table, not {table!r} (e.g. [{section}] then "
                          f"{selector} = ... on the next line)")
    table = {selector: default, **table} if default else dict(table)
    name = table.get(selector)
    if name is None:
        raise RecipeError(f"recipe has no {section}.{selector}; choose one of: {', '.join(sorted(known))}")
    if name not in known:
        raise RecipeError(f"unknown {section}.{selector} {name!r}; known: {', '.join(sorted(known))}")
    try:
        return build_config(known[name], table, section, _fields_elsewhere(section))
    except RecipeError as exc:
        others = {n for n, cls in known.items() if cls is not known[name]
                  and any(f"unknown recipe key {section}.{f.name}" in str(exc) for f in dataclasses.fields(cls))}
        if not others:
            raise
        raise RecipeError(f"{exc}; it is a field of {section}.{selector} = {' or '.join(sorted(others))}: to switch to "
                          f"{name!r}, replace the whole section, e.g. --set '{section}={{{selector} = \"{name}\"}}'") \
            from None


def _fields_elsewhere(section: str) -> dict[str, list[str]]:
    """The field names of the fixed sections (and the default optimizer's) other than `section`, for
    suggestions."""
    hints = {**typing.get_type_hints(Recipe), "optim": OptimConfig}
    return {name: [f.name for f in dataclasses.fields(hints[name])] for name in SECTIONS
            if name not in ("model", "task", section)}


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """Build and validate a Recipe from a parsed TOML document."""
    for section in raw:
        if section not in SECTIONS:
            raise RecipeError(f"unknown recipe section [{section}]{_suggest(section, SECTIONS)}")
    model = _polymorphic(raw, "model", "arch", registry.model_configs())
    task = _polymorphic(raw, "task", "kind", registry.task_configs(), default="lm")
    optim = _polymorphic(raw, "optim", "name", registry.optimizer_configs(), default="adamw")
    hints = typing.get_type_hints(Recipe)
    sections = {name: build_config(hints[name], raw.get(name, {}), name, _fields_elsewhere(name))
                for name in SECTIONS if name not in POLYMORPHIC}
    recipe = Recipe(model=model, task=task, optim=optim, **sections)
    if recipe.data.splits[2] == 0 and recipe.eval.test:
        raise RecipeError("recipe value data.splits leaves no test split; set eval.test = false as well (e.g. for "
                          "nanoGPT's 90/10 train/val cut), or give the test split a fraction")
    schedule = recipe.schedule
    if schedule.kind in ("cosine", "linear", "wsd") and schedule.min_lr > recipe.train.lr:
        raise RecipeError(f"recipe value schedule.min_lr is {schedule.min_lr:g}, above train.lr "
                          f"({recipe.train.lr:g}): the rate would rise {schedule.min_lr / recipe.train.lr:.3g}x "
                          "during the decay; min_lr is an absolute rate, so set it at or below train.lr")
    for part in (model, task, optim):
        part.validate_recipe(recipe)
    return recipe


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, turning I/O and syntax problems into one-line RecipeErrors."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist (`zoo recipes` lists the shipped ones)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe file {path} is not UTF-8 text") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, apply `--set` overrides, and build the typed Recipe."""
    return recipe_with_overrides(read_toml(path), overrides or [], str(path))


def recipe_with_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> Recipe:
    """The Recipe of a parsed TOML document (read from `source`) with `--set` overrides applied. An error names
    where the bad value came from: the `--set` that introduced it, or else the file."""
    merged = apply_overrides(raw, overrides)  # a malformed override is named by its own message
    _check_size_override(raw, overrides)
    try:
        return recipe_from_dict(merged)
    except RecipeError as exc:
        raise RecipeError(f"{_blame(raw, overrides, str(exc), source)}: {exc}") from None


DIMENSIONS = ("n_layer", "n_head", "n_embd")


def _check_size_override(raw: dict[str, Any], overrides: list[str]) -> None:
    """`--set model.size=NAME` after the recipe (its file, or an earlier --set) fixed the dimensions: those would
    win over the named size without a word, so say how to get the size asked for."""
    parsed = [parse_override(o) for o in overrides]
    last = max((i for i, (path, value) in enumerate(parsed) if path == ["model", "size"] and value
                and isinstance(value, str)), default=None)
    if last is None:
        return
    before = apply_overrides(raw, overrides[:last]).get("model")
    before = before if isinstance(before, dict) else {}
    after = {path[1] for path, _ in parsed[last + 1:] if len(path) == 2 and path[0] == "model"}
    after |= {k for path, value in parsed[last + 1:] if path == ["model"] and isinstance(value, dict) for k in value}
    fixed = [k for k in DIMENSIONS if before.get(k) and k not in after]
    if fixed:
        size = parsed[last][1]
        shown = ", ".join(f"model.{k} = {before[k]}" for k in fixed)
        zeros = " ".join(f"--set model.{k}=0" for k in fixed)
        raise RecipeError(f"--set model.size={size}: the recipe already sets {shown}, which win over a named size; "
                          f"add {zeros} to train {size}'s dimensions (0 = from size), or set the dimensions you "
                          "want instead of the size")


def _blame(raw: dict[str, Any], overrides: list[str], message: str, source: str) -> str:
    """The first of file, file + the first override, ... that already fails with `message`."""
    for i in range(len(overrides)):
        try:
            recipe_from_dict(apply_overrides(raw, overrides[:i]))
        except RecipeError as exc:
            if str(exc) == message:
                return source if i == 0 else f"--set {overrides[i - 1]}"
    return f"--set {overrides[-1]}" if overrides else source


# ------------------------------------------------------------------------------------------- writing
def recipe_to_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The recipe as nested plain data (tuples become lists), every field present."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = getattr(recipe, name)
        out[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
    return out


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write a two-level dict (sections of scalars and lists) as TOML."""
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def flatten(data: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1} (entries that are not tables are left out)."""
    return {f"{s}.{k}": v for s, table in data.items() if isinstance(table, dict) for k, v in table.items()}


def completed(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe with every field present: fields added to zoo after the run was made take their defaults
    (which reproduce the behaviour from before they existed). A recipe zoo can no longer read stays as it is."""
    try:
        return recipe_to_dict(recipe_from_dict(raw))
    except RecipeError:
        return raw


def recipe_changes(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    """Dotted keys whose values differ and that a resumed run may not change (the `old` recipe completed with
    the defaults of fields it predates)."""
    a, b = flatten(completed(old)), flatten(new)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in changed if not matches(k, RESUMABLE_CHANGES)]


def field_reference() -> str:
    """Markdown reference of every recipe section and field (defaults and docs)."""
    lines = []
    groups: list[tuple[str, type]] = [(n, typing.get_type_hints(Recipe)[n]) for n in SECTIONS
                                      if n not in POLYMORPHIC]
    groups += [(f"model (arch = \"{n}\")", c) for n, c in registry.model_configs().items()]
    groups += [(f"task (kind = \"{n}\")", c) for n, c in registry.task_configs().items()]
    optimizers: dict[type, list[str]] = {}
    for n, c in registry.optimizer_configs().items():
        optimizers.setdefault(c, []).append(n)
    groups += [(f"optim (name = {' | '.join(map(json.dumps, names))})", c) for c, names in optimizers.items()]
    for title, cls in groups:
        lines.append(f"[{title}]")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            lines.append(f"  {f.name} = {_toml_value(_plain(default))}   # {_type_name(hints[f.name])}: "
                         f"{f.metadata.get('doc', '')}")
        lines.append("")
    return "\n".join(lines)

