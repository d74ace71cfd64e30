"""The scratch cells on a GPU: the CUDA-graph time loops against cuDNN's nn.LSTM/GRU/RNN (outputs, states, every
gradient), the fallback when a capture fails, and bf16 autocast. Skipped without a CUDA GPU, except the
low-precision matmul path, which runs anywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.models import cells, cells_gpu
from zoo.models.cells import ScratchRNN

TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pair(cell: str, layers: int, hidden: int, inputs: int, device: str):
    torch.manual_seed(0)
    ref = TORCH[cell](inputs, hidden, layers, batch_first=True).to(device)
    mine = ScratchRNN(cell, inputs, hidden, layers).to(device)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _run(module, x, state, cell):
    """Outputs, final states, parameter gradients and the input gradient of one forward and backward."""
    xi = x.clone().requires_grad_(True)
    out, final = module(xi, state)
    finals = final if cell == "lstm" else (final,)
    torch.manual_seed(1)
    loss = (out.float() * torch.randn_like(out.float())).sum() + sum(
        (f.float() * torch.randn_like(f.float())).sum() for f in finals)
    loss.backward()
    return out.detach().float(), [f.detach().float() for f in finals], \
        {n: p.grad.clone() for n, p in module.named_parameters()}, xi.grad


def _close(a, b, tol):
    out1, fin1, g1, x1 = a
    out2, fin2, g2, x2 = b
    torch.testing.assert_close(out2, out1, rtol=tol, atol=tol)
    for f, g in zip(fin2, fin1, strict=True):
        torch.testing.assert_close(f, g, rtol=tol, atol=tol)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=tol, atol=tol, msg=name)
    torch.testing.assert_close(x2, x1, rtol=tol, atol=tol)


@cuda
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("with_state", [False, True])
def test_graphed_loops_match_cudnn(cell, with_state, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    ref, mine = _pair(cell, 2, 32, 10, "cuda")
    x = torch.randn(4, 12, 10, device="cuda")
    state = None
    if with_state:
        h0 = torch.randn(2, 4, 32, device="cuda")
        state = (h0, torch.randn(2, 4, 32, device="cuda")) if cell == "lstm" else h0
    for _ in range(2):  # the second pass replays the captured graphs with the same shapes
        _close(_run(ref, x, state, cell), _run(mine, x, state, cell), 1e-5)
    loop = cells_gpu._STATE.get(f"{cell}_forward")
    assert isinstance(loop, cells_gpu.GraphedLoop) and loop.graphs, "the forward loop ran from a CUDA graph"
    assert isinstance(cells_gpu._STATE.get(f"{cell}_backward"), cells_gpu.GraphedLoop)


@cuda
def test_a_capture_that_fails_falls_back_to_the_plain_loop(monkeypatch, capsys):
    monkeypatch.setattr(cells_gpu, "_STATE", {})

    def broken(self, args):
        raise RuntimeError("capture refused")

    monkeypatch.setattr(cells_gpu.GraphedLoop, "_capture", broken)
    ref, mine = _pair("lstm", 1, 16, 8, "cuda")
    x = torch.randn(3, 5, 8, device="cuda")
    _close(_run(ref, x, None, "lstm"), _run(mine, x, None, "lstm"), 1e-4)
    err = capsys.readouterr().err
    assert "using the plain lstm_forward time loop on the GPU" in err and "capture refused" in err
    assert cells_gpu._STATE["lstm_forward"] is None


@cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bf16_autocast_on_the_gpu(cell):
    ref, mine = _pair(cell, 2, 64, 16, "cuda")
    x = torch.randn(8, 20, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = _run(ref, x, None, cell)
        got = _run(mine, x, None, cell)
    _close(expected, got, 3e-2)  # both in bf16 matmuls; the scratch recurrence keeps its state in fp32


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_low_precision_matmuls_stay_close_to_fp32(cell):
    """The path bf16 autocast takes on a GPU (input projections and gradient matmuls in bf16, the recurrence
    in fp32), called directly so that it runs on a CPU too."""
    layer = {"lstm": cells._LSTMLayer, "gru": cells._GRULayer, "rnn": cells._RNNLayer}[cell]
    gates = cells.GATES[cell]
    torch.manual_seed(0)
    x, h0, c0 = torch.randn(6, 4, 8), torch.randn(4, 16), torch.randn(4, 16)
    weights = [torch.randn(gates * 16, 8) * 0.2, torch.randn(gates * 16, 16) * 0.2, torch.randn(gates * 16) * 0.1,
               torch.randn(gates * 16) * 0.1]
    results = []
    for low in (None, torch.bfloat16):
        ws = [w.clone().requires_grad_(True) for w in weights]
        xi = x.clone().requires_grad_(True)
        state = (h0, c0) if cell == "lstm" else (h0,)
        out = layer.apply(xi, *state, *ws, low)
        assert out[0].dtype == torch.float32  # the recurrence and its outputs stay fp32
        out[0].sum().backward()
        results.append((out[0].detach(), [w.grad for w in ws], xi.grad))
    (o1, g1, x1), (o2, g2, x2) = results
    torch.testing.assert_close(o2, o1, rtol=0, atol=3e-2)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=3e-2, atol=1e-1)
    torch.testing.assert_close(x2, x1, rtol=3e-2, atol=5e-2)
