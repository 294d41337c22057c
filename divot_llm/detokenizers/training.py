"""Training pieces around the de-tokenizer (none of this is in the reference release).

Three recipes share one loss, ``detokenizer.loss(video, features)`` (v-prediction MSE on the
VAE latents of the 16-frame clip, conditioning dropout to the zero-clip features):

(a) **de-tokenizer training** with the frozen tokenizer: ``features = tokenizer_features(
    tokenizer, video)``, the tokenizer seeing 5 of the clip's frames (reference §3.2);
(b) **tokenizer training** through the diffusion loss (``TokenizerDiffusionObjective``):
    the ViT stays frozen, the temporal encoder, ST transformer and resampler train jointly
    with the UNet and the conditioning resampler; the VAE is frozen. Dropped clips are
    replaced by zero clips *before* the tokenizer, so the unconditional input stays "the
    tokenizer's features of a zero clip" as the tokenizer changes;
(c) **de-tokenizer adaptation** (stage 2): the same loss with ``features`` sampled from a
    trained Divot-LLM's GMM for the clip's caption (``divot_llm.model.generation.
    generate_features(...).feats``), usually training the UNet and/or the resampler only.

A training engine wraps the de-tokenizer (its ``forward`` is the loss) or the objective
module, and owns optimiser, precision, checkpointing and logging.
"""

from __future__ import annotations

import torch
from torch import nn

from divot_llm.detokenizers.base import VideoDetokenizer
from divot_llm.metrics import reconstruction_metrics
from divot_llm.tokenizers.base import VideoTokenizer
from divot_llm.tokenizers.divot import DivotTokenizer
from divot_llm.tokenizers.divot_layers import TemporalEncoder


def tokenizer_frame_positions(num_frames: int, frames_per_clip: int) -> list[int]:
    """Which of a decoded clip's frames the tokenizer sees: every ``stride``-th frame plus
    the last, with ``stride = num_frames // (frames_per_clip - 1)``. For 16 frames and a
    5-frame tokenizer: 0, 4, 8, 12, 15 (the data pipeline's ``clip_positions``).

    Raises:
        ValueError: fewer frames than the tokenizer needs.
    """
    if frames_per_clip == 1:
        return [0]
    stride = num_frames // (frames_per_clip - 1)
    if stride == 0:
        raise ValueError(f"a {num_frames}-frame clip cannot feed a {frames_per_clip}-frame tokenizer")
    return [*range(0, num_frames, stride)][: frames_per_clip - 1] + [num_frames - 1]


def tokenizer_frames(video_bfchw: torch.Tensor, frames_per_clip: int) -> torch.Tensor:
    """The tokenizer's frames of a clip: ``(B, F, 3, H, W)`` -> ``(B, frames_per_clip, 3, H, W)``."""
    return video_bfchw[:, tokenizer_frame_positions(video_bfchw.shape[1], frames_per_clip)]


def tokenizer_features(tokenizer: VideoTokenizer, video_bfchw: torch.Tensor) -> torch.Tensor:
    """Frozen conditioning features of clips (recipe a): ``(B, F, 3, H, W)`` -> ``(B, N, D)``."""
    return tokenizer.encode(tokenizer_frames(video_bfchw, tokenizer.frames_per_clip).to(tokenizer.dtype))


def reconstruction_validation(
    detokenizer: VideoDetokenizer,
    tokenizer: VideoTokenizer,
    video_bfchw: torch.Tensor,
    steps: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Validation of recipes (a)/(b): tokenize clips, decode them (fixed seed), and report
    PSNR/SSIM of the reconstructions against the clips."""
    features = tokenizer_features(tokenizer, video_bfchw)
    recon = detokenizer.decode(features, steps=steps, seed=seed)
    return reconstruction_metrics(recon, video_bfchw.to(recon.device))


class TokenizerDiffusionObjective(nn.Module):
    """Recipe (b): train the Divot tokenizer (all but its ViT) through the de-tokenizer's loss.

    On construction the tokenizer's ``encoder`` (temporal encoder, norm, ST transformer,
    resampler) is made trainable, its ViT stays frozen, and the de-tokenizer's UNet and
    resampler train (its VAE is always frozen).

    Args:
        tokenizer: the Divot tokenizer to train.
        detokenizer: the de-tokenizer trained jointly.
        cond_drop_prob: share of clips replaced by zero clips (classifier-free guidance
            dropout); the de-tokenizer config's when None.

    Example:
        >>> objective = TokenizerDiffusionObjective(tokenizer, detok)
        >>> optimizer = torch.optim.AdamW(p for p in objective.parameters() if p.requires_grad)
        >>> objective(video_bfchw).backward()  # (B, 16, 3, 256, 256) clips in [-1, 1]
        >>> objective.refresh_null_features()  # before saving the de-tokenizer
    """

    def __init__(
        self, tokenizer: DivotTokenizer, detokenizer: VideoDetokenizer, cond_drop_prob: float | None = None
    ) -> None:
        super().__init__()
        if not isinstance(tokenizer, DivotTokenizer):
            raise TypeError(f"tokenizer training needs a DivotTokenizer, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.detokenizer = detokenizer
        self.cond_drop_prob = detokenizer.config.cond_drop_prob if cond_drop_prob is None else cond_drop_prob
        tokenizer.encoder.requires_grad_(True)  # the ViT keeps requires_grad=False
        detokenizer.set_trainable(diffusion_model=True, image_proj_model=True)

    def encode(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        """Tokenizer features with gradients through everything after the ViT."""
        with torch.no_grad():  # frozen ViT: no activations kept for backward
            patches_bfpc = self.tokenizer.frame_patches(frames_bfchw.to(self.tokenizer.dtype))
        return self.tokenizer.encoder(patches_bfpc)

    def forward(self, video_bfchw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffusion loss of clips ``(B, F, 3, H, W)`` in [-1, 1], conditioned on the
        features the tokenizer (being trained) gives them."""
        video_bfchw = video_bfchw.to(self.detokenizer.device)
        frames = tokenizer_frames(video_bfchw, self.tokenizer.frames_per_clip)
        if self.cond_drop_prob > 0:
            uniform_b = torch.rand(frames.shape[0], generator=generator)  # CPU draw (None: global RNG)
            keep_b = (uniform_b >= self.cond_drop_prob).to(frames.device, frames.dtype)
            frames = frames * keep_b[:, None, None, None, None]  # dropped clips become all-zero clips
        features = self.encode(frames)
        return self.detokenizer.loss(video_bfchw, features, cond_drop_prob=0.0, generator=generator)

    @torch.no_grad()
    def refresh_null_features(self) -> None:
        """Store the current tokenizer's zero-clip features in the de-tokenizer (its
        unconditional input at inference)."""
        size = self.tokenizer.input_size
        zeros = torch.zeros(1, self.tokenizer.frames_per_clip, 3, size, size, device=self.tokenizer.device)
        zeros = zeros.to(self.tokenizer.dtype)
        self.detokenizer.set_null_features(self.encode(zeros)[0])


def apply_reference_zero_init(temporal_encoder: TemporalEncoder) -> None:
    """The reference's ``zero_init=True`` for a temporal encoder trained from scratch
    (reference §3.1): identity input projection (first ``width`` input dims), zero
    positional embedding, zero attention/MLP output projections and zero output
    projection, so every block starts as an identity and the features start constant."""
    with torch.no_grad():
        nn.init.eye_(temporal_encoder.input_proj.weight)
        nn.init.zeros_(temporal_encoder.input_proj.bias)
        nn.init.zeros_(temporal_encoder.positional_embedding)
        for block in temporal_encoder.transformer.resblocks:
            for layer in (block.attn.out_proj, block.mlp.c_proj):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(temporal_encoder.output_proj.weight)
        nn.init.zeros_(temporal_encoder.output_proj.bias)


def trainable_parameter_names(module: nn.Module) -> list[str]:
    """Names of the parameters that require grad (to log what a recipe trains)."""
    return [name for name, param in module.named_parameters() if param.requires_grad]
