"""The scratch cells' time loops on a CUDA GPU: each loop (the Python loops of cells.py, unchanged: the same
equations, no cuDNN or ATen RNN kernel) is captured once per input shape as a CUDA graph and then replayed,
so the few hundred small kernels of a sequence (a GEMM and a few element-wise ops per step, forward and
backward) go to the GPU in one launch instead of one Python call each; on a GPU that launch overhead, not the
arithmetic, is what bounds these loops.

Like the C++ CPU loop, the graphed loops are checked against the plain Python loops once, on a small random
layer, the first time a GPU uses them; a capture that fails or disagrees is not used (one stderr line) and the
Python loop runs instead. $ZOO_CELLS_LOOP = python turns them off."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch

MAX_GRAPHS = 32  # shapes kept per loop (training, evaluation and sampling shapes); more run uncaptured


def _key(args: tuple) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) if torch.is_tensor(a) else a for a in args)


class GraphedLoop:
    """A time-loop function replayed from CUDA graphs, one per input shape. Its inputs are copied into the
    graph's static tensors and its outputs copied out (the next replay reuses the static ones)."""

    def __init__(self, fn: Callable[..., tuple]):
        self.fn = fn
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, *args):
        key = _key(args)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= MAX_GRAPHS:
                return self.fn(*args)
            entry = self.graphs[key] = self._capture(args)
        graph, inputs, outputs = entry
        for static, value in zip(inputs, args, strict=True):
            if torch.is_tensor(value):
                static.copy_(value)
        graph.replay()
        return tuple(o.clone() for o in outputs)

    def _capture(self, args: tuple) -> tuple:
        inputs = tuple(a.clone() if torch.is_tensor(a) else a for a in args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up runs (cuBLAS handles and workspaces) outside the capture
            for _ in range(2):
                self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.fn(*inputs)
        return graph, inputs, tuple(outputs)


_STATE: dict[str, object] = {}


def graphed(name: str, fn: Callable[..., tuple], check: Callable[[Callable], None]) -> Callable[..., tuple] | None:
    """The CUDA-graph version of the loop `fn` (checked once with `check(graphed_fn)`, which raises if the
    graphed loop disagrees with `fn`), or None where it cannot be used."""
    if os.environ.get("ZOO_CELLS_LOOP", "auto") == "python" or not torch.cuda.is_available():
        return None
    if name not in _STATE:
        loop = GraphedLoop(fn)
        try:
            check(loop)
            _STATE[name] = loop
        except Exception as exc:  # a capture the driver or this torch cannot do: the plain loop does the same work
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            print(f"zoo: using the plain {name} time loop on the GPU (slower): its CUDA graph is not usable "
                  f"({reason})", file=sys.stderr)
            _STATE[name] = None
    return _STATE[name]
