"""Our Video-LaVIT motion tokenizer against LaVIT's own code (tests/fixtures/lavit, written by
tools/lavit_fixtures.py from jy0205/LaVIT): the released configuration's key/shape table on
the meta device, and a tiny model's weights, codes and reconstruction; plus loading, saving
and the errors a wrong file or a wrong field gets."""

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
from divot_llm.layout import MOTION_TOKENIZER_CONFIG
from divot_llm.tokenizers.motion.lavit import LaVITMotionTokenizer, load_motion_tokenizer_weights
from divot_llm.tokenizers.motion.lavit_config import LaVITMotionConfig
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer, load_motion_tokenizer
from tests import helpers

FIXTURES = helpers.REPO_ROOT / "tests" / "fixtures" / "lavit"
ATOL = 1e-5


@pytest.fixture(scope="module")
def key_table() -> dict[str, list[int]]:
    with gzip.open(FIXTURES / "motion_key_table.json.gz", "rt") as file:
        return json.load(file)["keys"]


@pytest.fixture(scope="module")
def tiny() -> tuple[LaVITMotionConfig, dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[int, int]]:
    """The tiny fixture: our config of it, LaVIT's weights (its key names), its outputs."""
    path = FIXTURES / "tiny_motion.safetensors"
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    tensors = load_file(path)
    weights = {key: value for key, value in tensors.items() if not key.startswith("fixture.")}
    outputs = {
        key.removeprefix("fixture."): value for key, value in tensors.items() if key.startswith("fixture.")
    }
    config = LaVITMotionConfig(name="lavit_fixture", **json.loads(metadata["tiny"]))
    return config, weights, outputs, tuple(json.loads(metadata["condition_hw"]))


def test_released_config_has_lavits_keys_and_loads_them_strictly(key_table):
    cfg = compose_config(["motion_tokenizer=lavit"]).motion_tokenizer
    assert cfg == LaVITMotionConfig()  # the yaml only restates the released defaults
    with torch.device("meta"):
        model = build_motion_tokenizer(cfg)
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == key_table
    model.load_state_dict(
        {key: torch.empty(shape, device="meta") for key, shape in key_table.items()}, strict=True, assign=True
    )
    # seed-systems.md b.1 (measured on LaVIT's model): 158.5M parameters, the encoder 79.1M
    total = sum(math.prod(shape) for shape in key_table.values())
    encoder = sum(math.prod(shape) for key, shape in key_table.items() if key.startswith("encoder."))
    assert (round(total / 1e6, 1), round(encoder / 1e6, 1)) == (158.5, 79.1)
    assert sum(p.numel() for p in model.parameters()) == total
    assert (model.token_grid, model.num_tokens, model.codebook_size, model.code_dim) == (
        (3, 5, 9),
        135,
        1024,
        32,
    )


def test_tiny_model_loaded_from_a_raw_bin_matches_lavit(tiny, tmp_path):
    config, weights, expected, condition_hw = tiny
    # the lengths of LaVIT's codebook rows were spread around 1: used as stored, not re-normalised
    assert weights["quantize.embedding.weight"].norm(dim=1).std() > 0.01
    torch.save(weights, tmp_path / "motion_tokenizer.bin")  # a raw state dict, as released
    model = LaVITMotionTokenizer.from_config(
        dataclasses.replace(config, pretrained_path=str(tmp_path / "motion_tokenizer.bin"))
    )
    fields = expected["fields"]

    with torch.no_grad():
        z_bnd = model.encode_latents(fields)
    assert (z_bnd - expected["z"]).abs().max() <= ATOL
    codes_bn = model.encode(fields)
    assert codes_bn.dtype == torch.int64 and torch.equal(codes_bn, expected["codes"])
    assert len(codes_bn.unique()) > 3  # the fixture's codes are not all one
    recon = model.decode(codes_bn)
    assert (recon - expected["recon"]).abs().max() <= ATOL * expected["recon"].abs().max()
    condition = model.detokenizer_condition(recon, *condition_hw)
    assert (condition - expected["condition"]).abs().max() <= ATOL

    # forward: the same reconstruction, and gradients reach the encoder through zq
    recon_fwd, z_fwd, zq_fwd, codes_fwd = model(fields)
    assert torch.equal(codes_fwd, codes_bn)
    assert (recon_fwd - expected["recon"]).abs().max() <= ATOL * expected["recon"].abs().max()
    assert (zq_fwd - model.codebook(codes_bn)).abs().max() <= 1e-6
    recon_fwd.square().mean().backward()
    assert model.encoder.in_proj.weight.grad.abs().sum() > 0
    assert model.codebook.weight.grad is None  # the straight-through path leaves the codebook alone


def test_save_pretrained_round_trip(tiny, tmp_path):
    config, weights, expected, _ = tiny
    model = LaVITMotionTokenizer(config)
    model.load_state_dict(weights, strict=True)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(
        [MOTION_TOKENIZER_CONFIG, "model.safetensors"]
    )
    loaded = load_motion_tokenizer(tmp_path / "saved")  # the arch in the json picks the class
    assert isinstance(loaded, LaVITMotionTokenizer)
    assert dataclasses.replace(loaded.config, pretrained_path=None) == config
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(reloaded[key], value) for key, value in saved.items())
    assert torch.equal(loaded.encode(expected["fields"]), expected["codes"])


def test_wrong_weights_are_named(tiny, tmp_path):
    config, weights, _, _ = tiny
    model = LaVITMotionTokenizer(config)
    renamed = {
        ("module." + key if key.startswith("decoder.norm") else key): value for key, value in weights.items()
    }
    torch.save(renamed, tmp_path / "renamed.bin")
    with pytest.raises(
        ValueError,
        match=r"2 missing keys: decoder\.norm\.bias, decoder\.norm\.weight; "
        r"2 unexpected keys: module\.decoder\.norm\.bias",
    ):
        load_motion_tokenizer_weights(model, tmp_path / "renamed.bin")
    torch.save(weights, tmp_path / "tiny.bin")
    wider = LaVITMotionTokenizer(dataclasses.replace(config, codebook_size=32))
    with pytest.raises(
        ValueError, match=r"1 other shapes: quantize\.embedding\.weight \(16, 4\) \(model \(32, 4\)\)"
    ):
        load_motion_tokenizer_weights(wider, tmp_path / "tiny.bin")


def test_tiny_option_round_trips_its_clips():
    """conf/motion_tokenizer/lavit_tiny.yaml (experiment=motion_tokenizer_tiny: gop-6 clips of
    12 x 10 x 18) on the schema -- composing costs ~0.5 s; the release's test composes."""
    fields = yaml.safe_load((helpers.REPO_ROOT / "conf" / "motion_tokenizer" / "lavit_tiny.yaml").read_text())
    assert fields.pop("defaults") == ["schema_lavit", "_self_"]
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LaVITMotionConfig), fields))
    model = LaVITMotionTokenizer.from_config(config)
    fields_b2fhw = torch.randn(2, 2, 12, 10, 18)
    recon, z_bnd, zq_bnd, codes_bn = model(fields_b2fhw)
    assert recon.shape == fields_b2fhw.shape
    assert z_bnd.shape == zq_bnd.shape == (2, model.num_tokens, config.code_dim)
    assert torch.allclose(z_bnd.norm(dim=-1), torch.ones(2, model.num_tokens))
    assert torch.equal(model.encode(fields_b2fhw), codes_bn)
    assert torch.allclose(model.decode(codes_bn), recon, atol=1e-5)


def test_wrong_fields_codes_and_configs_are_refused(tiny):
    config = tiny[0]
    model = LaVITMotionTokenizer(config)
    with pytest.raises(
        ValueError, match=r"expected \(B, 2, F=8, H=8, W=12\) .* got shape \(1, 2, 8, 12, 8\)"
    ):
        model.encode(torch.zeros(1, 2, 8, 12, 8))
    with pytest.raises(ValueError, match="got dtype torch.int64"):
        model.encode(torch.zeros(1, 2, 8, 8, 12, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\), got \[0, 16\]"):
        model.decode(torch.tensor([[0, 1, 2, 3, 4, 16]]))
    with pytest.raises(ValueError, match=r"expected \(B, N=6\) integer codes"):
        model.decode(torch.zeros(1, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"height 10 must be a multiple of 4"):
        LaVITMotionTokenizer(dataclasses.replace(config, height=10))
    with pytest.raises(ValueError, match="strides of 1 or 2"):
        LaVITMotionTokenizer(dataclasses.replace(config, strides=[[1, 3, 3]]))
