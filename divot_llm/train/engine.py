"""The DeepSpeed engine: its JSON config from ours, the optimizer, the schedule.

Everything DeepSpeed needs is derived from ``cfg.deepspeed`` + ``cfg.optim`` +
``cfg.train``, so there is no second config file to keep in sync. Choices that differ
from a plain ``deepspeed.initialize(config=...)``:

* The optimizer is built here, not from an ``"optimizer"`` JSON block: torch's fused
  ``AdamW`` (CUDA and CPU kernels) avoids DeepSpeed's ~100 s ``fused_adam`` JIT build; on
  CPU it is also ~10x faster than the unfused loop (3 vs 40 ms per step over a 4.2M flat
  ZeRO partition on one thread) and does not slow down on denormal second moments,
  which rarely-used vocabulary rows produce; with optimizer offload DeepSpeed requires its
  own ``DeepSpeedCPUAdam`` (built on first use).
* ``gradient_clipping`` is always written: DeepSpeed 0.19.8 clips at 1.0 when it is unset.
* ``train_micro_batch_size_per_gpu`` is bookkeeping only (1): batch sizes vary per step
  (token-budget batches, per-source sizes), the loader -- not DeepSpeed -- makes batches.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch
from torch import nn

from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import DivotConfig, OptimConfig, Precision
from divot_llm.runtime import default_dtype
from divot_llm.train.schedule import build_scheduler


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """``auto`` -> the device's default (``runtime.default_dtype``: bf16 on GPU, fp32 on CPU).

    Raises:
        ConfigError: an unknown precision name.
    """
    if precision == Precision.auto:
        return default_dtype(device)
    if precision == Precision.bf16:
        return torch.bfloat16
    if precision == Precision.fp32:
        return torch.float32
    raise ConfigError(f"deepspeed.precision must be auto, bf16 or fp32, got {precision!r}")


def deepspeed_config(
    cfg: DivotConfig, world_size: int, dtype: torch.dtype, on_gpu: bool, optim: OptimConfig | None = None
) -> dict[str, Any]:
    """The DeepSpeed JSON config for a run.

    Args:
        cfg: The composed run config (``deepspeed``, ``optim``, ``train`` are read).
        world_size: Data-parallel ranks.
        dtype: Training dtype (``resolve_dtype``).
        on_gpu: Pin offloaded optimizer memory only where there is a GPU to copy to.
        optim: The optimizer settings in place of ``cfg.optim`` (a stage's second engine).

    Raises:
        ConfigError: parameter offload without ZeRO-3, optimizer offload without ZeRO.
    """
    ds = cfg.deepspeed
    if ds.offload_param and ds.zero_stage != 3:
        raise ConfigError(
            "deepspeed.offload_param needs deepspeed.zero_stage=3 (parameters are only sharded there)"
        )
    if ds.offload_optimizer and ds.zero_stage == 0:
        raise ConfigError("deepspeed.offload_optimizer needs ZeRO stage 1, 2 or 3")
    accum = cfg.train.grad_accum_steps
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": ds.contiguous_gradients,
        "reduce_bucket_size": ds.reduce_bucket_size,
    }
    if ds.zero_stage in (1, 2):
        zero.update(
            allgather_partitions=True,
            allgather_bucket_size=ds.allgather_bucket_size,
            reduce_scatter=True,
            ignore_unused_parameters=ds.ignore_unused_parameters,
        )
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = ds.stage3_gather_16bit_weights_on_model_save
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": accum,
        "train_batch_size": accum * world_size,
        "gradient_clipping": (optim or cfg.optim).grad_clip,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # we log ourselves
        "wall_clock_breakdown": False,
    }


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm weights: 1-D tensors (RMSNorm/LayerNorm scales, biases)."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(model: nn.Module, optim_cfg: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters in one group (the reference: uniform weight decay), or two
    when ``no_decay_norms_and_biases`` keeps decay off norms and biases."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    wd = optim_cfg.weight_decay
    if not optim_cfg.no_decay_norms_and_biases:
        return [{"params": [p for _, p in named], "weight_decay": wd}]
    decay = [p for n, p in named if not _no_decay(n, p)]
    no_decay = [p for n, p in named if _no_decay(n, p)]
    return [
        g
        for g in ({"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]


def build_optimizer(
    model: nn.Module, cfg: DivotConfig, optim: OptimConfig | None = None
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (see the module docstring for which class),
    with ``optim`` (default ``cfg.optim``)."""
    optim = optim or cfg.optim
    groups = param_groups(model, optim)
    kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    if cfg.deepspeed.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, fused=True, **kwargs)


# DeepSpeed's ZeRO optimizers import its Muon optimizer (to ask whether ours is one), and that
# module torch.compile's its kernels when imported: torch._dynamo and inductor, ~2 s of every
# process that builds an engine (each rank of every launch). We build AdamW only
# (``build_optimizer``), so those two modules are replaced by stand-ins: a class nothing is
# an instance of, and an update that refuses to run.
DEEPSPEED_MUON_MODULES = (
    "deepspeed.runtime.zero.muon.muon_optimizer",
    "deepspeed.runtime.zero.muon.original_muon",
)


class _NotMuon:
    """Stands for DeepSpeed's ``MuonWithAuxAdam``: no optimizer here is one."""


def _no_muon_update(*args, **kwargs):
    raise RuntimeError("DeepSpeed's Muon optimizer is not available in divot-llm (it trains with AdamW)")


def skip_deepspeed_muon() -> None:
    """Put the stand-ins for DeepSpeed's Muon modules in ``sys.modules`` (see above); a
    process that imported the real ones keeps them."""
    if DEEPSPEED_MUON_MODULES[0] in sys.modules or DEEPSPEED_MUON_MODULES[1] in sys.modules:
        return
    optimizer, update = (types.ModuleType(name) for name in DEEPSPEED_MUON_MODULES)
    optimizer.MuonWithAuxAdam = _NotMuon
    update.muon_update = _no_muon_update
    sys.modules.update(zip(DEEPSPEED_MUON_MODULES, (optimizer, update), strict=True))


def build_engine(
    model: nn.Module,
    cfg: DivotConfig,
    world_size: int,
    dtype: torch.dtype,
    device: torch.device,
    optim: OptimConfig | None = None,
):
    """``deepspeed.initialize`` with our optimizer and warmup-cosine schedule.

    Args:
        optim: The optimizer, clipping and schedule settings in place of ``cfg.optim``
            (a stage's second engine, e.g. ``stage.disc_optim``).

    Returns:
        The engine; ``engine.lr_scheduler`` steps once per optimizer update and is saved
        in its checkpoints.
    """
    import deepspeed

    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters (check stage.* and model.lora)")
    skip_deepspeed_muon()
    optim = optim or cfg.optim
    optimizer = build_optimizer(model, cfg, optim)
    config = deepspeed_config(cfg, world_size, dtype, on_gpu=device.type == "cuda", optim=optim)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: build_scheduler(opt, optim, cfg.train.max_steps),
        config=config,
    )
    return engine
