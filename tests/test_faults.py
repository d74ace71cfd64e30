"""Faults, injected: a kill at each file event of a checkpoint save, a signal during the final evaluation, a
corrupt file of each kind, a full disk, a diverging run and its remedies, bad input. Each ends in an exact
resume or one error line, and nothing intact is deleted."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from zoo.tasks.lm import LMTask

from .conftest import final_weights, poison_loss, read_summary, scalars, train_once, zoo_killed


def steps(n: int) -> list[str]:
    return ["--set", f"train.max_steps={n}", "--set", "eval.interval=4", "--set", "log.interval=2"]


STEPS = steps(12)


def run_dir(tmp_path: Path, name: str = "tiny") -> Path:
    return tmp_path / "runs" / name


def leftovers(root: Path) -> list[str]:
    """Temp files and folders anywhere in a run directory."""
    return sorted(p.name for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    """The uninterrupted run's final weights, trained once for the module (from the same recipe and text as
    each test's own: weights do not depend on where the files are)."""
    return final_weights(train_once(tmp_path_factory, "ref", *STEPS))


@pytest.fixture
def reference(make_recipe, reference_weights):
    """This test's recipe (the tiny one) and the uninterrupted run's final weights."""
    return make_recipe(), reference_weights


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fault", ["kill@write:1", "kill@save.mkdir:2", "torn@save.model:2", "kill@save.state:2",
                                   "torn@save.meta:2", "kill@save.rename:2", "kill@pointer:2", "kill@prune:2"])
def test_a_kill_at_each_file_event_of_a_save_resumes_exactly(zoo, reference, tmp_path, fault):
    recipe, expected = reference
    killed = zoo_killed("train", recipe, *STEPS, cwd=tmp_path, env={"ZOO_FAULT": fault})  # a real process, killed
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = run_dir(tmp_path)
    before = {p.name for p in (run / "ckpt").glob("step-*")} if (run / "ckpt").is_dir() else set()
    resumed = zoo("train", recipe, *STEPS)
    assert resumed.code == 0, resumed
    assert "Traceback" not in resumed.err and "skipped" not in resumed.err
    assert same(final_weights(run), expected)
    assert leftovers(run) == []
    after = {p.name for p in (run / "ckpt").glob("step-*")}
    assert "step-00000012" in after and before - after <= {"step-00000004"}  # only pruning removed anything


def test_a_signal_during_the_final_evaluation_is_finished_by_the_next_run(zoo, make_recipe, tmp_path, monkeypatch):
    original = LMTask.evaluate

    def interrupted(self, model, split, *args, **kwargs):
        if split == "test":
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, split, *args, **kwargs)

    monkeypatch.setattr(LMTask, "evaluate", interrupted)
    recipe = make_recipe()
    stopped = zoo("train", recipe, *STEPS)
    assert stopped.code == 128 + signal.SIGTERM
    assert "SIGTERM during the final evaluation" in stopped.out and "run the same command to finish it" in stopped.out
    assert not (run_dir(tmp_path) / "summary.json").exists()
    monkeypatch.setattr(LMTask, "evaluate", original)
    finished = zoo("train", recipe, *STEPS)
    assert finished.code == 0 and "doing it now" in finished.out
    summary = read_summary(run_dir(tmp_path))
    assert summary["status"] == "finished" and summary["step"] == 12 and summary["test_loss"] > 0
    assert scalars(run_dir(tmp_path), "loss/test")
    again = zoo("train", recipe, *STEPS)  # now it is finished
    assert again.code == 0 and "already finished" in again.out
    # a summary lost to a kill, or garbage, is redone the same way (the garbage is replaced)
    (run_dir(tmp_path) / "summary.json").write_text("{not json")
    assert zoo("train", recipe, *STEPS).code == 0
    assert read_summary(run_dir(tmp_path))["test_loss"] == pytest.approx(summary["test_loss"])


# ------------------------------------------------------------------------------------------- corruption
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(300))


def _edit_state(edit):
    def apply(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)
    return apply


def _wrong_shape(state):
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg"] = torch.zeros(3, 3, 3)


CORRUPTIONS = {
    "weights truncated": ("model.safetensors", _truncate),
    "weights zeroed": ("model.safetensors", _zero),
    "weights garbage": ("model.safetensors", _garbage),
    "weights missing": ("model.safetensors", Path.unlink),
    "meta not json": ("meta.json", lambda p: p.write_text("{oops")),
    "meta a list": ("meta.json", lambda p: p.write_text("[1, 2]")),
    "meta aliases a missing tensor": ("meta.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "aliases": {"lm_head.weight": "no.such.tensor"}}))),
    "meta alias not a name": ("meta.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "aliases": {"lm_head.weight": ["wte.weight"]}}))),
    "state truncated": ("state.pt", _truncate),
    "state garbage": ("state.pt", _garbage),
    "state missing": ("state.pt", Path.unlink),
    "state lacks a counter": ("state.pt", _edit_state(lambda s: s["counters"].pop("tokens"))),
    "state has an unknown counter": ("state.pt", _edit_state(lambda s: s["counters"].update(surprise=1))),
    "state lacks the optimizer": ("state.pt", _edit_state(lambda s: s.pop("optimizer"))),
    "optimizer state of the wrong shape": ("state.pt", _edit_state(_wrong_shape)),
}


@pytest.fixture
def finished(zoo, make_recipe, tmp_path):
    """A finished run with checkpoints at steps 8 and 12 and its final weights."""
    recipe = make_recipe()
    assert zoo("train", recipe, *STEPS).code == 0
    return recipe, run_dir(tmp_path)


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_falls_back_to_the_intact_one(zoo, finished, case):
    recipe, run = finished
    name, corrupt = CORRUPTIONS[case]
    newest = run / "ckpt" / "step-00000012"
    corrupt(newest / name)
    intact = final_weights(run) if name != "model.safetensors" else None
    sample = zoo("sample", run, "--checkpoint", "latest", "--max-new-tokens", "5")
    if name == "state.pt":  # inference needs only the weights
        assert sample.code == 0 and "warning" not in sample.err
    else:
        assert sample.code == 0 and "skipped 1 checkpoint(s) that cannot be used" in sample.err
        assert "step-00000008" in sample.err
    more = zoo("train", recipe, *steps(16))
    assert more.code == 0, more
    assert "Traceback" not in more.err
    assert "skipped step-00000012, which cannot be resumed" in more.err and "resuming" in more.out
    assert "from step-00000008" in more.out
    kept = run / "ckpt" / "unreadable-step-00000012"
    assert kept.is_dir()  # set aside, never deleted
    if intact is not None:
        from safetensors.torch import load_file

        assert same(load_file(kept / "model.safetensors"), intact)
    assert read_summary(run)["step"] == 16


def test_any_garbage_state_file_is_an_unreadable_checkpoint(tmp_path):
    """Random bytes fail torch's unpickler in many ways (IndexError, KeyError, ... and warnings about a "pickle
    protocol"): each must be one CheckpointError, so resuming falls back instead of crashing."""
    import random
    import warnings

    from zoo.checkpoint import read_state
    from zoo.errors import CheckpointError

    rng = random.Random(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(400):
            (tmp_path / "state.pt").write_bytes(rng.randbytes(300))
            with pytest.raises(CheckpointError, match="state.pt cannot be read"):
                read_state(tmp_path)
    assert caught == []


def test_no_readable_checkpoint_is_one_error_and_nothing_is_deleted(zoo, finished):
    recipe, run = finished
    for folder in (run / "ckpt").glob("step-*"):
        _truncate(folder / "model.safetensors")
    before = sorted(p.name for p in (run / "ckpt").iterdir())
    result = zoo("train", recipe, *steps(16))
    assert result.code == 2 and result.err.count("\n") == 1 and "none can be resumed" in result.err
    assert "--restart" in result.err
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == before
    assert zoo("sample", run).code == 2


def test_step_folders_without_their_marker_are_never_trained_over(zoo, finished, tmp_path):
    recipe, run = finished
    for folder in (run / "ckpt").glob("step-*"):
        (folder / "meta.json").unlink()
    weights = {p: (p / "model.safetensors").read_bytes() for p in (run / "ckpt").glob("step-*")}
    result = zoo("train", recipe, *STEPS)
    assert result.code == 2 and "none can be resumed" in result.err and "meta.json" in result.err
    assert all(p.is_dir() and (p / "model.safetensors").read_bytes() == w for p, w in weights.items())
    restarted = zoo("train", recipe, *STEPS, "--restart")
    assert restarted.code == 0 and "moved the earlier checkpoints" in restarted.out
    aside = next(run.glob("abandoned-*"))
    assert sorted(p.name for p in (aside / "ckpt").glob("step-*")) == sorted(p.name for p in weights)
    assert read_summary(run)["step"] == 12


def test_unreadable_pointers_tokenizer_and_summary(zoo, finished):
    recipe, run = finished
    (run / "ckpt" / "latest").write_bytes(b"\xff\xfe\x00garbage")
    (run / "ckpt" / "best").write_bytes(b"\xff\xfe")
    assert zoo("sample", run, "--max-new-tokens", "3").code == 0  # no best: the newest readable, with a note
    assert zoo("train", recipe, *steps(16)).code == 0
    (run / "ckpt" / "latest").unlink()
    (run / "ckpt" / "latest").mkdir()  # a folder where the pointer goes: set aside once, then saving works
    (run / "ckpt" / "latest" / "mine.txt").write_text("kept")
    result = zoo("train", recipe, *steps(20))
    assert result.code == 0, result
    assert result.err.count("ckpt/latest was not a pointer file (a folder); moved it to ckpt/unreadable-latest") == 1
    assert (run / "ckpt" / "unreadable-latest" / "mine.txt").read_text() == "kept"
    assert (run / "ckpt" / "latest").read_text().strip() == "step-00000020" and read_summary(run)["step"] == 20
    (run / "tokenizer.json").write_text("not json")
    for command in (["sample", run], ["train", recipe, *STEPS]):
        result = zoo(*command)
        assert result.code == 2 and "tokenizer file" in result.err and "Traceback" not in result.err


def test_a_full_disk_is_one_line_and_the_run_resumes(zoo, reference, tmp_path, monkeypatch):
    recipe, expected = reference
    for event in ("save.model:2", "save.state:2", "save.meta:2", "pointer:2", "write:1"):
        monkeypatch.setenv("ZOO_FAULT", f"enospc@{event}")
        from zoo import faults

        faults._counts.clear()
        result = zoo("train", recipe, *STEPS)
        assert result.code == 2, (event, result)
        assert result.err.count("\n") == 1 and "[Errno 28] No space left on device" in result.err, event
        assert leftovers(run_dir(tmp_path)) == [] if run_dir(tmp_path).exists() else True
        if event.startswith("save."):
            assert "the previous checkpoint step-00000004 is intact" in result.err
            assert "could not save checkpoint runs/tiny/ckpt/step-00000008 (" in result.err  # the run folder
        monkeypatch.delenv("ZOO_FAULT")
        assert zoo("train", recipe, *STEPS).code == 0, event
        assert same(final_weights(run_dir(tmp_path)), expected), event
        shutil.rmtree(run_dir(tmp_path))


def test_after_a_divergence_the_named_remedies_resume_the_run(zoo, make_recipe, tmp_path, monkeypatch):
    original = poison_loss(monkeypatch, at_call=7)
    recipe = make_recipe()
    stopped = zoo("train", recipe, *STEPS)
    assert stopped.code == 2 and "training loss is nan" in stopped.err and "at step 7" in stopped.err
    assert "step-00000004 is intact" in stopped.err
    monkeypatch.setattr(LMTask, "loss", original)
    # something else than a remedy is still refused
    refused = zoo("train", recipe, *STEPS, "--set", "model.hidden_size=32")
    assert refused.code == 2 and "different recipe" in refused.err
    fixed = zoo("train", recipe, *STEPS, "--set", "train.lr=5e-3", "--set", "train.grad_clip=0.5",
                "--set", "schedule.kind=cosine")
    assert fixed.code == 0, fixed
    assert "changed from step 4 on: schedule.kind: 'constant' -> 'cosine'" in fixed.out
    history = json.loads((run_dir(tmp_path) / "recipe_history.json").read_text())
    assert history[0]["from_step"] == 4 and history[0]["changes"]["train.lr"] == [0.01, 0.005]
    assert history[0]["after"]["step"] == 7
    assert not (run_dir(tmp_path) / "diverged.json").exists()
    # the recipe the run now holds is the changed one, and a later resume with it is plain
    assert zoo("train", recipe, *STEPS, "--set", "train.lr=5e-3", "--set", "train.grad_clip=0.5",
               "--set", "schedule.kind=cosine", "--set", "train.max_steps=14").code == 0
    # the same remedy without a divergence is refused, naming why
    again = zoo("train", recipe, *STEPS, "--set", "train.lr=1e-4", "--set", "train.max_steps=16")
    assert again.code == 2 and "only after a non-finite or diverging loss" in again.err


def test_a_diverging_but_finite_run_stops_with_the_step(zoo, make_recipe, tmp_path):
    result = zoo("train", make_recipe(), *STEPS, "--set", "train.lr=1e4", "--set", "train.grad_clip=0")
    assert result.code == 2 and "training diverged" in result.err and "at step" in result.err
    assert not (run_dir(tmp_path) / "summary.json").exists()


def test_checkpoints_of_deterministic_runs_are_byte_identical(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    for name in ("a", "b"):
        assert zoo("train", recipe, "--name", name, "--set", "train.max_steps=4", "--set", "eval.interval=4").code == 0
    for file in ("model.safetensors", "meta.json"):
        digests = {hashlib.sha256((run_dir(tmp_path, n) / "ckpt" / "step-00000004" / file).read_bytes()).hexdigest()
                   for n in ("a", "b")}
        assert len(digests) == 1, file


BAD = [
    (["train", "{recipe}", "--set", "model.hidden_size=10000000"], "parameters"),
    (["train", "{recipe}", "--set", "run.seed=18446744073709551617"], "run.seed"),
    (["train", "{recipe}", "--set", "train.lr=3e38"], "lower train.lr"),
    (["train", "{recipe}", "--runs-dir", "{file}"], "is a file"),
    (["train", "{recipe}", "--name", ""], "run name ''"),
    (["train", "{recipe}", "--nproc-per-node", "-1"], "--nproc-per-node"),
    (["train", "{recipe}", "--set", "data.source={tmp}"], "is a folder"),
    (["sample", "{run}", "--device", "tpu"], "--device 'tpu'"),
    (["sample", "{run}", "--num-samples", "-1"], "--num-samples"),
    (["sample", "{run}", "--checkpoint", "step-7"], "it has step-00000004"),
    (["export-hf", "{run}", "{file}"], "is a file"),
    (["compare", "{run}", "--plot", "{tmp}/missing/x.png"], "does not exist"),
    (["eval", "{run}", "--split", "dev"], "invalid choice: 'dev'"),
    (["recipes", "--fieldz"], "unrecognized arguments: --fieldz (`zoo --help` shows the usage)"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a[:1] + a[2:4]) for a, _ in BAD])
def test_bad_input_is_one_line(zoo, make_recipe, tmp_path, args, message):
    recipe = make_recipe()
    assert zoo("train", recipe, "--name", "done", "--set", "train.max_steps=4", "--set", "eval.interval=4").code == 0
    file = tmp_path / "a_file"
    file.write_text("x")
    filled = [a.format(recipe=recipe, run=run_dir(tmp_path, "done"), file=file, tmp=tmp_path) for a in args]
    result = zoo(*filled)
    assert result.code == 2, result
    assert result.err.startswith("zoo: error: ") and result.err.count("\n") == 1 and message in result.err, result
    assert result.out == "" or "Traceback" not in result.out


def test_a_failed_start_leaves_nothing_and_the_corrected_retry_runs(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    typo = zoo("train", recipe, "--set", "data.source=/no/such/file.txt")
    assert typo.code == 2 and not run_dir(tmp_path).exists()
    assert zoo("train", recipe, "--set", "train.max_steps=2").code == 0
