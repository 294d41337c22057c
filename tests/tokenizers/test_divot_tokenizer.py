"""The Divot tokenizer: release weights layout, save/load, frozen behaviour, input checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.tokenizers.divot import DivotTokenizer
from divot_llm.tokenizers.divot_config import DivotTokenizerConfig
from tests.tokenizers import tiny
from tests.tokenizers.test_clip_vision import to_openclip_names


def release_key_shapes() -> dict[str, tuple[int, ...]]:
    """``Divot_tokenizer.bin`` without the ViT: every key and shape of reference §9.1."""
    shapes: dict[str, tuple[int, ...]] = {
        "temporal_encoder.input_proj.weight": (768, 1280),
        "temporal_encoder.input_proj.bias": (768,),
        "temporal_encoder.positional_embedding": (5, 768),
        "temporal_encoder.ln_final.weight": (768,),
        "temporal_encoder.ln_final.bias": (768,),
        "temporal_encoder.output_proj.weight": (1024, 768),
        "temporal_encoder.output_proj.bias": (1024,),
        "norm.weight": (1024,),
        "norm.bias": (1024,),
        "image_proj_model.pos_embed_spatial": (25, 1024),
        "image_proj_model.pos_embed_temporal": (5, 1024),
        "image_proj_model.norm.weight": (1024,),
        "image_proj_model.norm.bias": (1024,),
        "image_proj_model.down_sampler.latents": (1, 64, 1024),
        "image_proj_model.down_sampler.proj_in.weight": (1024, 1024),
        "image_proj_model.down_sampler.proj_in.bias": (1024,),
        "image_proj_model.down_sampler.proj_out.weight": (256, 1024),
        "image_proj_model.down_sampler.proj_out.bias": (256,),
        "image_proj_model.down_sampler.norm_out.weight": (256,),
        "image_proj_model.down_sampler.norm_out.bias": (256,),
    }
    for i in range(6):
        pre = f"temporal_encoder.transformer.resblocks.{i}."
        shapes |= {
            pre + "attn.in_proj_weight": (2304, 768),
            pre + "attn.in_proj_bias": (2304,),
            pre + "attn.out_proj.weight": (768, 768),
            pre + "attn.out_proj.bias": (768,),
            pre + "ln_1.weight": (768,),
            pre + "ln_1.bias": (768,),
            pre + "ln_2.weight": (768,),
            pre + "ln_2.bias": (768,),
            pre + "mlp.c_fc.weight": (3072, 768),
            pre + "mlp.c_fc.bias": (3072,),
            pre + "mlp.c_proj.weight": (768, 3072),
            pre + "mlp.c_proj.bias": (768,),
        }
    for i in range(4):
        pre = f"image_proj_model.blocks.{i}."
        shapes |= {
            pre + "norm1.weight": (1024,),
            pre + "norm1.bias": (1024,),
            pre + "norm2.weight": (1024,),
            pre + "norm2.bias": (1024,),
            pre + "attn.qkv.weight": (3072, 1024),
            pre + "attn.qkv.bias": (3072,),
            pre + "attn.proj.weight": (1024, 1024),
            pre + "attn.proj.bias": (1024,),
            pre + "mlp.fc1.weight": (4096, 1024),
            pre + "mlp.fc1.bias": (4096,),
            pre + "mlp.fc2.weight": (1024, 4096),
            pre + "mlp.fc2.bias": (1024,),
        }
    for i in range(6):
        pre = f"image_proj_model.down_sampler.layers.{i}."
        shapes |= {
            pre + "0.norm1.weight": (1024,),
            pre + "0.norm1.bias": (1024,),
            pre + "0.norm2.weight": (1024,),
            pre + "0.norm2.bias": (1024,),
            pre + "0.to_q.weight": (1024, 1024),
            pre + "0.to_kv.weight": (2048, 1024),
            pre + "0.to_out.weight": (1024, 1024),
            pre + "1.0.weight": (1024,),
            pre + "1.0.bias": (1024,),
            pre + "1.1.weight": (4096, 1024),
            pre + "1.3.weight": (1024, 4096),
        }
    return shapes


def test_release_state_dict_loads_strictly_into_real_shape_tokenizer_on_meta():
    shapes = release_key_shapes()
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 171_635_968  # reference §3, measured
    release = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    # The reference's checkpoint may also hold its ViT wrapper; those keys are skipped.
    release["vit_model.model.visual.conv1.weight"] = torch.empty(1280, 3, 14, 14, device="meta")

    with torch.device("meta"):
        tokenizer = DivotTokenizer(DivotTokenizerConfig())
    tokenizer.encoder.load_release_state_dict(release)  # strict: raises on any difference

    assert {k: tuple(v.shape) for k, v in tokenizer.encoder.state_dict().items()} == shapes
    assert (tokenizer.num_tokens, tokenizer.feature_dim, tokenizer.frames_per_clip) == (64, 256, 5)
    assert tokenizer.vit.grid == 16 and tokenizer.vit.width == 1280


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("norm.weight"), "Missing key.*norm.weight"),
        (lambda sd: sd.update(extra=torch.empty(1, device="meta")), "Unexpected key.*extra"),
        (lambda sd: sd.update({"norm.bias": torch.empty(512, device="meta")}), "size mismatch for norm.bias"),
    ],
)
def test_release_state_dict_that_differs_is_rejected(change, message):
    release = {k: torch.empty(s, device="meta") for k, s in release_key_shapes().items()}
    change(release)
    with torch.device("meta"):
        tokenizer = DivotTokenizer(DivotTokenizerConfig())
    with pytest.raises(RuntimeError, match=message):
        tokenizer.encoder.load_release_state_dict(release)


def test_save_then_from_pretrained_gives_identical_features(tiny_tokenizer, tiny_config, tmp_path):
    clips = tiny.random_clips(tiny_config)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = DivotTokenizer.from_pretrained(tmp_path / "tok")
    assert dataclasses.replace(reloaded.config, pretrained_path=None, vit_path=None) == tiny_config
    assert torch.equal(reloaded.encode(clips), tiny_tokenizer.encode(clips))


def test_release_files_load_through_the_config(tiny_tokenizer, tiny_config, tmp_path):
    """The reference's file formats: a torch-pickled Divot_tokenizer.bin (with vit_model.*
    keys) plus an open_clip checkpoint for the ViT, both named in the config."""
    release = dict(tiny_tokenizer.encoder.state_dict())
    release["vit_model.model.visual.proj"] = torch.zeros(32, 16)
    torch.save(release, tmp_path / "Divot_tokenizer.bin")
    torch.save(
        to_openclip_names(tiny_tokenizer.vit.model.state_dict()), tmp_path / "open_clip_pytorch_model.bin"
    )
    config = dataclasses.replace(
        tiny_config,
        pretrained_path=str(tmp_path / "Divot_tokenizer.bin"),
        vit_path=str(tmp_path / "open_clip_pytorch_model.bin"),
    )
    clips = tiny.random_clips(tiny_config)
    torch.testing.assert_close(
        build_video_tokenizer(config).encode(clips), tiny_tokenizer.encode(clips), atol=1e-6, rtol=1e-6
    )


def test_release_file_for_another_shape_is_a_clear_error(tiny_tokenizer, tiny_config, tmp_path):
    torch.save(tiny_tokenizer.encoder.state_dict(), tmp_path / "Divot_tokenizer.bin")
    config = dataclasses.replace(
        tiny_config, num_tokens=4, pretrained_path=str(tmp_path / "Divot_tokenizer.bin")
    )
    with pytest.raises(ValueError, match="(?s)does not fit the tokenizer config.*latents"):
        build_video_tokenizer(config)


def test_features_have_the_configured_shape_and_differ_between_clips(tiny_tokenizer, tiny_config):
    clips = tiny.random_clips(tiny_config, batch=3)
    feats = tiny_tokenizer.encode(clips)
    assert feats.shape == (3, tiny_config.num_tokens, tiny_config.feature_dim)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert (feats[i] - feats[j]).abs().max() > 1e-2
    # Each clip is encoded independently of the others in its batch.
    torch.testing.assert_close(tiny_tokenizer.encode(clips[1:2])[0], feats[1], atol=1e-5, rtol=1e-5)


def test_frame_order_matters(tiny_tokenizer, tiny_config):
    clips = tiny.random_clips(tiny_config, batch=1)
    reversed_clips = clips.flip(dims=[1])
    assert (tiny_tokenizer.encode(clips) - tiny_tokenizer.encode(reversed_clips)).abs().max() > 1e-2


def test_a_still_runs_the_vit_on_one_frame_and_gives_the_five_frame_features(tiny_tokenizer, tiny_config):
    """An image sampled as a clip (5 identical frames) beside a video: the ViT sees the
    video's 5 frames and the still's first only, and the features equal those of every
    frame through the ViT (the ViT sees frames one by one)."""
    still, video = tiny.random_clips(tiny_config, batch=2)
    clips = torch.stack([still[:1].expand_as(still), video])
    vit_frames: list[int] = []
    hook = tiny_tokenizer.vit.register_forward_hook(lambda m, args, out: vit_frames.append(args[0].shape[0]))
    feats = tiny_tokenizer.encode(clips)
    hook.remove()
    assert vit_frames == [1 + tiny_config.frames_per_clip]
    with torch.no_grad():  # the 5-frame path, as the tokenizer ran before stills were told apart
        patches_mpc = tiny_tokenizer.vit(clips.flatten(0, 1))
        every_frame = tiny_tokenizer.encoder(patches_mpc.unflatten(0, clips.shape[:2]))
    torch.testing.assert_close(feats, every_frame, atol=1e-5, rtol=1e-5)


def test_built_for_cached_features_it_has_no_vit_and_the_same_other_weights(tiny_config):
    torch.manual_seed(7)
    whole = build_video_tokenizer(tiny_config)
    after = torch.randn(3)  # the RNG stream after the whole build
    torch.manual_seed(7)
    no_vit = build_video_tokenizer(tiny_config, cached_features=True)
    assert no_vit.vit is None and no_vit.frame_encoder is None
    assert not any(name.startswith("vit.") for name in no_vit.state_dict())
    own = {k: v for k, v in whole.state_dict().items() if not k.startswith("vit.")}
    assert own.keys() == no_vit.state_dict().keys()
    assert all(torch.equal(v, no_vit.state_dict()[k]) for k, v in own.items())
    # whatever is built next (the LLM) draws what it would after the whole tokenizer
    torch.testing.assert_close(torch.randn(3), after, rtol=0, atol=0)
    assert (no_vit.num_tokens, no_vit.feature_dim) == (tiny_config.num_tokens, tiny_config.feature_dim)
    with pytest.raises(RuntimeError, match="without its ViT"):
        no_vit.encode(tiny.random_clips(tiny_config))


def test_no_parameter_gets_a_gradient_in_a_training_step(tiny_tokenizer, tiny_config):
    class Student(nn.Module):
        """A trainable head over the tokenizer's features, the tokenizer as a submodule."""

        def __init__(self, tokenizer: DivotTokenizer) -> None:
            super().__init__()
            self.tokenizer = tokenizer
            self.head = nn.Linear(tokenizer.feature_dim, 1)

        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            return self.head(self.tokenizer.encode(frames)).pow(2).mean()

    student = Student(tiny_tokenizer).train()
    assert not tiny_tokenizer.training and not any(m.training for m in tiny_tokenizer.modules())
    before = {k: v.clone() for k, v in tiny_tokenizer.state_dict().items()}
    trainable = [p for p in student.parameters() if p.requires_grad]
    assert trainable == list(student.head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=0.1, weight_decay=0.05)

    loss = student(tiny.random_clips(tiny_config))
    loss.backward()
    optimizer.step()

    assert student.head.weight.grad is not None
    assert all(p.grad is None for p in tiny_tokenizer.parameters())
    assert all(torch.equal(v, before[k]) for k, v in tiny_tokenizer.state_dict().items())

    # Even with requires_grad switched back on by mistake, encode builds no graph.
    tiny_tokenizer.requires_grad_(True)
    assert not tiny_tokenizer.encode(tiny.random_clips(tiny_config)).requires_grad


def test_dtype_is_the_callers_choice(tiny_tokenizer, tiny_config):
    clips = tiny.random_clips(tiny_config)
    reference = tiny_tokenizer.encode(clips)
    tiny_tokenizer.to(torch.bfloat16)
    feats = tiny_tokenizer.encode(clips)  # fp32 frames are accepted
    assert feats.dtype == torch.bfloat16
    torch.testing.assert_close(feats.float(), reference, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    "frames, message",
    [
        (torch.zeros(2, 4, 3, 64, 64), "expected 5 frames per clip, got 4"),
        (torch.zeros(2, 5, 64, 64, 3), r"got shape \(2, 5, 64, 64, 3\) \(channels-last"),
        (torch.zeros(10, 3, 64, 64), r"expected \(B, F=5, 3, H, W\).*got shape \(10, 3, 64, 64\)"),
        (torch.zeros(2, 5, 3, 64, 64, dtype=torch.uint8), "got dtype torch.uint8"),
    ],
)
def test_badly_shaped_input_is_a_clear_error(tiny_tokenizer, frames, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.encode(frames)


def test_config_with_indivisible_widths_is_rejected(tiny_config):
    with pytest.raises(ValueError, match="temporal_width=30 is not divisible by temporal_heads=4"):
        DivotTokenizer(dataclasses.replace(tiny_config, temporal_width=30, temporal_heads=4))
