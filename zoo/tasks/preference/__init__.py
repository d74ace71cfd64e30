"""Preference tuning with DPO (`task.kind = "preference"`; the bonus material of Raschka's ch. 7): a policy
started from a base (usually an instruction-tuned run) learns to rank each record's `chosen` answer above its
`rejected` one against a frozen reference, the base itself. The reference's log-probabilities are a function of
the base and the data alone, so they are computed once when the task is built (from a copy of the base's
weights) and carried in each batch; the trained model stays a plain language model that samples and exports as
its base does. `zoo finetune-preference --base` runs it."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from zoo.bases import resolve_base
from zoo.config import check, doc
from zoo.errors import DataError
from zoo.models.base import Backbone, State, eval_mode
from zoo.specs import TaskSpec
from zoo.tasks.base import Autocast, Batch, MicroBatchPlan
from zoo.tasks.instruct import base_tokenizer, finetune, pretrained, wrap
from zoo.tasks.instruct.config import InstructTaskConfig
from zoo.tasks.instruct.data import FORMATS, IGNORE, Example, collate, read_records, split_records
from zoo.tasks.instruct.task import InstructTask


@dataclass(frozen=True)
class PreferenceTaskConfig(InstructTaskConfig):
    uses_seq_len: ClassVar[bool] = False
    kind: str = doc("preference", "preference")
    beta: float = doc("DPO's beta: how far the policy may move from the reference (the book's 0.1)", 0.1)
    chosen_field: str = doc("the records' preferred answer", "chosen")
    rejected_field: str = doc("the records' rejected answer", "rejected")
    logprob: Literal["mean", "sum"] = doc(
        "a response's log-probability: mean over its tokens (the book's DPO notebook) or their sum (the DPO "
        "paper's)", "mean")

    def validate(self) -> None:
        super().validate()
        check(self.beta > 0 and math.isfinite(self.beta), "task.beta", f"is {self.beta}; it must be > 0")
        check(not self.mask_prompt, "task.mask_prompt", "does not apply: DPO scores the responses only")


@dataclass
class Pair:
    chosen: Example
    rejected: Example


@dataclass
class Preferences:
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    records: dict[str, list[dict]]

    def __getitem__(self, split: str) -> list[Pair]:
        return getattr(self, split)


def load_data(recipe, tokenizer=None, progress: bool = True):
    """(tokenizer, Preferences, info): each record's prompt with its chosen and its rejected answer."""
    cfg: PreferenceTaskConfig = recipe.task
    tokenizer = tokenizer or base_tokenizer(recipe)
    fields = (cfg.instruction_field, cfg.input_field, cfg.output_field)
    records = read_records(recipe.data.source, fields, need=(cfg.chosen_field, cfg.rejected_field))
    fmt = FORMATS[cfg.prompt_format]
    keys = (*fields, cfg.chosen_field, cfg.rejected_field)
    missing = sorted({c for rec in records for key in keys for c in tokenizer.unknown(rec.get(key) or "")}
                     | set(tokenizer.unknown(fmt.full("", "x", ""))))
    if missing:
        shown = ", ".join(repr(c) for c in missing[:12])
        raise DataError(f"the base's vocabulary cannot encode {len(missing)} characters of the preference data "
                        f"({shown}); tune a base whose tokenizer covers the data (a BPE or GPT-2 run)")
    parts = split_records(records, cfg.split, recipe.data.splits)

    def pair(rec: dict) -> Pair:
        instruction, text = rec[cfg.instruction_field], rec.get(cfg.input_field) or ""
        prompt = len(tokenizer.encode(fmt.prompt(instruction, text)))
        return Pair(*(Example(tokenizer.encode(fmt.full(instruction, text, rec[key])), prompt)
                      for key in (cfg.chosen_field, cfg.rejected_field)))

    data = Preferences(**{s: [pair(r) for r in part] for s, part in parts.items()}, records=parts)
    return tokenizer, data, {"source": recipe.data.source, "pairs": {s: len(p) for s, p in parts.items()}}


def response_logprobs(logits: torch.Tensor, targets: torch.Tensor, how: str) -> torch.Tensor:
    """Each row's log-probability of its targets that are not -100: their mean or their sum."""
    mask = targets != IGNORE
    picked = torch.gather(F.log_softmax(logits.float(), -1), -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = (picked * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if how == "mean" else total


def dpo(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
    """(per-pair loss, chosen reward, rejected reward) from [2B] log-probs (the B chosen first, then the B
    rejected): the rewards are beta x (policy - reference), the loss -log sigmoid(chosen - rejected reward)."""
    n = policy.shape[0] // 2
    rewards = beta * (policy - reference)
    chosen, rejected = rewards[:n], rewards[n:]
    return -F.logsigmoid(chosen - rejected), chosen, rejected


class PreferenceTask(InstructTask):
    """DPO on (chosen, rejected) pairs; the answers at the end are InstructTask's."""

    evaluates_train = True  # reward accuracy and margin on a train slice beside val

    def __init__(self, config: PreferenceTaskConfig, data: Preferences, reference: dict[str, torch.Tensor], **kw):
        super().__init__(config, data, **kw)  # type: ignore[arg-type]
        self.reference = reference  # split -> [n, 2]: each pair's chosen and rejected reference log-probs

    def _batch(self, pairs: list[Pair], ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id, self.end_id,
                       self.max_length, mask_prompt=True)
        return x, y, torch.cat([ref[:, 0], ref[:, 1]])

    def micro_batches(self, step: int, plan: MicroBatchPlan) -> list[Batch]:
        epoch, i = divmod(step, self.steps_per_epoch())
        rows = self._epoch_order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        out = []
        for m in plan.mine:
            chosen = [int(j) for j in rows[plan.rows(m)]]
            x, y, ref = self._batch([self.data.train[j] for j in chosen], self.reference["train"][chosen])
            out.append(Batch(x, y, slot=m, reset=True, aux=ref))
        return out

    def loss(self, model: nn.Module, batch: Batch, state: State) -> tuple[torch.Tensor, State]:
        logits = model.logits(model(batch.x, None)[0])
        policy = response_logprobs(logits, batch.y, self.config.logprob)
        loss, _, _ = dpo(policy, batch.aux, self.config.beta)
        return loss.mean(), None

    def chance_loss(self) -> float:
        return math.log(2)  # a policy that cannot tell the answers apart; ten times it means divergence

    def eval_pairs(self, split: str) -> range:
        """The pairs an evaluation scores: all of val and test, a val-sized slice of train."""
        n = len(self.data[split])
        return range(min(n, len(self.data.val)) if split == "train" else n)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device, autocast: Autocast = None,
                 rank: int = 0, world_size: int = 1) -> dict[str, float]:
        import contextlib

        autocast = autocast or contextlib.nullcontext
        pairs, sums = self.data[split], {"loss_sum": 0.0, "margin_sum": 0.0, "chosen_sum": 0.0, "rejected_sum": 0.0,
                                         "correct": 0.0, "pairs": 0.0}
        index = list(self.eval_pairs(split))
        size = max(1, self.eval_batch_size // 2)
        with eval_mode(model):
            for b, start in enumerate(range(0, len(index), size)):
                if b % world_size != rank:
                    continue
                chosen = index[start:start + size]
                x, y, ref = self._batch([pairs[j] for j in chosen], self.reference[split][chosen])
                with autocast():
                    logits = model.logits(model(x.to(device), None)[0])
                policy = response_logprobs(logits, y.to(device), self.config.logprob)
                loss, c, r = dpo(policy.double(), ref.to(device).double(), self.config.beta)
                sums["loss_sum"] += loss.sum().item()
                sums["margin_sum"] += (c - r).sum().item()
                sums["chosen_sum"] += c.sum().item()
                sums["rejected_sum"] += r.sum().item()
                sums["correct"] += (c > r).sum().item()
                sums["pairs"] += len(chosen)
        return sums

    def metrics(self, sums: dict[str, float]) -> dict:
        n = max(1.0, sums["pairs"])
        return {"loss": sums["loss_sum"] / n, "reward_margin": sums["margin_sum"] / n,
                "reward_accuracy": sums["correct"] / n, "chosen_reward": sums["chosen_sum"] / n,
                "rejected_reward": sums["rejected_sum"] / n, "pairs": int(sums["pairs"])}

    def scalars(self, split: str, metrics: dict) -> dict[str, float]:
        out = {f"dpo/reward_accuracy_{split}": metrics["reward_accuracy"],
               f"dpo/reward_margin_{split}": metrics["reward_margin"]}
        return {**out, "loss/train_eval": metrics["loss"]} if split == "train" else out

    def tracked(self, metrics: dict) -> dict[str, float]:
        return {"reward_accuracy": metrics["reward_accuracy"], "reward_margin": metrics["reward_margin"]}

    def summary(self, split: str, metrics: dict, which: str) -> dict:
        return {f"{'final_' if which == 'final' else ''}{split}_{k}": metrics[k]
                for k in ("reward_accuracy", "reward_margin")}

    def report(self, split: str, metrics: dict) -> str:
        return (f"{split} DPO loss {metrics['loss']:.4f}, reward accuracy {metrics['reward_accuracy']:.3f}, "
                f"margin {metrics['reward_margin']:.4f}")


@torch.no_grad()
def reference_logprobs(config: PreferenceTaskConfig, model: nn.Module, data: Preferences, pad_id: int, end_id: int,
                       max_length: int, batch: int = 8) -> dict[str, torch.Tensor]:
    """Each pair's chosen and rejected log-probability under the base's weights (a copy of the model)."""
    reference = copy.deepcopy(model)
    if config.base:
        resolve_base(config.base).load_into(reference, config.base_checkpoint)
    else:
        reference.load_pretrained()
    device = next(reference.parameters()).device
    out = {}
    with eval_mode(reference):
        for split in ("train", "val", "test"):
            rows = []
            for start in range(0, len(data[split]), batch):
                pairs = data[split][start:start + batch]
                x, y = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, end_id, max_length,
                               mask_prompt=True)
                logp = response_logprobs(reference.logits(reference(x.to(device), None)[0]), y.to(device),
                                         config.logprob).double().cpu()
                rows.append(torch.stack([logp[:len(pairs)], logp[len(pairs):]], 1))
            out[split] = torch.cat(rows)
    return out


def build(config: PreferenceTaskConfig, recipe, tokenizer, data: Preferences, model: Backbone,
          plan: MicroBatchPlan) -> PreferenceTask:
    limit = model.max_seq_len
    max_length = config.max_length or limit or 1024
    for split in ("train", "val", "test"):
        if all(p.chosen.prompt_length >= max_length for p in data[split]):
            raise DataError(f"every {split} prompt is {max_length} tokens or longer, so no response token is left to "
                            "score; use a base with a longer context or raise task.max_length")
    end = tokenizer.eot if tokenizer.eot is not None else tokenizer.pad_id
    reference = reference_logprobs(config, model, data, tokenizer.pad_id, end, max_length)
    return PreferenceTask(config, data, reference, tokenizer=tokenizer, batch_size=recipe.train.batch_size,
                          seed=recipe.data.order_seed(recipe.run.seed), eval_batch_size=recipe.eval.batch_size,
                          max_length=max_length, vocab_size=model.vocab_size)


SPEC = TaskSpec(name="preference", config=PreferenceTaskConfig, load_data=load_data, wrap=wrap, build=build,
                finetune=finetune, pretrained=pretrained)
