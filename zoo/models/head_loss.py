"""The LM head and its cross-entropy as one chunked operation, for eager (uncompiled) training on a CPU.

Eagerly, `F.cross_entropy(logits(hidden))` materialises the [N, V] logits in fp32 and walks them many times: the
head's matmul, the optional soft-cap (a division, a tanh and a product, each a full pass with its own buffer and
backward), log-softmax, and the same again backwards. With GPT-2's 50,257 ids a 2,048-token batch has 412 MB of
logits per pass, so these passes, not the matmuls, set a small model's step time. Here the rows go through in
chunks of up to CHUNK_ELEMENTS logits (one chunk for most CPU batches: smaller ones slowed the matmuls more than
they saved): each chunk's logits, soft-cap, log-sum-exp, loss and the gradient of the loss with respect to the
logits are computed at once, and the chunk's share of the hidden states' and the head weight's gradients follows
by two matmuls; backward only scales them. The result equals the unfused loss and gradients up to float rounding
(tests/test_head_loss.py). A compiled step (CUDA) keeps the plain form, which inductor fuses itself.
"""

from __future__ import annotations

import torch

IGNORE = -100
CHUNK_ELEMENTS = 1 << 27  # logits per chunk (512 MB in fp32)
SIGMOID_CAP = 30.0  # soft-caps up to this go through a sigmoid rather than a tanh (below)


def chunk_rows(vocab: int) -> int:
    return max(8, CHUNK_ELEMENTS // max(1, vocab))


class _HeadLoss(torch.autograd.Function):
    """mean over the targets that are not IGNORE of -log softmax(softcap(hidden @ weight.T))[target]."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                needs_grad: bool) -> torch.Tensor:
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        valid = targets != IGNORE
        count = int(valid.sum())
        scale = 1.0 / count if count else 0.0
        total = hidden.new_zeros((), dtype=torch.float64)
        grad_h = torch.empty_like(hidden) if needs_grad else None
        grad_w = torch.empty_like(weight) if needs_grad else None  # the first chunk writes it, the others add
        rows = chunk_rows(vocab)
        # a soft-cap up to SIGMOID_CAP goes through cap tanh(x / cap) = 2 cap sigmoid(2x / cap) - cap (a sigmoid costs
        # about half a tanh on a CPU; its rounding, cap x 2^-24 on a logit, stays within the logits' own there). The
        # -cap cancels in the loss, so the chunk works on 2 cap sigmoid in [0, 2 cap], whose exp cannot overflow.
        # A larger cap keeps the tanh: capped logits in [-cap, cap], exp(logit - cap) cannot overflow.
        factor = 1.0  # the derivative's constant, put on the row factor below
        if softcap:  # activation(logit x pre); capped logit = gain x activation - offset; 1 - tanh^2 = factor x d
            pre, activate, gain, offset, derivative, factor = (
                (2.0 / softcap, torch.sigmoid_, 2.0 * softcap, 0.0, torch.ops.aten.sigmoid_backward, 4.0)
                if softcap <= SIGMOID_CAP else
                (1.0 / softcap, torch.tanh_, softcap, softcap, torch.ops.aten.tanh_backward, 1.0))
        rows = min(rows, n_rows)
        # two chunk buffers, reused: a fresh one per chunk would be a fresh mapping (page faults) each time
        first = hidden.new_empty(rows, vocab)
        second = hidden.new_empty(rows, vocab) if softcap else None
        for start in range(0, n_rows, rows):
            h = hidden[start:start + rows]
            n = h.shape[0]
            tgt, ok = targets[start:start + rows], valid[start:start + rows]
            safe = torch.where(ok, tgt, 0)[:, None]
            if softcap:
                act = activate(torch.mm(h * pre, weight.t(), out=first[:n]))  # kept for the derivative
                picked = act.gather(1, safe)[:, 0] * gain
                exp = torch.mul(act, gain, out=second[:n])
                if offset:
                    exp.sub_(offset)
                exp.exp_()
                top = torch.full_like(picked, offset)
            else:
                exp = torch.mm(h, weight.t(), out=first[:n])
                picked = exp.gather(1, safe)[:, 0]
                top = exp.amax(dim=1)
                exp.sub_(top[:, None]).exp_()
            sums = exp.sum(dim=1)
            total += ((sums.log() + top - picked) * ok).sum(dtype=torch.float64)
            if not needs_grad:
                continue
            # d loss / d logits = rows x (exp - sums x onehot) [x (1 - tanh^2)], rows = weight / sums: the row
            # factor goes on the two matmuls' small sides (a pass over the chunk saved)
            row = (ok.to(exp.dtype) * (scale * factor) / sums)[:, None]
            exp.scatter_add_(1, safe, -(sums * ok)[:, None])
            if softcap:  # the activation's derivative: aten's fused kernel, one pass, in place (factor on the row)
                derivative.grad_input(exp, act, grad_input=exp)
            torch.mm(exp, weight, out=grad_h[start:start + rows]).mul_(row)
            if start == 0:
                torch.mm(exp.t(), h * row, out=grad_w)
            else:
                grad_w.addmm_(exp.t(), h * row)
        if needs_grad:
            ctx.save_for_backward(grad_h, grad_w)
        loss = (total / count) if count else total * float("nan")
        return loss.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        if grad_out.device.type == "cpu" and float(grad_out) == 1.0:  # loss.backward(): no pass over [V, D]
            return grad_h, grad_w, None, None, None
        return grad_h * grad_out, grad_w * grad_out, None, None, None


def fused_applies(hidden: torch.Tensor) -> bool:
    """Whether the chunked head loss serves here: eager, fp32 without autocast (a CPU's training step)."""
    return (hidden.dtype == torch.float32 and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled(hidden.device.type))


def head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy of `hidden` [N, D] through the head `weight` [V, D] (soft-capped if
    `softcap`), over the targets [N] that are not -100."""
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _HeadLoss.apply(hidden, weight, targets, float(softcap), needs_grad)
