"""Recipes: every shipped recipe builds; bad recipes are one-line errors with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo import registry
from zoo.models.base import count_parameters
from zoo.recipe import dumps_toml, load_recipe, recipe_from_dict, recipe_to_dict

from .conftest import REPO

SHIPPED = sorted((REPO / "recipes").glob("*.toml"))


def test_there_are_shipped_recipes():
    names = {p.stem for p in SHIPPED}
    assert {"char_rnn_shakespeare", "char_rnn_shakespeare_large"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_loads_and_builds(path: Path):
    recipe = load_recipe(path)
    assert recipe.run.description, "every shipped recipe says what it is for `zoo recipes`"
    model = registry.build_model(recipe.model, vocab_size=65)
    assert count_parameters(model) > 0
    # the resolved recipe round-trips through the TOML the run directory stores
    import tomllib

    assert recipe_from_dict(tomllib.loads(dumps_toml(recipe_to_dict(recipe)))) == recipe


def test_zoo_recipes_lists_each_with_its_description(zoo):
    result = zoo("recipes")
    assert result.code == 0
    for path in SHIPPED:
        line = next(line for line in result.out.splitlines() if line.startswith(path.stem))
        assert len(line.split(None, 1)[1]) > 10


def test_zoo_recipes_fields_documents_every_section(zoo):
    out = zoo("recipes", "--fields").out
    for section in ("[run]", "[data]", "[train]", "[optim (name = \"adamw\" | \"adam\" | \"rmsprop\" | \"sgd\")]",
                    "[optim (name = \"muon\")]", "[schedule]", "[eval]", "[checkpoint]", "[log]"):
        assert section in out
    assert "grad_clip = 0.0" in out and "hidden_size = 256" in out


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = '[model]\narch = "char_rnn"\n[train]\nmax_steps = 5\n'

BAD = {
    "syntax": ('[model\narch = "char_rnn"\n', "not valid TOML", "line 1"),
    "unknown section": (GOOD + "[trian]\nlr = 1.0\n", "unknown recipe section [trian]", "did you mean 'train'"),
    "unknown key": (GOOD.replace("max_steps", "max_step"), "unknown recipe key train.max_step",
                    "did you mean 'max_steps'"),
    "wrong type": (GOOD + "[optim]\nweight_decay = \"0.1\"\n", "optim.weight_decay must be float", "str"),
    "negative lr": (GOOD.replace("max_steps = 5", "max_steps = 5\nlr = -1e-3"), "train.lr is -0.001", "> 0"),
    "hidden size 0": (GOOD.replace('arch = "char_rnn"', 'arch = "char_rnn"\nhidden_size = 0'),
                      "model.hidden_size is 0", "> 0"),
    "dropout 1.5": (GOOD.replace('arch = "char_rnn"', 'arch = "char_rnn"\ndropout = 1.5'),
                    "model.dropout is 1.5", "[0, 1)"),
    "unknown arch": ('[model]\narch = "transformer9000"\n[train]\nmax_steps = 5\n', "unknown model.arch",
                     "char_rnn"),
    "no arch": ("[model]\nhidden_size = 3\n[train]\nmax_steps = 5\n", "no model.arch", "char_rnn"),
    "no limit": ('[model]\narch = "char_rnn"\n', "set at least one limit", "max_steps"),
    "bad choice": (GOOD.replace('arch = "char_rnn"', 'arch = "char_rnn"\ncell = "lstn"'), "model.cell",
                   "'lstm'"),
    "splits": (GOOD + "[data]\nsplits = [0.9, 0.2, 0.05]\n", "data.splits", "add up to 1"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_recipe_is_one_line_exit_2_and_creates_nothing(zoo, tmp_path, case):
    text, *fragments = BAD[case]
    result = zoo("train", _write(tmp_path, text))
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoo: error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_file(zoo):
    result = zoo("train", "nope.toml")
    assert result.code == 2 and "recipe file nope.toml does not exist" in result.err


@pytest.mark.parametrize("override,fragment", [
    ("train.lr=-1", "train.lr is -1.0"),
    ("model.hiden_size=3", "did you mean 'hidden_size'"),
    ("train.learning_rate=1e-3", "unknown recipe key train.learning_rate; did you mean 'lr'? (valid: "),
    ("train.lr_rate=1e-3", "did you mean 'lr'?"),
    ("run.epochs=2", "did you mean 'train.epochs'?"),
    ("task.data=x.csv", "did you mean 'data.source'?"),
    ("train.max_iters=5", "did you mean 'max_steps'"),
    ("model.block_size=8", "(valid: "),
    ("run.threads=-1", "run.threads is -1"),
    ("train.batch_size=\"big\"", "train.batch_size must be int"),
    ("nonsense", "section.key=value"),
])
def test_bad_override(zoo, make_recipe, override, fragment):
    result = zoo("train", make_recipe(), "--set", override)
    assert result.code == 2 and fragment in result.err, result


def test_overrides_are_typed_and_saved_in_the_run(zoo, make_recipe, tmp_path):
    result = zoo("train", make_recipe(), "--set", "train.lr=3e-3", "--set", "model.cell=gru",
                 "--set", "train.max_steps=4", "--name", "over")
    assert result.code == 0, result
    import tomllib

    saved = tomllib.loads((tmp_path / "runs" / "over" / "recipe.toml").read_text())
    assert saved["train"]["lr"] == 3e-3 and saved["model"]["cell"] == "gru"
    assert saved["train"]["max_steps"] == 4
    assert saved["optim"]["name"] == "adam"  # every field is written, defaults included


def test_bad_run_name_is_refused(zoo, make_recipe):
    result = zoo("train", make_recipe(), "--name", "../escape")
    assert result.code == 2 and "run name" in result.err


def test_the_readme_field_table_names_every_field_and_choice():
    """The README's `| section | fields |` table and the code's fields (what `zoo recipes --fields` prints)
    agree: every field of each fixed section, and every choice of a field with a fixed set, is named."""
    import dataclasses
    import typing

    from zoo import registry
    from zoo.recipe import SECTIONS, Recipe

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`[]"): line for line in readme.splitlines()
            if line.startswith("| `[")}
    classes = {n: typing.get_type_hints(Recipe)[n] for n in SECTIONS if n not in ("model", "task", "optim")}
    classes["task"] = registry.TASKS["lm"].config
    classes["optim"] = registry.OPTIMIZERS["adamw"].config
    missing = []
    for section, cls in classes.items():
        row = rows[section]
        for f in dataclasses.fields(cls):
            if f.name in ("kind",) and section == "task":
                continue
            if f"`{f.name}`" not in row and f"`{f.name} " not in row:
                missing.append(f"{section}.{f.name}")
            hint = typing.get_type_hints(cls)[f.name]
            if typing.get_origin(hint) is typing.Literal:
                missing += [f"{section}.{f.name}={c}" for c in typing.get_args(hint)
                            if isinstance(c, str) and f"`{c}`" not in row]
    assert not missing, missing
