"""Trainer overhead: zoo's training step against a plain hand-written PyTorch loop, same process.

Both train the main job's model (embedding -> 2 x 256 nn.LSTM -> linear head) on Tiny Shakespeare with Adam,
gradient clipping and a carried, detached state; zoo adds the schedule, the finite check, the pre-clip norm
and logging. Prints tokens/s of each and the ratio (1.0 = no overhead).

    python benchmarks/trainer_overhead.py [--steps 60] [--hidden 256] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo import dist
from zoo.recipe import apply_overrides, read_toml, recipe_from_dict
from zoo.session import open_session
from zoo.trainer import Trainer

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "char_rnn_shakespeare.toml"


def main_recipe(hidden: int, batch: int = 0):
    """The main job's recipe at this hidden size (and batch, 0 = the recipe's), without dropout (the plain loop
    has none)."""
    sets = [f"model.hidden_size={hidden}", "model.dropout=0.0"] + ([f"train.batch_size={batch}"] if batch else [])
    return recipe_from_dict(apply_overrides(read_toml(RECIPE), sets))


def zoo_tokens_per_s(steps: int, hidden: int, warmup: int, batch: int) -> float:
    recipe = main_recipe(hidden, batch)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(open_session(recipe, Path(tmp) / "bench", dist.environment(), torch.device("cpu")))
        trainer.model.train()
        for _ in range(warmup):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps * trainer.task.items_per_step() / (time.perf_counter() - start)


class PlainCharRNN(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, 2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.rnn(self.emb(x), state)
        return self.head(out), state


def plain_tokens_per_s(steps: int, hidden: int, warmup: int, batch: int, seq: int) -> float:
    text = (Path(__file__).resolve().parent.parent / "zoo/data/embedded/tinyshakespeare.txt").read_text()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text[:200_000]])
    length = (len(ids) - 1) // batch
    x_all, y_all = ids[: batch * length].view(batch, length), ids[1 : batch * length + 1].view(batch, length)
    torch.manual_seed(0)
    model = PlainCharRNN(len(chars), hidden)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    state = None

    def step(i: int):
        nonlocal state
        j = (i % (length // seq)) * seq
        logits, state = model(x_all[:, j:j + seq], state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.reshape(-1, len(chars)), y_all[:, j:j + seq].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss.item()

    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    return steps * batch * seq / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=0, help="streams per batch (0 = the main recipe's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # alternate the two, twice, so drift in machine load hits both alike
    train = main_recipe(args.hidden, args.batch).train
    zoo_runs, plain_runs = [], []
    for _ in range(2):
        plain_runs.append(plain_tokens_per_s(args.steps, args.hidden, args.warmup, train.batch_size, train.seq_len))
        zoo_runs.append(zoo_tokens_per_s(args.steps, args.hidden, args.warmup, args.batch))
    zoo_tps, plain_tps = max(zoo_runs), max(plain_runs)
    print(f"char-RNN 2 x {args.hidden} LSTM, batch {train.batch_size} x {train.seq_len}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps")
    print(f"plain PyTorch loop : {plain_tps:10,.0f} tokens/s")
    print(f"zoo Trainer        : {zoo_tps:10,.0f} tokens/s")
    print(f"ratio zoo / plain  : {zoo_tps / plain_tps:.3f}")


if __name__ == "__main__":
    main()
