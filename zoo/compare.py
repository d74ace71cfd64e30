"""Comparing runs: read each run's resolved recipe, summary.json and TensorBoard scalars, and report what
differs, what it cost and what it bought (test-loss deltas against the first run, with seeds folded into
mean +- std and a noise verdict), as a table (text, markdown, csv, json) and a loss-curve plot."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.recipe import NOT_AN_EXPERIMENT, flatten, matches, read_toml


@dataclass
class RunInfo:
    path: Path
    recipe: dict[str, Any]
    summary: dict[str, Any]
    curves: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)  # tag -> (step, value, wall)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        return self.recipe.get("run.seed", 0)

    def bits_per_char(self) -> float | None:
        loss, cpt = self.summary.get("test_loss"), self.summary.get("test_chars_per_token")
        return loss / math.log(2) / cpt if loss is not None and cpt else None


def read_run(path: str | Path) -> RunInfo:
    """A run's recipe, summary and scalar curves (all points, not TensorBoard's 10,000-point sample)."""
    path = Path(path)
    if not (path / "recipe.toml").is_file():
        raise ZooError(f"{path} is not a zoo run (no recipe.toml)")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise ZooError(f"{path} has no summary.json yet; let its training finish (or resume it) first")
    info = RunInfo(path, flatten(read_toml(path / "recipe.toml")), json.loads(summary_path.read_text()))
    if (path / "tb").is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(path / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            info.curves[tag] = [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
    return info


def differing(runs: list[RunInfo]) -> list[str]:
    """Recipe fields whose values are not the same in every run (seeds and cadences aside)."""
    keys = sorted(k for k in set().union(*(r.recipe for r in runs)) if not matches(k, NOT_AN_EXPERIMENT))
    return [k for k in keys if len({json.dumps(r.recipe.get(k)) for r in runs}) > 1]


def _shown(keys: list[str], runs: list[RunInfo]) -> list[str]:
    """The differing fields worth a column: a field only some runs have (another architecture's knob) is
    implied by model.arch unless it still varies among the runs that have it."""
    return [k for k in keys if k == "model.arch" or all(k in r.recipe for r in runs)
            or len({json.dumps(r.recipe[k]) for r in runs if k in r.recipe}) > 1]


FINISHED = ("finished", "early_stopped")


def _finished(run: RunInfo) -> bool:
    return run.summary.get("status", "finished") in FINISHED


def _groups(runs: list[RunInfo], keys: list[str]) -> list[tuple[list[RunInfo], str]]:
    """(runs, note) rows in order of first appearance: finished runs that differ only in their seed share a row
    (mean +- std); a run that did not finish has its own row, and so has a run repeating another's recipe
    and seed (a duplicate, not a second seed)."""
    rows: list[tuple[list[RunInfo], str]] = []
    open_rows: dict[str, list[RunInfo]] = {}
    for r in runs:
        if not _finished(r):
            rows.append(([r], f"{r.summary.get('status', 'unfinished')} at step {r.summary.get('step')}"))
            continue
        key = json.dumps([r.recipe.get(k) for k in keys])
        group = open_rows.get(key)
        twin = next((g for g in group if g.seed == r.seed), None) if group else None
        if twin is not None:
            rows.append(([r], f"same recipe and seed as {twin.name}"))
        elif group is not None:
            group.append(r)
        else:
            open_rows[key] = [r]
            rows.append((open_rows[key], ""))
    return rows


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def compare(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """One row per experiment (runs that differ only by seed are one row, mean +- std), with deltas against
    the first row and whether a delta exceeds the noise (2 x the seeds' std). The test loss is the best
    checkpoint's (summary.json's test_loss); final_test_loss, the last weights', is shown where it differs."""
    if not runs:
        raise ZooError("name at least one run directory to compare")
    keys = differing(runs)
    rows = []
    base_mean = None
    noise = None
    base_task = runs[0].recipe.get("task.kind", "lm")
    for i, (group, note) in enumerate(_groups(runs, keys)):
        first = group[0]
        tests = [r.summary["test_loss"] for r in group if r.summary.get("test_loss") is not None]
        vals = [r.summary["best_val_loss"] for r in group if r.summary.get("best_val_loss") is not None]
        finals = [r.summary["final_val_loss"] for r in group if r.summary.get("final_val_loss") is not None]
        final_tests = [r.summary["final_test_loss"] for r in group if r.summary.get("final_test_loss") is not None]
        bpc = [b for r in group if (b := r.bits_per_char()) is not None]
        row: dict[str, Any] = {
            "run": first.name if len(group) == 1 else f"{first.name} (+{len(group) - 1} seeds)",
            "runs": [r.name for r in group], "seeds": len(group),
            **{k: first.recipe.get(k) for k in _shown(keys, runs)},
            "params": first.summary.get("params"),
            "tokens": first.summary.get("tokens", first.summary.get("examples")),
            "status": ", ".join(sorted({r.summary.get("status", "finished") for r in group})),
            "steps": first.summary.get("step"),
            "wall_time_s": statistics.fmean(r.summary.get("wall_time_s", 0.0) for r in group),
            "tokens_per_s": statistics.fmean(r.summary.get("tokens_per_s", r.summary.get("examples_per_s", 0.0))
                                             for r in group),
            "best_val_loss": _stats(vals)[0] if vals else None,
            "final_val_loss": _stats(finals)[0] if finals else None,
            "test_loss": _stats(tests)[0] if tests else None,
            "test_loss_std": _stats(tests)[1] if tests else None,
            "final_test_loss": _stats(final_tests)[0] if final_tests else None,
            "test_bits_per_char": _stats(bpc)[0] if bpc else None,
            "note": note,
        }
        if first.recipe.get("task.kind", "lm") != base_task:
            row["note"] = f"another task ({first.recipe.get('task.kind')}) than the first run's: no delta"
            row["delta_test"], row["exceeds_noise"] = None, None
        elif i == 0:
            base_mean = row["test_loss"]
            noise = row["test_loss_std"] if len(tests) > 1 else None
            row["delta_test"], row["exceeds_noise"] = 0.0, None
        else:
            delta = row["test_loss"] - base_mean if row["test_loss"] is not None and base_mean is not None else None
            if note:  # an unfinished run or a duplicate is not an experiment to judge by its delta
                delta = None
            row["delta_test"] = delta
            stds = [s for s in (noise, row["test_loss_std"] if len(tests) > 1 else None) if s is not None]
            row["exceeds_noise"] = None if delta is None or not stds else abs(delta) > 2 * max(stds)
        rows.append(row)
    return rows


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """Warnings about rows that are not comparable with the first (another task, unfinished, duplicates)."""
    return [f"{r['run']}: {r['note']}" for r in rows if r.get("note")]


WHOLE = ("params", "tokens", "steps", "wall_time_s", "tokens_per_s")  # shown as whole numbers


def _fmt(value: Any, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if column in WHOLE else f"{value:,.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """The comparison as an aligned text table, markdown, csv or json."""
    if fmt == "json":
        return json.dumps(rows, indent=1)
    columns = [c for c in rows[0] if c not in ("runs", "seeds", "note")]
    if all(r["test_loss_std"] in (None, 0.0) for r in rows):
        columns.remove("test_loss_std")
    if all(r.get("exceeds_noise") is None for r in rows):
        columns.remove("exceeds_noise")
    if all(r.get("test_bits_per_char") is None for r in rows):
        columns.remove("test_bits_per_char")
    if all(r.get("final_test_loss") in (None, r.get("test_loss")) for r in rows):
        columns.remove("final_test_loss")  # the best checkpoint was the last one everywhere
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    cells = [[_fmt(r.get(c), c) for c in columns] for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def plot(runs: list[RunInfo], path: str | Path, x: str = "step") -> int:
    """Validation (solid) and training (faint) loss curves of every run against step, tokens or wall time;
    returns the number of curves drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    curves = 0
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        per_step_tokens = (run.summary.get("tokens") or 0) / max(1, run.summary.get("step") or 1)
        for tag, style, alpha in (("loss/train", "-", 0.25), ("loss/val", "-", 1.0)):
            points = run.curves.get(tag)
            if not points:
                continue
            start = run.curves.get("loss/train", points)[0][2]
            seconds = {s: v for s, v, _ in run.curves.get("progress/seconds", [])}
            if x == "tokens":
                xs = [s * per_step_tokens for s, _, _ in points]
            elif x == "time" and all(s in seconds for s, _, _ in points):
                xs = [seconds[s] for s, _, _ in points]  # training time: a stopped and resumed run has no gap
            elif x == "time":
                xs = [w - start for _, _, w in points]  # runs from before progress/seconds: wall time
            else:
                xs = [s for s, _, _ in points]
            ax.plot(xs, [v for _, v, _ in points], style, color=color, alpha=alpha,
                    label=f"{run.name} ({tag.split('/')[1]})", marker="o" if tag == "loss/val" else None,
                    markersize=3)
            curves += 1
    ax.set_xlabel({"step": "optimizer step", "tokens": "tokens seen", "time": "training time (s)"}[x])
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return curves
