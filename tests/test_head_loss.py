"""The chunked head loss (zoo.models.head_loss) equals the plain logits + cross-entropy it replaces in eager fp32
training: the loss and the gradients of the hidden states and of every weight, with and without the soft-cap,
with ignored targets, a padded vocabulary and tied weights, across chunk boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.models import head_loss as hl
from zoo.models.gpt2 import GPT2, GPT2Config


@pytest.mark.parametrize("softcap", [0.0, 15.0, 100.0])
def test_head_loss_equals_the_plain_loss_and_gradients(softcap, monkeypatch):
    monkeypatch.setattr(hl, "CHUNK_ELEMENTS", 7 * 333)  # chunks of 7 rows: 53 rows cross several boundaries
    torch.manual_seed(0)
    hidden = torch.randn(53, 24, requires_grad=True)
    weight = (torch.randn(333, 24) * 2).requires_grad_()
    targets = torch.randint(0, 333, (53,))
    targets[::5] = -100
    logits = hidden @ weight.t()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    plain = F.cross_entropy(logits, targets, ignore_index=-100)
    ours = hl.head_loss(hidden, weight, targets, softcap)
    assert ours.item() == pytest.approx(plain.item(), rel=1e-6)
    expected, got = (torch.autograd.grad(loss * 2.5, (hidden, weight)) for loss in (plain, ours))
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # evaluation: the loss alone
        assert float(hl.head_loss(hidden, weight, targets, softcap)) == pytest.approx(float(plain), rel=1e-6)


@pytest.mark.parametrize("options", [dict(logit_softcap=15.0, tie_weights=True), dict(pad_vocab=64),
                                     dict(logit_softcap=30.0, position="rotary", norm="rmsnorm")])
def test_a_gpt_models_next_token_loss_is_its_logits_cross_entropy(options):
    torch.manual_seed(1)
    model = GPT2(GPT2Config(size="", n_layer=2, n_head=2, n_embd=32, context_length=16, **options), 301)
    x, y = torch.randint(0, 301, (3, 16)), torch.randint(0, 301, (3, 16))
    y[0, :5] = -100
    fused = model.next_token_loss(model(x)[0], y)
    grads = torch.autograd.grad(fused, list(model.parameters()))
    logits = model.logits(model(x)[0])
    plain = F.cross_entropy(logits.reshape(-1, 301), y.reshape(-1), ignore_index=-100)
    expected = torch.autograd.grad(plain, list(model.parameters()))
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for a, b in zip(grads, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast the plain form serves
        assert not hl.fused_applies(model(x)[0].reshape(-1, 32))


def test_the_memory_checks_parameter_estimate_is_within_two_percent():
    """The run's memory check counts parameters from the config (the model is built once): close to the real
    count for every architecture option that changes it."""
    from zoo.models import gpt2, rnn
    from zoo.models.base import count_parameters

    configs = [gpt2.GPT2Config(size="gpt2-micro"), gpt2.GPT2Config(size="gpt2-micro", tie_weights=True),
               gpt2.GPT2Config(size="", n_layer=2, n_head=4, n_embd=64, mlp="swiglu", position="rotary", bias=False,
                               norm="rmsnorm"),
               rnn.CharRNNConfig(), rnn.CharRNNConfig(cell="gru", input="onehot", num_layers=3),
               rnn.CharRNNConfig(cell="rnn", hidden_size=64, tie_weights=True)]
    for config in configs:
        spec = gpt2.SPEC if isinstance(config, gpt2.GPT2Config) else rnn.SPEC
        real = count_parameters(spec.build(config, 500))
        assert abs(spec.parameters(config, 500) - real) <= 0.02 * real, (config, real)
