"""From-scratch LSTM/GRU/RNN cells against torch.nn.LSTM/GRU/RNN: one full training step, same process.

A step is embedding -> 2-layer recurrent stack -> linear head -> cross-entropy -> backward -> Adam, for vocab
65, batch x sequence 50 x 50 at hidden 128 and 512, and the main recipe's 16 x 100 at 256. The torch and
scratch models start from the same weights. Prints tokens/s of each and the ratio scratch / torch, and the
scratch cells with their plain Python time loop (the fallback): on a CPU the scratch LSTM runs its C++ loop,
on a GPU every scratch cell runs its CUDA-graph loops and torch.nn runs cuDNN.

    python benchmarks/rnn_cells.py [--steps 20] [--cells lstm gru] [--threads 2]          # CPU
    python benchmarks/rnn_cells.py --device cuda [--precision bf16] [--recipes]           # GPU

`--recipes` also trains recipes/char_rnn_shakespeare.toml (nn.LSTM) and recipes/lstm_scratch_shakespeare.toml on
the device and prints their best val loss and wall time (the issue's second target).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
import torch.nn.functional as F

from zoo.models.rnn import CharRNN, CharRNNConfig

VOCAB = 65
CASES = [(128, 50, 50), (512, 50, 50), (256, 16, 100)]  # hidden, batch, sequence


def tokens_per_s(model: CharRNN, steps: int, warmup: int, rounds: int, loop: str, batch: int, seq: int,
                 device: torch.device, precision: str) -> float:
    os.environ["ZOO_CELLS_LOOP"] = loop
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (batch, seq), generator=gen).to(device)
    y = torch.randint(0, VOCAB, (batch, seq), generator=gen).to(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    def step():
        with autocast:
            hidden, _ = model(x)
            loss = F.cross_entropy(model.lm_head(hidden).float().reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = max(best, steps * batch * seq / (time.perf_counter() - start))
    return best


def recipes(device: torch.device) -> None:
    """Train the nn.LSTM and the scratch-LSTM main recipes on the device; best val loss and wall time."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    print("\nrecipe                          best val loss   wall time")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("char_rnn_shakespeare", "lstm_scratch_shakespeare"):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "zoo", "train", str(root / "recipes" / f"{name}.toml"),
                            "--runs-dir", tmp, "--set", f"run.device={device}", "--set", "log.progress=\"lines\""],
                           check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(root)})
            summary = json.loads((Path(tmp) / name / "summary.json").read_text())
            print(f"{name:<31} {summary['best_val_loss']:>13.4f} {time.perf_counter() - start:>9.1f} s "
                  f"(training {summary['wall_time_s']:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model, alternating; best kept")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 256], help="hidden sizes of CASES")
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 autocast (GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--recipes", action="store_true", help="also train the two main LSTM recipes")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":  # fp32 means fp32: no TF32 for either side
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        where = f"{torch.cuda.get_device_name(device)}, torch.nn = cuDNN, scratch = CUDA-graph loops"
    else:
        where = f"CPU, {torch.get_num_threads()} threads, scratch LSTM = C++ loop"
    print(f"vocab {VOCAB}, 2 layers, forward + backward + Adam, {args.precision}; {where}; torch {torch.__version__}")
    print(f"{'cell':<5} {'hidden':>6} {'batch x seq':>11} {'torch tok/s':>12} {'scratch tok/s':>14} {'ratio':>6}   "
          f"{'Python-loop tok/s':>17} {'ratio':>6}")
    for cell in args.cells:
        for size, batch, seq in [c for c in CASES if c[0] in args.sizes]:
            models = {}
            for impl in ("torch", "scratch"):
                torch.manual_seed(0)
                models[impl] = CharRNN(CharRNNConfig(cell=cell, impl=impl, hidden_size=size, num_layers=2),
                                       VOCAB).to(device)
            models["scratch"].load_state_dict(models["torch"].state_dict())
            runs = [("torch", "auto"), ("scratch", "auto"), ("scratch", "python")]
            results = dict.fromkeys(runs, 0.0)
            for _ in range(args.rounds):  # alternate so drifting machine load hits all alike
                for impl, loop in runs:
                    speed = tokens_per_s(models[impl], args.steps, args.warmup, 1, loop, batch, seq, device,
                                         args.precision)
                    results[impl, loop] = max(results[impl, loop], speed)
            base, fast, slow = results["torch", "auto"], results["scratch", "auto"], results["scratch", "python"]
            print(f"{cell:<5} {size:>6} {batch:>4} x {seq:<4} {base:>12,.0f} {fast:>14,.0f} {fast / base:>6.2f}   "
                  f"{slow:>17,.0f} {slow / base:>6.2f}", flush=True)
    if args.recipes:
        recipes(device)


if __name__ == "__main__":
    main()
