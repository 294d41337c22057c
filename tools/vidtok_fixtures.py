"""Write the VidTok parity fixtures (``tests/fixtures/vidtok/``) from microsoft/VidTok's own code.

Our ``divot_llm.tokenizers.vidtok`` must load the released checkpoints strictly and compute
what VidTok computes, without depending on it: VidTok is not pip-installable and its
package imports Lightning. This script runs once, in a scratch environment, imports only
VidTok's model files (``model_3dcausal``, ``model_3dnoncausal``, ``regularizers``), and its
outputs are committed; CI only reads them.

Scratch environment (nothing is installed into the project's venv)::

    git clone https://github.com/microsoft/VidTok /work/scratch/vidtok_src   # @d6ad92d
    python -m pip install --target /work/scratch/vt_pkgs --no-deps beartype
    PYTHONPATH=/work/scratch/vidtok_src:/work/scratch/vt_pkgs python tools/vidtok_fixtures.py

``python`` is the project's venv (torch, einops, numpy, omegaconf, safetensors). VidTok's
``vidtok/modules/util.py`` (imported by the model files for gradient checkpointing, which
the fixtures do not use) needs Lightning and rich; this script puts a stand-in module
under that name into ``sys.modules`` for its own process only.

Writes, into ``--out`` (default ``tests/fixtures/vidtok``):

- ``key_tables.json.gz``: for every v1.0 config in VidTok's ``configs/`` (the 12 released
  checkpoints and 4 more), the encoder + decoder state-dict key -> shape table, built on
  the meta device from the config yaml;
- ``tiny.json``: the tiny configs (``CASES``), the FSQ level sets, the upstream commit;
- ``tiny_<case>.safetensors``: VidTok's outputs for a tiny model whose weights are
  ``fixture_weights`` of its key/shape table and whose input is ``fixture_video`` --
  both deterministic formulas (not stored: they would make the fixtures megabytes);
  latents (KL: the posterior mode, and ``kl_loss``), FSQ codes, indices and ``aux_loss``
  at ``AUX_STEP``, and the decoded video;
- ``fsq_levels.safetensors``: latents (``fixture_video``) and VidTok's FSQ codes and
  indices for levels [8]*6, [8]*5, [8]*4.

``fixture_weights`` perturbs what VidTok initialises to constants (the temporal blocks'
zero second convolution, norm gains of 1, ``mix_factor`` 2) so that those paths are
tested too (seed-systems §a.1a).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_COMMIT = "d6ad92d"
# v1.0 configs of VidTok's configs/ (the first 12 are the seed README's released checkpoints)
CONFIGS = [
    "vidtok_kl_causal_488_4chn",
    "vidtok_kl_causal_488_8chn",
    "vidtok_kl_causal_488_16chn",
    "vidtok_kl_causal_41616_4chn",
    "vidtok_kl_noncausal_488_4chn",
    "vidtok_kl_noncausal_41616_4chn",
    "vidtok_fsq_causal_488_262144",
    "vidtok_fsq_causal_488_32768",
    "vidtok_fsq_causal_488_4096",
    "vidtok_fsq_causal_41616_262144",
    "vidtok_fsq_noncausal_488_262144",
    "vidtok_fsq_noncausal_41616_262144",
    "vidtok_kl_causal_444_4chn",
    "vidtok_kl_causal_288_8chn",
    "vidtok_kl_noncausal_488_16chn",
    "vidtok_kl_noncausal_41616_16chn",
]
# Tiny models: the released structure (levels, resampling, attention) at width 8 (layer
# norms over 4 channels magnify rounding differences ~100x more).
TINY = {"ch": 8, "num_res_blocks": 1, "z_channels": 4, "fsq_levels": [8, 8, 8, 8]}
CASES = {
    # name: causal, regularizer, ch_mult, input (T, H, W), [ch, norm_type]
    f"{reg}_{'causal' if causal else 'noncausal'}_{comp}": {
        "causal": causal,
        "regularizer": reg,
        "ch_mult": [1, 2, 2, 2] if comp == "488" else [1, 2, 2, 2, 2],
        "input_thw": [
            (9 if causal else 8) if comp == "488" else (5 if causal else 4),
            16 if comp == "488" else 32,
            16 if comp == "488" else 32,
        ],
    }
    for reg in ("kl", "fsq")
    for causal in (True, False)
    for comp in ("488", "41616")
}
# group norm (no release uses it; 32 groups need widths of 32): where each norm groups
# positions differs between the causal and non-causal files
CASES |= {
    f"kl_{'causal' if causal else 'noncausal'}_488_groupnorm": {
        "causal": causal,
        "regularizer": "kl",
        "ch_mult": [1, 1, 1, 1],
        "input_thw": [9 if causal else 8, 16, 16],
        "ch": 32,
        "norm_type": "groupnorm",
    }
    for causal in (True, False)
}
FSQ_ENTROPY = {
    "entropy_loss_weight": 0.1,
    "entropy_loss_annealing_steps": 2000,
    "entropy_loss_annealing_factor": 3,
    "commitment_loss_weight": 0.25,
}
AUX_STEP = 500  # inside the entropy weight's annealing ramp
FSQ_LEVEL_SETS = [[8] * 6, [8] * 5, [8] * 4]


def fixture_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Deterministic float32 weights for a key -> shape table (no RNG: the same values on
    any machine and torch version): hashed noise per tensor, scaled like an initialisation
    (variance 1 / fan_in), norm gains in [0.7, 1.3], biases small, mix factors in
    [-1.5, 1.5]."""
    weights = {}
    for index, key in enumerate(sorted(shapes)):
        shape = tuple(shapes[key])
        count = math.prod(shape)
        wave = _noise(count, index)
        if key.endswith("mix_factor"):
            value = 1.5 * wave
        elif key.endswith("bias"):
            value = 0.1 * wave
        elif ".norm." in key or key.endswith("norm.weight"):
            value = 1.0 + 0.3 * wave
        else:
            value = wave * math.sqrt(3.0 / (count // shape[0]))  # uniform: variance 1 / fan_in
        weights[key] = value.reshape(shape).to(torch.float32)
    return weights


def _noise(count: int, stream: int) -> torch.Tensor:
    """``count`` float64 values spread evenly over [-1, 1), decorrelated (the fractional part
    of a large multiple of a sine: a hash, not a wave -- smooth waves as weights make
    channels nearly collinear, and layer norm then magnifies rounding differences)."""
    steps = torch.arange(count, dtype=torch.float64)
    hashed = torch.sin(steps * 12.9898 + stream * 78.233 + 0.5) * 43758.5453
    return 2.0 * (hashed - torch.floor(hashed)) - 1.0


def fixture_video(shape: tuple[int, ...]) -> torch.Tensor:
    """A deterministic float32 tensor in [-0.9, 0.9] (no RNG)."""
    steps = torch.arange(math.prod(shape), dtype=torch.float64)
    return (0.9 * torch.sin(steps * 0.513 + 0.2) * torch.cos(steps * 0.0371)).reshape(shape).to(torch.float32)


def _upstream():
    """VidTok's model modules, importable without Lightning (see the module docstring)."""
    util = types.ModuleType("vidtok.modules.util")

    def checkpoint(func, inputs, params, flag):  # only used with use_checkpoint=True
        return func(*inputs)

    util.checkpoint = checkpoint
    sys.modules["vidtok.modules.util"] = util
    from vidtok.modules import model_3dcausal, model_3dnoncausal, regularizers

    return model_3dcausal, model_3dnoncausal, regularizers


def _build(modules, encoder_target: str, decoder_target: str, params: dict):
    causal_mod, noncausal_mod, _ = modules
    owners = {"model_3dcausal": causal_mod, "model_3dnoncausal": noncausal_mod}
    encoder_mod, encoder_cls = encoder_target.split(".")[-2:]
    decoder_mod, decoder_cls = decoder_target.split(".")[-2:]
    encoder = getattr(owners[encoder_mod], encoder_cls)(**params)
    decoder = getattr(owners[decoder_mod], decoder_cls)(**params)
    return encoder, decoder


def key_tables(modules, configs_dir: Path) -> dict[str, dict[str, list[int]]]:
    from omegaconf import OmegaConf

    tables = {}
    for name in CONFIGS:
        model = OmegaConf.to_container(OmegaConf.load(configs_dir / f"{name}.yaml"), resolve=True)["model"]
        enc, dec = model["params"]["encoder_config"], model["params"]["decoder_config"]
        with torch.device("meta"):
            encoder, decoder = _build(modules, enc["target"], dec["target"], enc["params"])
        table = {f"encoder.{k}": list(v.shape) for k, v in encoder.state_dict().items()}
        table |= {f"decoder.{k}": list(v.shape) for k, v in decoder.state_dict().items()}
        tables[name] = table
    return tables


def tiny_params(case: dict) -> dict:
    return {
        "double_z": case["regularizer"] == "kl",
        "z_channels": TINY["z_channels"],
        "in_channels": 3,
        "out_ch": 3,
        "ch": case.get("ch", TINY["ch"]),
        "ch_mult": case["ch_mult"],
        "time_downsample_factor": 4,
        "num_res_blocks": TINY["num_res_blocks"],
        "dropout": 0.0,
        "norm_type": case.get("norm_type", "layernorm"),
    }


def tiny_outputs(modules, case: dict) -> dict[str, torch.Tensor]:
    _, _, regularizers = modules
    prefix = "vidtok.modules." + ("model_3dcausal." if case["causal"] else "model_3dnoncausal.")
    encoder_cls = "EncoderCausal3DPadding" if case["causal"] else "Encoder3D"
    decoder_cls = "DecoderCausal3DPadding" if case["causal"] else "Decoder3D"
    encoder, decoder = _build(modules, prefix + encoder_cls, prefix + decoder_cls, tiny_params(case))
    shapes = {f"encoder.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    shapes |= {f"decoder.{k}": tuple(v.shape) for k, v in decoder.state_dict().items()}
    weights = fixture_weights(shapes)
    encoder.load_state_dict({k[8:]: v for k, v in weights.items() if k.startswith("encoder.")}, strict=True)
    decoder.load_state_dict({k[8:]: v for k, v in weights.items() if k.startswith("decoder.")}, strict=True)
    encoder.eval(), decoder.eval()
    video = fixture_video((1, 3, *case["input_thw"]))
    out = {}
    with torch.no_grad():
        moments = encoder(video)
        if case["regularizer"] == "kl":
            z, log = regularizers.DiagonalGaussianRegularizer(sample=False)(moments)
            out["kl_loss"] = log["kl_loss"].reshape(1)
        else:
            fsq = regularizers.FSQRegularizer(levels=TINY["fsq_levels"], **FSQ_ENTROPY)
            z, log = fsq(moments, n_steps=AUX_STEP)
            out["indices"] = log["indices"].to(torch.int64)
            out["aux_loss"] = log["aux_loss"].reshape(1)
            assert torch.equal(fsq.indices_to_codes(log["indices"]), z)  # decode-from-indices path
        out["latents"] = z
        out["decoded"] = decoder(z)
    return out


def fsq_level_outputs(modules) -> dict[str, torch.Tensor]:
    _, _, regularizers = modules
    out = {}
    for levels in FSQ_LEVEL_SETS:
        tag = f"{len(levels)}x{levels[0]}"
        z = 3.0 * fixture_video((2, len(levels), 3, 4, 4))
        codes, log = regularizers.FSQRegularizer(levels=levels)(z)
        out[f"latents_{tag}"], out[f"codes_{tag}"], out[f"indices_{tag}"] = z, codes, log["indices"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=Path("/work/scratch/vidtok_src"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "vidtok")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    modules = _upstream()
    args.out.mkdir(parents=True, exist_ok=True)
    tables = key_tables(modules, args.upstream / "configs")
    # mtime 0: the same tables give the same bytes
    with gzip.GzipFile(args.out / "key_tables.json.gz", "wb", mtime=0) as file:
        file.write(json.dumps(tables, sort_keys=True).encode())
    for name, case in CASES.items():
        save_file(
            {k: v.contiguous() for k, v in tiny_outputs(modules, case).items()},
            args.out / f"tiny_{name}.safetensors",
        )
    levels = {k: v.contiguous() for k, v in fsq_level_outputs(modules).items()}
    save_file(levels, args.out / "fsq_levels.safetensors")
    meta = {
        "upstream": f"microsoft/VidTok@{UPSTREAM_COMMIT}",
        "torch": torch.__version__,
        "tiny": TINY,
        "cases": CASES,
        "fsq_entropy": FSQ_ENTROPY,
        "aux_step": AUX_STEP,
        "fsq_level_sets": FSQ_LEVEL_SETS,
    }
    (args.out / "tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {len(tables)} key tables and {len(CASES)} tiny cases to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
