"""Sampling: temperature (0 = greedy), top-k, top-p; recurrent models carry their state token by token."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn

from zoo.models.base import eval_mode


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one id per row of `logits` [B, V]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


BIG_HEAD = 1 << 20  # weights; a smaller head takes microseconds in either layout
_LAYOUT: dict[tuple, bool] = {}  # (out, in, dtype, threads) -> whether the [in, out] copy is the faster kernel


def _best_of_3(run) -> float:
    run()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def decoding_head(model: nn.Module) -> Iterator[None]:
    """Inside the block a large CPU LM head without a bias computes its one-row logits as `x @ W_t`, W_t a copy
    of its weight stored [in, out], where that is the faster kernel here. At one row the head is a matrix-vector
    product bound by reading the weight, and a CPU's kernels can read one layout much faster than the other
    (2026-12-04, a 2-core AMD EPYC VM: 8 ms against 14 ms for GPT-2's 50,257 x 768 head). Which is faster is
    timed once per shape and thread count in a process; where it is the copy, the copy (the weight's size
    again) stays on the head for later calls until the weight changes."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear) or head.bias is not None or head.weight.device.type != "cpu" \
            or head.weight.numel() < BIG_HEAD:
        yield
        return
    weight = head.weight.detach()
    layout = (*weight.shape, weight.dtype, torch.get_num_threads())
    if not _LAYOUT.get(layout, True):
        yield
        return
    # an inference tensor keeps no version counter, so its copy is made anew each call
    key = None if weight.is_inference() else (weight.data_ptr(), head.weight._version)
    cached_key, copy = getattr(head, "_decode_copy", (None, None))
    if key is None or cached_key != key:
        copy = weight.t().contiguous()
    if layout not in _LAYOUT:
        x = torch.ones(1, weight.shape[1], dtype=weight.dtype)  # not randn: the global generator stays untouched
        _LAYOUT[layout] = _best_of_3(lambda: x @ copy) < _best_of_3(lambda: torch.nn.functional.linear(x, weight))
        if not _LAYOUT[layout]:
            yield
            return
    head._decode_copy = key, copy
    head.forward = lambda x: x @ copy  # an instance attribute: nn.Module's __call__ finds it before the class's
    try:
        yield
    finally:
        del head.forward


@torch.no_grad()
def generate(model: nn.Module, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu", stop_token: int | None = None) -> list[int]:
    """Continue `prompt` by up to `max_new_tokens` ids (fewer if `stop_token` comes; it is not returned).

    Recurrent models are primed with the prompt and then carry their state; attention models keep a KV cache
    and, when the context window fills, start a fresh cache on the last half window."""
    if not prompt:
        raise ValueError("generation needs a prompt of at least one token")
    with eval_mode(model), decoding_head(model):
        out: list[int] = []
        context = list(prompt)
        window = model.max_seq_len
        if window is not None:
            context = context[-window:]
        hidden, state = model(torch.tensor([context], dtype=torch.long, device=device),
                              model.init_state(1, device) if not model.stateful else None)
        for _ in range(max_new_tokens):
            nxt = int(sample_next(model.logits(hidden[:, -1]), temperature, top_k, top_p, generator).item())
            if nxt == stop_token:
                break
            out.append(nxt)
            context.append(nxt)
            if len(out) == max_new_tokens:
                break  # the last token needs no forward pass of its own
            if window is not None and len(context) > window:
                context = context[-(window // 2 or 1):]  # re-prime on the recent half window
                hidden, state = model(torch.tensor([context], dtype=torch.long, device=device),
                                      model.init_state(1, device))
            else:
                hidden, state = model(torch.tensor([[nxt]], dtype=torch.long, device=device), state)
    return out
