"""A ``DivotLLM`` in the release layout (``divot_llm.layout``): what Divot publishes, what
``divot-merge`` writes and what an SFT stage and inference start from.

``save_release`` writes ``llm/`` (HF Mistral folder, LoRA merged) and ``agent/`` (the video
head's input and output modules: the GMM's 8 projection tensors); ``load_agent_weights`` reads ``agent/`` back into a model.
``load_release`` (``divot_llm.model.build``) builds the whole model from a release: it
builds first, so it lives with the builders.
"""

from __future__ import annotations

import os
from pathlib import Path

import peft
import torch
from safetensors.torch import load_file, save_file

from divot_llm.layout import AGENT_BIN, AGENT_DIR, AGENT_SAFETENSORS, LLM_DIR
from divot_llm.model.divot import DivotLLM
from divot_llm.text.tokenizer import DivotTextTokenizer


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
    """The video head tensors of an ``agent/`` folder (safetensors preferred over .bin).

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
    """Load the video head's tensors of a release's ``agent/`` folder into ``model``.

    Raises:
        ValueError: the file's keys are not exactly the projection keys, or a shape differs
            (e.g. a release made for another feature dim, GMM size or model.head).
    """
    state = read_agent_file(agent_dir)
    expected = model.projection_state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"agent weights in {agent_dir}: missing {missing}, unexpected {unexpected} "
            "(a release made with another model.head?)"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"agent weight {key} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
