"""LSTM, GRU and Elman RNN layers written from tensor operations (no nn.LSTM/nn.GRU/nn.RNN kernels).

Parameters are named and packed as in `nn.LSTM` / `nn.GRU` / `nn.RNN` (`weight_ih_l{k}` [G*H, I],
`weight_hh_l{k}` [G*H, H], `bias_ih_l{k}`, `bias_hh_l{k}`; LSTM gates i, f, g, o; GRU gates r, z, n), so a
state dict moves between `impl = "torch"` and `impl = "scratch"` unchanged.

Speed comes from five things: the input projection of all timesteps is one matmul before the time loop; each
step is one fused gate matmul plus a few element-wise ops; each layer is a `torch.autograd.Function` with a
hand-written backward that precomputes the chain-rule factors of all steps, runs a short reverse time loop,
and then computes the weight gradients of all timesteps in one matmul each, instead of recording an autograd
graph per step; on CPU the matmuls go through oneDNN, the library behind nn.LSTM's own CPU kernel; and on CPU
the LSTM's time loops run in C++ (`cells_loop.cpp`, built on first use: one fused element-wise pass and one
small GEMM call per step), with the Python loops below as the reference and the fallback.

LSTM, per step (sigma = sigmoid, * = element-wise):
    i = sigma(W_ii x + b_ii + W_hi h + b_hi)      f = sigma(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)       o = sigma(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g                             h' = o * tanh(c')
GRU, per step:
    r = sigma(W_ir x + b_ir + W_hr h + b_hr)      z = sigma(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) h' = (1 - z) * n + z * h
RNN, per step:
    h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
"""

from __future__ import annotations

import math
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import cache_home
from ..errors import ZooError

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


# ----------------------------------------------------------------------------------------- matmuls
def _onednn_available() -> bool:
    """Whether PyTorch's oneDNN linear op works here. It is the GEMM library behind nn.LSTM's CPU kernel and,
    unlike the default BLAS path on some CPUs (MKL on AMD processors), it uses the widest vector units, so
    the scratch cells use it where it exists and fall back to plain matmuls elsewhere (CUDA, other builds)."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(4, 3), 2)
        out = op(torch.ones(2, 3), w, None, "none", [], "")
        return bool(torch.allclose(out, torch.full((2, 4), 3.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_ONEDNN = torch.backends.mkldnn.is_available() and _onednn_available()


def _fast(x: torch.Tensor) -> bool:
    return _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32


def _mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
          low: torch.dtype | None = None) -> torch.Tensor:
    """a @ b.T (+ bias); b may be a transposed view. With `low` (bf16/fp16 autocast on a GPU) the product is
    computed in that precision and returned in fp32."""
    if low is not None:
        out = (a.to(low) @ b.to(low).t()).float()
        return out if bias is None else out + bias
    if _fast(a):
        return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")
    return a @ b.t() if bias is None else torch.addmm(bias, a, b.t())


class _Recurrent:
    """h @ w.T for one weight used at every step of a time loop, its layout prepared once."""

    def __init__(self, w: torch.Tensor, batch: int):
        self.fast = _fast(w)
        self.w = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch) if self.fast else w.t()

    def __call__(self, h: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """h @ w.T (+ add)."""
        if self.fast:
            if add is None:
                return torch.ops.mkldnn._linear_pointwise(h, self.w, None, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(h, add, self.w, None, "add")
        return torch.mm(h, self.w) if add is None else torch.addmm(add, h, self.w)


def _project(x, ids, w_ih, bias=None, low=None):
    """The input projections x W_ih^T (+ bias) of all timesteps in one matmul, [T, B, G*H]. With `ids` [T, B]
    (a first layer fed by an embedding) `x` is the embedding table [V, I]: each of its V rows is projected
    once and the projections are looked up, V rows of work instead of T*B (the same sums, by linearity)."""
    if ids is None:
        steps, batch, _ = x.shape
        return _mm_t(x.view(steps * batch, -1), w_ih, bias, low=low).view(steps, batch, -1)
    return F.embedding(ids, _mm_t(x, w_ih, bias, low=low))


def _grads(x, hs, d_pre, w_ih, d_pre_h=None, low=None, ids=None):
    """Input and weight gradients for all timesteps at once from the pre-activation gradients `d_pre`
    [T, B, G*H] (and `d_pre_h` for the hidden side when it differs, as in the GRU), given the inputs `x` and
    the hidden states `hs` entering each step (h_{t-1}; extra trailing steps are ignored): one matmul each (in
    `low` precision under GPU autocast). With `ids`, `x` is the embedding table of `_project` and d_x its
    gradient [V, I]: the steps' gradients are first summed per token (V rows)."""
    steps, batch, width = d_pre.shape
    flat = d_pre.view(steps * batch, width)
    flat_h = flat if d_pre_h is None else d_pre_h.view(steps * batch, width)
    if ids is not None:
        flat = flat.new_zeros(x.shape[0], width).index_add_(0, ids.reshape(-1), flat)
    d_x = _mm_t(flat, w_ih.t(), low=low)
    # computed transposed ((X^T dG)^T = dG^T X), which spares oneDNN a copy of the large gradient matrix
    d_w_ih = _mm_t((x if ids is not None else x.view(steps * batch, -1)).t(), flat.t(), low=low).t()
    d_w_hh = _mm_t(hs[:steps].reshape(steps * batch, -1).t(), flat_h.t(), low=low).t()
    return (d_x if ids is not None else d_x.view(steps, batch, -1)), d_w_ih, d_w_hh, flat.sum(0), flat_h.sum(0)


# ---------------------------------------------------------------------------------- compiled loops
_LOOPS: object = None  # torch.ops.zoo_cells once built, False once found unavailable


def compiled_loops():
    """The C++ LSTM time loops (`cells_loop.cpp`, the same equations as the Python loops below) as
    `torch.ops.zoo_cells`, or None where they cannot be used. Built on first use with torch.utils.cpp_extension
    (16 s on a 2-core VM), kept per torch version in $ZOO_CACHE/ext (default ~/.cache/zoo/ext) and reused; a build
    that disagrees with the Python loop on a small check is not used. $ZOO_CELLS_LOOP chooses: `auto`
    (default: build, else fall back to the Python loop with a one-line notice), `cpp` (fail if it cannot be
    built), `python` (never build)."""
    global _LOOPS
    choice = os.environ.get("ZOO_CELLS_LOOP", "auto")
    if choice not in ("auto", "cpp", "python"):
        raise ZooError(f"ZOO_CELLS_LOOP must be auto, cpp or python, got {choice!r}")
    if choice == "python":
        return None
    if _LOOPS is None:
        source = Path(__file__).with_name("cells_loop.cpp")
        folder = cache_home() / "ext" / f"torch-{torch.__version__}"  # one build per torch version
        try:
            from torch.utils import cpp_extension

            folder.mkdir(parents=True, exist_ok=True)
            if not list(folder.glob("zoo_cells*.so")):
                print("zoo: building the C++ LSTM time loop (once, about 15 s)", file=sys.stderr, flush=True)
            cpp_extension.load(
                "zoo_cells",
                sources=[str(source)],
                extra_cflags=_build_flags(),
                extra_ldflags=_openmp(),
                build_directory=str(folder),
                is_python_module=False,
            )
            _check_loops(torch.ops.zoo_cells)
            _LOOPS = torch.ops.zoo_cells
        except Exception as exc:  # no compiler, no ninja, a failed build: the Python loop does the same work
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if choice == "cpp":
                raise ZooError(
                    f"could not build the C++ LSTM loop ({reason}); set ZOO_CELLS_LOOP=auto or python"
                ) from exc
            print(
                f"zoo: using the Python LSTM time loop (slower): the C++ one could not be built ({reason})",
                file=sys.stderr,
            )
            _LOOPS = False
    return _LOOPS or None


def _check_loops(ops) -> None:
    """Run the built forward and backward loops once against the Python ones on a small random layer
    (a CPU whose instructions the build or its GEMM kernel cannot use would fail or disagree here)."""
    gen = torch.Generator().manual_seed(0)
    steps, batch, hidden = 3, 5, 12
    xp, w = torch.randn(steps, batch, 4 * hidden, generator=gen), torch.randn(4 * hidden, hidden, generator=gen)
    h0, c0 = torch.randn(batch, hidden, generator=gen), torch.randn(batch, hidden, generator=gen)
    d_out = torch.randn(steps, batch, hidden, generator=gen)
    built = ops.lstm_forward(xp, h0, c0, w.t().contiguous())
    reference = _lstm_forward_loop(xp, h0, c0, w.t().contiguous())
    acts, cells, tanh_c, _ = reference
    backward_args = (acts, cells[:-1].contiguous(), tanh_c, d_out, h0, c0, w)
    got, expected = ops.lstm_backward(*backward_args), _lstm_backward_loop(*backward_args)
    for a, b in zip([*built, *got], [*reference, *expected], strict=True):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
            raise RuntimeError("the built loop disagrees with the Python loop")


def _build_flags() -> list[str]:
    """-O3, OpenMP (ATen's parallel_for is an OpenMP pragma in its header) and flags that let ATen's
    Vectorized<float> use the widest vector unit that this CPU and torch's own kernels use (AVX-512 or AVX2 on
    x86), else its portable version."""
    flags = ["-O3", *_openmp()]
    capability = torch.backends.cpu.get_cpu_capability() if platform.machine().lower() in ("x86_64", "amd64") else ""
    if capability == "AVX512":
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"]
    elif capability == "AVX2":
        flags += ["-mavx2", "-mfma"]
    else:
        return flags
    return flags + [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]


def _openmp() -> list[str]:
    """Linux builds of torch use GNU OpenMP; elsewhere the loop's row blocks run one after another."""
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def _loop(x: torch.Tensor, name: str):
    """The time loop `name` (lstm_forward, lstm_backward, gru_..., rnn_...) for tensors like `x`: the C++ LSTM
    loops on a CPU (float32), the CUDA-graph loops on a GPU (zoo.models.cells_gpu), where they can be used;
    else the Python loop below, which is the reference for both."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and name.startswith("lstm"):
        ops = compiled_loops()
        if ops is not None:
            return getattr(ops, name)
    if x.device.type == "cuda":
        from zoo.models.cells_gpu import graphed

        loop = graphed(name, PY_LOOPS[name], lambda g: _check_graphed(name, g, x.device))
        if loop is not None:
            return loop
    return PY_LOOPS[name]


def _example(name: str, device: torch.device, seed: int) -> tuple:
    """Valid arguments of a small time loop, for checking a loop against the Python one."""
    gen = torch.Generator(device=device).manual_seed(seed)
    steps, batch, hidden = 3, 5, 8

    def rand(*shape):
        return torch.rand(*shape, generator=gen, device=device)

    h, seq = (batch, hidden), (steps, batch, hidden)
    return {
        "lstm_forward": lambda: (rand(steps, batch, 4 * hidden), rand(*h), rand(*h), rand(hidden, 4 * hidden)),
        "lstm_backward": lambda: (rand(steps, batch, 4 * hidden), rand(*seq), rand(*seq), rand(*seq), rand(*h),
                                  rand(*h), rand(4 * hidden, hidden)),
        "gru_forward": lambda: (rand(steps, batch, 3 * hidden), rand(*h), rand(3 * hidden, hidden), rand(hidden)),
        "gru_backward": lambda: (rand(steps, batch, 3 * hidden), rand(*seq), rand(steps + 1, batch, hidden),
                                 rand(*seq), rand(*h), rand(3 * hidden, hidden)),
        "rnn_forward": lambda: (rand(*seq), rand(*h), rand(hidden, hidden)),
        "rnn_backward": lambda: (rand(steps + 1, batch, hidden), rand(*seq), rand(*h), rand(hidden, hidden)),
    }[name]()


def _check_graphed(name: str, graphed_loop, device: torch.device) -> None:
    """Run a graphed loop twice (new inputs the second time: they must reach the graph) against the Python
    loop; raise if they disagree."""
    for seed in (0, 1):
        args = _example(name, device, seed)
        for a, b in zip(graphed_loop(*args), PY_LOOPS[name](*args), strict=True):
            if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
                raise RuntimeError("the graphed loop disagrees with the Python loop")


# The layer Functions work time-major ([T, B, features]) so each step's slice is contiguous. The Python loops
# take the same arguments and return the same results as cells_loop.cpp's.
# ------------------------------------------------------------------------------------------- LSTM
def _lstm_forward_loop(xp, h0, c0, w_t):
    """The forward time loop: xp [T, B, 4H] holds the input projections and both biases, w_t is W_hh
    transposed [H, 4H]. Returns the gate activations [T, B, 4H] (sigma(i), sigma(f), tanh(g), sigma(o)), cell
    states [T+1, B, H] (c0 first), tanh of the cell states [T, B, H] and hidden states [T+1, B, H] (h0 first)."""
    batch, hidden = h0.shape
    # tanh(u) = 2 sigma(2u) - 1: with the g rows doubled, one sigmoid serves all four gates (ATen's tanh is
    # several times slower than its sigmoid)
    scale = torch.ones(4 * hidden, dtype=xp.dtype, device=xp.device)
    scale[2 * hidden : 3 * hidden] = 2.0
    xp = xp * scale
    rec = _Recurrent(w_t.t() * scale[:, None], batch)
    # Per-step results are kept as lists of fresh small tensors and stacked once: writing each step into a
    # slice of a large new buffer costs a page fault per touched page, which at small sizes outweighs the math.
    acts, cells, tanh_cs, hs = [], [c0], [], [h0]
    h, c = h0, c0
    for t in range(xp.shape[0]):
        a = rec(h, xp[t]).sigmoid_()
        i, f, g, o = a.chunk(4, dim=1)
        g.mul_(2).sub_(1)
        c = torch.addcmul(f * c, i, g)
        tanh_c = torch.sigmoid(2 * c).mul_(2).sub_(1)  # tanh(c), as 2 sigma(2c) - 1 like g
        h = o * tanh_c
        acts.append(a)
        cells.append(c)
        tanh_cs.append(tanh_c)
        hs.append(h)
    return torch.stack(acts), torch.stack(cells), torch.stack(tanh_cs), torch.stack(hs)


def _lstm_backward_loop(acts, c_prev, tanh_c, d_out, dh, dc, w):
    """The reverse time loop from the forward's gate activations, the cell states entering each step and tanh
    of the cell states; d_out [T, B, H] or None; dh, dc reach the last step; w is W_hh [4H, H]. Returns the
    pre-activation gradients [T, B, 4H] and the gradients w.r.t. h0 and c0."""
    steps, batch, four_h = acts.shape
    # the chain-rule factors of all steps at once:
    #   d_i = dc * g i(1-i)   d_f = dc * c_prev f(1-f)   d_g = dc * i (1-g^2)   d_o = dh * tanh(c) o(1-o)
    #   dc_t = dc_{t+1} f_{t+1} + dh * o (1 - tanh(c)^2)
    i, f, g, o = acts.chunk(4, dim=2)
    factors = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], 2)
    c_factor = o * (1 - tanh_c * tanh_c)
    f = f.contiguous()
    rec = _Recurrent(w.t(), batch)
    d_pre = [None] * steps
    for t in reversed(range(steps)):
        if d_out is not None:
            dh = dh + d_out[t]
        dc = torch.addcmul(dc, dh, c_factor[t])
        d = torch.mul(factors[t], torch.stack((dc, dc, dc, dh), dim=1)).view(batch, four_h)
        d_pre[t] = d
        dc = dc * f[t]
        dh = rec(d)
    return torch.stack(d_pre), dh, dc


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, low=None, ids=None):
        # all timesteps' input projections (and both biases) in one matmul, then the time loop
        xp = _project(x, ids, w_ih, b_ih + b_hh, low=low)
        steps = xp.shape[0]
        acts, cells, tanh_c, hs = _loop(x, "lstm_forward")(xp, h0, c0, w_hh.t().contiguous())
        ctx.low = low
        ctx.save_for_backward(x, w_ih, w_hh, acts, cells[:-1], tanh_c, hs, ids)
        return hs[1:], hs[steps].clone(), cells[steps].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        x, w_ih, w_hh, acts, c_prev, tanh_c, hs, ids = ctx.saved_tensors
        batch, hidden = acts.shape[1], acts.shape[2] // 4
        dh = d_hn if d_hn is not None else x.new_zeros(batch, hidden)
        dc = d_cn if d_cn is not None else x.new_zeros(batch, hidden)
        d_out = d_out.contiguous() if d_out is not None else None
        d_pre, dh, dc = _loop(x, "lstm_backward")(acts, c_prev.contiguous(), tanh_c, d_out, dh, dc,
                                                  w_hh.contiguous())
        d_x, d_w_ih, d_w_hh, d_b, _ = _grads(x, hs, d_pre, w_ih, low=ctx.low, ids=ids)
        return d_x, dh, dc, d_w_ih, d_w_hh, d_b, d_b, None, None


# -------------------------------------------------------------------------------------------- GRU
def _gru_forward_loop(xp, h0, w_hh, b_hn):
    """xp [T, B, 3H]: input projections with the r and z hidden biases folded in (b_hn stays inside
    r * (W_hn h + b_hn)). Returns the activations [T, B, 3H] (sigma(r), sigma(z), tanh(n)), W_hn h + b_hn
    [T, B, H] (needed for dr) and the hidden states [T+1, B, H] (h0 first)."""
    steps, batch, three_h = xp.shape
    hidden = three_h // 3
    rz, n_part = slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden)
    rec = _Recurrent(w_hh, batch)
    acts = xp.new_empty(steps, batch, three_h)
    hn_pre = xp.new_empty(steps, batch, hidden)
    hs = xp.new_empty(steps + 1, batch, hidden)
    hs[0] = h0
    h = hs[0]
    for t in range(steps):
        hp = rec(h)
        a = acts[t]
        torch.sigmoid(xp[t, :, rz] + hp[:, rz], out=a[:, rz])
        r, z = a[:, :hidden], a[:, hidden : 2 * hidden]
        hn = torch.add(hp[:, n_part], b_hn, out=hn_pre[t])
        n = torch.tanh(torch.addcmul(xp[t, :, n_part], r, hn), out=a[:, n_part])
        h = torch.addcmul(n, z, h - n, out=hs[t + 1])
    return acts, hn_pre, hs


def _gru_backward_loop(acts, hn_pre, hs, d_out, dh, w_hh):
    """The reverse loop: the gradients w.r.t. the input-side pre-activations [T, B, 3H], w.r.t. W_hh h + b_hh
    [T, B, 3H], and h0."""
    steps, batch, three_h = acts.shape
    hidden = three_h // 3
    r, z, n = acts.chunk(3, dim=2)
    # chain-rule factors for all steps:  d_n = dh * (1-z)(1-n^2)   d_z = dh * (h_prev - n) z(1-z)
    #   d_r = d_n * (W_hn h + b_hn) r(1-r)   d(W_hn h + b_hn) = d_n * r   dh_prev = dh * z + d_hidden @ W_hh
    n_factor = (1 - z) * (1 - n * n)
    z_factor = (hs[:steps] - n) * z * (1 - z)
    r_factor = hn_pre * r * (1 - r)
    r, z = r.contiguous(), z.contiguous()
    rec = _Recurrent(w_hh.t(), batch)
    d_in = acts.new_empty(steps, batch, three_h)
    d_hid = acts.new_empty(steps, batch, three_h)
    dh = dh.clone()
    for t in reversed(range(steps)):
        if d_out is not None:
            dh = dh + d_out[t]
        dr, dz, dn = d_in[t].chunk(3, dim=1)
        torch.mul(dh, n_factor[t], out=dn)
        torch.mul(dh, z_factor[t], out=dz)
        torch.mul(dn, r_factor[t], out=dr)
        d_hid[t, :, : 2 * hidden] = d_in[t, :, : 2 * hidden]
        torch.mul(dn, r[t], out=d_hid[t, :, 2 * hidden :])
        dh = torch.addcmul(rec(d_hid[t]), dh, z[t])
    return d_in, d_hid, dh


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, low=None, ids=None):
        hidden = h0.shape[1]
        rz, n_part = slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden)
        # b_hn stays inside r * (W_hn h + b_hn); the other hidden biases fold into the input projection
        folded = torch.cat([b_ih[rz] + b_hh[rz], b_ih[n_part]])
        xp = _project(x, ids, w_ih, low=low) + folded
        acts, hn_pre, hs = _loop(x, "gru_forward")(xp, h0, w_hh, b_hh[n_part].contiguous())
        ctx.low = low
        ctx.save_for_backward(x, w_ih, w_hh, acts, hn_pre, hs, ids)
        return hs[1:], hs[xp.shape[0]].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn):
        x, w_ih, w_hh, acts, hn_pre, hs, ids = ctx.saved_tensors
        batch, hidden = acts.shape[1], acts.shape[2] // 3
        dh = d_hn if d_hn is not None else x.new_zeros(batch, hidden)
        d_out = d_out.contiguous() if d_out is not None else None
        d_in, d_hid, dh = _loop(x, "gru_backward")(acts, hn_pre, hs, d_out, dh, w_hh)
        d_x, d_w_ih, d_w_hh, d_b_ih, d_b_hh = _grads(x, hs, d_in, w_ih, d_hid, low=ctx.low, ids=ids)
        return d_x, dh, d_w_ih, d_w_hh, d_b_ih, d_b_hh, None, None


# -------------------------------------------------------------------------------------------- RNN
def _rnn_forward_loop(xp, h0, w_hh):
    """xp [T, B, H] with both biases; returns the hidden states [T+1, B, H] (h0 first)."""
    steps, batch, hidden = xp.shape
    rec = _Recurrent(w_hh, batch)
    hs = xp.new_empty(steps + 1, batch, hidden)
    hs[0] = h0
    h = hs[0]
    for t in range(steps):
        h = torch.tanh(rec(h, xp[t]), out=hs[t + 1])
    return (hs,)


def _rnn_backward_loop(hs, d_out, dh, w_hh):
    """The pre-activation gradients [T, B, H] and the gradient w.r.t. h0."""
    steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    factor = 1 - hs[1:] * hs[1:]  # tanh' for every step
    rec = _Recurrent(w_hh.t(), batch)
    d_pre = hs.new_empty(steps, batch, hidden)
    dh = dh.clone()
    for t in reversed(range(steps)):
        if d_out is not None:
            dh = dh + d_out[t]
        torch.mul(dh, factor[t], out=d_pre[t])
        dh = rec(d_pre[t])
    return d_pre, dh


class _RNNLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, low=None, ids=None):
        xp = _project(x, ids, w_ih, low=low) + (b_ih + b_hh)
        (hs,) = _loop(x, "rnn_forward")(xp, h0, w_hh)
        ctx.low = low
        ctx.save_for_backward(x, w_ih, w_hh, hs, ids)
        return hs[1:], hs[xp.shape[0]].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn):
        x, w_ih, w_hh, hs, ids = ctx.saved_tensors
        batch, hidden = hs.shape[1], hs.shape[2]
        dh = d_hn if d_hn is not None else x.new_zeros(batch, hidden)
        d_out = d_out.contiguous() if d_out is not None else None
        d_pre, dh = _loop(x, "rnn_backward")(hs, d_out, dh, w_hh)
        d_x, d_w_ih, d_w_hh, d_b, _ = _grads(x, hs, d_pre, w_ih, low=ctx.low, ids=ids)
        return d_x, dh, d_w_ih, d_w_hh, d_b, d_b, None, None


PY_LOOPS = {"lstm_forward": _lstm_forward_loop, "lstm_backward": _lstm_backward_loop,
            "gru_forward": _gru_forward_loop, "gru_backward": _gru_backward_loop,
            "rnn_forward": _rnn_forward_loop, "rnn_backward": _rnn_backward_loop}


# ------------------------------------------------------------------------------------------ stacks
def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The lower precision autocast asks for on a GPU, else None."""
    if device.type != "cuda" or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


class ScratchRNN(nn.Module):
    """A stack of LSTM/GRU/RNN layers with nn.LSTM's interface (batch_first): `forward(x, state)` returns
    the last layer's outputs and the final state, `(h_n, c_n)` for an LSTM and `h_n` otherwise, each
    [layers, B, H]. Dropout is applied to each layer's output except the last, as nn.LSTM does."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell must be one of {', '.join(GATES)}, got {cell!r}")
        self.cell, self.hidden_size, self.num_layers, self.dropout = cell, hidden_size, num_layers, dropout
        width = GATES[cell] * hidden_size
        for k in range(num_layers):
            size = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(width, size)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(width, hidden_size)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(width)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(width)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation: uniform in +-1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _layer(self, k: int) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def forward(self, x: torch.Tensor, state=None, embedding: torch.Tensor | None = None):
        """With `embedding` (a table [V, input_size]), `x` holds token ids [B, T] and the first layer's input is
        their rows of the table; where there are fewer rows than tokens, the first layer projects the rows
        (V of them) instead of the tokens' inputs (B*T), for the same result."""
        ids = None
        if embedding is not None:
            if embedding.shape[0] < x.numel():
                ids, x = x.transpose(0, 1).contiguous(), embedding
            else:
                x = F.embedding(x, embedding)
        batch = (ids if ids is not None else x).shape[1 if ids is not None else 0]
        zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
        if self.cell == "lstm":
            h0, c0 = state if state is not None else (zeros, zeros)
        else:
            h0, c0 = (state if state is not None else zeros), None
        # Under bf16/fp16 autocast on a GPU the big matmuls (all timesteps' input projections, and the input
        # and weight gradients) run in that precision; the recurrence (W_hh h per step, the gates, the cell
        # state) and the saved activations stay fp32, as does everything on a CPU. Between layers the
        # sequence stays time-major.
        low = _autocast_dtype(x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float() if ids is not None else x.float().transpose(0, 1).contiguous()
            h_out, c_out = [], []
            for k in range(self.num_layers):
                if k > 0 and self.dropout > 0:
                    x = F.dropout(x, self.dropout, self.training)
                weights = self._layer(k)
                first = ids if k == 0 else None
                if self.cell == "lstm":
                    x, h, c = _LSTMLayer.apply(x, h0[k].float().contiguous(), c0[k].float().contiguous(), *weights,
                                               low, first)
                    c_out.append(c)
                elif self.cell == "gru":
                    x, h = _GRULayer.apply(x, h0[k].float().contiguous(), *weights, low, first)
                else:
                    x, h = _RNNLayer.apply(x, h0[k].float().contiguous(), *weights, low, first)
                h_out.append(h)
        h_n = torch.stack(h_out)
        return x.transpose(0, 1), ((h_n, torch.stack(c_out)) if self.cell == "lstm" else h_n)
