"""Sampling: temperature (0 = greedy), top-k, top-p; recurrent models carry their state token by token."""

from __future__ import annotations

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


@torch.no_grad()
@torch.no_grad()
def generate(model: nn.Module, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu", stop_token: int | None = None) -> list[int]:
    """Continue `prompt` by up to `max_new_tokens` ids (fewer if `stop_token` comes; it is not returned).

    Recurrent models are primed with the prompt and then carry their state; attention models keep a KV cache
    and, when the context window fills, start a fresh cache on the last half window."""
    if not prompt:
        raise ValueError("generation needs a prompt of at least one token")
    with eval_mode(model):
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
