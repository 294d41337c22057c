"""LoRA on the backbone (peft), and loading the peft-form state dicts training writes.

Training state dicts are keyed by ``DivotLLM``'s own names (``llm.base_model.model...``
for the peft-wrapped LLM), as DeepSpeed and ``zero_to_fp32`` write them; peft < 0.7 named
the base weights of LoRA-wrapped layers differently (``map_legacy_peft_keys``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import peft
import torch
from transformers import PreTrainedModel

from divot_llm.config.schema import LoraConfig
from divot_llm.model.divot import DivotLLM


def apply_lora(model: PreTrainedModel, lora_cfg: LoraConfig) -> peft.PeftModel:
    """Wrap ``model`` with LoRA adapters as configured (reference: r 32, alpha 32,
    dropout 0.05 on all attention/MLP projections, RMSNorms as trained copies).

    ``modules_to_save`` matches by name suffix, so ``"norm"`` alone would also catch both
    per-layer norms; the reference lists all three. With ``train_embeddings`` the *full*
    ``embed_tokens`` and ``lm_head`` matrices are trained in place (not copied), exactly
    like the reference's ``requires_grad_(True)`` after ``get_peft_model``.
    """
    peft_cfg = peft.LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        bias=lora_cfg.bias,
        target_modules=list(lora_cfg.target_modules),
        modules_to_save=list(lora_cfg.modules_to_save) or None,
        task_type=peft.TaskType.CAUSAL_LM,
    )
    wrapped = peft.get_peft_model(model, peft_cfg)
    if lora_cfg.train_embeddings:
        wrapped.get_input_embeddings().requires_grad_(True)
        wrapped.get_output_embeddings().requires_grad_(True)
    return wrapped


def map_legacy_peft_keys(
    state_dict: Mapping[str, torch.Tensor], model_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Rename keys written by peft < 0.7 to the names the current peft uses.

    Old peft stored a LoRA-wrapped layer's base weight as ``..._proj.weight``; since
    peft 0.7 it lives at ``..._proj.base_layer.weight``. A key is renamed only when it is
    not a model key and its ``base_layer`` form is, so nothing else is touched.
    """
    model_keys = set(model_keys)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key not in model_keys:
            prefix, _, leaf = key.rpartition(".")
            candidate = f"{prefix}.base_layer.{leaf}"
            if candidate in model_keys:
                key = candidate
        mapped[key] = value
    return mapped


def load_training_state_dict(model: DivotLLM, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load a peft-form training state dict (DeepSpeed / ``zero_to_fp32`` output).

    Keys written by peft < 0.7 (base weights without ``base_layer``) are mapped. Frozen
    parameters may be absent (converted checkpoints often hold only trainable ones); they
    keep their current values.

    Returns:
        The model keys that were not in ``state_dict`` (all frozen).

    Raises:
        ValueError: unknown keys, or a trainable parameter is missing.
    """
    model_keys = model.state_dict().keys()
    mapped = map_legacy_peft_keys(state_dict, model_keys)
    unexpected = sorted(mapped.keys() - model_keys)
    if unexpected:
        raise ValueError(f"{len(unexpected)} keys are not parameters of this model, e.g. {unexpected[:5]}")
    missing = sorted(model_keys - mapped.keys())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing_trainable = [k for k in missing if k in trainable]
    if missing_trainable:
        raise ValueError(
            f"{len(missing_trainable)} trainable parameters are missing, e.g. {missing_trainable[:5]}"
        )
    model.load_state_dict(dict(mapped), strict=False)
    return missing
