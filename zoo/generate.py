"""Sampling: temperature (0 = greedy), top-k, top-p; recurrent models carry their state token by token."""

from __future__ import annotations

import torch
from torch import nn


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
def generate(model: nn.Module, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> list[int]:
    """Continue `prompt` by `max_new_tokens` ids. The model is left in eval mode's state it was in."""
    if not prompt:
        raise ValueError("generation needs a prompt of at least one token")
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        idx = torch.tensor([prompt], dtype=torch.long, device=device)
        if model.stateful:
            hidden, state = model(idx)  # prime the state with the whole prompt
            for _ in range(max_new_tokens):
                nxt = sample_next(model.lm_head(hidden[:, -1]), temperature, top_k, top_p, generator)
                out.append(int(nxt.item()))
                hidden, state = model(nxt.view(1, 1), state)
        else:
            context = idx
            for _ in range(max_new_tokens):
                window = context if model.max_seq_len is None else context[:, -model.max_seq_len:]
                hidden, _ = model(window)
                nxt = sample_next(model.lm_head(hidden[:, -1]), temperature, top_k, top_p, generator)
                out.append(int(nxt.item()))
                context = torch.cat([context, nxt.view(1, 1)], dim=1)
    finally:
        model.train(was_training)
    return out
