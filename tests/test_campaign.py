"""The fault campaign's findings on compare, sweep and recipes, each reproduced through the CLI: unreadable
summaries and plot paths, a sweep killed before its run wrote anything, and the inputs that were silently
accepted (an arm setting a field twice or changing nothing, an infinite target, rope_base without rotary, a
floor above the peak rate, a size that the recipe's explicit dimensions would override)."""

from __future__ import annotations

import shutil

from .conftest import zoo_killed

FAST = ["--set", "train.max_steps=4", "--set", "eval.interval=4", "--set", "eval.sample_tokens=0"]


def one_line(result, message: str) -> None:
    assert result.code == 2 and result.err.count("\n") == 1 and message in result.err, result
    assert "Traceback" not in result.err


def test_compare_says_what_is_wrong_with_a_summary_or_a_plot_path(zoo, make_recipe, tmp_path):
    assert zoo("train", make_recipe(), "--name", "a", *FAST).code == 0
    run = tmp_path / "runs" / "a"
    for name, content, message in (("latin1", b'{"test_loss": "\xe9"}', "is not UTF-8 text"),
                                   ("list", b"[1, 2]", "holds a JSON list, not the object zoo writes"),
                                   ("cut", b'{"test_loss": 1.', "is not valid JSON")):
        bad = tmp_path / "runs" / name
        shutil.copytree(run, bad)
        (bad / "summary.json").write_bytes(content)
        one_line(zoo("compare", run, bad), f"{bad / 'summary.json'} {message}")
    one_line(zoo("compare", run, "--plot", "out.txt"), "matplotlib cannot write .txt files; use one of")
    (tmp_path / "pics").mkdir()
    one_line(zoo("compare", run, "--plot", "pics"), "--plot pics is a folder; name a file in it, e.g. --plot pics/")
    assert not (tmp_path / "pics.png").exists()
    plain = zoo("compare", run, "--plot", "curves")  # no suffix: a PNG, and the line names the file written
    assert plain.code == 0 and "wrote curves.png" in plain.err and (tmp_path / "curves.png").is_file()
    for target in ("inf", "nan", "-1"):
        one_line(zoo("compare", run, "--target-loss", target), "must be a finite loss > 0")
    # a sweep refuses a bad --plot before its first run trains
    one_line(zoo("sweep", make_recipe(), "--vary", "train.grad_clip=0,1", "--plot", "out.txt", *FAST),
             "cannot write .txt")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a", "cut", "latin1", "list"]


def test_a_sweep_killed_before_its_run_wrote_its_recipe_reuses_the_folder(make_recipe, tmp_path):
    recipe = make_recipe()
    args = ["sweep", recipe, "--ablate", "clip:train.grad_clip=0.5", *FAST]
    killed = zoo_killed(*args, cwd=tmp_path, env={"ZOO_FAULT": "kill@write"})  # before recipe.toml is written
    assert killed.returncode == -9
    assert [p.name for p in (tmp_path / "runs" / "tiny-baseline-seed7").iterdir()] == [".lock"]
    again = zoo_killed(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny-baseline-seed7", "tiny-clip-seed7"]
    assert (tmp_path / "runs" / "tiny-baseline-seed7" / "summary.json").is_file()


def test_silent_accepts_are_one_line_errors(zoo, make_recipe, tmp_path):
    recipe = make_recipe()
    one_line(zoo("sweep", recipe, "--ablate", "clip:train.grad_clip=0.5,train.grad_clip=1", "--dry-run"),
             "sets train.grad_clip more than once (the last would win)")
    one_line(zoo("sweep", recipe, "--ablate", "same:train.grad_clip=1.0", "--dry-run"),
             "--ablate same: train.grad_clip=1.0 is what the baseline already has")
    gpt = ["--set", "model={arch = \"gpt2\", size = \"gpt2-micro\", context_length = 32}", "--set", "train.seq_len=32"]
    one_line(zoo("train", recipe, *gpt, "--set", "model.rope_base=500", *FAST),
             "model.rope_base is 500 but model.position is 'learned'")
    for kind in ("linear", "wsd", "cosine"):
        one_line(zoo("train", recipe, "--set", f"schedule.kind={kind}", "--set", "schedule.min_lr=1.0", "--set",
                     "train.lr=0.02", *FAST), "schedule.min_lr is 1, above train.lr (0.02): the rate would rise 50x")
    explicit = ["--set", "model={arch = \"gpt2\", size = \"\", n_layer = 2, n_head = 2, n_embd = 32, "
                "context_length = 32}", "--set", "train.seq_len=32"]
    one_line(zoo("train", recipe, *explicit, "--set", "model.size=gpt2-micro", *FAST),
             "--set model.size=gpt2-micro: the recipe already sets model.n_layer = 2, model.n_head = 2")
    assert not (tmp_path / "runs").exists()
