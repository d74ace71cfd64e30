"""GPT-2 pretraining speed: zoo's Trainer on recipes/gpt2_fineweb.toml against a reference step, one process.

zoo's side is the real `zoo.trainer.train` on the recipe (with overrides for size and length), timed from
outside between two steps after warm-up; its own TensorBoard `perf/tokens_per_s` and `perf/mfu` are printed
beside that measurement. The reference is the fastest plain PyTorch step this project has measured for the
model: one `torch.compile`d function doing model + head + cross-entropy, bf16 autocast, fused AdamW, the
vocabulary as a plain 50304-row matrix (nanoGPT's padding), clipping without a host read, the same micro-batch
and accumulation, batches copied from the same token files through pinned memory. Both sides train GPT-2 small
tied (124M) and untied (163M, the recipe's) on token files made from a local FineWeb sample by zoo's own
pipeline. Prints tokens/s, MFU and the ratio zoo / reference for each model.

    python benchmarks/gpu_train.py                        # a GPU: 4 compilations of GPT-2 small and 80 steps
    python benchmarks/gpu_train.py --micro-batch 16       # both sides at another micro-batch
    python benchmarks/gpu_train.py --json out.json        # also write the results as JSON
    python benchmarks/gpu_train.py                        # no GPU: a tiny model in fp32, a smoke test only
    python benchmarks/gpu_train.py --modern --race 400    # also the modern recipe: its throughput beside the
                                                          # GPT-2 recipe's, and a race to the GPT-2 recipe's loss

MFU is model FLOPs (nanoGPT's count: 6 x non-embedding parameters + attention) per second over the GPU's dense
bf16 peak from zoo.reporting.PEAK_FLOPS (989 TFLOP/s for H100 SXM and H200).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoo import dist  # noqa: E402
from zoo.models.gpt2 import GPT2  # noqa: E402
from zoo.optim import parameter_groups  # noqa: E402
from zoo.recipe import load_recipe  # noqa: E402
from zoo.reporting import peak_flops  # noqa: E402
from zoo.trainer import Trainer, train  # noqa: E402

RECIPE = ROOT / "recipes" / "gpt2_fineweb.toml"
MODERN = ROOT / "recipes" / "gpt2_fineweb_modern.toml"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fineweb_sample"


def overrides(args, tied: bool, steps: int) -> list[str]:
    """The recipe as the benchmark runs it: a local corpus, a step limit, no evaluation until the end."""
    sets = [f"data.source={args.data}", "data.test_offset=0", "data.test_tokens=0", "train.max_tokens=0",
            f"train.max_steps={steps}", "eval.interval=0", "eval.test=false", "eval.sample_tokens=0",
            f"eval.max_tokens={args.eval_tokens}", f"log.interval={args.log_interval}", "log.progress=\"lines\"",
            f"model.tie_weights={'true' if tied else 'false'}"]
    if args.micro_batch:
        sets.append(f"train.micro_batch_size={args.micro_batch}")
    if not args.gpu:  # a smoke test: a tiny model in fp32
        sets += ["model.size=gpt2-micro", "model.context_length=64", "train.seq_len=64", "train.batch_size=8",
                 "train.micro_batch_size=4", "run.precision=fp32", "run.device=cpu",
                 f"run.compile={'true' if args.compile_cpu else 'false'}"]
    return sets


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def run_zoo(args, tied: bool, device: torch.device, recipe_path: Path = RECIPE) -> dict:
    """zoo's Trainer for warm-up + measured steps; tokens/s measured between the two marks."""
    steps = args.warmup + args.steps
    recipe = load_recipe(recipe_path, overrides(args, tied, steps))
    marks: dict[int, float] = {}
    syncs: list[str] = []
    original = Trainer.train_step

    def marked(self):
        if device.type == "cuda" and 1 <= self.counters.step < args.warmup:
            # warm-up steps after the compiling one: CUDA's sync debug mode reports each host sync in the step
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    original(self)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))
        else:
            original(self)
        if self.counters.step in (args.warmup, steps):
            dist.synchronize(self.device)
            marks[self.counters.step] = time.perf_counter()

    Trainer.train_step = marked
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "bench"
            result = train(recipe, run_dir)
            tps_tb = [v for s, v in scalars(run_dir, "perf/tokens_per_s") if s > args.warmup]
            mfu_tb = [v for s, v in scalars(run_dir, "perf/mfu") if s > args.warmup]
    finally:
        Trainer.train_step = original
    summary = result.summary
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    tokens_per_step = summary["tokens"] // summary["step"]
    tps = args.steps * tokens_per_step / (marks[steps] - marks[args.warmup])
    return {"params": summary["params"], "flops_per_token": summary["flops_per_token"], "tokens_per_s": tps,
            "tb_tokens_per_s": float(np.median(tps_tb)) if tps_tb else None,
            "tb_mfu": float(np.median(mfu_tb)) if mfu_tb else None, "tokens_per_step": tokens_per_step,
            "peak_memory_gib": memory, "host_syncs_in_steps": len(syncs), "sync_examples": sorted(set(syncs))[:3],
            "sync_checked_steps": max(0, args.warmup - 1) if device.type == "cuda" else 0,
            "micro_batch": recipe.train.micro_batch_size or recipe.train.batch_size,
            "accumulation": recipe.train.batch_size // (recipe.train.micro_batch_size or recipe.train.batch_size)}


def run_reference(args, tied: bool, device: torch.device, micro: int, accumulation: int) -> dict:
    """The reference step: one compiled function (model + head + loss), fused AdamW, a 50304-row vocabulary."""
    recipe = load_recipe(RECIPE, overrides(args, tied, args.warmup + args.steps))
    from zoo.data import load_splits

    _, splits, _ = load_splits(recipe.data, progress=False)
    train_ids = np.asarray(splits.train)
    seq = recipe.train.seq_len
    vocab = 50304  # GPT-2's 50257 rounded up to a multiple of 64, as plain rows
    torch.manual_seed(recipe.run.seed)
    model = GPT2(dataclasses.replace(recipe.model, vocab_size=vocab, pad_vocab=1), vocab).to(device)
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe.optim.weight_decay, recipe.optim.decay_all),
                                  lr=recipe.train.lr, betas=recipe.optim.betas, eps=recipe.optim.eps, **fused)

    def loss_fn(x, y):
        hidden, _ = model(x)
        return F.cross_entropy(model.lm_head(hidden).float().reshape(-1, vocab), y.reshape(-1))

    step_loss = torch.compile(loss_fn) if (args.gpu or args.compile_cpu) else loss_fn
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.gpu else contextlib.nullcontext())
    window = np.arange(seq + 1)
    gen = np.random.default_rng(0)

    def batch():
        starts = gen.integers(0, len(train_ids) - seq - 1, micro)
        ids = torch.from_numpy(train_ids[starts[:, None] + window].astype(np.int64))
        if device.type == "cuda":
            ids = ids.pin_memory().to(device, non_blocking=True)
        return ids[:, :-1], ids[:, 1:]

    def step():
        total = torch.zeros((), device=device)
        for _ in range(accumulation):
            x, y = batch()
            with autocast:
                loss = step_loss(x, y)
            (loss / accumulation).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    start = time.perf_counter()
    step()
    dist.synchronize(device)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step()
    dist.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        last = step()
    dist.synchronize(device)
    elapsed = time.perf_counter() - start
    loss = last.item() / accumulation
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    return {"tokens_per_s": args.steps * accumulation * micro * seq / elapsed, "compile_s": compile_s,
            "final_loss": loss, "peak_memory_gib": memory}


def race(args, device: torch.device) -> dict:
    """Both recipes (GPT-2's and the modern one, untied, the same batch) trained for `args.race` steps on the
    sample with the same evaluations; the training seconds and tokens at which each first reached the GPT-2
    recipe's final val loss."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("gpt2", RECIPE), ("modern", MODERN)):
            sets = overrides(args, False, args.race)
            sets = [s for s in sets if not s.startswith(("eval.interval", "log.interval"))]
            sets += [f"eval.interval={max(1, args.race // 20)}", f"log.interval={max(1, args.race // 20)}"]
            result = train(load_recipe(path, sets), Path(tmp) / name)
            val = scalars(Path(tmp) / name, "loss/val")
            clock = dict(scalars(Path(tmp) / name, "progress/seconds"))
            per_step = result.summary["tokens"] // result.summary["step"]
            out[name] = {"val": val, "clock": clock, "tokens_per_step": per_step,
                         "final_val_loss": result.summary["final_val_loss"]}
            free(device)
    target = out["gpt2"]["final_val_loss"]
    for r in out.values():
        hit = next(((s, v) for s, v in r["val"] if v <= target * (1 + 1e-6)), None)  # TensorBoard keeps float32
        r["reached_step"] = hit[0] if hit else None
        r["reached_seconds"] = r["clock"].get(hit[0]) if hit else None
        r["reached_tokens"] = hit[0] * r["tokens_per_step"] if hit else None
    return {"target": target, **{k: {kk: vv for kk, vv in v.items() if kk not in ("clock",)} for k, v in out.items()}}


def free(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a folder of FineWeb .parquet files")
    parser.add_argument("--steps", type=int, default=15, help="measured optimizer steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="steps before measuring (the first compiles)")
    parser.add_argument("--micro-batch", type=int, default=0, help="micro-batch of both sides (0 = the recipe's)")
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--eval-tokens", type=int, default=8 * 1024 + 1)
    parser.add_argument("--models", default="124M,163M", help="which of 124M (tied), 163M (untied) to run")
    parser.add_argument("--compile-cpu", action="store_true", help="compile on a CPU too (slow; smoke test)")
    parser.add_argument("--modern", action="store_true",
                        help="also run recipes/gpt2_fineweb_modern.toml (untied) through the Trainer, beside the "
                             "GPT-2 recipe's 163M")
    parser.add_argument("--race", type=int, default=0,
                        help="with --modern: train both recipes this many steps and report when each reached the "
                             "GPT-2 recipe's final val loss")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    args.gpu = torch.cuda.is_available()
    if not Path(args.data).exists():
        parser.error(f"--data {args.data} does not exist (a folder of FineWeb .parquet files)")
    if args.warmup < 1 or args.steps < args.log_interval:
        parser.error("--warmup must be >= 1 and --steps >= --log-interval")
    device = torch.device("cuda" if args.gpu else "cpu")
    os.environ.setdefault("ZOO_CACHE", str(Path(tempfile.gettempdir()) / "zoo-bench-cache"))
    peak = peak_flops(device)
    gpu = torch.cuda.get_device_name(device) if args.gpu else f"CPU ({platform.processor() or platform.machine()})"
    print(f"device: {gpu}; torch {torch.__version__}; peak {peak / 1e12:.0f} TFLOP/s bf16" if peak else
          f"device: {gpu}; torch {torch.__version__}; no peak FLOP/s known (MFU not shown)", flush=True)
    results = []
    for name in args.models.split(","):
        tied = {"124M": True, "163M": False}[name.strip()]
        print(f"--- {name}: zoo Trainer", flush=True)
        ours = run_zoo(args, tied, device)
        free(device)
        print(f"--- {name}: reference step", flush=True)
        ref = run_reference(args, tied, device, ours["micro_batch"], ours["accumulation"])
        free(device)
        flops = ours["flops_per_token"]
        zoo_mfu, ref_mfu = (t * flops / peak if peak else math.nan for t in (ours["tokens_per_s"], ref["tokens_per_s"]))
        results.append({"model": name, **{f"zoo_{k}": v for k, v in ours.items()},
                        **{f"ref_{k}": v for k, v in ref.items()}, "zoo_mfu": zoo_mfu, "ref_mfu": ref_mfu,
                        "ratio": ours["tokens_per_s"] / ref["tokens_per_s"]})
    modern = None
    if args.modern:
        print("--- modern recipe: zoo Trainer", flush=True)
        modern = run_zoo(args, False, device, MODERN)
        free(device)
        base = next((r for r in results if r["model"] == "163M"), None)
        modern["mfu"] = modern["tokens_per_s"] * modern["flops_per_token"] / peak if peak else math.nan
        if base:
            modern["vs_gpt2_recipe"] = modern["tokens_per_s"] / base["zoo_tokens_per_s"]
    raced = race(args, device) if args.modern and args.race else None
    print()
    print(f"{'model':<6} {'micro x acc':>11} {'zoo tok/s':>11} {'zoo MFU':>8} {'TB tok/s':>10} {'TB MFU':>7} "
          f"{'ref tok/s':>11} {'ref MFU':>8} {'zoo/ref':>8} {'zoo/ref GiB':>12}")
    for r in results:
        tb_mfu = f"{r['zoo_tb_mfu']:.1%}" if r["zoo_tb_mfu"] is not None else "n/a"
        tb_tps = f"{r['zoo_tb_tokens_per_s']:,.0f}" if r["zoo_tb_tokens_per_s"] else "n/a"
        print(f"{r['model']:<6} {r['zoo_micro_batch']:>5} x {r['zoo_accumulation']:<3} {r['zoo_tokens_per_s']:>11,.0f} "
              f"{r['zoo_mfu']:>8.1%} {tb_tps:>10} {tb_mfu:>7} {r['ref_tokens_per_s']:>11,.0f} {r['ref_mfu']:>8.1%} "
              f"{r['ratio']:>8.2f} {r['zoo_peak_memory_gib']:>5.1f}/{r['ref_peak_memory_gib']:<6.1f}")
    for r in results:
        if r["zoo_sync_checked_steps"]:
            print(f"{r['model']}: host syncs inside Trainer.train_step over {r['zoo_sync_checked_steps']} steps "
                  f"(CUDA sync debug mode): {r['zoo_host_syncs_in_steps']} {r['zoo_sync_examples']}")
    if modern:
        ratio = f", {modern['vs_gpt2_recipe']:.2f}x the GPT-2 recipe's (163M)" if "vs_gpt2_recipe" in modern else ""
        print(f"modern recipe ({modern['params']:,} parameters): {modern['tokens_per_s']:,.0f} tokens/s, MFU "
              f"{modern['mfu']:.1%}{ratio}")
    if raced:
        print(f"race over {args.race} steps to the GPT-2 recipe's final val loss {raced['target']:.4f}:")
        for name in ("gpt2", "modern"):
            r = raced[name]
            when = (f"step {r['reached_step']}, {r['reached_tokens']:,} tokens, {r['reached_seconds']:.1f} s of "
                    "training" if r["reached_step"] else "not reached")
            print(f"  {name:<7} final val {r['final_val_loss']:.4f}; reached it at {when}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": gpu, "torch": torch.__version__, "results": results,
                                               "modern": modern, "race": raced}, indent=1, default=str))


if __name__ == "__main__":
    main()
