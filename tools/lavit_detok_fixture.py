"""Write the Video-LaVIT video de-tokenizer fixtures (``tests/fixtures/lavit/``) from LaVIT's own code.

Like ``tools/lavit_fixtures.py`` (whose export and import helpers this uses: LaVIT's files in
a scratch folder outside the project, timm 0.4.12 and einops there, stand-in torchvision
modules), once, never in CI:

    python tools/lavit_detok_fixture.py --lavit /path/to/LaVIT   # a clone (or bare git dir)

It also exports ``VideoLaVIT/utils.py`` (``video_detokenizer.py`` imports it). Nothing of
LaVIT is edited: its UNet and condition encoder are built by its own constructors, and its
``VideoDetokenizer.reconstruct_from_token`` runs as written, in a subclass whose
``decode_latents`` records the latents it is handed (then calls LaVIT's).

Writes, into ``--out``:

- ``detok_key_table.json.gz``: key -> shape of the release's configuration, built on the meta
  device by LaVIT's code: ``unet`` (``UNetSpatioTemporalConditionModel()``, the
  ``video_detokenizer/unet`` weights' diffusers names), ``motion_encoder``
  (``build_condition_encoder()``), ``video_3d_unet`` (what ``build_video_detokenizer`` loads
  ``video_3d_unet.bin`` into: ``VideoDetokenizer``'s ``unet.*`` and ``motion_encoder.*``; the
  released file's 3.15 GB of bf16 are these tensors' count x 2 bytes, which rules out its VAE
  and motion tokenizer), and the commit;
- ``tiny_detok.safetensors``: one denoising step of a tiny de-tokenizer (``TINY``, ours;
  weights by ``redraw_weights`` with ``WEIGHT_SEED``, saved by our ``save_pretrained`` and read
  by LaVIT's loaders: diffusers ``from_pretrained`` of its UNet class, the non-strict
  whole-model load of the unet weights for the condition encoder): the inputs (``keyframe``,
  the motion ``condition`` at the latent grid), LaVIT's sampled ``latents`` after
  ``num_inference_steps=1`` with the linear guidance 1 -> 4 over the 12 frames and
  ``torch.manual_seed(SAMPLE_SEED)``, and its decoded ``frames`` (fp16).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from divot_llm.detokenizers.motion.lavit import LaVITVideoDetokenizer  # noqa: E402  (before the torchvision stand-ins)
from divot_llm.detokenizers.motion.lavit_config import LaVITVideoDetokenizerConfig  # noqa: E402
from tools.lavit_fixtures import MODEL_FILES, export_lavit, prepare_imports  # noqa: E402

# our config's fields (LaVITVideoDetokenizerConfig): conf/motion_detokenizer/lavit_tiny.yaml's sizes
TINY = {
    "name": "lavit_detok_fixture",
    "num_frames": 12,
    "height": 32,
    "width": 32,
    "block_out_channels": [32, 64],
    "num_attention_heads": [1, 2],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "addition_time_embed_dim": 8,
    "encoder_dim": 16,
    "encoder_heads": 2,
    "encoder_depth": 1,
    "encoder_mlp_ratio": 2.0,
    "vae_block_out_channels": [32, 32, 32, 32],
    "vae_layers_per_block": 1,
}
WEIGHT_SEED, INPUT_SEED, SAMPLE_SEED = 1, 2, 3
BATCH = 1
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 4.0


def redraw_weights(model: torch.nn.Module, seed: int) -> None:
    """Every tensor of ``model``'s state dict (sorted keys) redrawn from one generator, so that
    nothing is at its initial constant: 1-d weights (norm gains) 1 + 0.2 n, other 1-d tensors
    0.1 n, the rest n / sqrt(fan in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in sorted(model.state_dict().items()):
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim == 1:
                tensor.copy_(1.0 + 0.2 * noise if key.endswith("weight") else 0.1 * noise)
            else:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)


def tiny_inputs(config) -> tuple[torch.Tensor, torch.Tensor]:
    """A keyframe in [-1, 1] and motion channels at the latent grid (seeded)."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    keyframe = torch.rand(BATCH, 3, config.height, config.width, generator=generator) * 2 - 1
    grid = (config.height // 8, config.width // 8)
    condition = 0.3 * torch.randn(BATCH, 2, config.num_frames, *grid, generator=generator)
    return keyframe, condition


def key_tables(unet_module, condition_module) -> dict[str, dict[str, list[int]]]:
    with torch.device("meta"):
        unet = unet_module.UNetSpatioTemporalConditionModel()
        encoder = condition_module.build_condition_encoder()
    tables = {
        "unet": {key: list(value.shape) for key, value in unet.state_dict().items()},
        "motion_encoder": {key: list(value.shape) for key, value in encoder.state_dict().items()},
    }
    tables["video_3d_unet"] = {
        f"{part}.{key}": shape for part in tables for key, shape in tables[part].items()
    }
    return tables


def lavit_run(scratch: Path, folder: Path, config, keyframe, condition) -> dict[str, torch.Tensor]:
    """LaVIT's ``reconstruct_from_token`` on our saved tiny folder, one step."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from diffusers.image_processor import VaeImageProcessor

    detok_module = importlib.import_module("models.video_detokenizer")
    unet_module = importlib.import_module("models.modeling_3d_unet")
    condition_module = importlib.import_module("models.modeling_motion_condition")

    class Recording(detok_module.VideoDetokenizer):
        def decode_latents(self, latents, num_frames, decode_chunk_size=14):
            self.recorded = latents.clone()
            return super().decode_latents(latents, num_frames, decode_chunk_size)

    # VideoDetokenizer.__init__ reads a whole release (motion tokenizer included); its
    # attributes are set as it sets them, from our tiny folder
    model = Recording.__new__(Recording)
    torch.nn.Module.__init__(model)
    model.motion_encoder = condition_module.MotionConditionEncoder(
        in_channel=2,
        out_channel=config.cross_attention_dim,
        dim=config.encoder_dim,
        num_heads=config.encoder_heads,
        depth=config.encoder_depth,
        mlp_ratio=config.encoder_mlp_ratio,
    )
    model.vae = AutoencoderKLTemporalDecoder.from_pretrained(folder, subfolder="vae")
    model.scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    model.unet = unet_module.UNetSpatioTemporalConditionModel.from_pretrained(folder, subfolder="unet")
    model.vae_scale_factor = 8
    model.image_processor = VaeImageProcessor(vae_scale_factor=8)
    model.add_time_ids = None
    # build_video_detokenizer's load of the unet weights into the whole model
    result = model.load_state_dict(
        load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"), strict=False
    )
    if any(key.startswith("motion_encoder.") for key in result.missing_keys):
        raise SystemExit("LaVIT's loader left motion_encoder keys missing: the saved layout is wrong")
    model.eval()
    torch.manual_seed(SAMPLE_SEED)
    frames_pil = model.reconstruct_from_token(
        keyframe,
        condition,
        width=config.width,
        height=config.height,
        num_frames=config.num_frames,
        num_inference_steps=1,
        min_guidance_scale=MIN_GUIDANCE,
        max_guidance_scale=MAX_GUIDANCE,
    )
    del frames_pil
    return {"latents": model.recorded.contiguous()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lavit", type=Path, required=True, help="a clone or bare git dir of jy0205/LaVIT")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument(
        "--scratch", type=Path, default=Path("/tmp/lavit_detok_fixtures"), help="outside the project"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "lavit")
    args = parser.parse_args(argv)
    if args.scratch.resolve().is_relative_to(REPO_ROOT):
        raise SystemExit("--scratch must be outside the project: LaVIT's code never enters it")
    torch.set_num_threads(1)
    names = [*MODEL_FILES, "video_detokenizer.py", "modeling_3d_unet.py", "modeling_unet_3d_blocks.py",
             "modeling_transformer_temporal.py", "modeling_motion_condition.py"]  # fmt: skip
    commit = export_lavit(args.lavit, args.commit, args.scratch, names, extra=("utils.py",))
    prepare_imports(args.scratch)

    tables = key_tables(
        importlib.import_module("models.modeling_3d_unet"),
        importlib.import_module("models.modeling_motion_condition"),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out / "detok_key_table.json.gz", "wt") as file:
        json.dump({"commit": commit, **tables}, file, indent=0, sort_keys=True)

    config = LaVITVideoDetokenizerConfig(**TINY)
    ours = LaVITVideoDetokenizer(config)
    redraw_weights(ours, WEIGHT_SEED)
    folder = args.scratch / "tiny_video_detokenizer"
    shutil.rmtree(folder, ignore_errors=True)
    ours.save_pretrained(folder)
    keyframe, condition = tiny_inputs(config)
    outputs = lavit_run(args.scratch, folder, config, keyframe, condition)
    tensors = {"keyframe": keyframe, "condition": condition, **outputs}
    metadata = {
        "commit": commit,
        "tiny": json.dumps(TINY),
        "seeds": json.dumps([WEIGHT_SEED, INPUT_SEED, SAMPLE_SEED]),
    }
    save_file(tensors, args.out / "tiny_detok.safetensors", metadata=metadata)
    print(f"wrote {args.out} from LaVIT {commit[:10]} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
