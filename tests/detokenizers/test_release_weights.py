"""The release checkpoint layout: key names and shapes, strict loading, the LDM VAE layout,
and save/load round trips through real files."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from divot_llm.detokenizers import build_video_detokenizer
from divot_llm.detokenizers.dynamicrafter import WEIGHTS_FILE, DynamiCrafterDetokenizer
from divot_llm.detokenizers.dynamicrafter_config import DynamiCrafterConfig
from divot_llm.detokenizers.vae import diffusers_to_ldm_vae, ldm_to_diffusers_vae
from tests.detokenizers.release_keys import (
    release_key_shapes,
    resampler_key_shapes,
    unet_key_shapes,
    vae_key_shapes,
)


def numel(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def meta_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def real_shape_detokenizer() -> DynamiCrafterDetokenizer:
    """The released architecture (1.6 B parameters) built on the meta device: no memory."""
    with torch.device("meta"):
        return DynamiCrafterDetokenizer(DynamiCrafterConfig(pretrained_path=None))


def test_key_table_matches_the_documented_counts():
    unet = unet_key_shapes()
    assert len(unet) == 1532  # DynamiCrafter-256 model.ckpt UNet tensors (seed-systems.md d.2)
    assert round(numel(unet) / 1e9, 2) == 1.44  # seed-systems.md d.1 (in 4 vs 8 channels: -11,520)
    assert numel(resampler_key_shapes()) == 76_977_152  # reference §4.4
    assert numel(vae_key_shapes()) == 83_653_863  # SD-1.x KL-f8


def test_release_state_dict_loads_strictly_into_the_real_shape_module(real_shape_detokenizer):
    expected = release_key_shapes()
    ours = {k: tuple(v.shape) for k, v in real_shape_detokenizer.release_state_dict().items()}
    assert ours == expected  # same names, same shapes, nothing extra (no null features set)
    real_shape_detokenizer.load_release_state_dict(meta_state_dict(expected))  # strict


def test_release_file_extras_are_skipped(real_shape_detokenizer):
    state = meta_state_dict(release_key_shapes())
    # The reference wrapper's DDPM buffers and a possible copy of the tokenizer.
    state |= {
        name: torch.empty(1000, device="meta") for name in ("betas", "alphas_cumprod", "posterior_mean_coef2")
    }
    state["video_tokenizer.temporal_encoder.input_proj.weight"] = torch.empty(768, 1280, device="meta")
    real_shape_detokenizer.load_release_state_dict(state)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda s: s.pop("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"),
            "Missing",
        ),
        (lambda s: s.update({"diffusion_model.extra.weight": torch.empty(1, device="meta")}), "Unexpected"),
        (
            lambda s: s.update({"image_proj_model.latents": torch.empty(1, 64, 1024, device="meta")}),
            "size mismatch",
        ),
        (lambda s: s.pop("first_stage_model.decoder.up.3.block.2.conv2.bias"), "Missing"),
    ],
)
def test_release_loading_is_strict(real_shape_detokenizer, corrupt, message):
    state = meta_state_dict(release_key_shapes())
    corrupt(state)
    with pytest.raises(RuntimeError, match=message):
        real_shape_detokenizer.load_release_state_dict(state)


def test_ldm_vae_layout_round_trips_through_diffusers(tiny_config):
    """LDM tensors -> diffusers' converter -> AutoencoderKL -> our inverse map: the same tensors."""
    shapes = vae_key_shapes(ch=tiny_config.vae_channels, ch_mult=tuple(tiny_config.vae_channel_mult))
    ldm = {k: torch.randn(shape) for k, shape in shapes.items()}
    detok = DynamiCrafterDetokenizer(tiny_config)
    detok.first_stage_model.load_state_dict(ldm_to_diffusers_vae(ldm, tiny_config), strict=True)
    back = diffusers_to_ldm_vae(detok.first_stage_model.state_dict(), len(tiny_config.vae_channel_mult))
    assert back.keys() == ldm.keys()
    for key, tensor in ldm.items():
        assert torch.equal(back[key], tensor), key


def test_save_pretrained_writes_release_names_and_round_trips(tiny_detokenizer, tmp_path):
    tiny_detokenizer.save_pretrained(tmp_path)
    saved = load_file(tmp_path / WEIGHTS_FILE)
    release_names = set(tiny_detokenizer.release_state_dict()) - {"null_features"}
    assert set(saved) == release_names | {"null_features"}
    assert all(
        k.startswith(("diffusion_model.", "first_stage_model.", "image_proj_model.")) for k in release_names
    )

    loaded = DynamiCrafterDetokenizer.from_pretrained(tmp_path)
    assert loaded.config.pretrained_path == str(tmp_path / WEIGHTS_FILE)
    assert dataclasses.replace(loaded.config, pretrained_path=None) == tiny_detokenizer.config
    before, after = tiny_detokenizer.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    features = torch.randn(1, tiny_detokenizer.null_features.shape[0], tiny_detokenizer.feature_dim)
    torch.testing.assert_close(loaded.decode(features, seed=5), tiny_detokenizer.decode(features, seed=5))


def test_pretrained_path_and_vae_path_load_real_files(tiny_config, tiny_detokenizer, tmp_path):
    # A release-layout file without null features (like the released .bin), via the config.
    release = tiny_detokenizer.release_state_dict()
    release.pop("null_features")
    torch.save(release, tmp_path / "stage1.bin")
    detok = build_video_detokenizer(
        dataclasses.replace(tiny_config, pretrained_path=str(tmp_path / "stage1.bin"))
    )
    assert detok.null_features is None
    for key, tensor in tiny_detokenizer.state_dict().items():
        if key != "null_features":
            assert torch.equal(detok.state_dict()[key], tensor), key

    # vae_path: a diffusers folder, or one LDM-layout file with the first_stage_model. prefix.
    vae = tiny_detokenizer.first_stage_model
    vae.save_pretrained(tmp_path / "vae")
    ldm = diffusers_to_ldm_vae(vae.state_dict(), len(tiny_config.vae_channel_mult))
    save_file(
        {f"first_stage_model.{k}": v.contiguous() for k, v in ldm.items()}, tmp_path / "vae.safetensors"
    )
    for path in (tmp_path / "vae", tmp_path / "vae.safetensors"):
        detok = build_video_detokenizer(dataclasses.replace(tiny_config, vae_path=str(path)))
        for key, tensor in vae.state_dict().items():
            assert torch.equal(detok.first_stage_model.state_dict()[key], tensor), (path, key)


def test_a_file_for_another_architecture_is_rejected_with_its_path(tiny_config, tmp_path):
    torch.save({"diffusion_model.out.2.weight": torch.zeros(4, 8, 3, 3)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="other.bin does not fit"):
        build_video_detokenizer(dataclasses.replace(tiny_config, pretrained_path=str(tmp_path / "other.bin")))
