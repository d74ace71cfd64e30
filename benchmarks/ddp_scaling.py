"""DDP scaling: tokens/s of the same recipe on 1 process and on N processes (torchrun, gloo on CPU, nccl on
GPUs), same global batch, through `zoo train`. On CPU the comparison is fair on cores: 1 process x N threads
against N processes x 1 thread. With a CUDA GPU it also reports single-GPU GPT-2 small bf16 tokens/s and MFU.

    python benchmarks/ddp_scaling.py [--nproc 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = {
    "char-RNN 2 x 256 LSTM, 64 x 100": ["recipes/char_rnn_shakespeare.toml", "--set", "train.batch_size=64",
                                        "--set", "eval.interval=0",
                                        "--set", "eval.test=false", "--set", "eval.sample_tokens=0"],
    "GPT 4 x 256 (char), 32 x 128": ["recipes/gpt2_shakespeare_char.toml", "--set", "model.size=gpt2-tiny",
                                     "--set", "train.batch_size=32", "--set", "train.seq_len=128",
                                     "--set", "run.precision=fp32", "--set", "eval.interval=0",
                                     "--set", "eval.test=false", "--set", "eval.sample_tokens=0"],
}


def run(args: list[str], nproc: int, threads: int, steps: int, tmp: str, name: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "zoo", "train", str(REPO / args[0]), *args[1:], "--name", name,
           "--runs-dir", tmp, "--set", f"train.max_steps={steps}", "--set", "log.interval=1000"]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return json.loads((Path(tmp) / name / "summary.json").read_text())["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"{'case':<34} {'1 proc tok/s':>13} {f'{args.nproc} procs tok/s':>15} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, case) in enumerate(CASES.items()):
            one = run(case, 1, args.nproc, args.steps, tmp, f"one{i}")
            many = run(case, args.nproc, 1, args.steps, tmp, f"many{i}")
            print(f"{label:<34} {one:>13,.0f} {many:>15,.0f} {many / one:>6.2f}", flush=True)
        import torch

        if torch.cuda.is_available():
            case = ["recipes/gpt2_fineweb.toml", "--set", "data.source=embedded:tinyshakespeare",
                    "--set", "eval.interval=0", "--set", "eval.test=false", "--set", "train.max_tokens=0"]
            tps = run(case, 1, 1, 20, tmp, "gpu")
            print(f"single GPU, GPT-2 small bf16, 96 x 1024 per step: {tps:,.0f} tokens/s "
                  f"(perf/mfu in {tmp}/gpu/tb)")
        else:
            print("no CUDA GPU here: single-GPU GPT-2 small figures need one")


if __name__ == "__main__":
    main()
