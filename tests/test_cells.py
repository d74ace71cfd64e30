"""From-scratch LSTM/GRU/RNN layers against torch.nn's: outputs, final states and every gradient."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo.models import cells
from zoo.models.cells import ScratchRNN

TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CASES = [  # (layers, hidden, batch, steps, input size)
    (1, 8, 3, 5, 4),
    (2, 16, 4, 7, 10),
    (3, 5, 1, 1, 3),
    (2, 32, 2, 12, 32),
]


def _pair(cell: str, layers: int, hidden: int, inputs: int):
    torch.manual_seed(0)
    ref = TORCH[cell](inputs, hidden, layers, batch_first=True)
    mine = ScratchRNN(cell, inputs, hidden, layers)
    missing = mine.load_state_dict(ref.state_dict())  # same names and packing: no conversion
    assert not missing.missing_keys and not missing.unexpected_keys
    return ref, mine


def use_loop(monkeypatch, loop: str) -> None:
    """Choose the LSTM time loop for this test; skip where the C++ one cannot be built."""
    monkeypatch.setenv("ZOO_CELLS_LOOP", loop)
    if loop == "cpp":
        try:
            cells.compiled_loops()
        except Exception as exc:
            pytest.skip(f"the C++ LSTM loop cannot be built here: {exc}")


@pytest.fixture(params=["cpp", "python"])
def lstm_loop(request, monkeypatch):
    """Runs a test with the C++ LSTM loop and with the Python one (the fallback where no compiler exists)."""
    use_loop(monkeypatch, request.param)
    return request.param


CELL_LOOPS = [("lstm", "cpp"), ("lstm", "python"), ("gru", "python"), ("rnn", "python")]


@pytest.mark.parametrize("cell,loop", CELL_LOOPS)
@pytest.mark.parametrize("layers,hidden,batch,steps,inputs", CASES)
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_torch_nn(cell, loop, layers, hidden, batch, steps, inputs, with_state, monkeypatch):
    use_loop(monkeypatch, loop)
    ref, mine = _pair(cell, layers, hidden, inputs)
    x = torch.randn(batch, steps, inputs)
    state = None
    if with_state:
        h0 = torch.randn(layers, batch, hidden)
        state = (h0, torch.randn(layers, batch, hidden)) if cell == "lstm" else h0
    results = []
    for module in (ref, mine):
        xi = x.clone().requires_grad_(True)
        si = None
        if state is not None:
            if cell == "lstm":
                si = tuple(s.clone().requires_grad_(True) for s in state)
            else:
                si = state.clone().requires_grad_(True)
        out, final = module(xi, si)
        finals = final if cell == "lstm" else (final,)
        # a loss that reaches the outputs and the final states
        torch.manual_seed(1)
        loss = (out * torch.randn_like(out)).sum() + sum((f * torch.randn_like(f)).sum() for f in finals)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters()}
        state_grads = None
        if si is not None:
            state_grads = [s.grad for s in (si if cell == "lstm" else (si,))]
        results.append((out.detach(), [f.detach() for f in finals], grads, xi.grad, state_grads))
    (o1, f1, g1, x1, s1), (o2, f2, g2, x2, s2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
    for a, b in zip(f2, f1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(x2, x1, rtol=1e-5, atol=1e-5)
    if s1 is not None:
        for a, b in zip(s2, s1, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell,loop", CELL_LOOPS)
@pytest.mark.parametrize("vocab", [5, 200])  # fewer rows than tokens (projected per row), and more (per token)
def test_an_embedding_fed_stack_matches_torch_nn_fed_the_looked_up_rows(cell, loop, vocab, monkeypatch):
    """`embedding=`: token ids in, the first layer's projection from the table's rows; the outputs, the final
    state and every gradient (the table's included) equal nn.Embedding followed by torch.nn's layers."""
    use_loop(monkeypatch, loop)
    ref, mine = _pair(cell, 2, 16, 6)
    ids = torch.randint(0, vocab, (4, 9), generator=torch.Generator().manual_seed(3))
    results = []
    for module, fed in ((ref, False), (mine, True)):
        torch.manual_seed(2)
        table = torch.randn(vocab, 6, requires_grad=True)
        out, final = module(ids, embedding=table) if fed else module(nn.functional.embedding(ids, table))
        finals = final if cell == "lstm" else (final,)
        torch.manual_seed(1)
        loss = (out * torch.randn_like(out)).sum() + sum((f * torch.randn_like(f)).sum() for f in finals)
        loss.backward()
        results.append((out.detach(), [f.detach() for f in finals], table.grad,
                        {n: p.grad.clone() for n, p in module.named_parameters()}))
    (o1, f1, t1, g1), (o2, f2, t2, g2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
    for a, b in zip(f2, f1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t2, t1, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_only_the_outputs_or_only_the_state_carry_gradient(cell, lstm_loop):
    ref, mine = _pair(cell, 2, 8, 4)
    x = torch.randn(2, 6, 4)
    for use in ("out", "state"):
        grads = []
        for module in (ref, mine):
            module.zero_grad()
            out, final = module(x)
            h = final[0] if cell == "lstm" else final
            (out.sum() if use == "out" else h.sum()).backward()
            grads.append(module.weight_hh_l0.grad.clone())
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    stack = ScratchRNN("lstm", 4, 8, 2, dropout=0.5)
    x = torch.randn(2, 5, 4)
    stack.eval()
    a, _ = stack(x)
    b, _ = stack(x)
    assert torch.equal(a, b)
    stack.train()
    c, _ = stack(x)
    assert not torch.allclose(a, c)


def test_graphs_alive_at_once_keep_their_own_buffers(lstm_loop):
    """Two forward passes before either backward (as with gradient accumulation over kept graphs): the C++
    loop reuses buffers between calls, and must never reuse one that a live graph still holds."""
    ref, mine = _pair("lstm", 2, 24, 6)
    xs = [torch.randn(3, 9, 6), torch.randn(5, 4, 6)]
    outs, grads = [], []
    for module in (ref, mine):
        outs.append([module(x)[0] for x in xs])
        for out, w in zip(outs[-1], (1.0, -2.0), strict=True):
            (w * out.square()).sum().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
    for a, b in zip(outs[1], outs[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-5, msg=name)
    with torch.no_grad():  # and outputs handed out earlier stay as they were
        first = mine(xs[0])[0].clone()
        kept = mine(xs[0])[0]
        mine(xs[1])
        mine(torch.randn(7, 11, 6))
        assert torch.equal(kept, first)


def test_without_a_compiler_the_python_loop_takes_over(monkeypatch, capsys):
    from torch.utils import cpp_extension

    from zoo.errors import ZooError

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(cells, "_LOOPS", None)
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setenv("ZOO_CELLS_LOOP", "cpp")
    with pytest.raises(ZooError, match="could not build the C\\+\\+ LSTM loop \\(Ninja is required"):
        cells.compiled_loops()
    monkeypatch.setenv("ZOO_CELLS_LOOP", "auto")
    assert cells.compiled_loops() is None
    err = capsys.readouterr().err
    assert "using the Python LSTM time loop" in err and "Ninja is required" in err and "more detail" not in err
    ref, mine = _pair("lstm", 1, 8, 3)  # and the cells still work, through the Python loop
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(mine(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)


def test_a_build_that_disagrees_is_not_used(monkeypatch):
    monkeypatch.setenv("ZOO_CELLS_LOOP", "auto")
    real = cells.compiled_loops()
    if real is None:
        pytest.skip("the C++ LSTM loop cannot be built here")
    cells._check_loops(real)

    class Off:  # a forward that is slightly wrong, as a miscompiled kernel would be
        lstm_backward = real.lstm_backward

        @staticmethod
        def lstm_forward(*args):
            acts, *rest = real.lstm_forward(*args)
            return [acts + 1e-3, *rest]

    with pytest.raises(RuntimeError, match="disagrees with the Python loop"):
        cells._check_loops(Off)


def test_a_bad_loop_choice_is_a_clear_error(monkeypatch):
    from zoo.errors import ZooError

    monkeypatch.setenv("ZOO_CELLS_LOOP", "fast")
    with pytest.raises(ZooError, match="ZOO_CELLS_LOOP must be auto, cpp or python"):
        cells.compiled_loops()


def test_cells_use_no_torch_recurrent_kernels():
    source = (Path(__file__).resolve().parent.parent / "zoo" / "models" / "cells.py").read_text()
    names = {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    forbidden = {"LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "_VF", "lstm_cell", "gru_cell", "lstm",
                 "gru", "rnn_tanh"}
    assert not names & forbidden, names & forbidden
    loop = (Path(__file__).resolve().parent.parent / "zoo" / "models" / "cells_loop.cpp").read_text()
    for name in ("at::lstm", "at::gru", "at::rnn", "_cell(", "mkldnn_rnn", "cudnn"):
        assert name not in loop, name


@pytest.mark.parametrize("recipe", ["lstm_scratch_shakespeare", "gru_scratch_shakespeare"])
def test_scratch_and_torch_runs_reach_the_same_val_loss(zoo, tmp_path, recipe):
    path = Path(__file__).resolve().parent.parent / "recipes" / f"{recipe}.toml"
    small = ["--set", "model.hidden_size=48", "--set", "train.max_steps=120", "--set", "train.lr=1e-2",
             "--set", "train.batch_size=16",
             "--set", "train.seq_len=32", "--set", "eval.interval=30", "--set", "eval.max_tokens=4000",
             "--set", "eval.sample_tokens=0", "--set", "eval.test=false"]
    assert zoo("train", path, "--name", "scratch", *small).code == 0
    assert zoo("train", path, "--name", "torch", *small, "--set", "model.impl=torch").code == 0
    from .conftest import read_summary

    scratch = read_summary(tmp_path / "runs" / "scratch")["final_val_loss"]
    reference = read_summary(tmp_path / "runs" / "torch")["final_val_loss"]
    assert scratch < 3.0 and abs(scratch - reference) < 0.02, (scratch, reference)


def test_a_checkpoint_moves_between_impls(zoo, make_recipe, tmp_path):
    recipe = make_recipe(extra="")
    assert zoo("train", recipe, "--name", "t").code == 0
    run = tmp_path / "runs" / "t"
    greedy = ("sample", run, "--prompt", "First", "--temperature", "0", "--max-new-tokens", "30")
    by_torch, by_scratch = zoo(*greedy), zoo(*greedy, "--set", "model.impl=scratch")
    assert by_torch.code == 0 and by_scratch.code == 0, by_scratch
    assert by_scratch.out == by_torch.out
    import json

    loss_torch = json.loads(zoo("eval", run, "--split", "val").out)["loss"]
    loss_scratch = json.loads(zoo("eval", run, "--split", "val", "--set", "model.impl=scratch").out)["loss"]
    assert loss_scratch == pytest.approx(loss_torch, abs=1e-5)
    # training continues with the other implementation from the same checkpoint
    more = zoo("train", recipe, "--name", "t", "--set", "model.impl=scratch", "--set", "train.max_steps=25")
    assert more.code == 0 and "resuming" in more.out, more
