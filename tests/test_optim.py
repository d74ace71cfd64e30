"""Learning-rate schedules and weight-decay groups, checked against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.optim import lr_at, parameter_groups
from zoo.recipe import ScheduleConfig


def test_constant_with_warmup():
    config = ScheduleConfig(kind="constant", warmup_steps=4)
    assert [lr_at(s, 1.0, config, 100, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_step_schedule_decays_once_per_epoch_after_its_start():
    config = ScheduleConfig(kind="step", decay_rate=0.5, decay_after_epoch=2)
    lrs = [lr_at(s, 1.0, config, 100, 10) for s in (0, 9, 10, 19, 20, 29, 30, 45)]
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.125]


def test_cosine_warms_up_then_falls_to_its_floor():
    config = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr=0.1)
    lr = [lr_at(s, 1.0, config, 110, 10) for s in range(111)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)  # linear warmup (step + 1) / warmup
    assert lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))  # halfway: the mean
    assert lr[110] == pytest.approx(0.1) and min(lr) >= 0.1 - 1e-12
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))  # never rises after the warmup
    frac = ScheduleConfig(kind="cosine", warmup_frac=0.05)
    assert lr_at(0, 1.0, frac, 200, 10) == pytest.approx(1 / 10)  # 5% of 200 steps


def test_decay_groups_by_tensor_rank_and_frozen_tensors_stay_out():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[3].weight.requires_grad = False
    groups = parameter_groups(model, 0.1, decay_all=False)
    decayed, kept = groups
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert {tuple(p.shape) for p in decayed["params"]} == {(10, 4), (4, 4)}  # embedding and matrix
    assert {tuple(p.shape) for p in kept["params"]} == {(4,), (2,)}  # biases and the norm (frozen weight gone)
    everything = parameter_groups(model, 0.1, decay_all=True)
    assert len(everything) == 1 and len(everything[0]["params"]) == 6
    assert len(parameter_groups(model, 0.0, decay_all=False)) == 1
    # AdamW with these groups leaves an undecayed bias at zero gradient unchanged, and shrinks a matrix
    bias, matrix = model[1].bias, model[1].weight
    before_b, before_m = bias.detach().clone(), matrix.detach().clone()
    opt = torch.optim.AdamW(groups, lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    assert torch.equal(bias, before_b) and torch.allclose(matrix, before_m * (1 - 0.1 * 0.1))


def test_linear_and_wsd_follow_their_formulas():
    lin = ScheduleConfig(kind="linear", warmup_steps=10, min_lr=0.1)
    assert [lr_at(s, 1.0, lin, 110, 10) for s in (0, 9)] == [pytest.approx(0.1), pytest.approx(1.0)]
    for s in range(10, 110):
        assert lr_at(s, 1.0, lin, 110, 10) == pytest.approx(0.1 + 0.9 * (1 - (s - 10) / 100))
    wsd = ScheduleConfig(kind="wsd", warmup_steps=10, decay_frac=0.25, min_lr=0.0)
    lrs = [lr_at(s, 2.0, wsd, 200, 10) for s in range(200)]
    assert lrs[:10] == [pytest.approx(2.0 * (s + 1) / 10) for s in range(10)]
    assert all(lr == 2.0 for lr in lrs[10:150])  # stable until the last quarter
    for s in range(150, 200):  # then a straight line that would reach min_lr at step 200
        assert lrs[s] == pytest.approx(2.0 * (1 - (s - 150) / 50))
    floor = ScheduleConfig(kind="wsd", decay_frac=1.0, min_lr=0.5)
    assert lr_at(0, 1.0, floor, 4, 1) == 1.0 and lr_at(2, 1.0, floor, 4, 1) == pytest.approx(0.75)


def test_giles_thomas_schedule_equals_torchs_linear_then_cosine():
    """Giles Thomas's schedule is torch's LinearLR(start_factor=1e-5) warmup for 5% of the steps, then
    CosineAnnealingLR to lr/10, chained with SequentialLR: zoo's cosine with warmup_start = 1e-5 and min_lr =
    lr/10 gives the same rate at every step."""
    total, lr = 400, 1.4e-3
    warmup = (total * 5) // 100
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-5, end_factor=1.0, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=lr / 10)], milestones=[warmup])
    config = ScheduleConfig(kind="cosine", warmup_frac=0.05, warmup_start=1e-5, min_lr=lr / 10)
    for step in range(total):
        assert lr_at(step, lr, config, total, 1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
