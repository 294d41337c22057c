"""``ModuleEMA``: the seed Trainer's moving average (copy before ``start_step``, average at
every ``update_every``-th optimizer step after), of the trainable parameters only, saved
and loaded exactly; and the start-up refusals of ``stage.ema`` / ``train.sample_every``."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from divot_llm.config import ConfigError, compose_config
from divot_llm.config.schema import EmaConfig
from divot_llm.train.ema import ModuleEMA
from divot_llm.train.trainer import check_ema_and_sampling


def two_linears() -> nn.Module:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    module[1].requires_grad_(False)  # frozen: never averaged
    return module


def test_ema_matches_the_closed_form_with_start_step_and_update_every(tmp_path):
    decay, update_every, start_step, steps = 0.8, 2, 4, 9
    module = two_linears()
    frozen = module[1].weight.detach().clone()
    ema = ModuleEMA(
        module, EmaConfig(enabled=True, decay=decay, update_every=update_every, start_step=start_step)
    )
    assert set(ema.state_dict()) == {"0.weight", "0.bias"}
    weights = [module[0].weight.detach().clone()]  # w_0: the weights the average starts at
    for step in range(1, steps + 1):
        with torch.no_grad():
            module[0].weight.add_(torch.randn_like(module[0].weight))
            module[1].weight.add_(1.0)
        weights.append(module[0].weight.detach().clone())
        ema.update(step, module)
    # updates at steps 2, 4, 6, 8: a copy at 2 (< start_step), then averages at 4, 6, 8
    expected = weights[2]
    for step in (4, 6, 8):
        expected = decay * expected + (1 - decay) * weights[step]
    torch.testing.assert_close(ema.module[0].weight, expected, rtol=0, atol=1e-6)
    assert not torch.equal(ema.module[0].weight, module[0].weight)  # step 9 is not an update step
    # the frozen layer keeps the value it was copied with (never averaged); the copy is frozen
    assert torch.equal(ema.module[1].weight, frozen)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training

    ema.save(tmp_path / "ema.safetensors")
    restored = ModuleEMA(two_linears(), EmaConfig(enabled=True))
    restored.load(tmp_path / "ema.safetensors")
    for name, tensor in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name


def test_ema_load_refuses_other_parameters(tmp_path):
    ema = ModuleEMA(two_linears(), EmaConfig(enabled=True))
    ema.save(tmp_path / "ema.safetensors")
    other = ModuleEMA(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1)), EmaConfig(enabled=True))
    with pytest.raises(ValueError, match=r"missing \['1.bias', '1.weight'\]"):
        other.load(tmp_path / "ema.safetensors")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=demo", "stage.ema.enabled=true"], "stage pretrain trains no de-tokenizer"),
        (
            ["experiment=detok_demo", "train.sample_every=5"],
            "stage detok does not generate clips from prompts",
        ),
        (["experiment=detok_demo", "stage.ema.enabled=true", "deepspeed=zero3"], "ZeRO-3 partitions"),
        (["experiment=detok_demo", "stage.ema.decay=1.0"], "stage.ema.decay=1.0 must be in [0, 1)"),
    ],
)
def test_ema_and_sampling_are_refused_where_they_cannot_work(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_ema_and_sampling(compose_config(overrides))
