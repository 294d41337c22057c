"""The SD-1.x KL-f8 VAE as a diffusers ``AutoencoderKL``, with LDM <-> diffusers key maps.

The release file stores the VAE under ``first_stage_model.*`` in the LDM layout
(``encoder.down.{i}.block.{j}``, ``mid.attn_1.q`` as 1x1 convs, ...). Loading goes through
diffusers' own converter; saving maps back with ``diffusers_to_ldm_vae`` so a saved
de-tokenizer has the release key names (and loads into the reference code too).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from divot_llm.detokenizers.dynamicrafter_config import DynamiCrafterConfig
from divot_llm.tokenizers.clip_vision import load_weights_file

LDM_PREFIX = "first_stage_model."


def vae_config(config: DynamiCrafterConfig) -> dict:
    """diffusers ``AutoencoderKL`` arguments for the config's VAE (LDM ``ddconfig``:
    ``ch``, ``ch_mult``, ``num_res_blocks=2``, no attention resolutions)."""
    levels = len(config.vae_channel_mult)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.vae_channels * m for m in config.vae_channel_mult),
        layers_per_block=2,
        latent_channels=config.latent_channels,
        sample_size=config.image_size,
        scaling_factor=config.scale_factor,
    )


def build_vae(config: DynamiCrafterConfig) -> AutoencoderKL:
    """A randomly initialised ``AutoencoderKL`` of the config's shape."""
    return AutoencoderKL(**vae_config(config))


def vae_downsample_factor(config: DynamiCrafterConfig) -> int:
    """Pixels per latent cell along each side (8 for KL-f8)."""
    return 2 ** (len(config.vae_channel_mult) - 1)


def ldm_to_diffusers_vae(
    state_dict: dict[str, torch.Tensor], config: DynamiCrafterConfig
) -> dict[str, torch.Tensor]:
    """LDM-layout VAE tensors (bare or ``first_stage_model.``-prefixed) -> diffusers names."""
    prefixed = {k if k.startswith(LDM_PREFIX) else LDM_PREFIX + k: v for k, v in state_dict.items()}
    return convert_ldm_vae_checkpoint(prefixed, vae_config(config))


# diffusers name (relative to encoder./decoder.) -> LDM name; {n} and {m} are indices.
_RESNET_PARTS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_ATTN_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_BLOCK = re.compile(
    r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)\.(.+)"
)
_MID_RESNET = re.compile(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.(weight|bias)")
_MID_ATTN = re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)")
_TOP = {"conv_norm_out": "norm_out"}


def diffusers_to_ldm_vae(state_dict: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` tensors -> LDM names (no prefix), the inverse of
    diffusers' ``convert_ldm_vae_checkpoint``: decoder blocks are numbered bottom-up in LDM,
    and the mid attention's linear weights become 1x1 convolutions again.

    Raises:
        KeyError: a key this map does not know (a VAE layout other than SD's).
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if match := _BLOCK.fullmatch(key):
            coder, _, block, part, resnet, rest = match.groups()
            ldm_block = int(block) if coder == "encoder" else levels - 1 - int(block)
            side = "down" if coder == "encoder" else "up"
            if resnet is not None:
                layer, param = rest.rsplit(".", 1)
                new = f"{coder}.{side}.{ldm_block}.block.{resnet}.{_RESNET_PARTS[layer]}.{param}"
            else:
                new = f"{coder}.{side}.{ldm_block}.{'downsample' if side == 'down' else 'upsample'}.{rest}"
        elif match := _MID_RESNET.fullmatch(key):
            coder, index, layer, param = match.groups()
            new = f"{coder}.mid.block_{int(index) + 1}.{_RESNET_PARTS[layer]}.{param}"
        elif match := _MID_ATTN.fullmatch(key):
            coder, layer, param = match.groups()
            new = f"{coder}.mid.attn_1.{_ATTN_PARTS[layer]}.{param}"
            if param == "weight" and tensor.ndim == 2:  # linear -> 1x1 conv
                tensor = tensor[:, :, None, None]
        elif key.split(".")[0] in ("quant_conv", "post_quant_conv"):
            new = key
        else:
            coder, layer, param = key.split(".")
            if layer not in ("conv_in", "conv_out", "conv_norm_out"):
                raise KeyError(f"no LDM name for VAE key {key!r}")
            new = f"{coder}.{_TOP.get(layer, layer)}.{param}"
        out[new] = tensor
    return out


def load_vae_weights(vae: AutoencoderKL, path: str | os.PathLike, config: DynamiCrafterConfig) -> None:
    """Load SD VAE weights: a diffusers ``AutoencoderKL`` folder, or one LDM-layout file
    (``.safetensors`` or a weights-only torch pickle, keys bare or ``first_stage_model.``-
    prefixed; a Lightning ``state_dict`` wrapper is unwrapped).

    Raises:
        RuntimeError: missing, unexpected or mis-shaped keys.
    """
    path = Path(path)
    if path.is_dir():
        state = AutoencoderKL.from_pretrained(path).state_dict()
    else:
        raw = load_weights_file(path)
        raw = raw.get("state_dict", raw)
        ldm = {k: v for k, v in raw.items() if k.startswith(LDM_PREFIX)} or raw
        state = ldm_to_diffusers_vae(ldm, config)
    vae.load_state_dict(state, strict=True)
