"""The learning-rate schedule: linear warmup, cosine to the floor, as DeepSpeed steps it."""

from __future__ import annotations

import math

import pytest
import torch

from divot_llm.config.schema import OptimConfig
from divot_llm.train.schedule import WarmupCosine, build_scheduler


def test_warmup_is_linear_and_never_zero():
    f = WarmupCosine(warmup_steps=4, max_steps=20, min_lr_ratio=0.05)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_runs_from_one_to_the_floor_and_stays():
    f = WarmupCosine(warmup_steps=10, max_steps=110, min_lr_ratio=0.05)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.05 + 0.95 * 0.5)  # half-way: cos(pi/2) = 0
    assert f(110) == pytest.approx(0.05)
    assert f(500) == pytest.approx(0.05)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_reference_values_at_7b_scale():
    """lr 1e-4, 500 warmup, 100k steps, floor 5% (divot-reference §6.3)."""
    f = WarmupCosine(500, 100_000, 0.05)
    p = (30_000 - 500) / 99_500
    assert 1e-4 * f(30_000) == pytest.approx(1e-4 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))))
    assert 1e-4 * f(100_000) == pytest.approx(5e-6)


def test_scheduler_sets_the_optimizer_lr_per_update():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-3)
    sched = build_scheduler(opt, OptimConfig(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1), max_steps=4)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3, 1e-4 + 9e-4 * 0.5, 1e-4])


@pytest.mark.parametrize("args", [(-1, 10, 0.1), (0, 0, 0.1), (0, 10, 1.5)])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError):
        WarmupCosine(*args)
