"""The trainable VidTok v1.0 autoencoder and the loader of the released weights.

``VidTokAutoencoder`` works on VidTok's layout, ``(B, 3, T, H, W)`` in [-1, 1]; latents
are ``(B, C, T', H / s, W / s)`` and FSQ indices ``(B, T', H / s, W / s)`` int64. Its
state dict is exactly the released checkpoints' ``encoder.*`` / ``decoder.*``.

Example:
    >>> model = VidTokAutoencoder(config)
    >>> load_vidtok_weights(model, "vidtok_kl_causal_488_4chn.ckpt")
    >>> z_bcthw, log = model.encode(video_bcthw)  # 17 x 256^2 -> (B, 4, 5, 32, 32)
    >>> video_rec_bcthw = model.decode(z_bcthw)
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from divot_llm.tokenizers.vidtok.config import (
    VidTokConfig,
    check_config,
    codebook_size,
    frame_rule,
    latent_frames,
    spatial_factor,
)
from divot_llm.tokenizers.vidtok.networks import VidTokDecoder, VidTokEncoder
from divot_llm.tokenizers.vidtok.regularizers import FSQRegularizer, GaussianRegularizer

WEIGHT_PREFIXES = ("encoder.", "decoder.")  # the autoencoder's part of a release .ckpt
VIDTOK_WEIGHTS = "model.safetensors"  # save_pretrained: encoder.* / decoder.* (release names)


class VidTokAutoencoder(nn.Module):
    """Encoder, regularizer (KL or FSQ) and decoder of VidTok v1.0; trainable.

    Args:
        config: the architecture; checked by ``check_config``.
    """

    def __init__(self, config: VidTokConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        self.encoder = VidTokEncoder(config)
        self.decoder = VidTokDecoder(config)
        self.regularizer = GaussianRegularizer() if config.regularizer == "kl" else FSQRegularizer(config)

    # ------------------------------------------------------------------ metadata

    @property
    def is_causal(self) -> bool:
        return self.config.causal

    @property
    def temporal_factor(self) -> int:
        return self.config.time_downsample_factor

    @property
    def spatial_factor(self) -> int:
        return spatial_factor(self.config)

    @property
    def codebook_size(self) -> int | None:
        return codebook_size(self.config)

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's final convolution weight (the GAN loss's adaptive weight)."""
        return self.decoder.last_layer

    def check_num_frames(self, num_frames: int) -> None:
        """Raise ValueError unless clips of ``num_frames`` frames round-trip unchanged."""
        tf = self.temporal_factor
        bad = num_frames < 1 or ((num_frames - 1) % tf if self.is_causal else num_frames % tf)
        if bad:
            raise ValueError(
                f"{num_frames} frames: {frame_rule(self.config)}; reconstruct() takes any length in chunks"
            )

    def _check_video(self, x_bcthw: torch.Tensor) -> None:
        if x_bcthw.ndim != 5 or x_bcthw.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, T, H, W) video, got shape {tuple(x_bcthw.shape)}")
        self.check_num_frames(x_bcthw.shape[2])
        factor = self.spatial_factor
        if x_bcthw.shape[3] % factor or x_bcthw.shape[4] % factor:
            raise ValueError(
                f"frame size {x_bcthw.shape[3]}x{x_bcthw.shape[4]} must be a multiple of the spatial factor "
                f"{factor}; reconstruct() pads any size"
            )

    # ------------------------------------------------------------ encode / decode

    def encode(
        self, x_bcthw: torch.Tensor, sample: bool = False, step: int = 0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latents of a video and the regularizer's log.

        Args:
            x_bcthw: ``(B, 3, T, H, W)`` in [-1, 1]; T per ``check_num_frames``.
            sample: KL only: a posterior sample instead of its mode (training).
            step: FSQ only: the training step, for the entropy weight's annealing.

        Returns:
            ``(B, C, T', h, w)`` latents (KL mode/sample, FSQ codes) and a dict: KL
            ``"kl_loss"``; FSQ ``"indices"`` ``(B, T', h, w)`` int64 and, when grad is
            enabled, ``"aux_loss"``.
        """
        self._check_video(x_bcthw)
        moments = self.encoder(x_bcthw)
        if self.config.regularizer == "kl":
            return self.regularizer(moments, sample=sample)
        return self.regularizer(moments, step=step)

    def decode(self, z_bcthw: torch.Tensor) -> torch.Tensor:
        """``(B, C, T', h, w)`` -> ``(B, 3, T, h * s, w * s)``; T = 1 + (T' - 1) * tf causal,
        T' * tf non-causal."""
        if z_bcthw.ndim != 5 or z_bcthw.shape[1] != self.config.z_channels:
            raise ValueError(
                f"expected (B, {self.config.z_channels}, T', h, w) latents, got shape {tuple(z_bcthw.shape)}"
            )
        return self.decoder(z_bcthw)

    def forward(
        self, x_bcthw: torch.Tensor, sample: bool | None = None, step: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass: ``(reconstruction, latents, regularizer log)``; ``sample`` (KL)
        defaults to ``config.sample`` (True: VidTok trains on posterior samples)."""
        sample = self.config.sample if sample is None else sample
        z_bcthw, log = self.encode(x_bcthw, sample=sample, step=step)
        return self.decode(z_bcthw), z_bcthw, log

    def _fsq(self) -> FSQRegularizer:
        if not isinstance(self.regularizer, FSQRegularizer):
            raise ValueError(f"{self.config.name} is a KL (continuous) VidTok: it has no discrete indices")
        return self.regularizer

    def encode_indices(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        """FSQ only: ``(B, 3, T, H, W)`` -> ``(B, T', h, w)`` int64 code indices."""
        self._fsq()
        return self.encode(x_bcthw)[1]["indices"]

    def decode_indices(self, indices_bthw: torch.Tensor) -> torch.Tensor:
        """FSQ only: ``(B, T', h, w)`` indices -> ``(B, 3, T, H, W)``."""
        codes_bcthw = self._fsq().indices_to_codes(indices_bthw)
        return self.decode(codes_bcthw.to(self.last_layer.dtype))

    # ------------------------------------------------------------ any length / size

    @torch.no_grad()
    def reconstruct(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        """Encode (posterior mode) and decode a video of any length and size; same shape out.

        As VidTok's inference scripts: non-overlapping chunks of ``chunk_frames`` frames
        (``chunk_frames + 1`` causal), the last one padded by repeating its last frame; the
        frame size is padded (replicate) to a multiple of the spatial factor. Padding is
        cropped off the output.
        """
        if x_bcthw.ndim != 5 or x_bcthw.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, T, H, W) video, got shape {tuple(x_bcthw.shape)}")
        num_frames, height, width = x_bcthw.shape[2:]
        factor = self.spatial_factor
        pad_h, pad_w = -height % factor, -width % factor
        if pad_h or pad_w:
            x_bcthw = F.pad(x_bcthw, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
        chunk = self.config.chunk_frames + (1 if self.is_causal else 0)
        pieces = []
        for start in range(0, num_frames, chunk):
            piece = x_bcthw[:, :, start : start + chunk]
            short = chunk - piece.shape[2]
            if short:
                piece = torch.cat([piece, piece[:, :, -1:].expand(-1, -1, short, -1, -1)], dim=2)
            pieces.append(self.decode(self.encode(piece)[0])[:, :, : chunk - short])
        return torch.cat(pieces, dim=2)[:, :, :, :height, :width]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, T', h, w)`` of a clip that ``check_num_frames`` accepts."""
        factor = self.spatial_factor
        return (
            self.config.z_channels,
            latent_frames(self.config, num_frames),
            height // factor,
            width // factor,
        )


def read_vidtok_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` / ``decoder.*`` tensors of a released Lightning ``.ckpt`` (its
    ``state_dict``; the loss's LPIPS/discriminator keys are dropped), a ``.safetensors``
    file, or a ``save_pretrained`` folder's ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / VIDTOK_WEIGHTS
    if path.suffix == ".safetensors":
        weights = load_file(path)
    else:
        try:
            # mmap: a training checkpoint's optimizer state is never read into memory
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path} holds more than tensors (torch.load(weights_only=True) refused it: {err}); save its "
                "'state_dict' alone, or as .safetensors, and load that"
            ) from err
        weights = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(weights, dict):
            raise ValueError(f"{path} holds no state dict")
    return {key: value for key, value in weights.items() if key.startswith(WEIGHT_PREFIXES)}


def load_vidtok_weights(model: VidTokAutoencoder, path: str | os.PathLike) -> None:
    """Load released (or our exported) VidTok weights into ``model`` strictly.

    Raises:
        ValueError: the file's encoder/decoder tensors do not fit ``model``'s config.
    """
    state_dict = read_vidtok_state_dict(path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the VidTok config {model.config.name!r}: {err}") from err
