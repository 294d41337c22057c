"""The LLM folder's ``visual_weight.bin`` (``language_model/`` and ``language_model_sft/`` of
the release): the keyframe and motion tokenizers' tensors that LaVIT's
``VideoLaVITLlamaForCausalLM.from_pretrained`` reads beside the Llama shards, under its module
path -- ``model.visual_tokenizer.*`` (the keyframe tokenizer's ``tokenizer_encoder.bin`` keys:
for understanding, the merger and ``vit_proj`` trained with the LLM) and
``model.motion_tokenizer.*`` (``motion_tokenizer.bin``'s keys). The key table is checked
against LaVIT's class (``tests/fixtures/lavit/keyframe_key_tables.json.gz``).
"""

from __future__ import annotations

import os

import torch

from divot_llm.tokenizers.keyframe.lavit import LaVITKeyframeTokenizer, check_state_dict, load_encoder_state
from divot_llm.tokenizers.motion.lavit import LaVITMotionTokenizer, read_state_dict

PREFIXES = {"keyframe_tokenizer": "model.visual_tokenizer.", "motion_tokenizer": "model.motion_tokenizer."}


def split_visual_weight(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"keyframe_tokenizer": ..., "motion_tokenizer": ...}``: each tokenizer's tensors under
    its own key names (the prefix removed).

    Raises:
        ValueError: keys under neither prefix (named).
    """
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PREFIXES}
    other = []
    for key, value in state.items():
        name = next((name for name, prefix in PREFIXES.items() if key.startswith(prefix)), None)
        if name is None:
            other.append(key)
        else:
            parts[name][key.removeprefix(PREFIXES[name])] = value
    if other:
        raise ValueError(
            f"{len(other)} keys under neither {' nor '.join(PREFIXES.values())}: {', '.join(sorted(other)[:6])}"
        )
    return parts


def visual_weight_state(
    keyframe_tokenizer: LaVITKeyframeTokenizer, motion_tokenizer: LaVITMotionTokenizer
) -> dict[str, torch.Tensor]:
    """The inverse of ``split_visual_weight``: both tokenizers' tensors under LaVIT's names
    (the keyframe tokenizer without its decoder, which the LLM does not hold)."""
    parts = {
        "keyframe_tokenizer": keyframe_tokenizer.encoder_state_dict(),
        "motion_tokenizer": motion_tokenizer.state_dict(),
    }
    return {
        PREFIXES[name] + key: value.contiguous()
        for name, part in parts.items()
        for key, value in part.items()
    }


def save_visual_weight(
    path: str | os.PathLike,
    keyframe_tokenizer: LaVITKeyframeTokenizer,
    motion_tokenizer: LaVITMotionTokenizer,
) -> None:
    """Write ``visual_weight_state`` as a raw state dict (``torch.save``), as released."""
    torch.save(visual_weight_state(keyframe_tokenizer, motion_tokenizer), path)


def load_visual_weight(
    path: str | os.PathLike,
    keyframe_tokenizer: LaVITKeyframeTokenizer,
    motion_tokenizer: LaVITMotionTokenizer,
) -> None:
    """Load a ``visual_weight.bin`` into both tokenizers, each strictly.

    Raises:
        ValueError: keys outside both prefixes, or missing, unexpected or of other shapes
            for either tokenizer -- each named.
    """
    parts = split_visual_weight(read_state_dict(path))
    load_encoder_state(keyframe_tokenizer, parts["keyframe_tokenizer"], f"{path} (model.visual_tokenizer.*)")
    check_state_dict(motion_tokenizer, parts["motion_tokenizer"], f"{path} (model.motion_tokenizer.*)")
    motion_tokenizer.load_state_dict(parts["motion_tokenizer"], strict=True)
