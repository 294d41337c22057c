"""Our conf/video_tokenizer/vidtok_<name>.yaml build exactly the state-dict key/shape tables
of VidTok's own configs (built by its code on the meta device, tools/vidtok_fixtures.py),
so the released checkpoints load strictly. Meta device: no memory, no time. The yaml files
are merged onto the schema directly (a Hydra composition takes ~1 s each; one test below
composes a release config the real way)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from divot_llm.config import ConfigError, compose_config
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.tokenizers.vidtok import VidTokAutoencoder, VidTokConfig
from divot_llm.tokenizers.vidtok.config import latent_frames, spatial_factor
from tests import helpers

CONFIGS = sorted(p.stem for p in (helpers.REPO_ROOT / "conf" / "video_tokenizer").glob("vidtok_*.yaml"))
RELEASED = [name for name in CONFIGS if "tiny" not in name]
# <t><s><s> of a config name -> (temporal factor, spatial factor)
FACTORS = {"488": (4, 8), "41616": (4, 16), "444": (4, 4), "288": (2, 8)}


def release_config(name: str) -> VidTokConfig:
    """conf/video_tokenizer/<name>.yaml on the schema, its weights path (???) set to null."""
    fields = yaml.safe_load((helpers.REPO_ROOT / "conf" / "video_tokenizer" / f"{name}.yaml").read_text())
    assert fields.pop("defaults") == ["schema_vidtok", "_self_"]
    merged = OmegaConf.merge(OmegaConf.structured(VidTokConfig), fields | {"pretrained_path": None})
    return OmegaConf.to_object(merged)


def test_one_config_per_upstream_v1_0_config(key_tables):
    assert RELEASED == sorted(key_tables)
    assert len(RELEASED) == 16  # the seed README's 12 and the 4 VidTok released since


@pytest.mark.parametrize("name", RELEASED)
def test_release_config_has_upstream_keys_and_loads_them_strictly(name, key_tables):
    config = release_config(name)
    with torch.device("meta"):
        model = VidTokAutoencoder(config)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == key_tables[name]
    release = {key: torch.empty(shape, device="meta") for key, shape in key_tables[name].items()}
    model.load_state_dict(release, strict=True, assign=True)
    # the name states the factors and channels: vidtok_<reg>_<causal>_<t><s><s>_<C or codes>
    _, reg, kind, factors, tail = name.split("_")
    assert (config.regularizer, config.causal) == (reg, kind == "causal")
    tf, sf = FACTORS[factors]
    assert (config.time_downsample_factor, spatial_factor(config)) == (tf, sf)
    if reg == "kl":
        assert config.z_channels == int(tail.removesuffix("chn"))
    else:
        assert model.codebook_size == int(tail) and config.z_channels == len(config.fsq_levels)
    assert latent_frames(config, config.frames_per_clip) == (16 // tf + 1 if config.causal else 16 // tf)


def test_release_config_composes_and_needs_its_weights_path():
    cfg = compose_config(["video_tokenizer=vidtok_kl_causal_488_4chn"])
    composed = dataclasses.replace(cfg.video_tokenizer, pretrained_path=None)
    assert composed == release_config("vidtok_kl_causal_488_4chn")
    with pytest.raises(ConfigError, match="video_tokenizer.pretrained_path must be set"):
        build_video_tokenizer(cfg.video_tokenizer)
