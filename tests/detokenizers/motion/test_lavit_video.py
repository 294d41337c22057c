"""Our Video-LaVIT video de-tokenizer against LaVIT's own code (tests/fixtures/lavit, written by
tools/lavit_detok_fixture.py from jy0205/LaVIT): the released configuration's UNet, condition
encoder and video_3d_unet.bin key/shape tables on the meta device, strict loads that name what
does not fit, one denoising step of a tiny model equal to LaVIT's (its guidance schedule
included), our save_pretrained folder in the release's layout read back, and decode's clips."""

from __future__ import annotations

import gzip
import json

import av
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from divot_llm.config import compose_config
from divot_llm.data.media_out import write_mp4
from divot_llm.detokenizers.motion.lavit import LaVITVideoDetokenizer, guidance_scales
from divot_llm.detokenizers.motion.lavit_config import LaVITVideoDetokenizerConfig
from divot_llm.detokenizers.motion.registry import build_motion_detokenizer, load_motion_detokenizer
from tests import helpers

FIXTURES = helpers.REPO_ROOT / "tests" / "fixtures" / "lavit"
fixture_tool = helpers.load_tool("tools/lavit_detok_fixture.py")


@pytest.fixture(scope="module")
def tiny():
    """The fixture's tiny de-tokenizer (its weights redrawn by the tool's rule) and the
    fixture's tensors."""
    path = FIXTURES / "tiny_detok.safetensors"
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    model = LaVITVideoDetokenizer(LaVITVideoDetokenizerConfig(**json.loads(metadata["tiny"])))
    fixture_tool.redraw_weights(model, fixture_tool.WEIGHT_SEED)
    return model.eval(), load_file(path)


def test_release_config_has_lavits_key_tables():
    with gzip.open(FIXTURES / "detok_key_table.json.gz", "rt") as file:
        tables = json.load(file)
    cfg = compose_config(["motion_detokenizer=lavit"]).motion_detokenizer
    with torch.device("meta"):
        model = LaVITVideoDetokenizer(cfg)
    for part in ("unet", "motion_encoder"):
        ours = {key: list(value.shape) for key, value in getattr(model, part).state_dict().items()}
        assert ours == tables[part], part
    whole = {
        key: list(value.shape) for key, value in model.state_dict().items() if not key.startswith("vae.")
    }
    assert whole == tables["video_3d_unet"]
    # the released file's 3.15 GB of bf16: the UNet and the condition encoder, nothing else
    count = sum(torch.Size(shape).numel() for shape in tables["video_3d_unet"].values())
    assert 3.1e9 < 2 * count < 3.2e9
    assert sum(value.numel() for value in model.motion_encoder.state_dict().values()) == pytest.approx(
        51.1e6, rel=2e-3
    )


def test_one_denoising_step_equals_lavits(tiny):
    """LaVIT's reconstruct_from_token, 1 Euler step, guidance 1 -> 4 over the 12 frames, on
    our saved folder; ours from the same seed draws the same noise in the same order."""
    model, fixture = tiny
    generator = torch.Generator().manual_seed(fixture_tool.SAMPLE_SEED)
    latents = model.sample_latents(fixture["keyframe"], fixture["condition"], 1, 1.0, 4.0, generator)
    expected = fixture["latents"]
    # the first latents are N(0, 700^2) (SVD's sigma_max): fp32 rounding of the step leaves ~1e-4
    assert torch.allclose(latents, expected, atol=5e-4, rtol=0), (latents - expected).abs().max()
    flat = model.sample_latents(
        fixture["keyframe"], fixture["condition"], 1, 4.0, 4.0, torch.Generator().manual_seed(3)
    )
    assert torch.allclose(flat[:, -1], expected[:, -1], atol=5e-4)  # the last frame's scale is 4 in both
    assert not torch.allclose(flat[:, 0], expected[:, 0], atol=1e-2)  # frame 0's is 1, not 4


def test_guidance_rises_linearly_over_the_frames():
    scales = guidance_scales(2, 4, 1.0, 4.0)
    assert scales.shape == (2, 4, 1, 1, 1)
    assert scales[:, :, 0, 0, 0].tolist() == [[1.0, 2.0, 3.0, 4.0]] * 2


def test_release_layout_round_trip_and_strict_loads(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "motion_detokenizer_config.json", "scheduler", "unet", "vae"
    ]  # fmt: skip
    loaded = load_motion_detokenizer(tmp_path / "ours")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    # video_3d_unet.bin: unet.* + motion_encoder.*, over a random model of the same config
    bin_state = {k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}
    torch.save(bin_state, tmp_path / "video_3d_unet.bin")
    over = LaVITVideoDetokenizer.from_config(
        LaVITVideoDetokenizerConfig(**{**loaded.config.__dict__, "pretrained_path": None,
                                       "unet_weights": str(tmp_path / "video_3d_unet.bin")})
    )  # fmt: skip
    assert torch.equal(over.unet.conv_in.weight, model.unet.conv_in.weight)
    assert torch.equal(over.motion_encoder.pos_embed, model.motion_encoder.pos_embed)

    del bin_state["motion_encoder.pos_embed"]
    bin_state["unet.extra"] = torch.zeros(1)
    bin_state["unet.conv_in.weight"] = torch.zeros(1, 1)
    torch.save(bin_state, tmp_path / "bad.bin")
    bad = LaVITVideoDetokenizerConfig(**{**loaded.config.__dict__, "pretrained_path": None,
                                         "unet_weights": str(tmp_path / "bad.bin")})  # fmt: skip
    with pytest.raises(ValueError, match=r"1 missing keys: motion_encoder.pos_embed; 1 unexpected keys: unet.extra; "
                                         r"1 other shapes: unet.conv_in.weight \(1, 1\)"):  # fmt: skip
        LaVITVideoDetokenizer.from_config(bad)


def test_decode_gives_clips_in_range_that_encode_to_mp4(tmp_path):
    cfg = compose_config(["motion_detokenizer=lavit_tiny"]).motion_detokenizer
    torch.manual_seed(0)
    model = build_motion_detokenizer(cfg).eval()
    keyframe = torch.rand(2, 3, 32, 32) * 2 - 1
    motion = torch.randn(2, 2, 12, 10, 18)  # any field size: resized to the latent grid inside
    clips = model.decode(keyframe, motion, steps=2, seed=1)
    assert clips.shape == (2, 12, 3, 32, 32) and clips.min() >= -1 and clips.max() <= 1
    assert torch.equal(clips, model.decode(keyframe, motion, steps=2, seed=1))  # seeded
    path = write_mp4(tmp_path / "clip.mp4", clips[0], fps=6)
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12
    with pytest.raises(ValueError, match="F=12"):
        model.decode(keyframe, motion[:, :, :8])


def test_image_detokenizer_decodes_embeddings_and_round_trips(tmp_path):
    """The keyframe de-tokenizer (tiny, random) on random decode_embeds-shaped inputs; its
    save_pretrained folder is the release's image_detokenizer/ layout and loads back."""
    from divot_llm.detokenizers.motion.image import LaVITImageDetokenizer

    model = LaVITImageDetokenizer.random(context_dim=16, pooled_dim=8)
    generator = torch.Generator().manual_seed(0)
    context, pooled = torch.randn(2, 5, 16, generator=generator), torch.randn(2, 8, generator=generator)
    images = model.decode(context, pooled, height=32, width=32, steps=2, seed=1)
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    model.save_pretrained(tmp_path / "image_detokenizer")
    assert sorted(p.name for p in (tmp_path / "image_detokenizer").iterdir()) == ["scheduler", "unet", "vae"]
    loaded = LaVITImageDetokenizer.from_pretrained(tmp_path / "image_detokenizer")
    assert type(loaded.scheduler) is type(model.scheduler)
    assert torch.equal(loaded.decode(context, pooled, height=32, width=32, steps=2, seed=1), images)
    # the condition matters: another context, another image
    assert not torch.allclose(
        model.decode(context.flip(0), pooled, height=32, width=32, steps=2, seed=1), images
    )
