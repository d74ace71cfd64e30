"""The intervention study as a workflow: ablation sweeps, noise-aware comparison, plots of studies, the data-order
seed, resuming by run directory, errors that name their source, and model cards."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pytest
import torch

from zoo import compare, stats
from zoo.errors import ZooError

from .conftest import final_weights, read_summary

FAST = ["--set", "train.max_steps=12", "--set", "eval.interval=6", "--set", "eval.sample_tokens=0"]


# ------------------------------------------------------------------------------------------- sweeps
def test_an_ablation_sweep_runs_baseline_interventions_and_stack(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    ablate = ["--ablate", "clip:train.grad_clip=0.5", "--ablate", "wide:model.hidden_size=24,train.lr=5e-3",
              "--stack", "--seeds", "2", "--baseline-seeds", "3"]
    # a run made by hand under the name the sweep would give its first point: never reused
    assert zoo("train", recipe, "--name", "tiny-baseline-seed7", *FAST, "--set", "model.hidden_size=8").code == 0
    dry = zoo("sweep", recipe, *ablate, *FAST, "--dry-run")
    assert dry.code == 0, dry
    lines = dry.out.splitlines()
    names = [line.split()[1] for line in lines]
    assert names == ["tiny-baseline-seed7-2", "tiny-baseline-seed8", "tiny-baseline-seed9", "tiny-clip-seed7",
                     "tiny-clip-seed8", "tiny-wide-seed7", "tiny-wide-seed8", "tiny-stack-seed7", "tiny-stack-seed8",
                     "tiny-stack-seed9"]
    assert all(" new " in line for line in lines)
    stack = lines[-1]
    assert "--set train.grad_clip=0.5 --set model.hidden_size=24 --set train.lr=5e-3 --set run.seed=9" in stack
    assert "--set run.seed=8" in lines[4] and "grad_clip" not in lines[1]
    assert not (tmp_path / "runs" / "tiny-clip-seed7").exists()

    # one point trained part-way by hand with the sweep's own recipe: the sweep resumes it
    part = zoo("train", recipe, "--name", "tiny-clip-seed8", *FAST, "--set", "train.grad_clip=0.5",
               "--set", "run.seed=8", "--set", "train.max_steps=6")
    assert part.code == 0, part
    listed = zoo("sweep", recipe, *ablate, *FAST, "--dry-run").out
    assert re.search(r"tiny-clip-seed8 +finished at step 6 ", listed)  # to be extended to the sweep's 12 steps

    result = zoo("sweep", recipe, *ablate, *FAST, "--format", "json", "--target-loss", "baseline")
    assert result.code == 0, result
    assert read_summary(tmp_path / "runs" / "tiny-clip-seed8")["step"] == 12
    hand = read_summary(tmp_path / "runs" / "tiny-baseline-seed7")  # the hand-made run is untouched
    assert hand["step"] == 12 and "hidden_size = 8" in (tmp_path / "runs" / "tiny-baseline-seed7" / "recipe.toml") \
        .read_text()
    rows = json.loads(result.out[result.out.index("[\n"):])
    assert [(r["experiment"], r["n"]) for r in rows] == [("tiny-baseline", 3), ("tiny-clip", 2), ("tiny-wide", 2),
                                                         ("tiny-stack", 3)]
    base = [read_summary(tmp_path / "runs" / n)["test_loss"] for n in names[:3]]
    assert rows[0]["test_loss"] == pytest.approx(np.mean(base))
    assert rows[0]["test_loss_std"] == pytest.approx(np.std(base, ddof=1))
    assert rows[3]["model.hidden_size"] == 24 and rows[3]["train.grad_clip"] == 0.5
    assert all(r["target_reached"].endswith(("/2", "/3")) for r in rows)
    again = zoo("sweep", recipe, *ablate, *FAST)  # an interrupted or finished sweep continues where it stopped
    assert again.code == 0 and again.out.count("already finished") == 10


def test_sweep_arguments_are_checked(zoo, make_recipe):
    recipe = make_recipe()
    cases = [(["--ablate", "clip"], "must look like NAME:section.key=value"),
             (["--ablate", "baseline:train.lr=1"], "names the sweep's own baseline"),
             (["--ablate", "a:train.lr=1", "--ablate", "a:train.lr=2"], "names must differ"),
             (["--ablate", "a:train.lr=1", "--ablate", "b:train.lr=2", "--stack"], "set the same field (train.lr)"),
             (["--vary", "train.lr=1", "--ablate", "a:train.lr=1"], "not both"),
             (["--stack"], "--stack stacks"), ([], "say what to sweep"),
             (["--ablate", "a:train.learning_rate=1"], "sweep point a (seed 7): --set train.learning_rate=1: unknown"),
             (["--ablate", "a:train.lr=1", "--seeds", "0"], "must be >= 1")]
    for args, message in cases:
        result = zoo("sweep", recipe, *args, "--dry-run")
        assert result.code == 2 and message in result.err, (args, result.err)


def test_a_grid_sweep_names_runs_by_their_real_seed(zoo, make_recipe):
    dry = zoo("sweep", make_recipe(), "--vary", "model.cell=lstm,gru", "--seeds", "2", "--seed-fields", "both",
              "--dry-run")
    assert dry.code == 0 and [line.split()[1] for line in dry.out.splitlines()] == [
        "tiny-celllstm-seed7", "tiny-celllstm-seed8", "tiny-cellgru-seed7", "tiny-cellgru-seed8"]
    assert "--set run.seed=8 --set data.seed=8" in dry.out


# ------------------------------------------------------------------------------------------- compare
def _run(tmp_path, name, test, seed=0, clip=0.0, lr=1e-5, final=None, curve=None, data_seed=-1):
    summary = {"test_loss": test, "best_val_loss": test, "final_val_loss": test, "status": "finished", "step": 100,
               "tokens": 100 * 512, "final_test_loss": final if final is not None else test}
    run = compare.RunInfo(tmp_path / name, {"run.seed": seed, "data.seed": data_seed, "train.grad_clip": clip,
                                            "train.lr": lr}, summary)
    if curve is not None:
        run.curves["loss/val"] = [(s, v, 0.0) for s, v in curve]
        run.curves["loss/train"] = [(s, v + 0.1, 0.0) for s, v in curve]
        run.curves["progress/seconds"] = [(s, s * 0.5, 0.0) for s, _ in curve]
    return run


def test_compare_states_n_std_interval_and_welch_verdicts(tmp_path):
    runs = [_run(tmp_path, "base-seed1", 3.00, 1), _run(tmp_path, "base-seed2", 3.02, 2),
            _run(tmp_path, "base-seed3", 3.01, 3, data_seed=5),
            _run(tmp_path, "clip-seed1", 2.90, 1, clip=1.0), _run(tmp_path, "clip-seed2", 2.92, 2, clip=1.0),
            _run(tmp_path, "lr-seed1", 3.005, 1, lr=3e-4), _run(tmp_path, "lr-seed2", 3.025, 2, lr=3e-4),
            _run(tmp_path, "solo", 2.5, 1, clip=2.0, final=2.6)]
    rows = compare.compare(runs)
    assert [(r["experiment"], r["n"]) for r in rows] == [("base", 3), ("clip", 2), ("lr", 2), ("solo", 1)]
    base, clip, lr, solo = rows
    assert base["test_loss"] == pytest.approx(3.01) and base["test_loss_std"] == pytest.approx(0.01)
    assert base["test_loss_ci95"] == pytest.approx(4.302652729749464 * 0.01 / math.sqrt(3), rel=1e-9)
    # p-values as scipy.stats.ttest_ind(..., equal_var=False) gives them: clip t -8.660, df 1.684, p 0.0215
    assert clip["delta_test"] == pytest.approx(-0.1) and clip["significant"] is True
    assert clip["p_value"] == pytest.approx(0.021522, abs=1e-5)
    assert lr["delta_test"] == pytest.approx(0.005) and lr["significant"] is False
    assert lr["p_value"] == pytest.approx(0.714040, abs=1e-5)
    close = compare.compare(runs[:3] + [_run(tmp_path, "c-seed1", 2.90, 1, clip=1.0),
                                        _run(tmp_path, "c-seed2", 2.93, 2, clip=1.0)])[1]
    assert close["delta_test"] == pytest.approx(-0.095) and close["p_value"] == pytest.approx(0.067346, abs=1e-5)
    assert close["significant"] is False  # two seeds: 0.095 is not beyond their noise
    assert solo["n"] == 1 and solo["test_loss_std"] is None and solo["significant"] is None and solo["p_value"] is None
    assert solo["final_test_loss"] == pytest.approx(2.6)
    table = compare.render(rows)
    header = table.splitlines()[0]
    for column in ("experiment", "n", "test loss (best ckpt)", "std", "95% CI ±", "test loss (last)", "delta",
                   "p (Welch)", "significant"):
        assert column in header, column
    solo_line = next(line for line in table.splitlines() if line.startswith("solo"))
    assert "–" in solo_line and "1e-05" in solo_line  # n = 1 has no std; recipe values keep their digits
    assert "Welch's two-sided t-test p < 0.05" in table and "best checkpoint's" in table
    md = compare.render(rows, "markdown").splitlines()
    assert md[0].startswith("| experiment | n |") and md[1].startswith("|---|---:|") and "0.0003" in md[4]
    assert any("Welch's two-sided t-test" in line for line in md[5:])
    assert compare.render(rows[:1], "table").splitlines()[0].count("delta") == 0
    chosen = compare.render(rows, "markdown", ["experiment", "n", "fields", "test_loss", "p_value"]).splitlines()
    assert chosen[0] == "| experiment | n | train.grad_clip | train.lr | test loss (best ckpt) | p (Welch) |"
    with pytest.raises(ZooError, match="--columns: no column speed; columns: fields"):
        compare.render(rows, "table", ["experiment", "speed"])


def test_stats_against_published_values():
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert stats.t_quantile(0.975, 30) == pytest.approx(2.042, abs=1e-3)
    assert stats.t_cdf(0.0, 3) == pytest.approx(0.5) and stats.t_cdf(-2.0, 10) == pytest.approx(0.036694, abs=1e-6)
    a, b = stats.Sample.of([1.0, 2.0, 3.0, 4.0]), stats.Sample.of([2.5, 3.5, 4.5, 5.0, 6.0])
    w = stats.welch(a, b)  # scipy: ttest_ind([2.5,3.5,4.5,5,6], [1,2,3,4], equal_var=False) -> t 2.0359, p 0.0830
    assert w.t == pytest.approx(2.035925, abs=1e-5) and w.p == pytest.approx(0.083001, abs=1e-5)
    assert w.df == pytest.approx(6.701310, abs=1e-5) and not w.significant
    assert stats.welch(stats.Sample.of([1.0]), b) is None and stats.Sample.of([1.0]).std is None


def test_time_to_target_per_run_and_over_seeds(tmp_path):
    runs = [_run(tmp_path, "base-seed1", 3.0, 1, curve=[(10, 4.0), (20, 3.5), (30, 3.2)]),
            _run(tmp_path, "base-seed2", 3.0, 2, curve=[(10, 4.1), (20, 3.6), (30, 3.3)]),
            _run(tmp_path, "fast-seed1", 2.9, 1, clip=1.0, curve=[(10, 3.2), (20, 3.1), (30, 3.0)]),
            _run(tmp_path, "fast-seed2", 2.9, 2, clip=1.0, curve=[(10, 3.6), (20, 3.2), (30, 3.0)]),
            _run(tmp_path, "slow", 3.5, 1, clip=2.0, curve=[(10, 4.5), (20, 4.0), (30, 3.9)])]
    rows = compare.compare(runs, target=3.25)
    base, fast, slow = rows
    assert base["target_reached"] == "1/2" and base["target_step"] == 30 and base["target_tokens"] == 30 * 512
    assert fast["target_reached"] == "2/2" and fast["target_step"] == 15 and fast["target_seconds"] == 7.5
    assert fast["target_tokens_ratio"] == pytest.approx(0.5)
    assert slow["target_reached"] == "0/1" and slow["target_step"] is None
    assert "– " in [line for line in compare.render(rows).splitlines() if line.startswith("slow")][0]
    assert compare.compare(runs, target="baseline")[0]["target_loss"] == pytest.approx(3.0)


def test_a_three_by_three_study_plots_as_three_bands(tmp_path):
    runs = []
    for i, name in enumerate(("base", "clip", "lr")):
        for seed in range(3):
            curve = [(s, 4.0 - 0.01 * s - 0.1 * i + 0.02 * seed) for s in range(1, 61)]
            runs.append(_run(tmp_path, f"{name}-seed{seed}", 3.0 - 0.1 * i, seed, clip=float(i), curve=curve))
    for x in ("step", "tokens", "time"):
        assert compare.plot(runs, tmp_path / f"{x}.png", x, smooth=0.9) == (3, 9)
        png = (tmp_path / f"{x}.png").read_bytes()
        width, height = struct.unpack(">II", png[16:24])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and width > 1.8 * height  # two panels, the legend beside them
    ys = compare._band(runs[:3], "loss/val", "step", 0.0)  # mean and min-max over the three seeds
    assert ys[1][0] == pytest.approx(4.0 - 0.01 + 0.02) and ys[2][0] == pytest.approx(3.99)
    assert ys[3][0] == pytest.approx(4.03)
    assert compare._ema([1.0, 0.0], 0.5) == [1.0, pytest.approx(1 / 3)]  # TensorBoard's debiased EMA


# ------------------------------------------------------------------------------------------- seeds
def test_data_seed_moves_the_data_order_apart_from_run_seed(text_file, tmp_path):
    from zoo import registry
    from zoo.recipe import load_recipe
    from zoo.tasks.base import MicroBatchPlan

    path = tmp_path / "gpt.toml"
    path.write_text(f'[model]\narch = "gpt2"\nsize = "gpt2-micro"\ncontext_length = 16\n[data]\nsource = '
                    f'"{text_file.as_posix()}"\n[train]\nbatch_size = 8\nseq_len = 16\nmax_steps = 3\n')

    def batches(sampling, *sets):
        recipe = load_recipe(path, [f"task.sampling={sampling}", *sets])
        tok, data, _ = registry.load_data(recipe, progress=False)
        task = registry.build_task(recipe, tok, data, registry.build_trainable(recipe, tok.vocab_size))
        return task, [task.micro_batches(step, MicroBatchPlan.of(8, 0, 1, 0))[0].x for step in range(3)]

    _, a = batches("windows")
    _, b = batches("windows", "run.seed=8", "data.seed=1337")  # another init, the old data order (seed 1337)
    _, c = batches("windows", "data.seed=9")
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # -1 = run.seed's order, as before
    assert not torch.equal(a[0], c[0])
    task, seq = batches("sequential")
    assert torch.equal(seq[0][0], torch.from_numpy(task.splits.train[:16].astype(np.int64)))  # in order
    task, shuffled = batches("sequential", "data.seed=3")
    epoch = task.steps_per_epoch() * 8
    order = task._window_order(0)
    assert sorted(order.tolist()) == list(range(epoch)) and order.tolist() != list(range(epoch))
    assert torch.equal(shuffled[0][0], torch.from_numpy(task.splits.train[order[0] * 16:][:16].astype(np.int64)))
    assert task._window_order(1).tolist() != order.tolist()  # a new order each epoch


# ------------------------------------------------------------------------------------------- resume, errors
def test_train_a_run_directory_resumes_it_with_its_own_recipe(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    sets = ["--set", "model.hidden_size=24", "--set", "train.grad_clip=0.5", "--set", "eval.sample_tokens=0"]
    assert zoo("train", recipe, "--name", "whole", *sets).code == 0
    assert zoo("train", recipe, "--name", "split", *sets, "--set", "train.max_steps=10").code == 0
    refused = zoo("train", recipe, "--name", "split")  # the --set forgotten: a different recipe
    assert refused.code == 2 and "`zoo train runs/split`" in refused.err
    resumed = zoo("train", "runs/split/", "--set", "train.max_steps=20")
    assert resumed.code == 0 and "resuming" in resumed.out, resumed
    whole, split = final_weights(tmp_path / "runs" / "whole"), final_weights(tmp_path / "runs" / "split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert read_summary(tmp_path / "runs" / "split")["test_loss"] == read_summary(tmp_path / "runs" / "whole")[
        "test_loss"]
    assert zoo("train", tmp_path / "runs" / "split").out.count("already finished at step 20") == 1
    (tmp_path / "folder").mkdir()
    folder = zoo("train", "folder")
    assert folder.code == 2 and "folder is a folder, not a recipe file, and not a run" in folder.err


def test_errors_name_the_override_or_the_file_they_come_from(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    typo = zoo("train", recipe, "--set", "train.max_steps=3", "--set", "train.learning_rate=3e-4")
    assert typo.code == 2
    assert typo.err.startswith("zoo: error: --set train.learning_rate=3e-4: unknown recipe key train.learning_rate; "
                               "did you mean 'lr'?") and str(recipe) not in typo.err
    value = zoo("train", recipe, "--set", "model.dropout=1.5")
    assert "--set model.dropout=1.5: recipe value model.dropout is 1.5" in value.err
    bad = make_recipe(name="bad", extra="\n[schedule]\nkind = \"wsd\"\ndecay_frac = 2.0\n")
    in_file = zoo("train", bad, "--set", "train.lr=1e-3")
    assert in_file.err.startswith(f"zoo: error: {bad}: recipe value schedule.decay_frac is 2.0")
    assert zoo("train", recipe, "--set", "data.seed=-2").err.startswith("zoo: error: --set data.seed=-2: recipe value")
    fields = zoo("recipes", "--fields").out
    assert "kind = \"constant\"   # 'constant' | 'step' | 'cosine' | 'linear' | 'wsd'" in fields
    assert "decay_frac = 0.2" in fields and "warmup_start = 0.0" in fields and "\n  seed = -1" in fields


# ------------------------------------------------------------------------------------------- model card
def test_model_card_has_no_local_path_a_metrics_table_and_the_runs_choices(zoo, make_recipe, tmp_path):
    pytest.importorskip("transformers")
    recipe = make_recipe(extra='\n[schedule]\nkind = "wsd"\n')
    assert zoo("train", recipe, *FAST, "--set", "model.dropout=0.0").code == 0
    assert zoo("export-hf", tmp_path / "runs" / "tiny", tmp_path / "out").code == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in card and "tiny.txt" in card
    assert "| best validation loss |" in card and "| test loss (best checkpoint) |" in card
    assert '- `schedule.kind = "wsd"`' in card and '- `model.hidden_size = 16`' in card
    assert "pipe(\"First Citizen:\"" in card  # the prompt comes from the run's own text
    sample_prompt = zoo("train", recipe, "--name", "p", *FAST, "--set", "eval.sample_prompt=ROMEO:")
    assert sample_prompt.code == 0
    assert zoo("export-hf", tmp_path / "runs" / "p", tmp_path / "out2").code == 0
    assert "pipe(\"ROMEO:\"" in (tmp_path / "out2" / "README.md").read_text()
