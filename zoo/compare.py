"""Comparing runs: read each run's resolved recipe, summary.json and TensorBoard scalars, and report what
differs, what it cost and what it bought: runs that differ only in their seeds are one experiment (n, mean,
sample std, 95% interval), each experiment's test loss against the first's (delta, Welch's t-test), and how
soon each reached a target loss; as a table (text, markdown, csv, json) and a plot of mean curves with bands."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.recipe import NOT_AN_EXPERIMENT, completed, flatten, matches, read_toml
from zoo.stats import ALPHA, Sample, welch


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
    def seed(self) -> tuple:
        """What makes two runs of one recipe different samples: the initialisation and the data-order seeds."""
        return self.recipe.get("run.seed", 0), self.recipe.get("data.seed", -1)

    def tokens_per_step(self) -> float:
        return (self.summary.get("tokens") or 0) / max(1, self.summary.get("step") or 1)

    def bytes_per_token(self) -> float | None:
        """UTF-8 bytes per training token: the train slice's at the last evaluation (else the test split's)."""
        return self.summary.get("final_train_bytes_per_token") or self.summary.get("test_bytes_per_token")

    def seconds_at(self) -> dict[int, float]:
        """Training time (progress/seconds) at each logged step."""
        return {s: v for s, v, _ in self.curves.get("progress/seconds", [])}

    def reached(self, target: float, tag: str = "loss/val") -> tuple[int, float, float | None] | None:
        """(step, tokens, training seconds) of the first evaluation whose loss is at or below `target`."""
        for step, value, _ in self.curves.get(tag, []):
            if value <= target * (1 + 1e-6):  # TensorBoard stores float32: a run reaches its own final loss
                return step, step * self.tokens_per_step(), self.seconds_at().get(step)
        return None


def read_run(path: str | Path) -> RunInfo:
    """A run's recipe, summary and scalar curves (all points, not TensorBoard's 10,000-point sample)."""
    path = Path(path)
    if not (path / "recipe.toml").is_file():
        raise ZooError(f"{path} is not a zoo run (no recipe.toml)")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise ZooError(f"{path} has no summary.json yet; let its training finish (or resume it) first")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (
            f"is not valid JSON ({exc.msg}, line {exc.lineno})" if isinstance(exc, json.JSONDecodeError)
            else f"cannot be read ({exc.strerror or exc})")
        raise ZooError(f"{summary_path} {why}; restore it from a copy, or resume the run (`zoo train {path}`) "
                       "to write it again") from None
    if not isinstance(summary, dict):
        raise ZooError(f"{summary_path} holds a JSON {type(summary).__name__}, not the object zoo writes; restore "
                       f"it from a copy, or resume the run (`zoo train {path}`) to write it again")
    info = RunInfo(path, flatten(completed(read_toml(path / "recipe.toml"))), summary)
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
        twin = next((g for g in group if g.seed == r.seed), None) if group else None  # same seeds: no new sample
        if twin is not None:
            rows.append(([r], f"same recipe and seed as {twin.name}"))
        elif group is not None:
            group.append(r)
        else:
            open_rows[key] = [r]
            rows.append((open_rows[key], ""))
    return rows


SEED_SUFFIX = re.compile(r"-(seed|s)\d+(-\d+)?$")


def _label(group: list[RunInfo]) -> str:
    """An experiment's name: its runs' common name without the seed suffix a sweep gives (-seed1337)."""
    names = {SEED_SUFFIX.sub("", r.name) for r in group}
    if len(names) == 1 and (len(group) > 1 or SEED_SUFFIX.search(group[0].name)):
        return names.pop()
    return group[0].name if len(group) == 1 else f"{group[0].name} (+{len(group) - 1} seeds)"


def _values(group: list[RunInfo], key: str) -> list[float]:
    return [r.summary[key] for r in group if isinstance(r.summary.get(key), int | float)]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


METRICS = ("auto", "loss", "bpb")
TOKENIZER_FIELDS = ("data.tokenizer", "data.vocab_size", "data.tokenizer_pattern", "data.tokenizer_max_chars")
UNITS = {"loss": "nats per token", "bpb": "bits per byte"}


def tokenizers_differ(runs: list[RunInfo]) -> bool:
    """Whether the runs' losses are in different units: another tokenizer kind or settings, or another
    vocabulary (a character vocabulary learned from other text)."""
    return any(len({json.dumps(r.recipe.get(k)) for r in runs}) > 1 for k in TOKENIZER_FIELDS) or \
        len({r.summary.get("vocab_size") for r in runs}) > 1


def choose_metric(runs: list[RunInfo], metric: str = "auto") -> tuple[str, str]:
    """(metric, note): `auto` judges by bits per byte where the runs' tokenizers differ, by the loss otherwise;
    the note says why, or warns that losses of different tokenizers were asked for."""
    differ = len(runs) > 1 and tokenizers_differ(runs)
    if metric not in METRICS:
        raise ZooError(f"--metric {metric!r}: use loss, bpb or auto")
    if metric == "auto":
        metric = "bpb" if differ else "loss"
        return metric, ("the runs' tokenizers differ (nats per token of different vocabularies do not compare): "
                        "judged by bits per byte" if differ else "")
    if metric == "loss" and differ:
        return metric, ("the runs' tokenizers differ, so their losses (nats per token) do not compare: --metric bpb "
                        "judges them by bits per byte")
    return metric, ""


def compare(runs: list[RunInfo], target: float | str | None = None, metric: str = "loss") -> list[dict[str, Any]]:
    """One row per experiment (runs that differ only in run.seed/data.seed are one row: n, mean, sample std and
    95% interval of the test `metric`), with the delta of each row's mean against the first row's and Welch's
    t-test of it. `metric` is "loss" (nats per token: test_loss, the best checkpoint's, and final_test_loss, the
    last weights') or "bpb" (bits per byte: test_bpb, final_test_bpb), with the val columns to match. With
    `target` (a value of the metric, or "baseline" for the first row's mean final val value), the step, tokens
    and training seconds at which each run's val metric first reached it, averaged over its seeds."""
    if not runs:
        raise ZooError("name at least one run directory to compare")
    m = metric
    keys = differing(runs)
    groups = _groups(runs, keys)
    base_task = runs[0].recipe.get("task.kind", "lm")
    if target == "baseline":
        finals = _values(groups[0][0], f"final_val_{m}")
        if not finals:
            raise ZooError(f"--target-loss baseline: {groups[0][0][0].name} has no final val {m}")
        target = statistics.fmean(finals)
    rows: list[dict[str, Any]] = []
    base: Sample | None = None
    base_target_tokens = None
    for i, (group, note) in enumerate(groups):
        first = group[0]
        test = Sample.of(_values(group, f"test_{m}"))
        row: dict[str, Any] = {
            "experiment": _label(group), "runs": [r.name for r in group], "n": len(group),
            **{k: first.recipe.get(k) for k in _shown(keys, runs)},
            "params": first.summary.get("params"),
            "tokens": first.summary.get("tokens", first.summary.get("examples")),
            "status": ", ".join(sorted({r.summary.get("status", "finished") for r in group})),
            "steps": first.summary.get("step"),
            "wall_time_s": statistics.fmean(r.summary.get("wall_time_s", 0.0) for r in group),
            "tokens_per_s": statistics.fmean(r.summary.get("tokens_per_s", r.summary.get("examples_per_s", 0.0))
                                             for r in group),
            f"best_val_{m}": _mean(_values(group, f"best_val_{m}")),
            f"final_val_{m}": _mean(_values(group, f"final_val_{m}")),
            f"test_{m}": test.mean if test else None,
            f"test_{m}_std": test.std if test else None,
            f"test_{m}_ci95": test.ci95 if test else None,
            f"final_test_{m}": _mean(_values(group, f"final_test_{m}")),
            **({"test_bpb": _mean(_values(group, "test_bpb"))} if m == "loss" else
               {"test_loss": _mean(_values(group, "test_loss"))}),
            "delta_test": None, "delta_ci95": None, "p_value": None, "significant": None,
            "note": note,
        }
        if first.recipe.get("task.kind", "lm") != base_task:
            row["note"] = f"another task ({first.recipe.get('task.kind')}) than the first run's: no delta"
        elif m == "bpb" and test is None and not note:
            row["note"] = "no bits per byte in its summary (trained before zoo reported them, or not a language model)"
        elif i == 0:
            base = test
            row["delta_test"] = 0.0 if test else None
        elif not note and test and base:  # an unfinished run or a duplicate is not an experiment to judge
            row["delta_test"] = test.mean - base.mean
            if (w := welch(base, test)) is not None:
                row.update(delta_ci95=w.ci95, p_value=w.p, significant=w.significant)
        if target is not None:
            hits = [h for r in group if (h := r.reached(float(target), f"{m}/val")) is not None]
            seconds = [h[2] for h in hits if h[2] is not None]
            row.update({f"target_{m}": float(target)}, target_reached=f"{len(hits)}/{len(group)}",
                       target_step=_mean([h[0] for h in hits]), target_tokens=_mean([h[1] for h in hits]),
                       target_seconds=_mean(seconds) if len(seconds) == len(hits) else None)
            if i == 0:
                base_target_tokens = row["target_tokens"]
            row["target_tokens_ratio"] = (row["target_tokens"] / base_target_tokens
                                          if row["target_tokens"] is not None and base_target_tokens else None)
        rows.append(row)
    return rows


def metric_of(rows: list[dict[str, Any]]) -> str:
    return "bpb" if rows and "test_bpb_std" in rows[0] else "loss"


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """Warnings about rows that are not comparable with the first (another task, unfinished, duplicates)."""
    return [f"{r['experiment']}: {r['note']}" for r in rows if r.get("note")]


def rules(rows: list[dict[str, Any]]) -> list[str]:
    """What the table's columns mean and the rule its verdicts follow, to print under it."""
    m = metric_of(rows)
    what = "loss" if m == "loss" else "bpb"
    out = [f"test {what}: the best checkpoint's (lowest val loss), {UNITS[m]}; runs differing only in run.seed or "
           "data.seed form one row of n runs: mean, sample std (– for n = 1) and the 95% confidence interval of "
           "the mean (Student's t)."]
    if m == "bpb":
        out.append("bits per byte: the test split's summed nats over ln 2 times its summed UTF-8 bytes (special "
                   "tokens left out): one measure for every tokenizer.")
    if len(rows) > 1:
        out.append(f"delta: mean test {what} minus the first row's (the baseline); significant: Welch's two-sided "
                   f"t-test p < {ALPHA} (needs n >= 2 in both rows, – otherwise); delta 95% CI ±: Welch's interval "
                   "of the difference.")
    if any(r.get(f"final_test_{m}") not in (None, r.get(f"test_{m}")) for r in rows):
        out.append(f"test {what} (last): the last weights' test {what}, where the best checkpoint was an earlier one.")
    if rows and f"target_{m}" in rows[0]:
        out.append(f"target: val {what} <= {rows[0][f'target_{m}']:.4f}; the first evaluation reaching it (so to "
                   "within "
                   "eval.interval steps), mean over the seeds that reached it (reached: how many did); tokens vs "
                   "baseline: tokens to target over the first row's.")
    return out


WHOLE = ("params", "tokens", "steps", "wall_time_s", "tokens_per_s", "target_step", "target_tokens",
         "target_seconds")  # shown as whole numbers
HEADERS = {"test_loss": "test loss (best ckpt)", "test_loss_std": "std", "test_loss_ci95": "95% CI ±",
           "final_test_loss": "test loss (last)", "delta_test": "delta", "delta_ci95": "delta 95% CI ±",
           "p_value": "p (Welch)", "best_val_loss": "best val", "final_val_loss": "final val",
           "test_bpb": "test bpb (best ckpt)", "test_bpb_std": "std", "test_bpb_ci95": "95% CI ±",
           "final_test_bpb": "test bpb (last)", "best_val_bpb": "best val bpb", "final_val_bpb": "final val bpb",
           "wall_time_s": "time (s)", "tokens_per_s": "tokens/s",
           "target_step": "steps to target", "target_tokens": "tokens to target",
           "target_seconds": "seconds to target", "target_tokens_ratio": "tokens vs baseline",
           "target_reached": "reached"}
LOSSES = tuple(f"{k}_{m}" for m in ("loss", "bpb") for k in ("best_val", "final_val", "test", "final_test")) + \
    tuple(f"test_{m}_{k}" for m in ("loss", "bpb") for k in ("std", "ci95")) + ("delta_test", "delta_ci95")
NONE = "–"


def _fmt(value: Any, column: str = "") -> str:
    """A cell: losses to 4 decimals, counts whole, p to 2 significant digits, recipe values as written."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column in WHOLE:
            return f"{value:,.0f}"
        if column in LOSSES:
            return f"{value:+.4f}" if column == "delta_test" and value else f"{value:.4f}"
        if column == "p_value":
            return f"{value:.2g}"
        if column == "target_tokens_ratio":
            return f"{value:.2f}x"
        return repr(value)  # a recipe value: 1e-05 stays 1e-05
    if isinstance(value, int):
        return f"{value:,}" if column in WHOLE else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def columns(rows: list[dict[str, Any]], wanted: list[str] | None = None) -> list[str]:
    """The columns worth showing: empty and redundant ones left out; or the `wanted` ones, in that order
    (`fields` stands for the recipe fields that differ)."""
    if wanted:
        fields = [c for c in rows[0] if "." in c]
        chosen = [f for c in wanted for f in (fields if c == "fields" else [c])]
        unknown = [c for c in chosen if c not in rows[0]]
        if unknown:
            known = [c for c in rows[0] if c not in ("runs", "note") and "." not in c]
            raise ZooError(f"--columns: no column {', '.join(unknown)}; columns: fields (the differing recipe "
                           f"fields), {', '.join(known)}")
        return chosen
    cols = [c for c in rows[0] if c not in ("runs", "note", "target_loss", "target_bpb")]

    def empty(c: str) -> bool:
        return all(r.get(c) is None for r in rows)

    m = metric_of(rows)
    drop = {c for c in (f"test_{m}_std", f"test_{m}_ci95", "delta_ci95", "p_value", "significant", "test_bpb",
                        "test_loss", "target_seconds", "target_tokens_ratio") if c in rows[0] and empty(c)}
    if m == "bpb":
        drop.add("test_loss")  # the test losses of different tokenizers: not a column to read across rows
    if all(r.get(f"final_test_{m}") in (None, r.get(f"test_{m}")) for r in rows):
        drop.add(f"final_test_{m}")  # the best checkpoint was the last one everywhere
    if len(rows) == 1:
        drop.add("delta_test")
    return [c for c in cols if c not in drop]


def render(rows: list[dict[str, Any]], fmt: str = "table", wanted: list[str] | None = None) -> str:
    """The comparison as an aligned text table, markdown (with the rules under it), csv or json; `wanted`
    chooses the columns (not for json, which has every field)."""
    if fmt == "json":
        return json.dumps(rows, indent=1)
    cols = columns(rows, wanted)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    heads = [HEADERS.get(c, c) for c in cols]
    cells = [[_fmt(r.get(c), c) for c in cols] for r in rows]
    if fmt == "markdown":
        right = [c not in ("experiment", "status") and not c.startswith(("model.", "optim.", "schedule.", "run.",
                                                                         "data.", "train.", "task."))
                 for c in cols]
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines + [""] + rules(rows))
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines + [""] + rules(rows))


# ------------------------------------------------------------------------------------------- plots
def _ema(values: list[float], smooth: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average with its start-up bias removed."""
    if not smooth:
        return values
    out, last, weight = [], 0.0, 0.0
    for v in values:
        last = smooth * last + (1 - smooth) * v
        weight = smooth * weight + (1 - smooth)
        out.append(last / weight)
    return out


def _band(group: list[RunInfo], tag: str, x: str, smooth: float):
    """(xs, mean, low, high) of a tag over a group's runs, at the steps every run logged."""
    series = [dict(zip([s for s, _, _ in pts], _ema([v for _, v, _ in pts], smooth), strict=True))
              for r in group if (pts := r.curves.get(tag))]
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    values = [[s[step] for s in series] for step in steps]
    if x == "tokens":
        xs = [step * statistics.fmean(r.tokens_per_step() for r in group) for step in steps]
    elif x == "bytes":
        per_token = [r.bytes_per_token() for r in group]
        if None in per_token:
            return None  # a run from before bits per byte
        xs = [step * statistics.fmean(r.tokens_per_step() * b for r, b in zip(group, per_token, strict=True))
              for step in steps]
    elif x == "time":
        clocks = [r.seconds_at() for r in group]
        if any(not all(step in c for step in steps) for c in clocks):
            return None  # a run from before progress/seconds was logged
        xs = [statistics.fmean(c[step] for c in clocks) for step in steps]
    else:
        xs = steps
    return xs, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _colours(n: int) -> list:
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / max(1, n - 1)) for i in range(n)]


def plot_path(value: str) -> Path:
    """The file a --plot argument names, checked before anything is trained or read: an image format matplotlib
    writes (no suffix = PNG, added to the name), in a folder that exists, and not a folder itself."""
    path = Path(value)
    if path.is_dir():
        raise ZooError(f"--plot {value} is a folder; name a file in it, e.g. --plot {path / 'compare.png'}")
    if not path.resolve().parent.is_dir():
        raise ZooError(f"--plot {value}: the folder {path.parent} does not exist; create it first")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        return path.with_name(path.name + ".png")
    if suffix not in formats:
        raise ZooError(f"--plot {value}: matplotlib cannot write .{suffix} files; use one of "
                       f"{', '.join('.' + f for f in sorted(formats))} (e.g. compare.png)")
    return path


def plot(runs: list[RunInfo], path: str | Path, x: str = "step", smooth: float = 0.0,
         metric: str = "loss") -> tuple[int, int]:
    """Training and validation loss of each experiment (runs differing only in their seeds) against step,
    tokens or training time: one colour per experiment, its mean over seeds as a line and the min-max range as
    a band, the legend outside the axes; `smooth` is TensorBoard's EMA factor for the training curves. Returns
    (experiments, runs) drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g, _ in _groups(runs, differing(runs))]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharex=True)
    colours = _colours(len(groups))
    drawn = 0
    for group, colour in zip(groups, colours, strict=True):
        label = f"{_label(group)} (n={len(group)})"
        for ax, tag, s in ((axes[0], f"{metric}/train", smooth), (axes[1], f"{metric}/val", 0.0)):
            band = _band(group, tag, x, s)
            if band is None:
                continue
            xs, mean, low, high = band
            ax.plot(xs, mean, color=colour, lw=1.4, label=label if tag.endswith("/val") else None,
                    marker="o" if tag.endswith("/val") and len(xs) < 40 else None, markersize=2.5)
            if len(group) > 1:
                ax.fill_between(xs, low, high, color=colour, alpha=0.18, lw=0)
        drawn += 1
    xlabel = {"step": "optimizer step", "tokens": "tokens seen", "time": "training time (s)",
              "bytes": "bytes of training text seen"}[x]
    what = "loss" if metric == "loss" else "bits per byte"
    # train bpb comes from each evaluation's train slice, the train loss from every logged step
    for ax, title in zip(axes, (f"training {what}" + (f" (EMA {smooth})" if smooth else ""), f"validation {what}"),
                         strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{what} ({UNITS[metric]}; mean over seeds, band: min–max)")
    _zoom(axes[1])
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return drawn, sum(len(g) for g in groups)


def _zoom(ax) -> None:
    """Show the validation curves' last two thirds in y, where experiments differ (the first evaluations of
    an untrained model would flatten them)."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata()[len(line.get_ydata()) // 3:]]
    if ys:
        lo, hi = min(ys), max(ys)
        pad = (hi - lo) * 0.08 or 0.01
        ax.set_ylim(lo - pad, hi + pad)
