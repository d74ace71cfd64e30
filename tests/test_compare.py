"""Comparing runs: the table, the noise logic, the plot, hparams, and sweeps."""

from __future__ import annotations

import json
import struct

import pytest

from zoo import compare

from .conftest import read_summary

FAST = ["--set", "train.max_steps=12", "--set", "eval.interval=6", "--set", "eval.sample_tokens=0"]


def test_sweep_trains_the_grid_and_compare_reports_it(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    dry = zoo("sweep", recipe, "--vary", "model.cell=lstm,gru", "--vary", "train.grad_clip=0,1.0", "--seeds", "2",
              "--dry-run", *FAST)
    assert dry.code == 0 and len(dry.out.splitlines()) == 8 and not (tmp_path / "runs").exists()
    assert "--name tiny-celllstm-grad_clip0-seed7" in dry.out and "--set run.seed=8" in dry.out
    result = zoo("sweep", recipe, "--vary", "model.cell=lstm,gru", "--seeds", "2", *FAST)
    assert result.code == 0, result
    names = ["tiny-celllstm-seed7", "tiny-celllstm-seed8", "tiny-cellgru-seed7", "tiny-cellgru-seed8"]
    assert all((tmp_path / "runs" / n / "summary.json").is_file() for n in names)
    table = result.out[result.out.index("experiment "):].splitlines()
    assert table[0].split()[:3] == ["experiment", "n", "model.cell"] and "std" in table[0].split()
    assert table[1].startswith("tiny-celllstm ") and table[2].startswith("tiny-cellgru ")
    again = zoo("sweep", recipe, "--vary", "model.cell=lstm,gru", "--seeds", "2", *FAST)
    assert again.code == 0 and again.out.count("already finished") == 4  # a sweep resumes: nothing is redone

    rows = json.loads(zoo("compare", *[tmp_path / "runs" / n for n in names], "--format", "json").out)
    assert [r["n"] for r in rows] == [2, 2] and rows[0]["delta_test"] == 0.0
    lstm = [read_summary(tmp_path / "runs" / n)["test_loss"] for n in names[:2]]
    gru = [read_summary(tmp_path / "runs" / n)["test_loss"] for n in names[2:]]
    assert rows[0]["test_loss"] == pytest.approx(sum(lstm) / 2)
    assert rows[1]["delta_test"] == pytest.approx(sum(gru) / 2 - sum(lstm) / 2)
    from zoo import stats

    verdict = stats.welch(stats.Sample.of(lstm), stats.Sample.of(gru))
    assert rows[1]["p_value"] == pytest.approx(verdict.p) and rows[1]["significant"] == (verdict.p < 0.05)
    assert rows[0]["test_bpb"] == pytest.approx(rows[0]["test_loss"] / 0.6931471805599453)  # ASCII characters

    plot = zoo("compare", *[tmp_path / "runs" / n for n in names], "--plot", tmp_path / "c.png", "--x", "tokens")
    assert plot.code == 0 and "(2 experiments, 4 runs)" in plot.err
    png = (tmp_path / "c.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 500 and height > 300

    csv_out = zoo("compare", tmp_path / "runs" / names[0], tmp_path / "runs" / names[2], "--format", "csv").out
    assert csv_out.splitlines()[0].startswith("experiment,n,model.cell,params,tokens")
    md = zoo("compare", tmp_path / "runs" / names[0], tmp_path / "runs" / names[2], "--format", "markdown").out
    assert md.splitlines()[1].startswith("|---|")


def test_noise_logic_on_synthetic_runs(tmp_path):
    def run(name, test, seed, clip):
        return compare.RunInfo(tmp_path / name, {"run.seed": seed, "train.grad_clip": clip},
                               {"test_loss": test, "best_val_loss": test, "final_val_loss": test})

    runs = [run("a0", 3.00, 0, 0.0), run("a1", 3.02, 1, 0.0), run("b0", 2.90, 0, 1.0), run("b1", 2.92, 1, 1.0),
            run("c0", 3.005, 0, 2.0), run("c1", 3.025, 1, 2.0)]
    rows = compare.compare(runs)
    assert [r["train.grad_clip"] for r in rows] == [0.0, 1.0, 2.0]
    assert rows[1]["delta_test"] == pytest.approx(-0.10) and rows[1]["significant"] is True
    assert rows[2]["delta_test"] == pytest.approx(0.005) and rows[2]["significant"] is False
    assert compare.differing(runs) == ["train.grad_clip"]


def test_duplicates_unfinished_runs_and_other_tasks_get_their_own_rows(tmp_path):
    def run(name, test, seed, clip, status="finished", kind="lm", step=60):
        return compare.RunInfo(tmp_path / name, {"run.seed": seed, "train.grad_clip": clip, "task.kind": kind},
                               {"test_loss": test, "best_val_loss": test, "status": status, "step": step,
                                "wall_time_s": 421.9201})

    runs = [run("a0", 3.00, 0, 0.0), run("a1", 3.02, 1, 0.0), run("a0-again", 3.01, 0, 0.0),
            run("a2", 2.50, 2, 0.0, status="interrupted", step=6), run("b0", 2.90, 0, 1.0),
            run("spam", 0.2, 0, 1.0, kind="classify")]
    rows = compare.compare(runs)
    assert [r["experiment"].split()[0] for r in rows] == ["a0", "a0-again", "a2", "b0", "spam"]
    assert rows[0]["n"] == 2 and rows[0]["test_loss"] == pytest.approx(3.01)  # a0 and a1 only
    assert rows[1]["n"] == 1 and "same recipe and seed as a0" in rows[1]["note"]
    assert rows[2]["status"] == "interrupted" and rows[2]["steps"] == 6 and rows[2]["delta_test"] is None
    assert rows[3]["delta_test"] == pytest.approx(-0.11)
    assert rows[4]["delta_test"] is None and "another task (classify)" in rows[4]["note"]
    notes = compare.notes(rows)
    assert len(notes) == 3 and notes[1].startswith("a2") and "interrupted at step 6" in notes[1]
    table = compare.render(rows)
    header = table.splitlines()[0].split()
    assert "status" in header and "steps" in header
    assert "421.9201" not in table and "422" in table  # seconds as whole numbers in every row


def test_compare_rejects_what_is_not_a_finished_run(zoo, tmp_path):
    result = zoo("compare", tmp_path)
    assert result.code == 2 and "is not a zoo run" in result.err


def test_hparams_hold_the_flattened_recipe_and_final_metrics(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), *FAST).code == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tmp_path / "runs" / "tiny" / "tb"))
    acc.Reload()
    content = acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["train.lr"].number_value == pytest.approx(1e-2)
    assert info.hparams["model.cell"].string_value == "lstm"
    assert info.hparams["optim.name"].string_value == "adam"
