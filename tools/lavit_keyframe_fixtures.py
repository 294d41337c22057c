"""Write the Video-LaVIT keyframe tokenizer fixtures (``tests/fixtures/lavit/``) from LaVIT's own code.

Our ``divot_llm.tokenizers.keyframe.lavit`` must load the released
``visual_tokenizer/tokenizer_encoder.bin`` and ``highres_tokenizer_decoder.bin`` strictly, write
the LLM folder's ``visual_weight.bin`` under LaVIT's names, and compute what LaVIT computes. As
``tools/lavit_fixtures.py`` (whose export and import helpers this reuses) does for the motion
tokenizer, this script runs once, outside the project: it exports LaVIT's model files
(``modeling_visual_tokenzier.py``, ``modeling_visual_encoder.py``, ``modeling_decoder.py``,
``modeling_motion_tokenizer.py``, ``modeling_video_lavit_hf.py`` and the ``conversation.py`` it
imports) into a scratch folder, installs timm 0.4.12 and einops there when missing, and writes
the fixtures; CI only reads those.

    python tools/lavit_keyframe_fixtures.py --lavit /path/to/LaVIT   # a clone (or bare git dir)

Writes, into ``--out`` (default ``tests/fixtures/lavit``):

- ``keyframe_key_tables.json.gz``: state-dict key -> shape of the released configurations,
  built on the meta device by LaVIT's constructors: ``encoder`` (``DynamicVisualTokenizer()``),
  ``decoder`` (``HighresVQDecoder(depth=12)``, what ``build_tokenizer_decoder`` builds) and
  ``visual_weight`` (the ``model.visual_tokenizer.*`` / ``model.motion_tokenizer.*`` entries of
  ``VideoLaVITLlamaForCausalLM`` over a one-layer Llama config: the tensors its
  ``from_pretrained`` of ``language_model_sft/`` fills from ``visual_weight.bin``); the commit.
- ``tiny_keyframe.safetensors``: a tiny tokenizer and decoder (``TINY``, our config's field
  names) through LaVIT's constructors. LaVIT hard-codes several widths, so four modules are
  swapped, after construction, for instances of LaVIT's own classes at tiny widths (its
  forwards read them as attributes, nothing of its code is edited): the EVA-CLIP tower
  (``build_eva_clip`` always builds ViT-G; ``_build_vision_tower`` at ``TINY``), ``vit_proj``
  (LaVIT fixes 4096 outputs), and the decoder's ``decode_task_layer[2]``, ``unet_proj_1/2``,
  ``unet_attnpool`` (fixed 1408 / 768 / 1280). Every tensor is then redrawn from seed 1
  (biases and norm gains off their constants, codebook-row lengths in [0.6, 1.4]). Stored: the
  tokenizer's state dict under LaVIT's keys, the decoder's under ``decoder.``, and under
  ``fixture.*``: ``images`` (uint8, seed 2), ``codes`` (``tokenize_image`` after
  ``torch.manual_seed(GUMBEL_SEED)``, its ids minus 32002, concatenated) and ``counts`` per
  image, ``features`` (``encode_features`` after the same seed, concatenated), and
  ``context`` / ``pooled`` (``generate_image_embeds``' three steps on those ids). Pixels are
  what ``LaVITImageProcessor`` makes of an image already at the input size: ``/ 255`` and its
  mean/std, read from LaVIT's ``transform.py``. The script checks that every Gumbel decision
  and code has a margin over its runner-up, so rounding cannot flip them.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from safetensors.torch import save_file
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = [
    "modeling_visual_tokenzier.py",
    "modeling_visual_encoder.py",
    "modeling_decoder.py",
    "modeling_motion_tokenizer.py",
    "modeling_video_lavit_hf.py",
]
# The tiny model in our config's field names (LaVITKeyframeConfig). merger_mlp_ratio is
# LaVIT's fixed 4.3637; merger depth and heads are DynamicVisualTokenizer's layers / heads.
TINY = {
    "input_size": 28,
    "patch_size": 7,
    "vit_width": 16,
    "vit_depth": 2,
    "vit_heads": 2,
    "vit_mlp_ratio": 2.0,
    "vit_embed_dim": 8,
    "merger_depth": 2,
    "merger_heads": 2,
    "merger_mlp_ratio": 4.3637,
    "codebook_size": 32,
    "code_dim": 4,
    "feature_dim": 12,
    "decoder_width": 16,
    "decoder_depth": 2,
    "decoder_heads": 2,
    "decoder_mlp_ratio": 2.0,
    "decoder_out_dim": 12,
    "context_dims": [6, 10],
    "pooled_dim": 10,
}
BATCH = 3
GUMBEL_SEED = 3
VISUAL_OFFSET = 32002  # LaVIT's first visual id
MIN_MARGIN = 1e-4


def export_conversation(lavit: Path, commit: str, scratch: Path) -> None:
    """``modeling_video_lavit_hf.py`` imports ``conversation`` from VideoLaVIT's root."""
    source = subprocess.run(
        ["git", "-C", str(lavit), "show", f"{commit}:VideoLaVIT/conversation.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (scratch / "conversation.py").write_text(source)


def processor_constants(lavit: Path, commit: str) -> tuple[list[float], list[float]]:
    """``LaVITImageProcessor``'s mean and std, read from LaVIT's ``transform.py``."""
    source = subprocess.run(
        ["git", "-C", str(lavit), "show", f"{commit}:VideoLaVIT/models/transform.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    block = source[source.index("class LaVITImageProcessor") :]
    mean, std = (
        [float(v) for v in re.search(rf"{name} = \(([^)]*)\)", block).group(1).split(",")]
        for name in ("mean", "std")
    )
    return mean, std


def shapes(module: nn.Module, prefix: str = "") -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in module.state_dict().items() if key.startswith(prefix)}


def key_tables(tokenizer_module, decoder_module, hf_module) -> dict[str, dict[str, list[int]]]:
    """The released configurations' key -> shape tables, parameters on the meta device
    (accelerate's ``init_empty_weights``: LaVIT's constructors call ``.item()``, which a
    meta-device default refuses)."""
    from transformers import LlamaConfig

    with init_empty_weights():
        encoder = tokenizer_module.DynamicVisualTokenizer()
        decoder = decoder_module.HighresVQDecoder(depth=12)
        config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=128
        )
        config.use_xformers = False
        llm = hf_module.VideoLaVITLlamaForCausalLM(config)
    visual = {
        key: value
        for key, value in shapes(llm).items()
        if key.startswith(("model.visual_tokenizer.", "model.motion_tokenizer."))
    }
    return {"encoder": shapes(encoder), "decoder": shapes(decoder), "visual_weight": visual}


def redraw(model: nn.Module, generator: torch.Generator) -> None:
    """Every tensor redrawn: weights of variance 1 / fan_in, biases 0.1 N(0, 1), norm gains
    1 + 0.2 N(0, 1), embeddings 0.5 N(0, 1), codebook rows of lengths in [0.6, 1.4]."""
    with torch.no_grad():
        for key, tensor in sorted(model.state_dict().items()):
            noise = torch.randn(tensor.shape, generator=generator)
            if key.endswith("quantize.embedding.weight"):
                lengths = 0.6 + 0.8 * torch.rand(tensor.shape[0], 1, generator=generator)
                tensor.copy_(F.normalize(noise, dim=-1) * lengths)
            elif re.search(r"(norm\d?|ln_vision|in_conv\.0)\.weight$", key):
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.ndim == 1:
                tensor.copy_(0.1 * noise)
            elif re.search(r"(pos_embed|cls_token|query_embed|positional_embedding)$", key):
                tensor.copy_(0.5 * noise)
            else:
                tensor.copy_(noise / (tensor[0].numel() ** 0.5))


def tiny_models(tokenizer_module, encoder_module, decoder_module):
    """LaVIT's tokenizer and decoder at ``TINY`` (see the module docstring)."""
    t = TINY
    with init_empty_weights():
        tokenizer = tokenizer_module.DynamicVisualTokenizer(
            img_size=t["input_size"],
            patch_size=t["patch_size"],
            width=t["vit_width"],
            layers=t["merger_depth"],
            heads=t["merger_heads"],
            n_code=t["codebook_size"],
            code_dim=t["code_dim"],
        )
    tokenizer.encoder = encoder_module._build_vision_tower(
        embed_dim=t["vit_embed_dim"],
        vision_cfg={
            "image_size": t["input_size"],
            "layers": t["vit_depth"],
            "width": t["vit_width"],
            "head_width": t["vit_width"] // t["vit_heads"],
            "mlp_ratio": t["vit_mlp_ratio"],
            "patch_size": t["patch_size"],
            "drop_path_rate": 0,
            "fusedLN": True,
        },
    )
    tokenizer.vit_proj = nn.Linear(t["vit_width"], t["feature_dim"])
    tokenizer = tokenizer.to_empty(device="cpu")

    decoder = decoder_module.HighresVQDecoder(
        img_size=t["input_size"],
        patch_size=t["patch_size"],
        in_chans=t["code_dim"],
        embed_dim=t["decoder_width"],
        depth=t["decoder_depth"],
        num_heads=t["decoder_heads"],
        mlp_ratio=t["decoder_mlp_ratio"],
    )
    out = t["decoder_out_dim"]
    decoder.decode_task_layer[2] = nn.Linear(t["decoder_width"], out)
    decoder.unet_proj_1 = nn.Linear(out, t["context_dims"][0])
    decoder.unet_proj_2 = nn.Linear(out, t["context_dims"][1])
    decoder.unet_attnpool = decoder_module.AttentionPool2d(
        (t["input_size"] // t["patch_size"]) ** 2, out, t["decoder_heads"], t["pooled_dim"]
    )
    generator = torch.Generator().manual_seed(1)
    redraw(tokenizer, generator)
    redraw(decoder, generator)
    return tokenizer.eval(), decoder.eval()


def check_margins(tokenizer, pixels: torch.Tensor) -> None:
    """Exit unless every Gumbel decision and every code beats its runner-up by MIN_MARGIN."""
    with torch.no_grad():
        feats = tokenizer.encoder(pixels, return_all_features=True)[:, 1:]
        scores = tokenizer.token_predictor(feats, torch.ones(*feats.shape[:2], 1)).reshape(len(feats), -1, 2)
        torch.manual_seed(GUMBEL_SEED)
        perturbed = scores - torch.empty_like(scores).exponential_().log()
        keep_margin = float((perturbed[..., 0] - perturbed[..., 1]).abs().min())
        keep = (perturbed.argmax(-1) == 0).float()
        merged = tokenizer.causal_encoder(feats, keep)[keep.bool()]
        z = F.normalize(tokenizer.encode_task_layer(merged), dim=-1)
        dist = (z[:, None] - tokenizer.quantize.embedding.weight[None]).pow(2).sum(-1).sort(dim=1).values
    code_margin = float((dist[:, 1] - dist[:, 0]).min())
    counts = keep.sum(1).tolist()
    if min(keep_margin, code_margin) < MIN_MARGIN or min(counts) < 1 or len(set(counts)) < 2:
        raise SystemExit(f"margins {keep_margin:.2e} / {code_margin:.2e}, counts {counts}: pick other seeds")


def tiny_outputs(tokenizer, decoder, mean: list[float], std: list[float]) -> dict[str, torch.Tensor]:
    """LaVIT's outputs for the fixture images, through its own methods."""
    t = TINY
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(
        0, 256, (BATCH, 3, t["input_size"], t["input_size"]), generator=generator, dtype=torch.uint8
    )
    pixels = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    check_margins(tokenizer, pixels)
    with torch.no_grad():
        torch.manual_seed(GUMBEL_SEED)
        ids = tokenizer.tokenize_image(pixels)
        torch.manual_seed(GUMBEL_SEED)
        features = tokenizer.encode_features(pixels)
        # generate_image_embeds: strip the offset, look the codes up, run the decoder
        codes = [row - VISUAL_OFFSET for row in ids]
        counts = torch.tensor([len(row) for row in codes])
        context, pooled = decoder(tokenizer.quantize.embedding(torch.cat(codes)), counts)
    assert counts.tolist() == [len(row) for row in features]
    return {
        "fixture.images": images,
        "fixture.codes": torch.cat(codes),
        "fixture.counts": counts,
        "fixture.features": torch.cat(features),
        "fixture.context": context.contiguous(),
        "fixture.pooled": pooled.contiguous(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lavit", type=Path, required=True, help="a clone or bare git dir of jy0205/LaVIT")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument(
        "--scratch", type=Path, default=Path("/tmp/lavit_fixtures"), help="outside the project"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "lavit")
    args = parser.parse_args(argv)
    if args.scratch.resolve().is_relative_to(REPO_ROOT):
        raise SystemExit("--scratch must be outside the project: LaVIT's code never enters it")
    torch.set_num_threads(1)
    from lavit_fixtures import export_lavit, prepare_imports  # beside this script (run as one)

    # transformers checks for torchvision when first imported: before the stand-ins go in
    importlib.import_module("transformers").LlamaForCausalLM  # noqa: B018 (loads the lazy module)
    commit = export_lavit(args.lavit, args.commit, args.scratch, MODEL_FILES)
    export_conversation(args.lavit, commit, args.scratch)
    prepare_imports(args.scratch)
    tokenizer_module = importlib.import_module("models.modeling_visual_tokenzier")
    encoder_module = importlib.import_module("models.modeling_visual_encoder")
    decoder_module = importlib.import_module("models.modeling_decoder")
    hf_module = importlib.import_module("models.modeling_video_lavit_hf")

    args.out.mkdir(parents=True, exist_ok=True)
    tables = key_tables(tokenizer_module, decoder_module, hf_module)
    with gzip.open(args.out / "keyframe_key_tables.json.gz", "wt") as file:
        json.dump({"commit": commit, **tables}, file, indent=0, sort_keys=True)
    tokenizer, decoder = tiny_models(tokenizer_module, encoder_module, decoder_module)
    mean, std = processor_constants(args.lavit, commit)
    tensors = (
        {key: value.contiguous() for key, value in tokenizer.state_dict().items()}
        | {f"decoder.{key}": value.contiguous() for key, value in decoder.state_dict().items()}
        | tiny_outputs(tokenizer, decoder, mean, std)
    )
    metadata = {"commit": commit, "tiny": json.dumps(TINY), "gumbel_seed": str(GUMBEL_SEED)}
    save_file(tensors, args.out / "tiny_keyframe.safetensors", metadata=metadata)
    print(f"wrote {args.out} from LaVIT {commit[:10]} (torch {torch.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
