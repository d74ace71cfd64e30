"""`zoo sweep`: many runs of one recipe, trained one after another and then compared.

Two designs. A grid (`--vary key=v1,v2 ...`) trains every combination of the values. An ablation (`--ablate
NAME:key=v[,key=v...] ...`) trains a baseline (the recipe as it is), each intervention alone on top of it and,
with `--stack`, all of them together: Giles Thomas's one-at-a-time method. Every point runs with several seeds
(`--seeds`; `--baseline-seeds` for the baseline and the stack); `--seed-fields` says whether a seed moves the
initialisation (run.seed), the data order (data.seed) or both.

Run names say what a run is and its real seed (`PREFIX-rotary-seed1338`). A name already taken by a run of
another recipe (one made by hand, or an earlier sweep's) is never reused: the point gets the next free name
(`-2`, `-3`, ...). A run of the same recipe is the point's own run from an earlier, interrupted sweep: it is
resumed, or skipped when finished, so running the same sweep again continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import RecipeError, ZooError
from zoo.recipe import Recipe, load_recipe, read_toml, recipe_changes, recipe_to_dict
from zoo.runs import check_name, read_summary, unclaimed

SEED_FIELDS = {"run": ("run.seed",), "data": ("data.seed",), "both": ("run.seed", "data.seed")}


@dataclass(frozen=True)
class Intervention:
    """One ablation arm: a name and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]


@dataclass
class Point:
    """One run of the sweep: its name, the experiment it belongs to, its overrides and seed."""

    name: str
    experiment: str
    overrides: list[str]
    seed: int
    recipe: Recipe
    state: str = "new"  # new, resume (with the step), finished

    def command(self, recipe_path: str, runs_dir: str, fixed: list[str]) -> str:
        sets = [f"--set {shlex.quote(o)}" for o in [*fixed, *self.overrides]]
        return " ".join([f"zoo train {shlex.quote(recipe_path)} --name {self.name} --runs-dir {shlex.quote(runs_dir)}",
                         *sets])


# a comma (outside brackets and quotes) followed by the next `section.key=` or `section=` starts another
# override of the same intervention
_NEXT_FIELD = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_.]*)?\s*=")


def _split_overrides(text: str) -> list[str]:
    """`a.b=1,c.d=[1, 2],e={x = 1, y = 2}` -> its overrides (commas inside lists, tables or strings stay)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0 and _NEXT_FIELD.match(text, i + 1):
            items.append(text[start:i])
            start = i + 1
    return [item.strip() for item in [*items, text[start:]]]


def parse_ablation(text: str) -> Intervention:
    """`NAME:section.key=value[,section.key=value...]` (values may hold commas, e.g. lists; `section={...}`
    replaces a whole section)."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not rest.strip() or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise ZooError(f"--ablate {text!r} must look like NAME:section.key=value[,section.key=value...] (e.g. "
                       "rotary:model.position=rotary); NAME is letters, digits and . _ - +")
    if name in ("baseline", "stack"):
        raise ZooError(f"--ablate {text!r}: {name!r} names the sweep's own {name} run; call the intervention "
                       "something else")
    items = _split_overrides(rest)
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ZooError(f"--ablate {text!r}: {item!r} must look like section.key=value")
    keys = [item.partition("=")[0].strip() for item in items]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ZooError(f"--ablate {text!r} sets {', '.join(twice)} more than once (the last would win); give each "
                       "field once")
    return Intervention(name, tuple(items))


def parse_vary(items: list[str]) -> list[list[tuple[str, str]]]:
    """`section.key=v1,v2` axes of a grid."""
    axes = []
    for item in items:
        key, _, values = item.partition("=")
        if not key.strip() or not values.strip():
            raise ZooError(f"--vary {item!r} must look like section.key=v1,v2 (e.g. train.grad_clip=0,1.0)")
        axes.append([(key.strip(), v.strip()) for v in values.split(",")])
    return axes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def plan(recipe_path: str | Path, fixed: list[str], runs_dir: Path, *, vary: list[str] | None = None,
         ablate: list[str] | None = None, stack: bool = False, seeds: int = 1, baseline_seeds: int | None = None,
         seed_fields: str = "run", prefix: str | None = None) -> list[Point]:
    """Every run of a sweep, in training order, each with a free name and its state on disk. Every point is
    checked to be a valid recipe before anything trains."""
    if seeds < 1 or (baseline_seeds is not None and baseline_seeds < 1):
        raise ZooError("--seeds and --baseline-seeds must be >= 1")
    if vary and ablate:
        raise ZooError("use --vary (a grid) or --ablate (one intervention at a time), not both")
    if stack and not ablate:
        raise ZooError("--stack stacks the --ablate interventions; name them with --ablate")
    if not vary and not ablate:
        raise ZooError("say what to sweep: --vary section.key=v1,v2 (a grid) or --ablate NAME:section.key=v "
                       "(one intervention at a time)")
    if seed_fields not in SEED_FIELDS:
        raise ZooError(f"--seed-fields {seed_fields!r}: use run, data or both")
    base = load_recipe(recipe_path, fixed)
    prefix = _slug(prefix or Path(recipe_path).stem)
    arms: list[tuple[str, list[str], int]] = []  # (experiment, overrides, number of seeds)
    if ablate:
        interventions = [parse_ablation(a) for a in ablate]
        names = [i.name for i in interventions]
        if len(set(names)) != len(names):
            raise ZooError(f"--ablate names must differ ({', '.join(names)})")
        keys = [o.partition("=")[0].strip() for i in interventions for o in i.overrides]
        if stack and len(set(keys)) != len(keys):
            raise ZooError("--stack: two interventions set the same field "
                           f"({', '.join(sorted({k for k in keys if keys.count(k) > 1}))}); a stack needs each once")
        baseline = recipe_to_dict(base)
        for i in interventions:
            try:
                arm = load_recipe(recipe_path, [*fixed, *i.overrides])
            except RecipeError as exc:
                raise ZooError(f"sweep point {i.name} (seed {base.run.seed}): {exc}") from None
            if not recipe_changes(baseline, recipe_to_dict(arm)):
                raise ZooError(f"--ablate {i.name}: {', '.join(i.overrides)} is what the baseline already has, so "
                               "the arm would train the baseline again; give it a value that differs")
        nb = baseline_seeds or seeds
        arms.append(("baseline", [], nb))
        arms += [(i.name, list(i.overrides), seeds) for i in interventions]
        if stack:
            arms.append(("stack", [o for i in interventions for o in i.overrides], nb))
    else:
        for combo in itertools.product(*parse_vary(vary or [])):
            arms.append(("-".join(f"{k.split('.')[-1]}{v}" for k, v in combo), [f"{k}={v}" for k, v in combo],
                         seeds))
    points, taken = [], set()
    for experiment, overrides, n in arms:
        for s in range(n):
            seed = base.run.seed + s
            seeded = [*overrides, *(f"{field}={seed}" for field in SEED_FIELDS[seed_fields])] \
                if n > 1 or ablate else list(overrides)
            try:
                recipe = load_recipe(recipe_path, [*fixed, *seeded])
            except RecipeError as exc:
                raise ZooError(f"sweep point {experiment} (seed {seed}): {exc}") from None
            stem = f"{prefix}-{_slug(experiment)}" + (f"-seed{seed}" if n > 1 or ablate else "")
            name, state = _free_name(runs_dir, check_name(stem), recipe, taken)
            taken.add(name)
            points.append(Point(name, experiment, seeded, seed, recipe, state))
    return points


def _free_name(runs_dir: Path, stem: str, recipe: Recipe, taken: set[str]) -> tuple[str, str]:
    """The first of stem, stem-2, stem-3, ... that is free or holds a run of this very recipe (this point's run
    from an earlier sweep); with its state: new, resume (step N) or finished."""
    for n in itertools.count(1):
        name = stem if n == 1 else f"{stem}-{n}"
        if name in taken:
            continue
        folder = runs_dir / name
        if not folder.exists():
            return name, "new"
        saved = folder / "recipe.toml"
        if not saved.is_file():
            if unclaimed(folder):
                return name, "new"
            continue
        try:  # the run saved its recipe resolved (e.g. init_from's architecture filled in)
            resolved = dataclasses.replace(recipe, model=recipe.model.resolved())
            same = not recipe_changes(read_toml(saved), recipe_to_dict(resolved))
        except ZooError:
            same = False
        if same:
            summary = read_summary(folder) or {}
            if summary.get("status") in ("finished", "early_stopped"):
                return name, f"finished at step {summary.get('step')}"
            return name, "resume" + (f" (stopped at step {summary.get('step')})" if summary else "")
    raise AssertionError("unreachable")
