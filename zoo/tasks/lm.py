"""Next-token language modelling.

Stateful (recurrent) models read the split as char-rnn does: each batch row is one contiguous stream, batch
i+1 continues every row of batch i, the state is carried (and detached by the trainer) and reset at each
epoch. Stateless models read random windows (nanoGPT's), drawn from a generator seeded by (seed, step), or
sequential windows (one pass in order, or in an order shuffled per epoch by `data.seed`, then again). Either
way a batch is a pure function of the step, so resuming needs no loader state. The data order has its own seed
(`data_seed`: data.seed, or run.seed while that is -1), so a study can vary the initialisation and the data
order apart. Token arrays stay numpy (memory-mapped for large corpora); only batches
become tensors.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import Section, doc
from zoo.data import TokenSplits, load_splits
from zoo.errors import DataError
from zoo.models.base import Backbone, State, eval_mode
from zoo.specs import TaskSpec
from zoo.tasks.base import Autocast, Batch, MicroBatchPlan, Task, summarize


@dataclass(frozen=True)
class LMTaskConfig(Section):
    kind: str = doc("lm", "lm")
    sampling: Literal["auto", "streams", "windows", "sequential"] = doc(
        "auto: streams for recurrent models, random windows otherwise; sequential: windows in order", "auto")


def as_streams(ids: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets laid out as `rows` contiguous streams: [rows, L] each (views, no copy)."""
    length = (len(ids) - 1) // rows
    x = ids[: rows * length].reshape(rows, length)
    y = ids[1 : rows * length + 1].reshape(rows, length)
    return x, y


def to_long(a: np.ndarray) -> torch.Tensor:
    """A batch of ids as an int64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.int64))


class LMTask(Task):
    """Language modelling over token splits for any backbone. With `token_bytes` (each id's UTF-8 byte length,
    from the tokenizer) every evaluation also reports bits per byte, the measure that compares runs of any
    tokenizer; with a tokenizer (`sampling`), it logs a text sample at each evaluation."""

    def __init__(self, config: LMTaskConfig, splits: TokenSplits, *, stateful: bool, batch_size: int,
                 seq_len: int, seed: int, eval_batch_size: int, eval_max_tokens: int, vocab_size: int = 2,
                 need_test: bool = True, sampling: Sampling | None = None, data_seed: int | None = None,
                 shuffle: bool = False, token_bytes: np.ndarray | None = None, eval_train: bool = False):
        self.config = config
        self.vocab_size = vocab_size
        self.sampling = sampling
        self.splits = splits
        self.streams = config.sampling == "streams" or (config.sampling == "auto" and stateful)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.data_seed = seed if data_seed is None else data_seed
        self.shuffle = shuffle  # sequential windows in a seeded order per epoch (data.seed set)
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, window order) of the last epoch asked
        self.eval_batch_size = eval_batch_size
        self.eval_max_tokens = eval_max_tokens
        self.token_bytes = None if token_bytes is None else torch.as_tensor(np.asarray(token_bytes, dtype=np.int64))
        self.evaluates_train = eval_train
        train = splits.train
        need = batch_size * seq_len + 1
        if len(train) < need:
            raise DataError(f"the train split has {len(train):,} tokens, fewer than one batch needs "
                            f"({batch_size} x {seq_len} + 1 = {need:,}); lower train.batch_size or "
                            f"train.seq_len, or use more text")
        for split in ("val", "test") if need_test else ("val",):
            if len(splits[split]) < 2:
                raise DataError(f"the {split} split has {len(splits[split])} tokens; it needs at least 2 "
                                f"(use more text or a larger data.splits fraction)")
        if self.streams:
            self.train_x, self.train_y = as_streams(train, batch_size)

    def steps_per_epoch(self) -> int:
        if self.streams:
            return self.train_x.shape[1] // self.seq_len
        return max(1, (len(self.splits.train) - 1) // (self.batch_size * self.seq_len))

    def items_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def flops_per_item(self, model: nn.Module) -> float:
        return float(model.flops_per_token())

    def metrics(self, sums: dict[str, float]) -> dict:
        """Loss, perplexity and bits per token from summed evaluation results, and bits per byte: the summed
        nats of the targets that stand for text over ln 2 times their summed UTF-8 bytes (special tokens, of
        0 bytes, are in neither sum), one division of two totals, never a mean of ratios."""
        out = summarize(sums["loss_sum"], int(sums["tokens"]))
        if sums.get("bytes"):
            out.update(bpb=sums["bpb_nats"] / (math.log(2) * sums["bytes"]), bytes=int(sums["bytes"]),
                       bytes_per_token=sums["bytes"] / max(1, sums["text_tokens"]))
        return out

    def tracked(self, metrics: dict) -> dict[str, float]:
        return {"bpb": metrics["bpb"], "bytes_per_token": metrics["bytes_per_token"]} if "bpb" in metrics else {}

    def scalars(self, split: str, metrics: dict) -> dict[str, float]:
        out = {f"bpb/{split}": metrics["bpb"]} if "bpb" in metrics else {}
        return {**out, f"ppl/{split}": metrics["ppl"]} if split == "val" else out

    def summary(self, split: str, metrics: dict, which: str) -> dict:
        """test_bpb (the best checkpoint's) and final_test_bpb (the last weights'), beside the losses."""
        if "bpb" not in metrics:
            return {}
        return {f"{'final_' if which == 'final' else ''}{split}_bpb": metrics["bpb"],
                f"{split}_bytes_per_token": metrics["bytes_per_token"]}

    def sample(self, model: nn.Module, step: int, device: torch.device) -> str:
        """A short text sample with its own generator (seeded by step), so it never disturbs training's RNG."""
        s = self.sampling
        if s is None or not s.tokens:
            return ""
        from zoo.generate import generate

        prompt = s.tokenizer.encode(s.prompt) or [int(self.splits.val[0])]
        gen = torch.Generator().manual_seed(self.seed + step)
        ids = generate(model, prompt, s.tokens, temperature=s.temperature, generator=gen, device=device)
        return s.tokenizer.decode(prompt + ids)

    def chance_loss(self) -> float:
        """The loss of a uniform guess over the vocabulary (nats per token)."""
        return math.log(max(2, self.vocab_size))

    def micro_batches(self, step: int, plan: MicroBatchPlan) -> list[Batch]:
        """This rank's micro-batches of global step `step` (rows of the global batch as the plan assigns them;
        each stream row keeps its own carried state, slot m)."""
        mine = plan.mine
        rows = [plan.rows(m) for m in mine]
        if self.streams:
            i = step % self.steps_per_epoch()
            cols = slice(i * self.seq_len, (i + 1) * self.seq_len)
            return [Batch(to_long(self.train_x[r, cols]), to_long(self.train_y[r, cols]), slot=m, reset=i == 0)
                    for m, r in zip(mine, rows, strict=True)]
        train = self.splits.train
        if self.config.sampling == "sequential":
            epoch, i = divmod(step, self.steps_per_epoch())
            windows = i * self.batch_size + np.arange(self.batch_size)
            if self.shuffle:
                windows = self._window_order(epoch)[windows]
            starts = windows * self.seq_len
        else:
            gen = torch.Generator().manual_seed(self.data_seed * 1_000_003 + step)
            starts = torch.randint(0, len(train) - self.seq_len, (self.batch_size,), generator=gen).numpy()
        window = np.arange(self.seq_len + 1)
        out = []
        for m, r in zip(mine, rows, strict=True):
            ids = train[starts[r, None] + window]
            out.append(Batch(to_long(ids[:, :-1]), to_long(ids[:, 1:]), slot=m, reset=True))
        return out

    def _window_order(self, epoch: int) -> np.ndarray:
        """The order of the sequential windows in `epoch`: a permutation seeded by (data seed, epoch)."""
        if self._order is None or self._order[0] != epoch:
            count = self.steps_per_epoch() * self.batch_size
            self._order = (epoch, np.random.default_rng([self.data_seed, epoch]).permutation(count))
        return self._order[1]

    def loss(self, model: nn.Module, batch: Batch, state: State) -> tuple[torch.Tensor, State]:
        hidden, new_state = model(batch.x, state)
        return model.next_token_loss(hidden, batch.y), new_state

    def eval_tokens(self, split: str) -> np.ndarray:
        """The fixed evaluation slice of a split: the first `eval.max_tokens` tokens (or all) of val/train;
        the whole test split, so test losses compare across runs whatever their eval cadence. The train slice
        is as long as the val slice."""
        ids = self.splits[split]
        if split == "train":
            return ids[: (self.eval_max_tokens or len(self.splits.val) - 1) + 1]
        return ids[: self.eval_max_tokens + 1] if self.eval_max_tokens and split != "test" else ids

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device,
                 autocast: Autocast = contextlib.nullcontext,
                 rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """Summed next-token loss (nats) and token count over this rank's share (stream rows or windows) of
        the fixed slice of `split`, and with `token_bytes` the nats and UTF-8 bytes of the targets that are text;
        the sums add up across ranks to one process's, and `metrics` turns them into loss, perplexity, bits
        per token and bits per byte."""
        table = None if self.token_bytes is None else self.token_bytes.to(device)
        with eval_mode(model):
            ids = self.eval_tokens(split)
            total, count, text_nats, n_bytes, text_tokens = 0.0, 0, 0.0, 0, 0
            for i, (x, y, state_carry) in enumerate(self._eval_batches(ids, model, rank, world_size)):
                if state_carry is None and i % world_size != rank:
                    continue
                carry = state_carry or [None]
                with autocast():
                    hidden, new_state = model(x.to(device), carry[0])
                    logits = model.logits(hidden)
                carry[0] = new_state
                targets = y.to(device).reshape(-1)
                per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets,
                                            reduction="none").double()
                total += per_token.sum().item()
                count += y.numel()
                if table is not None:
                    nbytes = table[targets]
                    text = nbytes > 0
                    text_nats += per_token[text].sum().item()
                    n_bytes += int(nbytes.sum().item())
                    text_tokens += int(text.sum().item())
        out = {"loss_sum": total, "tokens": count}
        if table is not None:
            out.update(bpb_nats=text_nats, bytes=n_bytes, text_tokens=text_tokens)
        return out

    def _eval_batches(self, ids: np.ndarray, model: nn.Module, rank: int = 0, world_size: int = 1):
        """(x, y, carry) evaluation batches. Streams come as this rank's rows with a shared state carry;
        windows come all (carry None) and the caller keeps every world_size-th."""
        if self.streams:
            rows = max(1, min(self.eval_batch_size, (len(ids) - 1) // self.seq_len))
            x, y = as_streams(ids, rows)
            x, y = x[rank::world_size], y[rank::world_size]
            if len(x) == 0:
                return
            carry: list = [None]
            for start in range(0, x.shape[1], self.seq_len):
                yield to_long(x[:, start:start + self.seq_len]), to_long(y[:, start:start + self.seq_len]), carry
            return
        window = min(self.seq_len, model.max_seq_len or self.seq_len)
        n = (len(ids) - 1) // window
        if n == 0:
            yield to_long(ids[None, :-1]), to_long(ids[None, 1:]), None
            return
        x = ids[: n * window].reshape(n, window)
        y = ids[1 : n * window + 1].reshape(n, window)
        for start in range(0, n, self.eval_batch_size):
            yield (to_long(x[start:start + self.eval_batch_size]), to_long(y[start:start + self.eval_batch_size]),
                   None)


@dataclass(frozen=True)
class Sampling:
    """What the text sample logged at each evaluation looks like (the recipe's [eval] sample fields)."""

    tokenizer: Any
    tokens: int
    prompt: str
    temperature: float


def load_data(recipe, tokenizer=None, progress: bool = True):
    """Token splits of the recipe's [data] (see zoo.data.load_splits)."""
    return load_splits(recipe.data, tokenizer, progress)


def wrap(config: LMTaskConfig, backbone: Backbone) -> Backbone:
    """Language modelling uses the backbone's own LM head: nothing to add."""
    return backbone


def build(config: LMTaskConfig, recipe, tokenizer, splits: TokenSplits, model: Backbone,
          plan: MicroBatchPlan) -> LMTask:
    ev = recipe.eval
    sampling = Sampling(tokenizer, ev.sample_tokens, ev.sample_prompt, ev.sample_temperature) if tokenizer else None
    return LMTask(config, splits, stateful=model.stateful, batch_size=recipe.train.batch_size,
                  seq_len=recipe.train.seq_len, seed=recipe.run.seed, eval_batch_size=recipe.eval.batch_size,
                  eval_max_tokens=recipe.eval.max_tokens, vocab_size=model.vocab_size, need_test=recipe.eval.test,
                  sampling=sampling, data_seed=recipe.data.order_seed(recipe.run.seed),
                  shuffle=recipe.data.seed >= 0, token_bytes=tokenizer.token_bytes() if tokenizer else None,
                  eval_train=recipe.eval.train)


SPEC = TaskSpec(name="lm", config=LMTaskConfig, load_data=load_data, wrap=wrap, build=build)
