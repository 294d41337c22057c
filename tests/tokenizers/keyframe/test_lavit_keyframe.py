"""Our Video-LaVIT keyframe tokenizer against LaVIT's own code (tests/fixtures/lavit, written by
tools/lavit_keyframe_fixtures.py from jy0205/LaVIT): the released encoder's, decoder's and
visual_weight.bin's key/shape tables on the meta device, and a tiny model's codes, features
and decoder embeddings; plus the release's file layout, saving, and what a wrong file or
input gets."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from divot_llm.config import compose_config
from divot_llm.layout import KEYFRAME_TOKENIZER_CONFIG
from divot_llm.tokenizers.keyframe.lavit import DECODER_FILE, ENCODER_FILE, EVA_FILE, LaVITKeyframeTokenizer
from divot_llm.tokenizers.keyframe.lavit_config import LaVITKeyframeConfig
from divot_llm.tokenizers.keyframe.registry import build_keyframe_tokenizer, load_keyframe_tokenizer
from divot_llm.tokenizers.keyframe.visual_weight import (
    load_visual_weight,
    save_visual_weight,
    split_visual_weight,
    visual_weight_state,
)
from divot_llm.tokenizers.motion.lavit import LaVITMotionTokenizer
from divot_llm.tokenizers.motion.lavit_config import LaVITMotionConfig
from tests import helpers

FIXTURES = helpers.REPO_ROOT / "tests" / "fixtures" / "lavit"
ATOL = 1e-5
TINY_MOTION = LaVITMotionConfig(
    frames=8,
    height=8,
    width=12,
    embed_dim=8,
    num_heads=2,
    mlp_ratio=1.0,
    blocks_per_stage=1,
    code_dim=4,
    codebook_size=16,
)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in state.items()}


@pytest.fixture(scope="module")
def tables() -> dict[str, dict[str, list[int]]]:
    with gzip.open(FIXTURES / "keyframe_key_tables.json.gz", "rt") as file:
        return json.load(file)


@pytest.fixture(scope="module")
def tiny() -> tuple[LaVITKeyframeConfig, dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """The tiny fixture: our config of it, LaVIT's weights (decoder's under decoder.), its outputs."""
    path = FIXTURES / "tiny_keyframe.safetensors"
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    tensors = load_file(path)
    weights = {key: value for key, value in tensors.items() if not key.startswith("fixture.")}
    outputs = {
        key.removeprefix("fixture."): value for key, value in tensors.items() if key.startswith("fixture.")
    }
    config = LaVITKeyframeConfig(name="lavit_fixture", **json.loads(metadata["tiny"]))
    return config, weights, outputs, int(metadata["gumbel_seed"])


def write_release_folder(folder, weights: dict[str, torch.Tensor]) -> None:
    """The release's visual_tokenizer/ layout: the ViT in eva_vitg_psz14.bin (no prefix), the
    rest in tokenizer_encoder.bin, the decoder in highres_tokenizer_decoder.bin; raw .bin files."""
    folder.mkdir()
    vit = {key.removeprefix("encoder."): v for key, v in weights.items() if key.startswith("encoder.")}
    decoder = {key.removeprefix("decoder."): v for key, v in weights.items() if key.startswith("decoder.")}
    rest = {key: v for key, v in weights.items() if not key.startswith(("encoder.", "decoder."))}
    for name, part in ((EVA_FILE, vit), (ENCODER_FILE, rest), (DECODER_FILE, decoder)):
        torch.save(part, folder / name)


def test_released_config_has_lavits_keys_and_loads_them_strictly(tables):
    cfg = compose_config(["keyframe_tokenizer=lavit"]).keyframe_tokenizer
    assert cfg == LaVITKeyframeConfig()  # the yaml only restates the released defaults
    with torch.device("meta"):
        model = build_keyframe_tokenizer(cfg)
        motion = LaVITMotionTokenizer(LaVITMotionConfig())
    encoder, decoder = model.encoder_state_dict(), model.decoder.state_dict()
    assert shapes(encoder) == tables["encoder"]
    assert shapes(decoder) == tables["decoder"]
    assert shapes(visual_weight_state(model, motion)) == tables["visual_weight"]
    model.load_state_dict(
        {key: torch.empty(shape, device="meta") for key, shape in tables["encoder"].items()}
        | {"decoder." + key: torch.empty(shape, device="meta") for key, shape in tables["decoder"].items()},
        strict=True,
        assign=True,
    )
    parts = split_visual_weight(
        {key: torch.empty(shape, device="meta") for key, shape in tables["visual_weight"].items()}
    )
    assert shapes(parts["keyframe_tokenizer"]) == tables["encoder"]
    motion.load_state_dict(parts["motion_tokenizer"], strict=True, assign=True)
    # sizes: the EVA-CLIP ViT-G 1.01B, the whole encoder file 1.42B, the decoder 0.41B
    millions = {
        name: round(sum(math.prod(s) for s in tables[name].values()) / 1e6) for name in ("encoder", "decoder")
    }
    vit = sum(math.prod(s) for key, s in tables["encoder"].items() if key.startswith("encoder."))
    assert (millions, round(vit / 1e6)) == ({"encoder": 1422, "decoder": 414}, 1013)
    assert (model.input_size, model.max_tokens, model.codebook_size, model.code_dim) == (224, 256, 16384, 32)
    assert (model.feature_dim, model.embed_dim, model.pooled_dim) == (4096, 2048, 1280)


def test_tiny_model_from_the_release_layout_matches_lavit(tiny, tmp_path):
    config, weights, expected, seed = tiny
    write_release_folder(tmp_path / "visual_tokenizer", weights)
    model = LaVITKeyframeTokenizer.from_config(
        dataclasses.replace(
            config,
            pretrained_path=str(tmp_path / "visual_tokenizer" / ENCODER_FILE),
            decoder_path=str(tmp_path / "visual_tokenizer"),
        )
    )
    images, counts = expected["images"], expected["counts"].tolist()
    codes = model.encode(images, generator=torch.Generator().manual_seed(seed))
    assert [len(row) for row in codes] == counts and len(set(counts)) > 1  # variable keep counts
    assert all(row.dtype == torch.int64 for row in codes)
    assert torch.equal(torch.cat(codes), expected["codes"]) and len(expected["codes"].unique()) > 3
    torch.manual_seed(seed)  # the default generator: LaVIT's own draw after torch.manual_seed
    assert torch.equal(torch.cat(model.encode(images)), expected["codes"])

    features = model.encode_features(images, generator=torch.Generator().manual_seed(seed))
    assert [len(row) for row in features] == counts
    assert (torch.cat(features) - expected["features"]).abs().max() <= ATOL

    context, pooled = model.decode_embeds(codes)
    assert context.shape == (3, model.max_tokens, model.embed_dim) and pooled.shape == (3, model.pooled_dim)
    assert (context - expected["context"]).abs().max() <= ATOL
    assert (pooled - expected["pooled"]).abs().max() <= ATOL
    # other draws keep other patches: the keep decision is sampled, as LaVIT samples it
    assert any(
        len(row) != n
        for row, n in zip(model.encode(images, torch.Generator().manual_seed(seed + 1)), counts, strict=True)
    )


def test_save_pretrained_round_trip_and_visual_weight(tiny, tmp_path):
    config, weights, expected, seed = tiny
    model = LaVITKeyframeTokenizer(config)
    model.load_state_dict(weights, strict=True)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(
        [KEYFRAME_TOKENIZER_CONFIG, ENCODER_FILE, DECODER_FILE]
    )
    loaded = load_keyframe_tokenizer(tmp_path / "saved")  # the arch in the json picks the class
    assert isinstance(loaded, LaVITKeyframeTokenizer)
    assert dataclasses.replace(loaded.config, pretrained_path=None, decoder_path=None) == config
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(reloaded[k], v) for k, v in saved.items())
    codes = loaded.encode(expected["images"], torch.Generator().manual_seed(seed))
    assert torch.equal(torch.cat(codes), expected["codes"])

    # visual_weight.bin: both tokenizers under LaVIT's module path, and back
    motion = LaVITMotionTokenizer(TINY_MOTION)
    save_visual_weight(tmp_path / "visual_weight.bin", model, motion)
    fresh_keyframe, fresh_motion = LaVITKeyframeTokenizer(config), LaVITMotionTokenizer(TINY_MOTION)
    load_visual_weight(tmp_path / "visual_weight.bin", fresh_keyframe, fresh_motion)
    assert all(torch.equal(fresh_keyframe.state_dict()[k], v) for k, v in model.encoder_state_dict().items())
    assert all(torch.equal(fresh_motion.state_dict()[k], v) for k, v in motion.state_dict().items())
    with pytest.raises(
        ValueError, match=r"1 keys under neither model\.visual_tokenizer\. nor .*: lm_head\.weight"
    ):
        split_visual_weight({"lm_head.weight": torch.zeros(1), "model.motion_tokenizer.x": torch.zeros(1)})


def test_wrong_files_and_inputs_are_refused(tiny, tmp_path):
    config, weights, expected, _ = tiny
    model = LaVITKeyframeTokenizer(config)
    renamed = {
        ("module." + k if k.startswith("vit_proj.") else k): v
        for k, v in weights.items()
        if not k.startswith("decoder.")
    }
    torch.save(renamed, tmp_path / "renamed.bin")
    with pytest.raises(
        ValueError,
        match=r"2 missing keys: vit_proj\.bias, vit_proj\.weight; 2 unexpected keys: module\.vit_proj\.bias",
    ):
        LaVITKeyframeTokenizer.from_config(
            dataclasses.replace(config, pretrained_path=str(tmp_path / "renamed.bin"))
        )
    torch.save(
        {k.removeprefix("decoder."): v for k, v in weights.items() if k.startswith("decoder.")},
        tmp_path / "d.bin",
    )
    with pytest.raises(
        ValueError,
        match=r"2 other shapes: unet_proj_1\.bias \(6,\) \(model \(7,\)\), unet_proj_1\.weight \(6, 12\) \(model \(7, 12\)\)",
    ):
        LaVITKeyframeTokenizer.from_config(
            dataclasses.replace(config, context_dims=[7, 10], decoder_path=str(tmp_path / "d.bin"))
        )
    with pytest.raises(ValueError, match=r"expected \(B, 3, 28, 28\) uint8 images, got torch.float32"):
        model.encode(expected["images"].float())
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 32, 32\)"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes\[1\] must lie in \[0, 32\), got \[0, 32\]"):
        model.decode_embeds([torch.tensor([1, 2]), torch.tensor([0, 32])])
    with pytest.raises(ValueError, match=r"codes\[0\]: expected 1 to 16 integer codes"):
        model.decode_embeds([torch.zeros(17, dtype=torch.int64)])
    encode_only = LaVITKeyframeTokenizer(dataclasses.replace(config, build_decoder=False))
    assert encode_only.decoder is None and "decoder.in_proj.weight" not in encode_only.state_dict()
    with pytest.raises(ValueError, match="without its decoder"):
        encode_only.decode_embeds([torch.tensor([1])])
    with pytest.raises(ValueError, match="input_size 30 must be a multiple of patch_size 7"):
        LaVITKeyframeTokenizer(dataclasses.replace(config, input_size=30))


def test_tiny_option_encodes_and_decodes():
    """conf/keyframe_tokenizer/lavit_tiny.yaml on the schema (composing costs ~0.5 s; the
    release's test composes): shapes of every output, and seeded draws repeat."""
    fields = yaml.safe_load(
        (helpers.REPO_ROOT / "conf" / "keyframe_tokenizer" / "lavit_tiny.yaml").read_text()
    )
    assert fields.pop("defaults") == ["schema_lavit", "_self_"]
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LaVITKeyframeConfig), fields))
    model = LaVITKeyframeTokenizer.from_config(config)
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    codes = model.encode(images, torch.Generator().manual_seed(0))
    features = model.encode_features(images, torch.Generator().manual_seed(0))
    assert [len(row) for row in codes] == [len(row) for row in features]
    assert (
        all(row.shape[1:] == (32,) for row in features)
        and max(len(row) for row in codes) <= model.max_tokens == 16
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(codes, model.encode(images, torch.Generator().manual_seed(0)), strict=True)
    )
    context, pooled = model.decode_embeds([row if len(row) else torch.tensor([0]) for row in codes])
    assert context.shape == (2, 16, 16) and pooled.shape == (2, 8)
