"""The CLIP ViT tower: loading from HF folders and open_clip checkpoints, patch-token output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel

from divot_llm.tokenizers.clip_vision import ClipVisionTower, load_clip_vision, openclip_to_hf_vision
from divot_llm.tokenizers.preprocess import clip_preprocess
from tests.tokenizers import tiny

LAYERS, HEADS, PATCH = 2, 2, 14


def to_openclip_names(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full open_clip CLIP checkpoint around the given HF vision weights: ``visual.*``
    in open_clip's names (fused q/k/v), plus text-tower keys and ``visual.proj``."""
    width = hf["pre_layrnorm.weight"].shape[0]
    sd = {
        "visual.class_embedding": hf["embeddings.class_embedding"],
        "visual.positional_embedding": hf["embeddings.position_embedding.weight"],
        "visual.conv1.weight": hf["embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": hf["pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["post_layernorm.weight"],
        "visual.ln_post.bias": hf["post_layernorm.bias"],
        "visual.proj": torch.randn(width, 16),
        # text tower and the rest of CLIP: must be ignored
        "positional_embedding": torch.randn(16, width),
        "token_embedding.weight": torch.randn(100, width),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(3 * width, width),
        "ln_final.weight": torch.ones(width),
        "text_projection": torch.randn(width, 16),
        "logit_scale": torch.tensor(4.6),
    }
    for i in range(LAYERS):
        hf_pre, oc_pre = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            sd[oc_pre + f"attn.in_proj_{kind}"] = torch.cat(
                [hf[hf_pre + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            sd[oc_pre + f"attn.out_proj.{kind}"] = hf[hf_pre + f"self_attn.out_proj.{kind}"]
            sd[oc_pre + f"ln_1.{kind}"] = hf[hf_pre + f"layer_norm1.{kind}"]
            sd[oc_pre + f"ln_2.{kind}"] = hf[hf_pre + f"layer_norm2.{kind}"]
            sd[oc_pre + f"mlp.c_fc.{kind}"] = hf[hf_pre + f"mlp.fc1.{kind}"]
            sd[oc_pre + f"mlp.c_proj.{kind}"] = hf[hf_pre + f"mlp.fc2.{kind}"]
    return sd


def openclip_visual_tokens(sd: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """open_clip's VisionTransformer up to the last block (no ln_post / proj), written from
    the open_clip names with torch's own nn.MultiheadAttention: the reference computation."""
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    width = x.shape[-1]

    def ln(t, name):
        return F.layer_norm(t, (width,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    x = ln(x, "visual.ln_pre")
    for i in range(LAYERS):
        pre = f"visual.transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(width, HEADS, batch_first=True)
        mha.load_state_dict({k[len(pre) + 5:]: v for k, v in sd.items() if k.startswith(pre + "attn.")})
        h = ln(x, pre + "ln_1")
        x = x + mha(h, h, h, need_weights=False)[0]
        h = ln(x, pre + "ln_2")
        h = F.linear(F.gelu(F.linear(h, sd[pre + "mlp.c_fc.weight"], sd[pre + "mlp.c_fc.bias"])),
                     sd[pre + "mlp.c_proj.weight"], sd[pre + "mlp.c_proj.bias"])
        x = x + h
    return x


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_openclip_checkpoint_gives_same_vit_output_as_hf_names(tmp_path, suffix):
    source = tiny.vision_model(seed=1)
    openclip_sd = to_openclip_names(source.state_dict())
    path = tmp_path / f"open_clip_pytorch_model{suffix}"
    if suffix == ".bin":
        torch.save(openclip_sd, path)
    else:
        save_file({k: v.contiguous() for k, v in openclip_sd.items()}, path)

    loaded = load_clip_vision(path, tiny.vision_config())
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        got = loaded(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(got, source(pixel_values=pixels).last_hidden_state, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got, openclip_visual_tokens(openclip_sd, pixels), atol=1e-5, rtol=1e-5)


def test_openclip_mapping_rejects_unknown_visual_keys_and_empty_checkpoints():
    sd = to_openclip_names(tiny.vision_model().state_dict())
    with pytest.raises(ValueError, match="ls_1.gamma"):
        openclip_to_hf_vision(sd | {"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)})
    with pytest.raises(ValueError, match="no open_clip 'visual"):
        openclip_to_hf_vision({"token_embedding.weight": torch.zeros(3, 3)})


def test_openclip_checkpoint_with_missing_weights_is_an_error(tmp_path):
    sd = to_openclip_names(tiny.vision_model().state_dict())
    del sd["visual.ln_pre.weight"]
    torch.save(sd, tmp_path / "ckpt.bin")
    with pytest.raises(ValueError, match="pre_layrnorm.weight"):
        load_clip_vision(tmp_path / "ckpt.bin", tiny.vision_config())


def test_vision_tower_loads_from_full_clip_model_folder(tmp_path):
    # Like laion/CLIP-ViT-H-14-laion2B-s32B-b79K: a CLIPModel folder, text tower included.
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    clip = CLIPModel(CLIPConfig(vision_config=tiny.vision_config().to_dict(), text_config=text, projection_dim=16))
    clip.save_pretrained(tmp_path)
    loaded = load_clip_vision(tmp_path, tiny.vision_config())
    expected = clip.vision_model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
    assert loaded.config._attn_implementation == "sdpa"


def test_folder_with_another_architecture_is_rejected(tmp_path):
    tiny.vision_model(hidden_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_size: folder 64 != config 32"):
        load_clip_vision(tmp_path, tiny.vision_config())


def test_tower_returns_last_block_patch_tokens_without_cls_or_post_norm():
    model = tiny.vision_model(seed=2)
    openclip_sd = to_openclip_names(model.state_dict())
    frames = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        tokens = ClipVisionTower(model)(frames)
    assert tokens.shape == (4, 16, 32)  # (56 / 14)^2 patches, width 32
    reference = openclip_visual_tokens(openclip_sd, clip_preprocess(frames, 56))[:, 1:]
    torch.testing.assert_close(tokens, reference, atol=1e-5, rtol=1e-5)
