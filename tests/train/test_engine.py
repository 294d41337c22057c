"""The DeepSpeed config we generate and the engine built from it (in-process, 1 rank)."""

from __future__ import annotations

import pytest
import torch

from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import Precision
from divot_llm.model import build_divot_llm
from divot_llm.train.engine import build_engine, deepspeed_config, param_groups, resolve_dtype
from tests.train.conftest import tiny_cfg


def test_precision_auto_is_fp32_on_cpu_and_bf16_on_gpu():
    assert resolve_dtype(Precision.auto, torch.device("cpu")) == torch.float32
    assert resolve_dtype(Precision.auto, torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype(Precision.bf16, torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError):
        resolve_dtype("fp16", torch.device("cpu"))


def test_config_carries_clipping_accumulation_and_zero_settings():
    cfg = tiny_cfg("deepspeed=zero2_offload", "optim.grad_clip=0.5", "train.grad_accum_steps=4")
    ds = deepspeed_config(cfg, world_size=8, dtype=torch.bfloat16, on_gpu=True)
    assert ds["gradient_clipping"] == 0.5
    assert (ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 32)
    assert ds["bf16"] == {"enabled": True}
    zero = ds["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["ignore_unused_parameters"] is True
    z3 = deepspeed_config(tiny_cfg("deepspeed=zero3"), 2, torch.float32, on_gpu=False)["zero_optimization"]
    assert z3["stage"] == 3 and "allgather_bucket_size" not in z3


def test_inconsistent_offload_is_refused():
    with pytest.raises(ConfigError, match="zero_stage=3"):
        deepspeed_config(tiny_cfg("deepspeed.offload_param=true"), 1, torch.float32, on_gpu=False)


def test_norms_and_biases_can_be_kept_out_of_weight_decay():
    cfg = tiny_cfg("optim.no_decay_norms_and_biases=true")
    model = build_divot_llm(cfg.model, feature_tokens=8, feature_dim=16)
    decay, no_decay = param_groups(model, cfg.optim)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == cfg.optim.weight_decay
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])  # biases + RMSNorm scales
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    assert len(param_groups(model, tiny_cfg().optim)) == 1  # the reference: one group, all decayed


def test_engine_uses_our_clipping_schedule_and_client_adamw(ds_process_group):
    cfg = tiny_cfg("optim.grad_clip=0.25", "optim.lr=2e-3", "optim.warmup_steps=4", "train.max_steps=10")
    model = build_divot_llm(cfg.model, feature_tokens=8, feature_dim=16)
    engine = build_engine(model, cfg, world_size=1, dtype=torch.float32, device=torch.device("cpu"))
    assert engine.gradient_clipping() == 0.25  # DeepSpeed would clip at 1.0 if it were unset
    assert engine.zero_optimization_stage() == 2
    assert isinstance(engine.optimizer.optimizer, torch.optim.AdamW)  # no JIT-built DeepSpeed op
    group = engine.optimizer.optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.98), 1e-6, 0.05)
    assert engine.get_lr()[0] == pytest.approx(2e-3 / 4)  # first update: 1/warmup of the peak
