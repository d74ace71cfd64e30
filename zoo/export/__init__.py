"""Hugging Face export: `zoo export-hf RUN OUT [--push-to-hub REPO]`.

Each architecture's ModelSpec names its exporter module (zoo/export/gpt2.py, zoo/export/rnn.py): GPT-2-family
runs go to native `GPT2LMHeadModel`/`GPT2ForSequenceClassification` or `LlamaForCausalLM`/
`LlamaForSequenceClassification` where their options make them exactly that, otherwise to zoo's remote code;
char-RNNs (torch.nn or from-scratch cells) go out with their own configuration and modelling code
(`zoo/export/remote/`, copied into the folder and named in config.json's `auto_map`), loadable with
`trust_remote_code=True` and needing only torch and transformers. Tokenizers go along: GPT-2 BPE, or the
character vocabulary as a `tokenizers`-backed fast tokenizer. This module writes the folder atomically, the model
card and the upload. Only safetensors, JSON, the modelling code and a model card are written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from zoo.checkpoint import recover_swap, swap_in
from zoo.errors import ZooError
from zoo.export.common import transformers_module
from zoo.models.base import count_parameters
from zoo.runs import load_run, read_summary
from zoo.specs import INSTRUCTION_TUNED, LANGUAGE_MODELS


def describe(run) -> str:
    """The architecture in one line (the exporter's words)."""
    return _exporter(run).describe(run)


def _exporter(run):
    """The exporter module of the run's architecture (its ModelSpec names it)."""
    import importlib

    from zoo import registry

    spec = registry.model_spec(run.recipe.model.arch)
    if not spec.exporter:
        raise ZooError(f"zoo export-hf cannot export {run.recipe.model.arch} runs yet")
    return importlib.import_module(spec.exporter)


def source_name(source: str) -> str:
    """A data source as a model card may show it: Hub ids and embedded names as they are, a local file or
    folder by its name only (no path of the machine it was trained on)."""
    if source.startswith("embedded:"):
        return source
    if source.startswith("hf:"):
        name = source[3:]
        return source if not name.startswith((".", "/", "~")) and not Path(name).expanduser().exists() \
            else f"hf:{Path(name).name}"
    path = Path(source)
    return f"{path.parent.name}/{path.name}" if any(c in path.name for c in "*?[") else path.name


# recipe fields a card leaves out of its list of choices: data handling, cadences and descriptions
_NOT_CHOICES = ("run.description", "run.device", "run.threads", "run.compile", "data.", "eval.", "checkpoint.",
                "log.", "task.kind", "model.arch", "model.init_from", "model.pad_vocab", "optim.impl")


def _choices(run) -> list[tuple[str, Any]]:
    """The recipe's choices that differ from zoo's defaults for its architecture and task (its
    interventions): (dotted key, value)."""
    from zoo.recipe import Recipe, flatten, matches, recipe_to_dict

    recipe = run.recipe
    default = Recipe(model=type(recipe.model)(), task=type(recipe.task)())
    mine, base = flatten(recipe_to_dict(recipe)), flatten(recipe_to_dict(default))
    return [(k, v) for k, v in mine.items() if v != base.get(k) and not matches(k, _NOT_CHOICES)]


def _card_recipe(run) -> str:
    """The resolved recipe for the card: local paths reduced to names, no description (the shipped recipe's,
    which overrides may have made untrue: a "2 x 256 LSTM" trained with --set model.hidden_size=64)."""
    from zoo.recipe import dumps_toml, recipe_to_dict

    data = recipe_to_dict(run.recipe)
    data["run"].pop("description", None)
    data["data"]["source"] = source_name(data["data"]["source"])
    if data["data"].get("cache_dir"):
        data["data"]["cache_dir"] = ""
    if str(data["model"].get("init_from", "")).startswith("hf:"):
        data["model"]["init_from"] = source_name(data["model"]["init_from"])
    return dumps_toml(data)


def usage_prompt(run) -> str:
    """A prompt for the card's usage example, from the run's own data: eval.sample_prompt, else the start of a
    local or embedded text (a few words), else the tokenizer's end-of-text token."""
    if run.recipe.eval.sample_prompt:
        return run.recipe.eval.sample_prompt
    source = run.recipe.data.source
    local = Path(source).expanduser()
    if source.startswith("embedded:") or (local.is_file() and local.suffix == ".txt"
                                         and local.stat().st_size < 64 * 2**20):
        from zoo.data import read_text
        from zoo.errors import DataError

        try:
            words = read_text(source, "replace").strip().split("\n")[0].split()[:4]
        except (DataError, OSError):
            words = []
        if words:
            return " ".join(words)
    return run.tokenizer.eot_text or "\n"


def _metrics_table(summary: dict) -> str:
    rows = [("best validation loss", "best_val_loss"), ("test loss (best checkpoint)", "test_loss"),
            ("test loss (last weights)", "final_test_loss"), ("best validation bits per byte", "best_val_bpb"),
            ("test bits per byte (best checkpoint)", "test_bpb")]
    lines = [f"| {label} | {summary[key]:.4f} |" for label, key in rows if isinstance(summary.get(key), int | float)]
    for key in ("accuracy", "precision", "recall", "f1"):
        if key in summary.get("test_metrics", {}):
            lines.append(f"| test {key} | {summary['test_metrics'][key]:.4f} |")
    for label, key in (("training tokens", "tokens"), ("training examples", "examples"), ("steps", "step")):
        if isinstance(summary.get(key), int):
            lines.append(f"| {label} | {summary[key]:,} |")
    if not lines:
        return "No evaluation yet.\n"
    return "| metric | value |\n|---|---:|\n" + "\n".join(lines) + "\n\nLosses are in nats per token.\n"


def _prompt_section(run, trust: str) -> tuple[str, str] | None:
    """An instruction-tuned run's prompt format for the card, and a usage example that wraps an instruction."""
    if run.recipe.task.kind not in INSTRUCTION_TUNED:
        return None
    from zoo.tasks.instruct.data import FORMATS

    fmt = FORMATS[run.recipe.task.prompt_format]
    example = fmt.generation_prompt("Rewrite the sentence using a simile.", "The car is very fast.")
    section = (f"\n## Prompt format\n\nInstruction-tuned ({run.recipe.task.kind}) in the `{fmt.name}` format: the "
               f"model continues a prompt such as\n\n```\n{example}\n```\n\nwith its answer, then ends with its "
               "end-of-text token (`zoo sample RUN --instruction ... --input ...` wraps it).\n")
    usage = (f'pipe = pipeline("text-generation", model="PATH"{trust})\nprompt = {json.dumps(example)}\n'
             'text = pipe(prompt, max_new_tokens=256, do_sample=False)[0]["generated_text"][len(prompt):]\n'
             f'print(text.replace({json.dumps(fmt.response.strip())}, "", 1).strip())')
    return section, usage


def model_card(run, out: Path, kind: str, remote: bool) -> None:
    summary = read_summary(run.run_dir) or {}
    backbone = getattr(run.model, "backbone", run.model)
    classify = run.recipe.task.kind == "classify"
    trust = ", trust_remote_code=True" if remote else ""
    usage = (f'pipe = pipeline("text-classification", model="PATH"{trust})\nprint(pipe("WINNER!! Claim your prize"))'
             if classify else
             f'pipe = pipeline("text-generation", model="PATH"{trust})\n'
             f'print(pipe({json.dumps(usage_prompt(run))}, max_new_tokens=50, do_sample=False)[0]["generated_text"])')
    files = ", ".join(f"`{p.name}`" for p in sorted(out.glob("*.py")))
    code = (f"\nThe modelling code ({files}) ships in this folder and needs only torch and transformers; load it "
            "with `trust_remote_code=True`.\n" if remote else "")
    choices = "\n".join(f"- `{k} = {json.dumps(v)}`" for k, v in _choices(run)) or "- none (zoo's defaults)"
    prompt = _prompt_section(run, trust)
    if prompt:
        usage = prompt[1]
    text = f"""---
library_name: transformers
pipeline_tag: {"text-classification" if classify else "text-generation"}
license: mit
---
# {run.run_dir.name}

A {kind} trained with zoo (`zoo train`), exported with `zoo export-hf`.

- Architecture: {describe(run)}; vocabulary {backbone.vocab_size} ({run.tokenizer.kind} tokenizer)
- Parameters: {count_parameters(run.model):,}
- Checkpoint: {run.checkpoint.name} (run {summary.get('status', 'still training, or stopped before its end')})
- Data: `{source_name(run.recipe.data.source)}`{f" (labels: {', '.join(run.recipe.task.labels)})" if classify else ""}
- Licence: the weights are released under MIT; the training data keeps its own licence (see zoo's
  data provenance notes).
{code}{prompt[0] if prompt else ""}
## Metrics

{_metrics_table(summary)}
## Training choices

The recipe fields that differ from zoo's defaults for this architecture (its interventions):

{choices}

## Usage

```python
from transformers import pipeline
{usage}
```

## Recipe
```toml
{_card_recipe(run)}```
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def push_to_hub(out: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face Hub; returns the repository's URL. Needs a network and a
    token (`hf auth login` or $HF_TOKEN)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ZooError("--push-to-hub needs huggingface_hub: pip install 'zoo[hf]'") from None
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo_id, commit_message="Upload from zoo export-hf")
    except Exception as exc:  # offline, no token, no permission: the export itself is done and kept
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ZooError(f"could not push {out} to the Hub as {repo_id} ({type(exc).__name__}: {reason}); the "
                       f"export is complete: check the network and your token (hf auth login, or HF_TOKEN) and "
                       f"run the command again, or upload the folder with `hf upload {repo_id} {out}`") from None
    return str(url)


def export_hf(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> Path:
    """Export a run (finished or still training: any checkpoint) to a Hugging Face folder; returns the folder.
    The folder is written under a temporary name and renamed into place, so a failure leaves no half export
    (and an earlier export in OUT stays as it was)."""
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    for stale in (*out.parent.glob(f".{out.name}.old-*"), *out.parent.glob(f".{out.name}.tmp-*")):
        if _alive(stale.name.rsplit("-", 1)[-1]):
            continue
        if ".old-" in stale.name:  # killed between its two renames: the earlier export goes back if needed
            recover_swap(stale)
        else:  # left by an export that was killed
            shutil.rmtree(stale, ignore_errors=True)
    if out.exists() and not out.is_dir():
        raise ZooError(f"{out} is a file; name a folder to export into")
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise ZooError(f"{out} exists and holds other files; choose a new folder or an earlier export's folder")
    run = load_run(run_dir, checkpoint)
    kind = run.recipe.task.kind
    if kind not in (*LANGUAGE_MODELS, "classify"):
        raise ZooError(f"zoo export-hf exports language models and classifiers; {run_dir} is a {kind} run")
    if kind == "classify" and (run.recipe.task.pooling != "last_token" or run.recipe.task.head_bias):
        raise ZooError(f"{run_dir} reads the last padded position or has a head bias (the book's settings); "
                       "transformers' sequence classifiers read the last real token with a bias-free head, so the "
                       "export would predict differently: train with task.pooling = \"last_token\" and "
                       "task.head_bias = false to share it")
    exporter = _exporter(run)
    logging = transformers_module().utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # transformers' "Writing model shards" bars say nothing here
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        what, remote = exporter.export(run, tmp)
        model_card(run, tmp, what, remote=remote)
        mode = 0o666 & ~_umask()
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(mode)  # every file readable like any other the user writes (some are saved 0600)
        swap_in(tmp, out)
    except OSError as exc:
        raise ZooError(f"could not write the export to {out} ({exc.filename or ''}: {exc.strerror or exc}); "
                       "nothing was changed there") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            logging.enable_progress_bar()
    return out


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
