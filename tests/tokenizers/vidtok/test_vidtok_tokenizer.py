"""VidTok behind the tokenizer interface: frame rules, weights files (a Lightning .ckpt as
released, our save_pretrained folder), long videos in chunks, FSQ indices, training outputs."""

from __future__ import annotations

import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.tokenizers.base import LatentVideoTokenizer
from divot_llm.tokenizers.registry import load_video_tokenizer
from divot_llm.tokenizers.vidtok import VidTokAutoencoder, VidTokTokenizer, load_vidtok_weights


@pytest.fixture(scope="module")
def tiny_kl(vidtok_tiny_config):
    return build_video_tokenizer(vidtok_tiny_config)


@pytest.fixture(scope="module")
def tiny_fsq(vidtok_tiny_fsq_config):
    return build_video_tokenizer(vidtok_tiny_fsq_config)


def frames(num_frames: int, size: int = 32, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, num_frames, 3, size, size) * 2 - 1


def test_tiny_tokenizer_shapes_and_metadata(tiny_kl, tiny_fsq):
    assert isinstance(tiny_kl, VidTokTokenizer) and isinstance(tiny_kl, LatentVideoTokenizer)
    meta = (tiny_kl.temporal_factor, tiny_kl.spatial_factor, tiny_kl.latent_channels, tiny_kl.is_causal)
    assert meta == (4, 8, 4, True)
    assert (tiny_kl.levels, tiny_kl.codebook_size) == (None, None)
    assert (tiny_fsq.levels, tiny_fsq.codebook_size) == ([8, 8, 8, 8], 4096)
    clip = frames(17, batch=2)
    assert tiny_kl.encode(clip).shape == (2, tiny_kl.num_tokens, tiny_kl.feature_dim) == (2, 5 * 4 * 4, 4)
    latents = tiny_kl.encode_latents(clip)
    assert latents.shape == (2, 4, 5, 4, 4) and not latents.requires_grad
    assert torch.equal(tiny_kl.encode_latents(clip), latents)  # frozen use: the posterior's mode
    assert tiny_kl.decode_latents(latents).shape == clip.shape
    with pytest.raises(ValueError, match="KL .* no discrete indices"):
        tiny_kl.encode_indices(clip)


def test_fsq_indices_round_trip_through_the_codes(tiny_fsq):
    clip = frames(17)
    indices = tiny_fsq.encode_indices(clip)
    assert indices.shape == (1, 5, 4, 4) and indices.dtype == torch.int64
    assert int(indices.min()) >= 0 and int(indices.max()) < 4096
    assert torch.equal(
        tiny_fsq.decode_indices(indices), tiny_fsq.decode_latents(tiny_fsq.encode_latents(clip))
    )


@pytest.mark.parametrize("num_frames", [16, 18, 0])
def test_causal_frame_rule_errors_name_the_rule(tiny_kl, num_frames):
    with pytest.raises(ValueError, match=rf"{num_frames} frames: a causal VidTok v1.0 model takes 1 \+ k\*4"):
        tiny_kl.encode_latents(frames(num_frames))


def test_noncausal_frame_rule_and_frame_size_errors():
    config = compose_config(
        ["video_tokenizer=vidtok_tiny", "video_tokenizer.causal=false", "video_tokenizer.frames_per_clip=16"]
    ).video_tokenizer
    model = VidTokAutoencoder(config)
    with pytest.raises(ValueError, match="17 frames: a non-causal VidTok model takes a multiple of 4"):
        model.check_num_frames(17)
    model.check_num_frames(16)
    with pytest.raises(ValueError, match="frame size 30x32 must be a multiple of the spatial factor 8"):
        model.encode(torch.zeros(1, 3, 16, 30, 32))


def test_reconstruct_any_length_and_size_in_chunks(tiny_kl):
    """A "10-second" video (80 frames at 8 fps) of an odd size: five 17-frame chunks, the
    last padded, all cropped back; each chunk is what a direct round trip gives."""
    video = frames(80, size=30)
    out = tiny_kl.reconstruct(video)
    assert out.shape == video.shape
    padded = torch.nn.functional.pad(video[:, :17].transpose(1, 2), (0, 2, 0, 2, 0, 0), mode="replicate")
    direct = tiny_kl.decode_latents(tiny_kl.encode_latents(padded.transpose(1, 2)))[..., :30, :30]
    torch.testing.assert_close(out[:, :17], direct)


def test_release_style_lightning_ckpt_loads_strictly(tiny_kl, tmp_path):
    """A .ckpt as Lightning saves VidTok: state_dict with encoder./decoder. plus the loss's
    keys (LPIPS, discriminator, logvar) and other entries; only the autoencoder is read."""
    source = VidTokAutoencoder(tiny_kl.config)
    state = {k: v for k, v in source.state_dict().items()}
    state |= {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}
    torch.save({"state_dict": state, "global_step": 7, "epoch": 0}, tmp_path / "vidtok.ckpt")
    target = VidTokAutoencoder(tiny_kl.config)
    load_vidtok_weights(target, tmp_path / "vidtok.ckpt")
    loaded = target.state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in source.state_dict().items())
    del state["decoder.conv_out.conv.bias"]
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match="(?s)does not fit the VidTok config.*decoder.conv_out.conv.bias"):
        load_vidtok_weights(target, tmp_path / "broken.ckpt")


def test_save_pretrained_round_trip(tiny_fsq, tmp_path):
    tiny_fsq.save_pretrained(tmp_path / "tok")
    loaded = load_video_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, VidTokTokenizer) and loaded.config.name == "vidtok_tiny_fsq"
    clip = frames(17)
    assert torch.equal(loaded.encode_indices(clip), tiny_fsq.encode_indices(clip))
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "tok" / "model.safetensors").keys()
    assert all(key.startswith(("encoder.", "decoder.")) for key in keys)  # upstream's names


def test_training_pass_gives_losses_with_gradients(tiny_fsq):
    model = VidTokAutoencoder(tiny_fsq.config)
    video = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    rec, z, log = model(video, step=0)
    assert rec.shape == video.shape and z.shape == (1, 4, 5, 4, 4)
    (rec.abs().mean() + log["aux_loss"]).backward()
    assert model.last_layer.grad is not None and model.encoder.conv_in.conv.weight.grad.abs().sum() > 0
    # the entropy weight anneals from 3x to 1x over the first steps
    fsq = model.regularizer
    assert fsq.entropy_weight(0) == pytest.approx(0.3) and fsq.entropy_weight(2000) == pytest.approx(0.1)


def test_kl_training_samples_and_reports_kl(tiny_kl):
    model = VidTokAutoencoder(tiny_kl.config)
    video = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    z_a, log = model.encode(video, sample=True)
    z_b, _ = model.encode(video, sample=True)
    assert not torch.equal(z_a, z_b) and log["kl_loss"].item() > 0
    assert torch.equal(model.encode(video)[0], model.encode(video)[0])
