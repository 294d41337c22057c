"""Video-LaVIT's motion tokenizer (arch ``lavit``; ``motion_tokenizer=lavit``).

A motion field ``(B, 2, F, H, W)`` (``divot_llm.data.motion_vectors``, in
``data.motion.rescale`` units) goes through the space-time encoder to a ``(t, h, w)`` grid,
the Linear-Tanh-Linear ``encode_task_layer`` to ``code_dim``, L2 normalisation and the
nearest of ``codebook_size`` codes: N = t h w codes per clip (135 of 1024 for the release's
24 x 20 x 36). Decoding looks the codes up, runs the mirrored decoder and
``decode_task_layer`` back to the field. Trainable (``stage=motion_tokenizer``): ``forward``
returns the reconstruction, the latents and their straight-through quantization.

Submodule names are the released ``motion_tokenizer.bin``'s, which loads strictly
(``pretrained_path``); the key/shape table and a tiny model's outputs are checked against
LaVIT's own code (``tools/lavit_fixtures.py``, ``tests/fixtures/lavit/``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from divot_llm.layout import MOTION_TOKENIZER_CONFIG
from divot_llm.tokenizers.base import PretrainedComponent, config_value, state_dict_mismatch
from divot_llm.tokenizers.motion.lavit_config import LaVITMotionConfig, check_config, token_grid
from divot_llm.tokenizers.motion.lavit_layers import CosineCodebook, MotionDecoder, MotionEncoder
from divot_llm.tokenizers.motion.registry import register_motion_tokenizer

WEIGHTS_FILE = "model.safetensors"  # in a save_pretrained folder


@register_motion_tokenizer("lavit")
class LaVITMotionTokenizer(PretrainedComponent):
    """Motion fields ``(B, 2, F, H, W)`` <-> codes ``(B, N)``, N = t h w.

    Args:
        config: architecture (checked by ``check_config``); ``from_config`` also loads
            ``pretrained_path``.

    Example:
        >>> tokenizer = LaVITMotionTokenizer.from_config(cfg.motion_tokenizer)  # motion_tokenizer=lavit
        >>> codes_bn = tokenizer.encode(fields_b2fhw)  # (B, 2, 24, 20, 36) -> (B, 135)
        >>> fields_rec_b2fhw = tokenizer.decode(codes_bn)
    """

    config_class = LaVITMotionConfig
    config_file = MOTION_TOKENIZER_CONFIG

    def __init__(self, config: LaVITMotionConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        dim = config.embed_dim
        self.encoder = MotionEncoder(config)
        self.decoder = MotionDecoder(config)
        self.encode_task_layer = nn.Sequential(
            nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, config.code_dim)
        )
        self.decode_task_layer = nn.Sequential(
            nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, config.in_channels)
        )
        self.quantize = CosineCodebook(config.codebook_size, config.code_dim)

    @classmethod
    def from_config(cls, config: LaVITMotionConfig) -> LaVITMotionTokenizer:
        """Build from a config; ``pretrained_path`` (the released ``motion_tokenizer.bin``,
        a ``.safetensors`` or a ``save_pretrained`` folder) is loaded strictly when set,
        random weights when null."""
        tokenizer = cls(config)
        if config.pretrained_path is not None:
            load_motion_tokenizer_weights(tokenizer, config.pretrained_path)
        return tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LaVITMotionTokenizer:
        """Load a folder written by ``save_pretrained``."""
        return cls.from_config(cls._saved_config(path, pretrained_path=str(Path(path))))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``motion_tokenizer_config.json`` and ``model.safetensors`` (the release's
        key names)."""
        folder = self._save_config(path, pretrained_path=None)
        save_file(
            {key: value.contiguous() for key, value in self.state_dict().items()}, folder / WEIGHTS_FILE
        )

    # ---------------------------------------------------------------------- shapes

    codebook_size = config_value("codebook_size")
    code_dim = config_value("code_dim")

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(t, h, w) of the codes, in which order ``encode`` flattens them."""
        return token_grid(self.config)

    @property
    def num_tokens(self) -> int:
        """N = t h w codes per clip (135 for the release)."""
        t, h, w = self.token_grid
        return t * h * w

    @property
    def codebook(self) -> nn.Embedding:
        """The ``(codebook_size, code_dim)`` code vectors (``quantize.embedding``)."""
        return self.quantize.embedding

    # ------------------------------------------------------------- the three steps

    def encode_latents(self, fields_b2fhw: torch.Tensor) -> torch.Tensor:
        """``(B, 2, F, H, W)`` -> ``(B, N, code_dim)`` unit-length latents: the encoder, the
        task layer, then each token's ``code_dim`` vector L2-normalised -- exactly what the
        release normalises before its look-up (the codebook rows are not touched)."""
        self._check_fields(fields_b2fhw)
        feats_bthwd = self.encoder(fields_b2fhw.to(device=self.device, dtype=self.dtype))
        head = self.encode_task_layer
        # The release runs the bottleneck outside autocast, in its weights' dtype.
        with torch.autocast(feats_bthwd.device.type, enabled=False):
            z_bthwc = head(feats_bthwd.to(head[-1].weight.dtype))
        return F.normalize(z_bthwc.flatten(1, 3), dim=-1)

    def quantize_latents(self, z_bnd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N, code_dim)`` latents -> ``(zq (B, N, code_dim), codes (B, N) int64)``: each
        latent's nearest code (``CosineCodebook.nearest``); ``zq`` carries the code vector
        forward and the gradient straight through to ``z`` (``z + (e - z).detach()``)."""
        codes_bn = self.quantize.nearest(z_bnd.flatten(0, 1)).view(z_bnd.shape[:2])
        e_bnd = self.quantize.embedding(codes_bn).to(z_bnd.dtype)
        return z_bnd + (e_bnd - z_bnd).detach(), codes_bn

    def decode_latents(self, zq_bnd: torch.Tensor) -> torch.Tensor:
        """``(B, N, code_dim)`` (code vectors, in ``encode``'s token order) -> ``(B, 2, F, H, W)``
        fields in the input's units (``detokenizer_condition`` converts them for the de-tokenizer)."""
        if zq_bnd.ndim != 3 or zq_bnd.shape[1:] != (self.num_tokens, self.code_dim):
            raise ValueError(
                f"expected (B, N={self.num_tokens}, code_dim={self.code_dim}) code vectors, got shape "
                f"{tuple(zq_bnd.shape)}"
            )
        feats_bthwd = self.decoder(
            zq_bnd.unflatten(1, self.token_grid).to(device=self.device, dtype=self.dtype)
        )
        return self.decode_task_layer(feats_bthwd).permute(0, 4, 1, 2, 3)

    # ---------------------------------------------------------------- public use

    def forward(
        self, fields_b2fhw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: ``(recon (B, 2, F, H, W), z (B, N, code_dim), zq (B, N, code_dim),
        codes (B, N))``; gradients reach the encoder through the straight-through ``zq``."""
        z_bnd = self.encode_latents(fields_b2fhw)
        zq_bnd, codes_bn = self.quantize_latents(z_bnd)
        return self.decode_latents(zq_bnd), z_bnd, zq_bnd, codes_bn

    @torch.no_grad()
    def encode(self, fields_b2fhw: torch.Tensor) -> torch.Tensor:
        """``(B, 2, F, H, W)`` -> ``(B, N)`` int64 codes, (t, h, w) row-major."""
        return self.quantize_latents(self.encode_latents(fields_b2fhw))[1]

    @torch.no_grad()
    def decode(self, codes_bn: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` codes in [0, codebook_size) -> ``(B, 2, F, H, W)`` fields."""
        if codes_bn.ndim != 2 or codes_bn.shape[1] != self.num_tokens or codes_bn.is_floating_point():
            raise ValueError(
                f"expected (B, N={self.num_tokens}) integer codes, got {codes_bn.dtype} of shape {tuple(codes_bn.shape)}"
            )
        if codes_bn.numel() and (codes_bn.min() < 0 or codes_bn.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got [{int(codes_bn.min())}, {int(codes_bn.max())}]"
            )
        return self.decode_latents(self.codebook(codes_bn.to(self.device)))

    def detokenizer_condition(self, fields_b2fhw: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """A (reconstructed) field as the video de-tokenizer's motion condition: each frame
        bicubic-resized (no antialias) to ``height x width`` in fp32, times
        ``condition_scale`` (undoing ``data.motion.rescale``), back in the input's dtype."""
        return motion_condition(fields_b2fhw, height, width, self.config.condition_scale)

    def _check_fields(self, fields: torch.Tensor) -> None:
        c = self.config
        expected = (
            f"(B, {c.in_channels}, F={c.frames}, H={c.height}, W={c.width}) floating-point motion fields"
        )
        if not isinstance(fields, torch.Tensor):
            raise ValueError(f"expected a tensor of {expected}, got {type(fields).__name__}")
        if fields.ndim != 5 or tuple(fields.shape[1:]) != (c.in_channels, c.frames, c.height, c.width):
            raise ValueError(
                f"expected {expected}, got shape {tuple(fields.shape)} (data.motion's clip_frames/height/width "
                f"must match motion_tokenizer.frames/height/width)"
            )
        if not fields.is_floating_point():
            raise ValueError(f"expected {expected}, got dtype {fields.dtype}")


def motion_condition(fields_b2fhw: torch.Tensor, height: int, width: int, scale: float) -> torch.Tensor:
    """A field ``(B, 2, F, h, w)`` in the tokenizer's units as the video de-tokenizer's motion
    channels ``(B, 2, F, height, width)``: each frame bicubic-resized (no antialias) in fp32,
    times ``scale`` (the release's 1/10), back in the input's dtype."""
    batch, channels, frames = fields_b2fhw.shape[:3]
    frames_nchw = fields_b2fhw.transpose(1, 2).flatten(0, 1).float()
    resized = F.interpolate(frames_nchw, size=(height, width), mode="bicubic")
    resized = resized.view(batch, frames, channels, height, width).transpose(1, 2)
    return (resized * scale).to(fields_b2fhw.dtype)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of the released ``motion_tokenizer.bin`` (a raw state dict, loaded
    weights-only), a ``.safetensors`` file, or a ``save_pretrained`` folder."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds more than tensors (torch.load(weights_only=True) refused it: {err}); save the "
            "state dict alone, or as .safetensors"
        ) from err
    if not isinstance(weights, dict):
        raise ValueError(f"{path} holds no state dict (a {type(weights).__name__})")
    return weights


def load_motion_tokenizer_weights(model: LaVITMotionTokenizer, path: str | os.PathLike) -> None:
    """Load ``path`` (see ``read_state_dict``) into ``model`` strictly.

    Raises:
        ValueError: keys missing from or unexpected in the file, or tensors of other
            shapes (e.g. a config that is not the file's) -- each named.
    """
    weights = read_state_dict(path)
    problems = state_dict_mismatch(model.state_dict(), weights)
    if problems:
        raise ValueError(f"{path} does not fit the motion tokenizer config {model.config.name!r}: {problems}")
    model.load_state_dict(weights, strict=True)
