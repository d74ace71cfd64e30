"""torch.compile on a CPU (inductor's C++ backend) through zoo's trainer: each model trained eagerly and compiled
(`run.compile = true`), the compiled run once with an empty inductor cache (cold: the compile as a first run pays
it) and once more with that cache (warm: a second run of the same shapes). Prints the steady tokens/s of each,
the compile time the trainer reports for the first step, and how many steps a run needs before the compile has
paid for itself.

    python benchmarks/cpu_compile.py [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "fineweb_sample"
CASES = [  # name, recipe, overrides
    ("gpt2-micro, char Shakespeare", "gpt2_shakespeare_char.toml", ["model.size=gpt2-micro"]),
    ("laptop study model (6 x 4 x 128, BPE 4,096)", "gpt2_fineweb_laptop_bpe.toml", [f"data.source={SHARED}"]),
    ("2 x 256 LSTM (the main job)", "char_rnn_shakespeare.toml", []),
]


def train(recipe: str, sets: list[str], steps: int, compiled: bool, cache: str, runs: str, name: str) -> dict:
    args = [sys.executable, "-m", "zoo", "train", str(REPO / "recipes" / recipe), "--name", name, "--runs-dir", runs,
            "--set", f"train.max_steps={steps}", "--set", "eval.interval=0", "--set", "eval.test=false",
            "--set", "eval.sample_tokens=0", "--set", f"log.interval={max(1, steps // 3)}",
            "--set", f"run.compile={'true' if compiled else 'false'}"]
    for item in sets:
        args += ["--set", item]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.stdout}")
    summary = json.loads((Path(runs) / name / "summary.json").read_text())
    found = re.search(r"compiled the training step in (\d+) s", out.stdout)
    return {"tokens_per_s": summary["tokens_per_s"], "compile_s": float(found.group(1)) if found else 0.0,
            "tokens_per_step": summary["tokens"] / summary["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps a run (tokens/s leaves the first, "
          "compiling step out)")
    print(f"{'model':<46} {'eager tok/s':>11} {'compiled':>9} {'ratio':>6} {'cold compile s':>14} "
          f"{'warm compile s':>14} {'steps to pay back (cold / warm)':>32}")
    for name, recipe, sets in CASES:
        sets = [*sets, f"run.threads={args.threads}"]
        with tempfile.TemporaryDirectory() as runs, tempfile.TemporaryDirectory() as cache:
            eager = train(recipe, sets, args.steps, False, cache, runs, "eager")
            cold = train(recipe, sets, args.steps, True, cache, runs, "cold")
            warm = train(recipe, sets, args.steps, True, cache, runs, "warm")
        per_step_eager = eager["tokens_per_step"] / eager["tokens_per_s"]
        per_step_compiled = warm["tokens_per_step"] / warm["tokens_per_s"]
        saved = per_step_eager - per_step_compiled
        payback = [f"{c / saved:,.0f}" if saved > 0 else "never" for c in (cold["compile_s"], warm["compile_s"])]
        print(f"{name:<46} {eager['tokens_per_s']:>11,.0f} {warm['tokens_per_s']:>9,.0f} "
              f"{warm['tokens_per_s'] / eager['tokens_per_s']:>6.2f} {cold['compile_s']:>14.0f} "
              f"{warm['compile_s']:>14.0f} {' / '.join(payback):>32}", flush=True)


if __name__ == "__main__":
    main()
