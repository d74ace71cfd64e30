"""Two zoo trainings on one machine: the main job's training step alone and with a second one beside it.

Each measurement is a fresh process running the real Trainer on recipes/char_rnn_shakespeare.toml (2 x 256
LSTM) at batch 64 x 100 (the batch its figures in the README were measured at) for a number of steps after
warm-up, as `zoo train` would; "pair" starts two at once.
For each thread setting (environment variables the process starts with) it prints the solo tokens/s, each
pair member's, and pair / solo. Settings alternate over rounds and the best of each is kept.

    python benchmarks/shared_machine.py [--steps 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys, tempfile, time
from pathlib import Path
import zoo  # applies zoo's thread settings before torch loads
import torch
from zoo import dist
from zoo.recipe import load_recipe
from zoo.session import open_session
from zoo.trainer import Trainer
steps = int(sys.argv[1])
recipe = load_recipe(sys.argv[2], ["train.batch_size=64", "train.seq_len=100"])
with tempfile.TemporaryDirectory() as tmp:
    trainer = Trainer(open_session(recipe, Path(tmp) / "r", dist.environment(), torch.device("cpu")))
    trainer.model.train()
    for _ in range(3):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    print(json.dumps({"tps": steps * trainer.task.items_per_step() / (time.perf_counter() - start),
                      "threads": torch.get_num_threads()}))
"""

SETTINGS = {
    "zoo's default (GOMP_SPINCOUNT=1000)": {},
    "no zoo thread settings (torch's defaults)": {"ZOO_THREADS": "off"},
    "OMP_WAIT_POLICY=PASSIVE": {"ZOO_THREADS": "off", "OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=3000": {"ZOO_THREADS": "off", "GOMP_SPINCOUNT": "3000"},
    "GOMP_SPINCOUNT=10000": {"ZOO_THREADS": "off", "GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=30000": {"ZOO_THREADS": "off", "GOMP_SPINCOUNT": "30000"},
    "1 thread each": {"ZOO_THREADS": "off", "OMP_NUM_THREADS": "1"},
}


def measure(env: dict[str, str], steps: int, copies: int) -> list[float]:
    cmd = [sys.executable, "-c", CHILD, str(steps), str(ROOT / "recipes" / "char_rnn_shakespeare.toml")]
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "ZOO_THREADS"):
        if key not in env:
            full.pop(key, None)
    procs = [subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["tps"] for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; the main job's model's step (2 x 256 LSTM, batch 64 x 100), tokens/s, best of "
          f"{args.rounds}")
    best: dict[str, tuple[float, list[float]]] = {}
    for _ in range(args.rounds):
        for name, env in SETTINGS.items():
            solo = measure(env, args.steps, 1)[0]
            pair = sorted(measure(env, args.steps, 2))
            old = best.get(name, (0.0, [0.0, 0.0]))
            best[name] = (max(old[0], solo), [max(a, b) for a, b in zip(old[1], pair, strict=True)])
    reference = best["no zoo thread settings (torch's defaults)"][0]
    print(f"{'setting':<44} {'solo':>8} {'vs torch':>8} {'pair (each)':>17} {'pair / solo':>12}")
    for name, (solo, pair) in best.items():
        print(f"{name:<44} {solo:>8,.0f} {solo / reference:>8.2f} {pair[0]:>8,.0f} {pair[1]:>8,.0f} "
              f"{min(pair) / solo:>12.2f}")


if __name__ == "__main__":
    main()
