"""From-scratch LSTM/GRU cells against torch.nn.LSTM/nn.GRU: one full training step, same process.

A step is embedding -> 2-layer recurrent stack -> linear head -> cross-entropy -> backward -> Adam, for vocab
65, sequence 50, batch 50, hidden 128 and 512 (the sizes of the issue), on CPU. The torch and scratch models
start from the same weights. Prints tokens/s of each and the ratio scratch / torch; for the LSTM also the
scratch cells with their Python time loop (the fallback where the C++ loop cannot be built).

    python benchmarks/rnn_cells.py [--steps 20] [--sizes 128 512] [--cells lstm gru] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from zoo.models.rnn import CharRNN, CharRNNConfig

VOCAB, SEQ, BATCH = 65, 50, 50


def tokens_per_s(model: CharRNN, steps: int, warmup: int, rounds: int, loop: str = "auto") -> float:
    os.environ["ZOO_CELLS_LOOP"] = loop
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    y = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)

    def step():
        hidden, _ = model(x)
        loss = F.cross_entropy(model.lm_head(hidden).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = max(best, steps * BATCH * SEQ / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model, alternating; best kept")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"vocab {VOCAB}, sequence {SEQ}, batch {BATCH}, 2 layers, {torch.get_num_threads()} threads, "
          f"forward + backward + Adam")
    print(f"{'cell':<5} {'hidden':>6} {'torch tok/s':>12} {'scratch tok/s':>14} {'ratio':>6}   "
          f"{'Python-loop tok/s':>17} {'ratio':>6}")
    for cell in args.cells:
        for size in args.sizes:
            models = {}
            for impl in ("torch", "scratch"):
                torch.manual_seed(0)
                models[impl] = CharRNN(CharRNNConfig(cell=cell, impl=impl, hidden_size=size, num_layers=2), VOCAB)
            models["scratch"].load_state_dict(models["torch"].state_dict())
            runs = [("torch", "auto"), ("scratch", "auto")] + ([("scratch", "python")] if cell == "lstm" else [])
            results = dict.fromkeys(runs, 0.0)
            for _ in range(args.rounds):  # alternate so drifting machine load hits all alike
                for impl, loop in runs:
                    speed = tokens_per_s(models[impl], args.steps, args.warmup, 1, loop)
                    results[impl, loop] = max(results[impl, loop], speed)
            base, fast = results["torch", "auto"], results["scratch", "auto"]
            line = f"{cell:<5} {size:>6} {base:>12,.0f} {fast:>14,.0f} {fast / base:>6.2f}"
            if cell == "lstm":
                slow = results["scratch", "python"]
                line += f"   {slow:>17,.0f} {slow / base:>6.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
