"""The one training loop. It drives a Session's parts through the Task and Trainable hooks and never names a
task, a metric or an architecture.

Per step: the learning rate from the schedule; this rank's micro-batches (the plan's) through the training
forward under autocast, each continuing its carried state (detached: truncated BPTT); unscale, clip (the
pre-clip norm kept on the device); the optimizer step. Per log interval, and before every evaluation and
checkpoint: one read of the device's losses and norms (`flush`), which stops a diverged run before anything
of it is saved. Per cadence: evaluation (all ranks, reduced), logging (rank 0), checkpoints (rank 0 writes, all
wait). At the end: the test split with the last weights and with the best checkpoint's, then summary.json.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from zoo import dist, faults, stops
from zoo.errors import TrainingError
from zoo.launch import FINISHED_MARK
from zoo.models.base import detach_state
from zoo.optim import lr_at, role_rates, set_rates
from zoo.recipe import Recipe, flatten, recipe_to_dict
from zoo.reporting import Progress, Throughput, base_summary, peak_flops, setup_line, start_line
from zoo.runs import mark_diverged, read_summary, write_summary
from zoo.session import Session, open_session, run_directory
from zoo.stops import EndInterrupted, StopFlag
from zoo.tblog import TBLogger


@dataclass
class TrainResult:
    summary: dict[str, Any]
    signal: int | None = None  # the signal that stopped the run early, if any


class _StepRecord(NamedTuple):
    """A finished optimizer step whose loss and gradient norm are still device tensors."""

    step: int
    items: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor
    seconds: float  # training time so far (host clock: stops are not counted, resumes continue it)


def train(recipe: Recipe, run_dir: str | Path, restart: bool = False) -> TrainResult:
    """Train (or resume) the run in `run_dir` to the recipe's limits; returns the summary. With `restart`, a
    run's earlier checkpoints and events are set aside (kept in run_dir/abandoned-<time>/) and it starts over."""
    env = dist.environment()
    device = dist.resolve_device(recipe.run.device, env)
    try:
        dist.init(env, device)
        with run_directory(Path(run_dir), env) as started:
            trainer = Trainer(open_session(recipe, Path(run_dir), env, device, restart))
            started()
            result = trainer.run()
        if env.distributed:  # the launcher's proof that this rank's work is saved, whatever its teardown does;
            # written before the barrier, so once any rank has left it every rank's mark is in the log
            print(f"{FINISHED_MARK} {env.rank}", file=sys.stderr, flush=True)
        dist.barrier(env)  # leave together: a rank tearing down gloo while a peer still talks to it can abort
        faults.teardown(env.rank)
        return result
    finally:
        dist.shutdown()


class Trainer:
    """Trains a Session to its recipe's limits."""

    def __init__(self, session: Session):
        self.s = session
        self.recipe, self.run_dir, self.env, self.device = session.recipe, session.run_dir, session.env, session.device
        self.main = self.env.is_main
        self.model, self.task, self.state = session.model, session.task, session.state
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.diverged_above = 10 * self.task.chance_loss()
        self.unit = self.task.unit
        self.throughput = Throughput(self.task.flops_per_item(self.model), peak_flops(self.device),
                                     self.env.world_size)
        self.pending: list[_StepRecord] = []  # steps whose loss and gradient norm are still on the device
        self.t_start = time.perf_counter()

    @property
    def counters(self):
        return self.state.counters

    # ------------------------------------------------------------------------------------------ steps
    def train_step(self) -> None:
        """One optimizer step over this rank's micro-batches. Nothing here waits for the GPU: the loss and the
        pre-clip gradient norm stay on the device until `flush` reads a whole window of steps at once."""
        s, c, st = self.s, self.counters, self.state
        lr = lr_at(c.step, self.recipe.train.lr, self.recipe.schedule, s.total_steps, self.task.steps_per_epoch())
        set_rates(s.optimizer, lr, self.recipe.train.lr)
        faults.step(c.step + 1, self.env.rank)
        loss_sum = None
        batches = self.task.micro_batches(c.step, s.plan)
        for i, batch in enumerate(batches):
            state_in = None if batch.reset else st.carried.get(batch.slot)
            batch = batch.to(self.device)
            # DDP all-reduces gradients only after the last micro-batch's backward
            with dist.no_sync(s.train_forward, skip=i < len(batches) - 1), s.autocast():
                try:
                    loss, new_state = s.train_forward(batch.x, batch.y, batch.lengths, state_in, batch.aux)
                except torch.OutOfMemoryError:
                    raise stops.out_of_memory(self.device, c.step + 1, s.plan.micro) from None
                except RuntimeError as exc:
                    raise stops.forward_failed(exc, s.precision, self.device, c.step + 1,
                                               s.plan.micro) from None
                st.carried[batch.slot] = detach_state(new_state)
                s.scaler.scale(loss / s.plan.accumulation).backward()
            loss = loss.detach().float()
            loss_sum = loss if loss_sum is None else loss_sum + loss
        s.scaler.unscale_(s.optimizer)
        clip = self.recipe.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else math.inf)
        try:
            s.scaler.step(s.optimizer)
        except RuntimeError as exc:  # e.g. a learning rate so large that the update overflows float32
            raise TrainingError(f"the optimizer step failed at step {c.step + 1} ({str(exc).splitlines()[0][:160]}) "
                                f"with lr {lr:g}; lower train.lr") from None
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)
        c.step += 1
        c.tokens += self.task.items_per_step()
        self.pending.append(_StepRecord(c.step, c.tokens, lr, loss_sum / s.plan.accumulation, grad_norm,
                                        time.perf_counter() - self.t_start))

    def _diverged(self, what: str, value: float, step: int, extra: str = "") -> TrainingError:
        """Stop a diverged run, remembering it in the run directory so the remedies may be applied."""
        if self.main:
            mark_diverged(self.run_dir, {"step": step, what.replace(" ", "_"): value})
        last = self.s.ckpt.latest()
        return stops.diverged(what, value, step, self.diverged_above, last.name if last else None, extra)

    def flush(self) -> list[tuple[int, float, float]]:
        """Read the pending steps' losses (averaged over ranks) and gradient norms in one transfer, stop on a
        non-finite or diverging one, count clipped steps and log each step to TensorBoard; returns (step, loss,
        norm) of each. Called before anything is evaluated or saved, so no checkpoint ever holds a bad update."""
        records, self.pending = self.pending, []
        if not records:
            return []
        losses = dist.mean_tensor(torch.stack([r.loss for r in records]), self.env)
        norms = torch.stack([r.grad_norm.float() for r in records])
        values = torch.stack([losses, norms.to(losses.device)]).tolist()
        c, clip, out = self.counters, self.recipe.train.grad_clip, []
        clipped = c.clipped_steps
        for r, loss, norm in zip(records, *values, strict=True):
            if not math.isfinite(loss) or loss > self.diverged_above or (not math.isfinite(norm)
                                                                            and not self.s.scaler.is_enabled()):
                raise self._diverged("training loss", loss, r.step, f" (gradient norm {norm:.4g})")
            clipped += clip > 0 and norm > clip
            roles = {f"optim/lr_{role}": rate for role, rate in role_rates(self.s.optimizer, r.lr,
                                                                           self.recipe.train.lr).items()}
            self.logger.scalars({"loss/train": loss, "optim/lr": r.lr, "optim/grad_norm": norm,
                                 "optim/clipped_frac": clipped / r.step, f"progress/{self.unit}": r.items,
                                 "progress/seconds": r.seconds, **roles}, r.step)
            out.append((r.step, loss, norm))
        c.clipped_steps = clipped
        return out

    def evaluate(self, split: str) -> dict:
        """The task's metrics of a split; with several ranks each evaluates its share and the sums are reduced,
        so the result equals one process's."""
        part = self.task.evaluate(self.model, split, self.device, self.s.autocast, self.env.rank, self.env.world_size)
        keys = sorted(part)
        sums = dict(zip(keys, dist.sum_all([float(part[k]) for k in keys], self.env, self.device), strict=True))
        return self.task.metrics(sums)

    def save(self, best: bool = False) -> None:
        meta = {"recipe": recipe_to_dict(self.recipe), "tokenizer": self.s.tokenizer.kind, "zoo_format": 1,
                "best": best, "val_loss": self.counters.best_val if best else None}
        self.state.save(self.s.ckpt, meta, best)

    # ------------------------------------------------------------------------------------------ loop
    def training_done(self) -> bool:
        """Training reached its limits, or stopped early and the patience still says so."""
        c, patience = self.counters, self.recipe.train.early_stop_patience
        early = c.ended == "early_stopped" and bool(patience) and c.evals_since_best >= patience
        return c.step >= self.s.total_steps or early

    def run(self) -> TrainResult:
        c, s = self.counters, self.s
        progress = Progress(self.main, self.recipe.log.progress, s.total_steps, c.step)
        ending = self.training_done()
        if ending:
            summary = read_summary(self.run_dir)
            if summary and summary.get("status") in ("finished", "early_stopped") and summary.get("step") == c.step:
                progress.line(f"{self.run_dir} already finished at step {c.step}; raise train.max_steps (or "
                              "max_tokens, epochs) to train further, or use a new --name")
                return TrainResult(summary)
            progress.line(f"{self.run_dir}: training ended at step {c.step} but its final evaluation did not; "
                          "doing it now")
        else:
            progress.line(start_line(s, c))
            progress.line(setup_line(s))
        self.logger = TBLogger(self.run_dir, enabled=self.main, purge_step=c.step + 1 if s.resumed_from else None)
        status = c.ended or "finished"
        try:
            if s.resumed_from is None:
                self.logger.text("recipe", (self.run_dir / "recipe.toml").read_text(encoding="utf-8"), 0)
            if s.changes:
                self.logger.text("recipe_changes", f"from step {c.step}: {s.changes}", c.step)
            with StopFlag() as stop:
                if not ending:
                    status = self._loop(progress, stop)
                stop.ending = status != "interrupted"
                summary = self._finish(status, progress)
        except EndInterrupted as exc:
            last = s.ckpt.latest()
            progress.line(f"{signal.Signals(exc.signum).name} during the final evaluation: the trained weights are "
                          f"saved ({last.name if last else 'no checkpoint'}); run the same command to finish it")
            return TrainResult({}, signal=exc.signum)
        finally:
            progress.close()
            self.logger.close()
        return TrainResult(summary, signal=stop.signum if status == "interrupted" else None)

    def _loop(self, progress: Progress, stop: StopFlag) -> str:
        """Train to the end of the recipe, or to a stop; returns finished, early_stopped or interrupted."""
        c, recipe, log, rate = self.counters, self.recipe, self.logger, self.throughput
        t_start = self.t_start = time.perf_counter() - c.elapsed  # training time continues across resumes
        train_loss, grad_norm, first = c.last_train_loss, math.nan, True
        self.model.train()
        while True:
            self.train_step()
            if first:  # the first step compiles (when compiling): time it apart from the rate
                first = False
                dist.synchronize(self.device)
                if self.s.compiled:
                    progress.line(f"compiled the training step in {time.perf_counter() - rate.start:.0f} s "
                                  "(first step)")
                rate.restart()
            else:
                rate.add(self.task.items_per_step())
            c.elapsed = time.perf_counter() - t_start
            is_last = c.step >= self.s.total_steps
            logging = c.step % recipe.log.interval == 0 or is_last
            evaluating = bool(recipe.eval.interval and c.step % recipe.eval.interval == 0) or is_last
            interval = recipe.checkpoint.interval
            due = (c.step % interval == 0) if interval else evaluating
            # the host reads the device's numbers only at these steps; a stop is asked of every rank at the
            # same steps (with one process, at once)
            syncing = logging or evaluating or due or (not self.env.distributed and stop.signum is not None)
            progress.step(f"loss {train_loss:.4f} | {rate.running / 1000:.1f}k {self.unit}/s")
            if not syncing:
                continue
            _, train_loss, grad_norm = self.flush()[-1]
            c.last_train_loss = train_loss
            c.elapsed = time.perf_counter() - t_start
            if logging and rate.measure() is not None:
                log.scalars({f"perf/{self.unit}_per_s": rate.rate}, c.step)
                if rate.mfu is not None:
                    log.scalars({"perf/mfu": rate.mfu}, c.step)
            if logging and progress.bar is None:
                lr = self.s.optimizer.param_groups[0]["lr"]
                progress.line(f"step {c.step}/{self.s.total_steps} | epoch {c.step / self.task.steps_per_epoch():.2f}"
                              f" | loss {train_loss:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | "
                              f"{rate.rate / 1000:.1f}k {self.unit}/s | {c.elapsed:.0f}s")

            improved, early_stop = False, False
            if evaluating:
                improved, early_stop = self._validate(progress)
            stopping = dist.any_rank(stop.signum is not None, self.env, self.device)
            if not stopping and (early_stop or is_last):  # saved with the checkpoint: the run's end is due
                c.ended = "early_stopped" if early_stop else "finished"
            if due or improved or is_last or stopping or early_stop:
                self.save(best=improved)
                log.flush()
            if evaluating or due or improved:  # the rate counts training time only
                rate.restart()
            if stopping:
                return "interrupted"
            if early_stop or is_last:
                return c.ended

    def _validate(self, progress: Progress) -> tuple[bool, bool]:
        """Evaluate the val split, log it and a sample; returns (a new best, patience exhausted)."""
        c = self.counters
        val = self.evaluate("val")
        loss = val["loss"]
        if not math.isfinite(loss) or loss > self.diverged_above:
            raise self._diverged("validation loss", loss, c.step)
        c.last_val = loss
        improved = loss < c.best_val
        tracked = self.task.tracked(val)
        c.last_tracked = {f"final_val_{k}": v for k, v in tracked.items()}
        if improved:
            c.best_val, c.best_step, c.evals_since_best = loss, c.step, 0
            c.best_tracked = {f"best_val_{k}": v for k, v in tracked.items()}
        else:
            c.evals_since_best += 1
        scalars = {"loss/val": loss, **self.task.scalars("val", val)}
        if self.task.evaluates_train:
            train = self.evaluate("train")
            c.last_tracked.update({f"final_train_{k}": v for k, v in self.task.tracked(train).items()})
            scalars.update(self.task.scalars("train", train))
        self.logger.scalars(scalars, c.step)
        sample = self.task.sample(self.model, c.step, self.device) if self.main else ""
        if sample:
            self.logger.text("sample", sample, c.step)
        shown = "".join(f" | val {k} {v:.4f}" for k, v in list(tracked.items())[:1])  # the first: bpb
        progress.line(f"eval step {c.step}: val loss {loss:.4f}{shown}{' (best)' if improved else ''}")
        patience = self.recipe.train.early_stop_patience
        return improved, bool(patience and c.evals_since_best >= patience)

    # ------------------------------------------------------------------------------------------ end
    def _finish(self, status: str, progress: Progress) -> dict:
        """The run's end: test evaluation, hparams and summary.json (written last: it marks the end done)."""
        c = self.counters
        summary = base_summary(self.s, c, status)
        if status != "interrupted" and self.recipe.eval.test:
            summary.update(self.task.test_extras())
            self._test(summary, progress)  # leaves the model with the best checkpoint's weights
            extra = self.task.finish(self.model, self.device, self.run_dir, self.main)
            summary.update(extra)
            if extra:
                progress.line(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in extra.items()))
        if self.main:
            if status != "interrupted":
                metrics = {f"final/{k}": float(summary[k]) for k in ("final_val_loss", "best_val_loss", "test_loss")
                           if summary.get(k) is not None}
                self.logger.hparams(flatten(recipe_to_dict(self.recipe)), metrics)
            write_summary(self.run_dir, summary)
        if status == "interrupted":
            progress.line(f"stopped at step {c.step}; checkpoint saved; run the same command to resume")
        else:
            progress.line(f"done: {c.step} steps, {c.tokens:,} {self.unit} in {c.elapsed:.0f}s; best val loss "
                          f"{c.best_val:.4f}")
        return summary

    def _test(self, summary: dict, progress: Progress) -> None:
        """The last weights' test metrics, then the best checkpoint's: runs are judged by the best (the one
        `best` names and every command reads by default), the last beside it under its own name."""
        c, task = self.counters, self.task
        final = self.evaluate("test")
        summary["final_test_loss"] = final["loss"]
        summary.update(task.summary("test", final, "final"))
        self.logger.scalars({"loss/test_final": final["loss"]}, c.step)
        test, where = final, self.s.ckpt.latest()
        best = self.state.load_best_weights(self.s.ckpt)
        if best is not None:
            test, where = self.evaluate("test"), best
        summary["test_loss"], summary["test_checkpoint"] = test["loss"], where.name if where else None
        summary.update(task.summary("test", test, "best"))
        self.logger.scalars({"loss/test": test["loss"], **task.scalars("test", test)}, c.step)
        if task.reports_val_at_end:  # the best checkpoint's val metrics too
            summary.update(task.summary("val", self.evaluate("val"), "best"))
        if report := task.report("test", test):
            progress.line(f"{report} at {summary['test_checkpoint']}")
        progress.line(f"test loss {test['loss']:.4f} at {summary['test_checkpoint']}"
                      + (f" (the last weights': {final['loss']:.4f})" if best is not None else ""))
