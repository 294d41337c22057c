"""Video-LaVIT's keyframe tokenizer (arch ``lavit``; ``keyframe_tokenizer=lavit``): LaVIT's
dynamic visual tokenizer and its codes -> embeddings decoder.

An image ``(3, S, S)`` uint8 is normalised with CLIP's mean and std and goes through the
frozen EVA-CLIP ViT to P = (S / patch)^2 patch features. The token predictor scores each
patch and a Gumbel draw keeps a variable number n of them (LaVIT samples; ``generator`` makes
it reproducible); the token merger folds the dropped patches into the kept ones. Then either

* ``encode``: the Linear-Tanh-Linear ``encode_task_layer`` to ``code_dim``, L2
  normalisation and the nearest of ``codebook_size`` codes -> n codes, or
* ``encode_features``: ``vit_proj`` to ``feature_dim`` -> n continuous features (LaVIT's
  understanding path, with the merger and ``vit_proj`` weights trained with the LLM).

``decode_embeds`` turns codes back into the keyframe de-tokenizer's condition (LaVIT's
``generate_image_embeds``). Everything runs in eval mode without gradients: the release is
inference-only.

Submodule names are the released ``visual_tokenizer/tokenizer_encoder.bin``'s and
``highres_tokenizer_decoder.bin``'s, which load strictly; the key/shape tables and a tiny
model's outputs are checked against LaVIT's own code (``tools/lavit_keyframe_fixtures.py``,
``tests/fixtures/lavit/``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.layout import (
    KEYFRAME_TOKENIZER_CONFIG,
    LAVIT_EVA_VIT,
    LAVIT_TOKENIZER_DECODER,
    LAVIT_TOKENIZER_ENCODER,
)
from divot_llm.tokenizers.base import PretrainedComponent, config_value, state_dict_mismatch
from divot_llm.tokenizers.keyframe.lavit_config import LaVITKeyframeConfig, check_config, num_patches
from divot_llm.tokenizers.keyframe.lavit_layers import (
    CodesDecoder,
    EvaViT,
    TokenMerger,
    TokenPredictor,
    sample_keep,
)
from divot_llm.tokenizers.keyframe.registry import register_keyframe_tokenizer
from divot_llm.tokenizers.motion.lavit import read_state_dict  # a released .bin or a .safetensors
from divot_llm.tokenizers.motion.lavit_layers import CosineCodebook
from divot_llm.tokenizers.preprocess import CLIP_MEAN, CLIP_STD

# the release's file names (visual_tokenizer/), which save_pretrained also writes. LaVIT reads
# the ViT's weights from EVA_FILE beside the encoder's (build_eva_clip), then the encoder file
# over them, non-strictly; the two together must cover the encoder here.
ENCODER_FILE, DECODER_FILE, EVA_FILE = LAVIT_TOKENIZER_ENCODER, LAVIT_TOKENIZER_DECODER, LAVIT_EVA_VIT
EVA_PREFIX = "encoder."


@register_keyframe_tokenizer("lavit")
class LaVITKeyframeTokenizer(PretrainedComponent):
    """Images ``(B, 3, S, S)`` uint8 -> per image n_i codes (or features); codes -> the image
    de-tokenizer's condition.

    Args:
        config: architecture (checked by ``check_config``); ``from_config`` also loads
            ``pretrained_path`` and ``decoder_path``.

    Example:
        >>> tokenizer = LaVITKeyframeTokenizer.from_config(cfg.keyframe_tokenizer)  # keyframe_tokenizer=lavit
        >>> codes = tokenizer.encode(images_b3ss)  # list of B (n_i,) int64, n_i <= 256
        >>> context_bne, pooled_bp = tokenizer.decode_embeds(codes)  # (B, 256, 2048), (B, 1280)
    """

    config_class = LaVITKeyframeConfig
    config_file = KEYFRAME_TOKENIZER_CONFIG

    def __init__(self, config: LaVITKeyframeConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        c, width = config, config.vit_width
        self.encoder = EvaViT(
            c.input_size, c.patch_size, width, c.vit_depth, c.vit_heads, c.vit_mlp_ratio, c.vit_embed_dim
        )
        self.token_predictor = TokenPredictor(width)
        self.causal_encoder = TokenMerger(width, c.merger_heads, c.merger_depth, c.merger_mlp_ratio)
        self.quantize = CosineCodebook(c.codebook_size, c.code_dim)
        self.encode_task_layer = nn.Sequential(
            nn.Linear(width, width), nn.Tanh(), nn.Linear(width, c.code_dim)
        )
        self.vit_proj = nn.Linear(width, c.feature_dim)
        self.decoder = (
            CodesDecoder(
                num_patches(c),
                c.code_dim,
                c.decoder_width,
                c.decoder_depth,
                c.decoder_heads,
                c.decoder_mlp_ratio,
                c.decoder_out_dim,
                c.context_dims,
                c.pooled_dim,
            )
            if c.build_decoder
            else None
        )
        self.requires_grad_(False)  # inference only (the release's ViT is frozen; nothing here trains)
        self.eval()

    def train(self, mode: bool = True) -> LaVITKeyframeTokenizer:
        """Always eval: no dropout anywhere, and ``encode`` is the released behaviour."""
        return super().train(False)

    @classmethod
    def from_config(cls, config: LaVITKeyframeConfig) -> LaVITKeyframeTokenizer:
        """Build from a config; ``pretrained_path`` (the released ``tokenizer_encoder.bin``, a
        ``.safetensors`` or a folder holding it) and ``decoder_path`` are loaded strictly when
        set, random weights when null."""
        tokenizer = cls(config)
        if config.pretrained_path is not None:
            load_encoder_weights(tokenizer, config.pretrained_path)
        if config.decoder_path is not None:
            if tokenizer.decoder is None:
                raise ValueError("decoder_path is set but build_decoder is false")
            load_decoder_weights(tokenizer, config.decoder_path)
        return tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LaVITKeyframeTokenizer:
        """Load a folder written by ``save_pretrained``, or a released ``visual_tokenizer/``
        folder (no ``keyframe_tokenizer_config.json``: the release's config)."""
        folder = Path(path)
        decoder = folder / DECODER_FILE
        paths = {
            "pretrained_path": str(folder / ENCODER_FILE),
            "decoder_path": str(decoder) if decoder.is_file() else None,
        }
        if (folder / KEYFRAME_TOKENIZER_CONFIG).is_file():
            config = cls._saved_config(folder, **paths)
        else:
            config = LaVITKeyframeConfig(**paths)
        return cls.from_config(config)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the release's files -- ``tokenizer_encoder.bin`` (all but the decoder,
        ``encoder.*`` included) and ``highres_tokenizer_decoder.bin`` (when built), raw state
        dicts under the released key names -- and ``keyframe_tokenizer_config.json``."""
        folder = self._save_config(path, pretrained_path=None, decoder_path=None)
        torch.save(self.encoder_state_dict(), folder / ENCODER_FILE)
        if self.decoder is not None:
            torch.save(
                {k: v.contiguous() for k, v in self.decoder.state_dict().items()}, folder / DECODER_FILE
            )

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """``tokenizer_encoder.bin``'s tensors: the state dict without ``decoder.*``."""
        return {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("decoder.")}

    # ---------------------------------------------------------------------- shapes

    input_size = config_value("input_size")
    codebook_size = config_value("codebook_size")
    code_dim = config_value("code_dim")
    feature_dim = config_value("feature_dim")

    @property
    def max_tokens(self) -> int:
        """P = (input_size / patch_size)^2: the most codes an image gets (256 released)."""
        return num_patches(self.config)

    @property
    def embed_dim(self) -> int:
        """Width of ``decode_embeds``' per-query context (2048 released)."""
        return sum(self.config.context_dims)

    @property
    def pooled_dim(self) -> int:
        return self.config.pooled_dim

    @property
    def codebook(self) -> nn.Embedding:
        """The ``(codebook_size, code_dim)`` code vectors (``quantize.embedding``)."""
        return self.quantize.embedding

    # ------------------------------------------------------------------ the steps

    def pixels(self, images_b3ss: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` -> CLIP-normalised pixels in the model's dtype (what
        LaVIT's processor gives an S x S image: ``to_tensor`` then mean/std, in fp32)."""
        self._check_images(images_b3ss)
        x = images_b3ss.to(self.device).float() / 255.0
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def merged_features(
        self, images_b3ss: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(merged (B, P, D), keep (B, P) bool)``: the merger's output for every patch and
        which patches the Gumbel draw from ``generator`` kept (at least one per image is not
        guaranteed by LaVIT; an image may get none)."""
        feats_bpd = self.encoder(self.pixels(images_b3ss))
        scores_bp2 = self.token_predictor(feats_bpd)
        keep_bp = sample_keep(scores_bp2.float(), generator).to(feats_bpd.dtype)
        return self.causal_encoder(feats_bpd, keep_bp), keep_bp.bool()

    @torch.no_grad()
    def encode(
        self, images_b3ss: torch.Tensor, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """uint8 ``(B, 3, S, S)`` -> B int64 code tensors ``(n_i,)`` in [0, codebook_size), the
        kept patches in raster order. The keep draw uses ``generator`` (on the model's device;
        the default one when None: then like LaVIT's ``tokenize_image`` after
        ``torch.manual_seed``)."""
        merged_bpd, keep_bp = self.merged_features(images_b3ss, generator)
        head = self.encode_task_layer
        z_nc = F.normalize(head(merged_bpd[keep_bp].to(head[-1].weight.dtype)), dim=-1)
        codes_n = self.quantize.nearest(z_nc)
        return list(codes_n.split(keep_bp.sum(dim=1).tolist()))

    @torch.no_grad()
    def encode_features(
        self, images_b3ss: torch.Tensor, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """uint8 ``(B, 3, S, S)`` -> B tensors ``(n_i, feature_dim)``: ``vit_proj`` of the kept
        patches' merged features (LaVIT's ``encode_features``, the understanding input)."""
        merged_bpd, keep_bp = self.merged_features(images_b3ss, generator)
        return list(self.vit_proj(merged_bpd[keep_bp]).split(keep_bp.sum(dim=1).tolist()))

    @torch.no_grad()
    def decode_embeds(self, codes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """B code tensors ``(n_i,)`` (1 <= n_i <= max_tokens) -> the keyframe de-tokenizer's
        condition: ``(context (B, max_tokens, embed_dim), pooled (B, pooled_dim))``, LaVIT's
        ``generate_image_embeds`` (its ``prompt_embeds`` and ``pooled_prompt_embeds``)."""
        if self.decoder is None:
            raise ValueError(f"{self.config.name!r} was built without its decoder (build_decoder: false)")
        if not codes:
            raise ValueError("expected a non-empty list of code tensors")
        for row, codes_n in enumerate(codes):
            if codes_n.ndim != 1 or codes_n.is_floating_point() or not 1 <= len(codes_n) <= self.max_tokens:
                raise ValueError(
                    f"codes[{row}]: expected 1 to {self.max_tokens} integer codes (n,), got {codes_n.dtype} "
                    f"of shape {tuple(codes_n.shape)}"
                )
            if codes_n.min() < 0 or codes_n.max() >= self.codebook_size:
                raise ValueError(
                    f"codes[{row}] must lie in [0, {self.codebook_size}), got [{int(codes_n.min())}, {int(codes_n.max())}]"
                )
        vectors = [self.codebook(codes_n.to(self.device)).to(self.dtype) for codes_n in codes]
        return self.decoder(vectors)

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.input_size
        expected = f"(B, 3, {size}, {size}) uint8 images"
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"expected {expected}, got {got}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"expected {expected}, got shape {tuple(images.shape)} (resize keyframes to input_size first)"
            )


# ------------------------------------------------------------------------ weights


def check_state_dict(module: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Raise ValueError naming the keys missing from or unexpected in ``weights`` and those
    of other shapes than ``module``'s (e.g. a config that is not the file's)."""
    problems = state_dict_mismatch(module.state_dict(), weights)
    if problems:
        raise ValueError(f"{what} does not fit: {problems}")


def load_encoder_weights(model: LaVITKeyframeTokenizer, path: str | os.PathLike) -> None:
    """Load ``tokenizer_encoder.bin`` (or a folder holding it) into everything but the
    decoder, strictly. An ``eva_vitg_psz14.bin`` beside it (the release's ViT file, keys
    without ``encoder.``) supplies the ViT keys the encoder file lacks, as upstream reads
    them; the two together must then match exactly.

    Raises:
        ValueError: keys missing, unexpected, or of other shapes -- each named.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ENCODER_FILE
    weights = read_state_dict(path)
    eva = path.with_name(EVA_FILE)
    if eva.is_file():
        weights = {EVA_PREFIX + key: value for key, value in read_state_dict(eva).items()} | weights
    load_encoder_state(model, weights, f"{path} (keyframe tokenizer config {model.config.name!r})")


def load_encoder_state(model: LaVITKeyframeTokenizer, weights: dict[str, torch.Tensor], what: str) -> None:
    """``weights`` (``tokenizer_encoder.bin``'s keys) into everything but the decoder,
    strictly; ValueError naming the misfits (see ``check_state_dict``), ``what`` the source."""
    target = nn.ModuleDict({name: child for name, child in model.named_children() if name != "decoder"})
    check_state_dict(target, weights, what)
    target.load_state_dict(weights, strict=True)


def load_decoder_weights(model: LaVITKeyframeTokenizer, path: str | os.PathLike) -> None:
    """Load ``highres_tokenizer_decoder.bin`` (or a folder holding it) into the decoder,
    strictly (its keys have no prefix, as released).

    Raises:
        ValueError: keys missing, unexpected, or of other shapes -- each named.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DECODER_FILE
    weights = read_state_dict(path)
    check_state_dict(model.decoder, weights, f"{path} (keyframe decoder of config {model.config.name!r})")
    model.decoder.load_state_dict(weights, strict=True)
