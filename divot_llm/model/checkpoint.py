"""Model weights on disk: the release layout and peft-form training state dicts.

Release layout (what Divot publishes and what an SFT stage starts from)::

    <release>/llm/    HF Mistral folder, LoRA merged, vocabulary 32262 (safetensors)
    <release>/agent/  pytorch_model.bin (or model.safetensors) with exactly the 8
                      projection tensors input_resampler.proj.{0,2}.{weight,bias} and
                      output_resampler.proj.{0,2}.{weight,bias}

Training state dicts are keyed by ``DivotLLM``'s own names (``llm.base_model.model...``
for the peft-wrapped LLM), as DeepSpeed and ``zero_to_fp32`` write them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import peft
import torch
from safetensors.torch import load_file, save_file

from divot_llm.model.divot import DivotLLM
from divot_llm.model.lora import map_legacy_peft_keys

if TYPE_CHECKING:
    from divot_llm.text.tokenizer import DivotTextTokenizer

LLM_DIR = "llm"
AGENT_DIR = "agent"
AGENT_BIN = "pytorch_model.bin"
AGENT_SAFETENSORS = "model.safetensors"
# Optional folders beside llm/ and agent/: the frozen modules a release or an export carries
# (save_pretrained form) when they have no weights file elsewhere.
VIDEO_TOKENIZER_DIR = "video_tokenizer"
DETOKENIZER_DIR = "detokenizer"


def save_release(
    model: DivotLLM,
    out_dir: str | os.PathLike,
    tokenizer: DivotTextTokenizer | None = None,
    agent_format: str = "bin",
    max_shard_size: str = "5GB",
) -> Path:
    """Write ``model`` in the release layout.

    Args:
        model: A model whose LoRA is merged (``model.merge_lora()``).
        out_dir: Release folder to create.
        tokenizer: Also saved into ``llm/`` when given.
        agent_format: ``"bin"`` (the release's ``pytorch_model.bin``) or ``"safetensors"``.
        max_shard_size: Shard size of the ``llm/`` safetensors.

    Raises:
        ValueError: LoRA not merged, or an unknown ``agent_format``.
    """
    if isinstance(model.llm, peft.PeftModel):
        raise ValueError("the release holds merged weights: call model.merge_lora() before save_release")
    if agent_format not in ("bin", "safetensors"):
        raise ValueError(f"agent_format must be 'bin' or 'safetensors', got {agent_format!r}")
    out = Path(out_dir)
    model.llm.save_pretrained(out / LLM_DIR, safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(out / LLM_DIR)
    agent = out / AGENT_DIR
    agent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.projection_state_dict().items()}
    if agent_format == "safetensors":
        save_file(tensors, agent / AGENT_SAFETENSORS)
    else:
        torch.save(tensors, agent / AGENT_BIN)
    return out


def read_agent_file(agent_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The projection tensors of an ``agent/`` folder (safetensors preferred over .bin).

    Raises:
        FileNotFoundError: neither file exists.
    """
    agent = Path(agent_dir)
    if (agent / AGENT_SAFETENSORS).is_file():
        return load_file(agent / AGENT_SAFETENSORS)
    if (agent / AGENT_BIN).is_file():
        return torch.load(agent / AGENT_BIN, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no {AGENT_SAFETENSORS} or {AGENT_BIN} in {agent}")


def load_agent_weights(model: DivotLLM, agent_dir: str | os.PathLike) -> None:
    """Load the 8 projection tensors of a release's ``agent/`` folder into ``model``.

    Raises:
        ValueError: the file's keys are not exactly the projection keys, or a shape differs
            (e.g. a release made for another feature dim or GMM size).
    """
    state = read_agent_file(agent_dir)
    expected = model.projection_state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"agent weights in {agent_dir}: missing {missing}, unexpected {unexpected}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"agent weight {key} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False)


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
