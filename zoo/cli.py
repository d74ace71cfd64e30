"""The `zoo` command: argparse subcommands that call into the library (no training logic here)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from zoo.errors import ZooError
from zoo.specs import INSTRUCTION_TUNED, LANGUAGE_MODELS

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _cmd_train(args: argparse.Namespace) -> int:
    if args.nproc_per_node > 1 and "RANK" not in os.environ:
        return _launch_train(args)
    from zoo.trainer import train

    recipe, name, runs_dir = _train_target(args)
    result = train(recipe, Path(runs_dir) / name, restart=args.restart)
    return 128 + result.signal if result.signal else 0


def _launch_train(args: argparse.Namespace) -> int:
    """`zoo train --nproc-per-node N`: torchrun's workers train; this process only starts them and imports no
    torch. The workers read and check the recipe, and a bad one is their one line."""
    from zoo.launch import launch

    recipe_file, name, runs_dir = _train_names(args)
    if not recipe_file.is_file():
        raise ZooError(f"recipe file {args.recipe} does not exist (`zoo recipes` lists the shipped ones)")
    argv = ["train", args.recipe, "--name", name, "--runs-dir", runs_dir]
    for item in args.set:
        argv += ["--set", item]
    if args.restart:
        argv.append("--restart")
    return launch(args.nproc_per_node, argv, args.max_restarts, Path(runs_dir) / name)


def _train_names(args: argparse.Namespace) -> tuple[Path, str, str]:
    """(recipe file, checked run name, runs folder) of `zoo train RECIPE` or `zoo train RUN_DIR` (a run
    directory's own saved recipe), without importing torch."""
    from zoo.config import check_name

    given = Path(args.recipe)
    if given.is_dir():
        if not (given / "recipe.toml").is_file():
            raise ZooError(f"{given} is a folder, not a recipe file, and not a run (no recipe.toml in it); give a "
                           "recipe (e.g. recipes/char_rnn_shakespeare.toml) or a run directory (runs/NAME)")
        run = given if given.name not in ("", ".", "..") else given.resolve()
        recipe_file, name, runs_dir = given / "recipe.toml", args.name or run.name, args.runs_dir or str(run.parent)
    else:
        recipe_file = _recipe_path(args.recipe)
        name = args.name if args.name is not None else Path(args.recipe).stem
        runs_dir = args.runs_dir or "runs"
    _check_runs_dir(runs_dir)
    return recipe_file, check_name(name), runs_dir


def _train_target(args: argparse.Namespace):
    """(recipe, run name, runs folder) of `zoo train RECIPE` or `zoo train RUN_DIR`: a run directory resumes
    (or, with a raised limit, extends) that run with its own saved recipe and the --set overrides on top."""
    from zoo.recipe import load_recipe

    recipe_file, name, runs_dir = _train_names(args)
    return load_recipe(recipe_file, args.set), name, runs_dir


def _check_runs_dir(runs_dir: str) -> None:
    path = Path(runs_dir)
    if path.exists() and not path.is_dir():
        raise ZooError(f"--runs-dir {runs_dir} is a file, not a folder; name a folder for the runs")


def _recipe_path(given: str) -> Path:
    """A recipe path, or the name of a shipped recipe (`zoo train char_rnn_shakespeare`)."""
    path = Path(given)
    if not path.exists() and path.suffix == "" and (RECIPES_DIR / f"{given}.toml").is_file():
        return RECIPES_DIR / f"{given}.toml"
    return path


def _load_for_inference(args: argparse.Namespace):
    """(model, tokenizer, recipe or None, label, device) from a run directory or from `--weights`."""
    from zoo.dist import environment, resolve_device
    from zoo.runs import load_base_model, load_run

    device = resolve_device(args.device, environment())
    if args.weights:
        if args.run:
            raise ZooError("give either a run directory or --weights, not both")
        spec = args.weights if args.weights.startswith("hf:") or Path(args.weights).is_dir() else f"hf:{args.weights}"
        return (*load_base_model(spec, device, args.checkpoint), device)
    if not args.run:
        raise ZooError("name a run directory (e.g. runs/char_rnn_shakespeare) or --weights gpt2")
    run = load_run(args.run, args.checkpoint, device, args.set)
    return run.model, run.tokenizer, run.recipe, f"{run.run_dir} ({run.checkpoint.name})", device


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from zoo.generate import generate

    model, tok, recipe, _, device = _load_for_inference(args)
    if recipe is not None and recipe.task.kind not in LANGUAGE_MODELS:
        raise ZooError(f"{args.run} is a {recipe.task.kind} run, not a language model; use `zoo classify`")
    if args.instruction is not None or args.input is not None:
        return _answer_instructions(args, model, tok, recipe, device, [(args.instruction, args.input or "")])
    if args.temperature is None:
        args.temperature = 0.8
    if args.max_new_tokens is None:
        args.max_new_tokens = 500
    if args.prompt:
        prompt = tok.encode(args.prompt)
    elif tok.eot is not None:
        prompt = [tok.eot]
    else:
        prompt = tok.encode("\n") if not tok.unknown("\n") else [0]
    gen = torch.Generator().manual_seed(args.seed)
    for i in range(args.num_samples):
        ids = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, generator=gen, device=device, stop_token=tok.eot)
        if i:
            print("\n" + "-" * 40)
        print(tok.decode(prompt + ids) if args.prompt else tok.decode(ids))
    return 0


def _instruction_format(args: argparse.Namespace, recipe):
    """The prompt format of --instruction: --prompt-format, else an instruction run's own, else Alpaca."""
    from zoo.tasks.instruct.data import FORMATS

    own = recipe.task.prompt_format if recipe is not None and recipe.task.kind == "instruct" else "alpaca"
    return FORMATS[args.prompt_format or own], (recipe.task.response_tokens if recipe is not None
                                                 and recipe.task.kind == "instruct" else 256)


def _answer_instructions(args, model, tok, recipe, device, items) -> int:
    """Print the response to each (instruction, input), wrapped in the run's prompt format."""
    import torch

    from zoo.tasks.instruct.answers import answer

    if any(not instruction or not instruction.strip() for instruction, _ in items):
        raise ZooError("--instruction is empty; give the instruction to answer")
    fmt, limit = _instruction_format(args, recipe)
    limit = args.max_new_tokens if args.max_new_tokens is not None else limit
    tok = tok.for_any_text()
    _check_characters(tok, [i + x for i, x in items])  # an instruction of no known character is refused
    _check_characters(tok, [fmt.full("", "x", "")], what="the prompt format")
    gen = torch.Generator().manual_seed(args.seed)
    for instruction, input_text in items:
        response, _ = answer(model, tok, fmt, instruction, input_text, limit, device, model.max_seq_len or 0,
                             temperature=args.temperature or 0.0, top_k=args.top_k, top_p=args.top_p,
                             generator=gen)
        print(response, flush=True)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    """Answer instructions read from stdin, one a line (`instruction<TAB>input` gives an input too)."""
    model, tok, recipe, _, device = _load_for_inference(args)
    if recipe is not None and recipe.task.kind not in LANGUAGE_MODELS:
        raise ZooError(f"{args.run} is a {recipe.task.kind} run, not a language model; use `zoo classify`")
    interactive = sys.stdin.isatty()
    if interactive:
        print("zoo chat: an instruction a line (instruction<TAB>input for an input); Ctrl-D ends", file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        instruction, _, input_text = line.partition("\t")
        try:
            _answer_instructions(args, model, tok, recipe, device, [(instruction, input_text)])
        except ZooError as exc:  # one bad line does not end the conversation
            print(f"zoo: error: {exc}", file=sys.stderr)


def _cmd_judge(args: argparse.Namespace) -> int:
    """Score instruction runs' test answers with an LLM judge; the table on stdout, everything in --out."""
    from zoo import judge

    runs = [judge.read_answers(r) for r in args.runs]
    if len({r.path.resolve() for r in runs}) < len(runs):
        raise ZooError("a run is named twice; name each run once")
    out = Path(args.out)
    if not out.resolve().parent.is_dir():
        raise ZooError(f"--out {args.out}: the folder {out.parent} does not exist")
    judge_ = judge.make_judge(args.judge, args.api, args.judge_model, args.timeout)
    try:
        state = judge.judge(runs, judge_, out, args.seed, progress=lambda line: print(line, file=sys.stderr))
    except judge.JudgeError as exc:
        kept = len(judge.load_state(out).get("items", {})) if out.is_file() else 0
        raise ZooError(f"{exc}; the {kept} items scored so far are kept in {out}: run the same command to go on") \
            from None
    rows, text = judge.table(runs, state)
    state["results"] = rows
    judge.save_state(out, state)
    print(text)
    unscored = sum(r["unscored"] for r in rows)
    print(f"{judge_.name}: {state['asked']} asked now, {len(state['items'])} items judged ({state['mode']}"
          f"{', order shuffled with seed ' + str(state['seed']) if state['mode'] == 'comparative' else ''}); "
          f"{unscored} answers the judge gave no 0-100 score (not counted); all in {out}", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from zoo import registry
    from zoo.recipe import load_recipe

    model, tok, recipe, label, device = _load_for_inference(args)
    if args.data:
        recipe = load_recipe(_recipe_path(args.data), args.set if args.weights else [])
    if recipe is None:
        raise ZooError("--weights needs --data RECIPE to say which data to evaluate on")
    from zoo.tokenizers import selected

    # an instruction or preference recipe's tokenizer is the base's, here the model's own
    if recipe.task.kind not in INSTRUCTION_TUNED and selected(recipe.data.tokenizer)[0].name != tok.kind:
        raise ZooError(f"the model's tokenizer is {tok.kind} but the data recipe's is {recipe.data.tokenizer}; "
                       "evaluate on data of the model's tokenizer (set data.tokenizer)")
    if args.predictions and not Path(args.predictions).resolve().parent.is_dir():
        raise ZooError(f"--predictions {args.predictions}: the folder {Path(args.predictions).parent} does not exist")
    _, data, _ = registry.load_data(recipe, tok)
    task = registry.build_task(recipe, tok, data, model)
    rows = task.predictions(model, args.split, device) if args.predictions else None  # one line for an LM
    result = task.metrics(task.evaluate(model, args.split, device))
    print(json.dumps({"model": label, "split": args.split, **result}, indent=1))
    if rows is not None:
        print(task.write_predictions(rows, Path(args.predictions), args.split), file=sys.stderr)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    """The recipe's tokenizer (trained on its train split, or its cached copy) and token files, then the
    compression table."""
    import json

    from zoo.data import compression, load_splits
    from zoo.recipe import load_recipe

    recipe = load_recipe(_recipe_path(args.recipe), args.set)
    tokenizer, _, info = load_splits(recipe.data)
    print(json.dumps({"tokenizer": tokenizer.fingerprint, **{k: v for k, v in info.items() if k != "manifest"}},
                     indent=1))
    print(compression.table(recipe.data, tokenizer)[0], file=sys.stderr)
    return 0


def _cmd_train_tokenizer(args: argparse.Namespace) -> int:
    """Train (or find cached) the recipe's tokenizer and print how well it compresses, beside GPT-2's."""
    import json

    from zoo.data import compression, recipe_tokenizer
    from zoo.recipe import load_recipe

    recipe = load_recipe(_recipe_path(args.recipe), args.set)
    tokenizer, path, trained = recipe_tokenizer(recipe.data)
    how = f"trained in {tokenizer.stats['seconds']:.1f} s on {tokenizer.stats['characters']:,} characters" \
        if trained else "cached"
    print(f"{tokenizer.fingerprint}: {tokenizer.vocab_size:,} ids, {how}" + (f" ({path})" if path else ""),
          file=sys.stderr)
    text, numbers = compression.table(recipe.data, tokenizer)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"tokenizer": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
                                               "stats": tokenizer.stats, "bytes_per_token": numbers}, indent=1))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from zoo import registry
    from zoo.bases import resolve_base
    from zoo.recipe import read_toml, recipe_with_overrides
    from zoo.runs import check_name
    from zoo.trainer import train

    recipe_path = _recipe_path(args.recipe)
    raw = read_toml(recipe_path)
    kind = raw.get("task", {}).get("kind", "lm") if isinstance(raw.get("task"), dict) else "lm"
    spec = registry.task_spec(kind)
    if spec.finetune is None:
        raise ZooError(f"{recipe_path} is a {kind!r} recipe; fine-tuning from a base needs a task that takes one "
                       "(task.kind = \"classify\" or \"instruct\")")
    if kind != args.task_kind:
        verb = {"classify": "finetune-classifier", "instruct": "finetune-instruct",
                "preference": "finetune-preference"}.get(kind, "finetune-...")
        raise ZooError(f"{recipe_path} is a {kind!r} recipe; use zoo {verb}")
    raw, default = spec.finetune(raw, resolve_base(args.base), recipe_path.stem)
    recipe = recipe_with_overrides(raw, args.set, str(recipe_path))
    name = check_name(args.name if args.name is not None else default)
    _check_runs_dir(args.runs_dir)
    result = train(recipe, Path(args.runs_dir) / name, restart=args.restart)
    return 128 + result.signal if result.signal else 0


def _cmd_classify(args: argparse.Namespace) -> int:

    from zoo.dist import environment, resolve_device
    from zoo.runs import load_run
    from zoo.tasks.classify import predict

    device = resolve_device(args.device, environment())
    run = load_run(args.run, args.checkpoint, device)
    if run.recipe.task.kind != "classify":
        raise ZooError(f"{args.run} is not a classifier (task {run.recipe.task.kind!r}); fine-tune one with "
                       f"`zoo finetune-classifier`")
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise ZooError(f"file {path} does not exist")
        try:
            texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise ZooError(f"file {path} is not UTF-8 text (invalid byte at offset {exc.start}); give a text file "
                           "with one message a line") from None
        except OSError as exc:
            raise ZooError(f"cannot read {path} ({exc.strerror})") from None
        if not texts:
            raise ZooError(f"file {path} has no lines to classify (it is empty or blank); give one message a line")
    elif args.text:
        texts = [args.text]
    else:
        raise ZooError("give a text to classify, or --file with one message a line")
    _check_characters(run.tokenizer, texts)
    out = predict(run.model, run.tokenizer, texts, device)
    for text, (label, prob) in zip(texts, out, strict=True):
        print(f"{label} {prob:.2f}" if not args.file else f"{label}\t{prob:.4f}\t{text}")
    return 0


def _target(value: str | None) -> float | str | None:
    """--target-loss: a loss, or `baseline` (the first experiment's mean final val loss)."""
    if value is None or value == "baseline":
        return value
    try:
        target = float(value)
    except ValueError:
        raise ZooError(f"--target-loss {value!r} must be a loss (e.g. 3.28) or baseline") from None
    if not (target > 0 and math.isfinite(target)):
        raise ZooError(f"--target-loss {value!r} must be a finite loss > 0 (e.g. 3.28), or baseline")
    return target


def _report(runs: list, args: argparse.Namespace) -> None:
    """The comparison table of `runs` (the first is the baseline), notes on stderr, and the plot if asked."""
    from zoo import compare

    metric, why = compare.choose_metric(runs, args.metric)
    rows = compare.compare(runs, _target(args.target_loss), metric)
    wanted = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    print(compare.render(rows, args.format, wanted))
    for line in ([why] if why else []) + compare.notes(rows):
        print(f"zoo: note: {line}", file=sys.stderr)
    if args.plot:  # _check_plot_args resolved it
        experiments, count = compare.plot(runs, args.plot, args.x, args.smooth, metric)
        print(f"wrote {args.plot} ({experiments} experiments, {count} runs)", file=sys.stderr)


def _check_plot_args(args: argparse.Namespace) -> None:
    """Everything --plot, --smooth and --target-loss need, checked before a sweep trains or compare reads; --plot
    becomes the file it writes."""
    if args.plot:
        from zoo.compare import plot_path

        args.plot = str(plot_path(args.plot))
    if not 0 <= args.smooth < 1:
        raise ZooError(f"--smooth {args.smooth} must be in [0, 1) (0 = off; TensorBoard's 0.6-0.99)")
    _target(args.target_loss)


def _check_characters(tokenizer, texts: list[str], what: str = "") -> None:
    """A character vocabulary reads characters it lacks as its fallback (training needs that): a text made only
    of such characters is refused, as `zoo sample` refuses them; one with a few is read with a warning."""
    unknown = [(i, tokenizer.unknown(t)) for i, t in enumerate(texts)]
    unknown = [(i, m) for i, m in unknown if m]
    if not unknown:
        return
    chars = sorted({c for _, m in unknown for c in m})
    shown = ", ".join(repr(c) for c in chars[:8]) + (" ..." if len(chars) > 8 else "")
    # a text whose only known characters are spaces says nothing the model can read
    hopeless = [i for i, _ in unknown if all(c in chars or c.isspace() for c in texts[i])]
    if hopeless:
        raise ZooError(f"{'text' if len(texts) == 1 else f'line {hopeless[0] + 1}'} has no character the run's "
                       f"vocabulary knows besides spaces ({shown}); it was trained on {tokenizer.vocab_size} "
                       "characters")
    what = what or ("the text" if len(texts) == 1 else f"{len(unknown)} of the {len(texts)} lines")
    print(f"zoo: warning: {what} has characters the run's vocabulary lacks ({shown}); they are read as "
          f"{tokenizer.fallback!r}", file=sys.stderr)


def _cmd_compare(args: argparse.Namespace) -> int:
    from zoo import compare

    _check_plot_args(args)
    _report([compare.read_run(r) for r in args.runs], args)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from zoo import compare, sweep
    from zoo.trainer import train

    _check_plot_args(args)
    runs_dir = Path(args.runs_dir)
    points = sweep.plan(_recipe_path(args.recipe), args.set, runs_dir, vary=args.vary, ablate=args.ablate,
                        stack=args.stack, seeds=args.seeds, baseline_seeds=args.baseline_seeds,
                        seed_fields=args.seed_fields, prefix=args.prefix)
    width = max(len(p.name) for p in points)
    for i, point in enumerate(points, 1):
        cmd = point.command(args.recipe, args.runs_dir, args.set)
        print(f"[{i}/{len(points)}] {point.name.ljust(width)}  {point.state:<10}  {cmd}" if args.dry_run else
              f"[{i}/{len(points)}] {cmd}", flush=True)
        if args.dry_run:
            continue
        result = train(point.recipe, runs_dir / point.name)
        if result.signal:
            print(f"sweep stopped at {point.name}; run the same command to continue where it stopped",
                  file=sys.stderr)
            return 128 + result.signal
    if not args.dry_run:
        _report([compare.read_run(runs_dir / p.name) for p in points], args)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from zoo.export import export_hf, push_to_hub

    out = export_hf(args.run, args.out, args.checkpoint)
    print(f"exported {args.run} to {out}")
    if args.push_to_hub:
        url = push_to_hub(out, args.push_to_hub, private=args.private)
        print(f"pushed {out} to {url}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from zoo.recipe import field_reference, read_toml

    if args.fields:
        print(field_reference())
        return 0
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        description = read_toml(path).get("run", {}).get("description", "")
        print(f"{path.stem:<32} {description}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with zoo's one-line errors: `zoo: error: ...` and where the usage is, not the usage itself."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"zoo: error: {message} (`{self.prog} --help` shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoo", description="A language-model zoo: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) a run from a TOML recipe, or resume a run directory")
    p.add_argument("recipe", help="a recipe file, e.g. recipes/char_rnn_shakespeare.toml, or a run directory "
                                  "(runs/NAME) to resume or extend with its own recipe")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe field; the value is parsed as TOML (repeatable)")
    p.add_argument("--name", help="run name (default: the recipe's file name, or the run directory's name)")
    p.add_argument("--runs-dir", help="where runs live (default: ./runs, or the run directory's folder)")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="start this many processes on this machine through torchrun's launcher (DDP)")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="with --nproc-per-node: restart all workers this many times after a failure")
    p.add_argument("--restart", action="store_true",
                   help="start the run over: its checkpoints, events and summary move to RUN/abandoned-<time>/")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("prepare-data", help="tokenise a recipe's corpus into cached token files")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train-tokenizer", help="train a recipe's tokenizer (data.tokenizer = \"bpe\") on its train "
                                               "split and print its bytes per token beside GPT-2's")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    p.set_defaults(func=_cmd_train_tokenizer)

    def add_model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", nargs="?", help="a run directory, e.g. runs/char_rnn_shakespeare")
        p.add_argument("--weights", help="GPT-2 weights instead of a run: gpt2 (Hub id) or hf:PATH")
        p.add_argument("--checkpoint", default="best",
                       help="best (default; the latest where no evaluation has chosen one), latest or step-N")
        p.add_argument("--device", default="auto")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="change the run's recipe before loading, e.g. model.impl=scratch")

    p = sub.add_parser("sample", help="generate text from a trained run or GPT-2 weights")
    add_model_args(p)
    p.add_argument("--prompt", default="", help="text to continue (default: a new line, or <|endoftext|>)")
    p.add_argument("--instruction", help="an instruction to answer, wrapped in the run's prompt format; only the "
                                         "response is printed (greedy unless --temperature)")
    p.add_argument("--input", help="the instruction's input (with --instruction)")
    p.add_argument("--prompt-format", choices=["alpaca", "phi3"],
                   help="the format of --instruction (default: the instruction run's own, else alpaca)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default 500; with --instruction the run's task.response_tokens (256)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0.8; 0 with --instruction)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--num-samples", type=int, default=1)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("judge", help="score instruction runs' test answers 0-100 with an LLM judge (one run: the "
                                     "book's prompt; several: all answers to an item in one shuffled prompt)")
    p.add_argument("runs", nargs="+", help="instruction runs (with test_responses.json)")
    p.add_argument("--judge", required=True, metavar="URL|hf:PATH",
                   help="an Ollama URL (http://localhost:11434), an OpenAI-compatible one (http://host:8000/v1), or "
                        "a local transformers folder")
    p.add_argument("--api", default="auto", choices=["auto", "ollama", "openai"],
                   help="the URL's API (auto: openai when the URL ends in /v1, else ollama)")
    p.add_argument("--judge-model", default="", help="the judge's model name (Ollama default: llama3, the book's)")
    p.add_argument("--out", default="judgement.json", help="scores, orders and the judge's answers (resumed)")
    p.add_argument("--seed", type=int, default=123, help="the judge's seed and the answers' shuffled order")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer")
    p.set_defaults(func=_cmd_judge)

    p = sub.add_parser("chat", help="answer instructions from stdin, one a line (instruction<TAB>input)")
    add_model_args(p)
    p.add_argument("--prompt-format", choices=["alpaca", "phi3"],
                   help="the prompt format (default: the instruction run's own, else alpaca)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's task.response_tokens (256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1337)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("eval", help="loss of a trained run (or GPT-2 weights) on a split")
    add_model_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data", help="a recipe whose [data] to evaluate on (default: the run's own)")
    p.add_argument("--predictions", metavar="FILE",
                   help="classifiers: write every example of the split with its text, true and predicted label and "
                        "probability (CSV); instruction data (--data an instruct recipe): the model's greedy answers "
                        "to the split's instructions, in the shape of test_responses.json")
    p.set_defaults(func=_cmd_eval)

    def add_finetune(verb: str, kind: str, what: str, recipe: str, recipe_help: str, name: str,
                     base: str = "a language-model run (runs/NAME) or hf:gpt2 / hf:PATH") -> None:
        p = sub.add_parser(verb, help=what)
        p.add_argument("--base", required=True, help=base)
        p.add_argument("--recipe", default=str(RECIPES_DIR / recipe), help=recipe_help)
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
        p.add_argument("--name", help=f"run name (default: {name})")
        p.add_argument("--runs-dir", default="runs")
        p.add_argument("--restart", action="store_true",
                       help="start the run over: its checkpoints, events and summary move to RUN/abandoned-<time>/")
        p.set_defaults(func=_cmd_finetune, task_kind=kind)

    add_finetune("finetune-classifier", "classify", "fine-tune a language model into a text classifier",
                 "gpt2_spam_classifier.toml",
                 "the classification recipe (default: recipes/gpt2_spam_classifier.toml, SMS spam)", "spam_<base>")
    add_finetune("finetune-instruct", "instruct", "instruction-fine-tune a language model (Raschka ch. 7), then "
                 "answer the test split's instructions", "gpt2_instruct.toml",
                 "the instruction recipe (default: recipes/gpt2_instruct.toml, the book's settings)", "<recipe>_<base>")
    add_finetune("finetune-preference", "preference", "preference-tune (DPO) a language model, usually an "
                 "instruction-tuned run, against itself as the reference", "dpo_laptop.toml",
                 "the preference recipe (default: recipes/dpo_laptop.toml, the book's DPO data)", "<recipe>_<base>",
                 base="the policy's start and the frozen reference: a run or hf:PATH")

    p = sub.add_parser("classify", help="classify texts with a fine-tuned classifier run")
    p.add_argument("run")
    p.add_argument("text", nargs="?", help="the text to classify")
    p.add_argument("--file", help="a file with one message a line")
    p.add_argument("--checkpoint", default="best",
                   help="best (default; the latest where no evaluation has chosen one), latest or step-N")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_classify)

    def add_report_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", default="table", choices=["table", "markdown", "csv", "json"])
        p.add_argument("--plot", help="write the loss curves (mean over seeds, min-max band) to this PNG")
        p.add_argument("--x", default="step", choices=["step", "tokens", "bytes", "time"],
                       help="x axis of the plot (bytes: training text, the measure across tokenizers)")
        p.add_argument("--smooth", type=float, default=0.0,
                       help="EMA smoothing of the plotted training loss, as TensorBoard's slider (0 = off)")
        p.add_argument("--columns", metavar="A,B,...",
                       help="the table's columns, in order (e.g. experiment,n,fields,test_loss,test_loss_std,"
                            "delta_test,p_value,significant); an unknown name lists them all")
        p.add_argument("--target-loss", metavar="VALUE|baseline",
                       help="add the steps, tokens and seconds at which each run's val loss (or bpb, with --metric "
                            "bpb) first reached VALUE (baseline: the first experiment's mean final val value)")
        p.add_argument("--metric", default="auto", choices=["auto", "loss", "bpb"],
                       help="what the table, deltas, target and plot measure: loss (nats per token), bpb (bits per "
                            "byte) or auto (bpb where the runs' tokenizers differ, loss otherwise)")

    p = sub.add_parser("compare", help="compare runs: differing fields, cost, losses, deltas, noise; plot")
    p.add_argument("runs", nargs="+", help="run directories; the first is the baseline")
    add_report_args(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("sweep", help="train a grid, or an ablation (one intervention at a time), then compare")
    p.add_argument("recipe")
    p.add_argument("--vary", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                   help="a field and its values (repeatable: the grid is their product)")
    p.add_argument("--ablate", action="append", default=[], metavar="NAME:SECTION.KEY=V[,SECTION.KEY=V...]",
                   help="an intervention: the baseline runs too, and each intervention alone on top of it")
    p.add_argument("--stack", action="store_true", help="with --ablate: also all interventions together")
    p.add_argument("--seeds", type=int, default=1, help="runs per point: seeds S, S+1, ... (S = the recipe's)")
    p.add_argument("--baseline-seeds", type=int,
                   help="runs of the baseline and the stack (default: --seeds)")
    p.add_argument("--seed-fields", default="run", choices=["run", "data", "both"],
                   help="what a seed moves: run.seed (initialisation, dropout; also the data order while "
                        "data.seed is -1), data.seed (the data order alone), or both")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="fixed overrides")
    p.add_argument("--prefix", help="run-name prefix (default: the recipe's file name)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--dry-run", action="store_true", help="list the runs (new, to resume, finished), train nothing")
    add_report_args(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("export-hf", help="export a run as a Hugging Face transformers folder (and push it)")
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--checkpoint", default="best",
                   help="best (default; the latest where no evaluation has chosen one), latest or step-N")
    p.add_argument("--push-to-hub", metavar="USER/NAME", help="then upload the folder to this Hub repository")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.add_argument("--fields", action="store_true", help="print every recipe field with its default and doc")
    p.set_defaults(func=_cmd_recipes)
    return parser


# (argument, whether a value is valid, the message otherwise) for the numeric options of every command
ARG_RULES = [
    ("nproc_per_node", lambda v: v >= 1, "--nproc-per-node must be >= 1"),
    ("max_restarts", lambda v: v >= 0, "--max-restarts must be >= 0"),
    ("num_samples", lambda v: v >= 1, "--num-samples must be >= 1"),
    ("max_new_tokens", lambda v: v >= 0, "--max-new-tokens must be >= 0"),
    ("temperature", lambda v: v >= 0, "--temperature must be >= 0 (0 = greedy)"),
    ("top_k", lambda v: v >= 0, "--top-k must be >= 0 (0 = off)"),
    ("top_p", lambda v: 0 < v <= 1, "--top-p must be in (0, 1]"),
]


def _check_args(args: argparse.Namespace) -> None:
    for name, ok, message in ARG_RULES:
        if vars(args).get(name) is not None and not ok(vars(args)[name]):  # None: the command's default
            raise ZooError(message)
    if "device" in vars(args):
        from zoo.recipe import valid_device

        if not valid_device(args.device):
            raise ZooError(f"--device {args.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")


def console() -> int:
    """The `zoo` command and `python -m zoo`: `main`, then signals are ignored while the interpreter shuts down,
    so a Ctrl-C pressed twice (or a SIGTERM) just as a run stops cannot interrupt an exit handler and print a
    traceback: the run already said in one line how it ended, and its checkpoint is saved."""
    import signal

    try:
        try:
            code = main()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
    except KeyboardInterrupt:  # one more signal while main printed how it ended, or as it returned
        return 130
    if code == 0 and "TORCHELASTIC_RUN_ID" in os.environ:
        # a DDP worker whose work is saved leaves without the interpreter's teardown, where gloo's threads can
        # abort the process in C++ ("terminate called without an active exception")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return code


def main(argv: list[str] | None = None) -> int:
    """The commands (tests call this in-process). User errors print one line and return 2. Under torchrun,
    its error recording is on, so a failing rank's traceback reaches the launcher's summary."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        from zoo.dist import record
        from zoo.launch import die_with_parent

        die_with_parent()  # a worker whose torchrun agent is gone (killed outright) goes too
        return record(_main)(argv)
    return _main(argv)


def _main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed as one line)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _check_args(args)
        return args.func(args)
    except ZooError as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a permission, a vanished file anywhere else: one line, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"zoo: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print("zoo: error: out of memory; use a smaller model, batch or data slice", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
