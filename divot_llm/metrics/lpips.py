"""LPIPS (Zhang et al. 2018) with VGG16 features: the perceptual distance VidTok reports
and trains with (its ``vidtok/modules/lpips.py``, from taming-transformers).

Nothing is downloaded: the weights are two local files the user fetches once.

* ``vgg_path``: torchvision's ImageNet ``vgg16`` state dict (``vgg16-397923af.pth``).
  ``VGG16Features.features`` is torchvision's ``vgg16().features`` stack up to relu5_3 (no
  final pool), layer for layer, so its ``features.N.weight/bias`` keys load strictly; the
  file's ``classifier.*`` keys are not used.
* ``heads_path``: the LPIPS v0.1 linear heads as taming-transformers ships them
  (``vgg.pth``, md5 d507d7349b931f0638a25a48a722f98a): ``lin0`` .. ``lin4``
  ``.model.1.weight``, one 1x1 convolution per VGG stage.

The module is frozen (its parameters never take gradients) but differentiable in its
inputs, so a reconstruction loss can use it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from divot_llm.config.schema import EvalConfig

# torchvision's vgg16 "D" layout: output channels per convolution, "M" a 2x2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # indices in the stack of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS maps [-1, 1] pixels to the statistics the ImageNet VGG was trained on.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


class VGG16Features(nn.Module):
    """The convolutional part of VGG16 up to relu5_3; ``forward`` returns the five
    activations LPIPS compares."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in VGG16_LAYOUT:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, spec, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = spec
        self.features = nn.Sequential(*layers)

    def forward(self, x_n3hw: torch.Tensor) -> list[torch.Tensor]:
        taps, h = [], x_n3hw
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in TAPS:
                taps.append(h)
        return taps


class LinearHead(nn.Module):
    """One stage's weighting of squared feature differences: a 1x1 convolution to one
    channel. ``model.0`` is where the reference has a dropout (inactive in evaluation):
    an identity here, so that the weight keeps the name ``model.1.weight``."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LPIPSHeads(nn.Module):
    """``lin0`` .. ``lin4``: the names of the heads file's keys."""

    def __init__(self):
        super().__init__()
        for index, channels in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{index}", LinearHead(channels))

    def __getitem__(self, index: int) -> LinearHead:
        return getattr(self, f"lin{index}")


class LPIPS(nn.Module):
    """Learned perceptual distance of image pairs.

    ``LPIPS()`` has random weights (VGG at PyTorch's default initialisation, heads
    non-negative as trained ones are): for tests. ``LPIPS.from_paths`` loads real weights.
    ``forward(x, y)`` takes ``(N, 3, H, W)`` in [-1, 1] and returns ``(N,)``.
    """

    def __init__(self):
        super().__init__()
        self.vgg = VGG16Features()
        self.heads = LPIPSHeads()
        for p in self.heads.parameters():
            nn.init.uniform_(p, 0.0, 2.0 / p.shape[1])
        self.register_buffer("shift", _constant(SHIFT), persistent=False)
        self.register_buffer("scale", _constant(SCALE), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_paths(cls, vgg_path: str | os.PathLike, heads_path: str | os.PathLike) -> LPIPS:
        """Load torchvision's ``vgg16`` state dict file and the LPIPS heads file (see the
        module docstring), each strictly.

        Raises:
            ValueError: a file whose keys or shapes are not what it must hold, naming it.
        """
        with torch.device("meta"):  # no random initialisation of weights about to be replaced
            model = cls()
        model.shift, model.scale = _constant(SHIFT), _constant(SCALE)
        vgg_state = _load_state(vgg_path)
        unknown = sorted(k for k in vgg_state if not k.startswith(("features.", "classifier.")))
        if unknown:
            raise ValueError(f"{vgg_path}: not a torchvision vgg16 state dict (keys {unknown[:4]} ...)")
        features = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
        _load_strict(model.vgg, features, vgg_path, "a torchvision vgg16 state dict")
        _load_strict(model.heads, _load_state(heads_path), heads_path, "LPIPS VGG heads (lin0..lin4)")
        return model.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.shift.device

    def forward(self, x_n3hw: torch.Tensor, y_n3hw: torch.Tensor) -> torch.Tensor:
        feats_x = self.vgg((x_n3hw - self.shift) / self.scale)
        feats_y = self.vgg((y_n3hw - self.shift) / self.scale)
        distance_n = torch.zeros(x_n3hw.shape[0], dtype=feats_x[0].dtype, device=x_n3hw.device)
        for index, (fx, fy) in enumerate(zip(feats_x, feats_y, strict=True)):
            # unit-length feature vectors at each position, their squared difference
            # weighted per channel by the head, averaged over positions
            fx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)
            fy = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)
            distance_n = distance_n + self.heads[index].model((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return distance_n

    def clips(self, pred_bfchw: torch.Tensor, target_bfchw: torch.Tensor) -> torch.Tensor:
        """``(B,)`` LPIPS of clips ``(B, F, 3, H, W)`` in [-1, 1], averaged over frames
        (the prediction clamped to [-1, 1], as the pixel metrics do)."""
        dtype = self.shift.dtype
        pred = pred_bfchw.to(dtype).clamp(-1, 1).flatten(0, 1)
        distance = self(pred, target_bfchw.to(dtype).flatten(0, 1))
        return distance.view(pred_bfchw.shape[0], -1).mean(dim=1)


def load_lpips(cfg: EvalConfig) -> LPIPS | None:
    """The LPIPS of ``cfg.lpips_path`` and ``cfg.lpips_heads_path``; None when
    ``lpips_path`` is null (LPIPS is not computed).

    Raises:
        ValueError: ``lpips_path`` without ``lpips_heads_path``, or a file that is not
            what its key names.
    """
    if cfg.lpips_path is None:
        return None
    if cfg.lpips_heads_path is None:
        raise ValueError(
            "eval.lpips_path is set but eval.lpips_heads_path is not: LPIPS needs both the VGG16 "
            "weights and the LPIPS heads (taming-transformers vgg.pth)"
        )
    return LPIPS.from_paths(cfg.lpips_path, cfg.lpips_heads_path)


def _constant(per_channel: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(per_channel).view(1, 3, 1, 1)


def _load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return state


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=True)  # assign: the module may be on meta
    except RuntimeError as exc:
        raise ValueError(f"{path}: not {what}: {exc}") from exc
