"""Reconstruct whole videos through a video tokenizer that decodes itself (VidTok) and
score them: PSNR, SSIM and, with their weights, LPIPS and FVD (``divot_llm.metrics``).

What ``divot-eval reconstruction`` and ``divot-infer reconstruct --video-tokenizer`` run.
Videos are read as VidTok's evaluation reads them (seed-systems §a.4): every
``round(video fps / fps)``-th frame from the first (the stride of VidTok's clips,
``data.vidtok_examples``), resized to cover ``height x width`` and centre-cropped as every
loader does (``clip_sampling.to_model_pixels``; for square crops VidTok's shorter-side
resize), in [-1, 1]. Unlike VidTok's script, the whole video goes through the tokenizer's
own ``reconstruct`` (chunked, any length), so the last chunk is not padded with repeated
frames and every scored frame is a real one.

Scores are per frame. A video's score is the mean over its frames; the summary is the
mean over all frames of all videos (VidTok's figure). FVD compares the I3D features of
the input and reconstructed clips: non-overlapping ``fvd_frames``-frame clips of every
video (a remainder shorter than that is left out), shorter side resized to 224.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from divot_llm.config import ConfigError, DivotConfig, compose_config
from divot_llm.config.paths import check_config_paths
from divot_llm.data.clip_sampling import probe_video, read_frames_at, to_model_pixels
from divot_llm.data.errors import MediaError
from divot_llm.data.sources import VIDEO_EXTS, VidTokCsvSource, safe_join
from divot_llm.layout import TOKENIZER_CONFIG
from divot_llm.metrics import LPIPS, frechet_distance, i3d_features, load_i3d, load_lpips
from divot_llm.metrics.fvd import I3D_MIN_FRAMES
from divot_llm.metrics.quality import frames01, psnr_frames, ssim_frames
from divot_llm.tokenizers import build_video_tokenizer, video_tokenizer_class
from divot_llm.tokenizers.base import VideoTokenizer

META_COLUMN = VidTokCsvSource.COLUMN  # VidTok's meta CSV: video paths relative to DATA_DIR
SCORE_CHUNK = 16  # frames scored at once: bounds the memory of SSIM/LPIPS on long videos


# ---------------------------------------------------------------- which videos


def list_videos(data_dir: str | os.PathLike, meta: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """(name, path) of the videos to evaluate: the ``videos`` column of the ``meta`` CSV
    (paths relative to ``data_dir``, in the CSV's order, named as written), or every video
    file under ``data_dir`` (sorted, named relative to it).

    Raises:
        ValueError: no such folder, no ``videos`` column, a path that leaves ``data_dir``
            (``PathEscape``), or no video at all.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"no such folder: {root} (DATA_DIR)")
    if meta is None:
        found = [
            (path.relative_to(root).as_posix(), path)
            for path in sorted(root.rglob("*"))
            if path.suffix.lower().lstrip(".") in VIDEO_EXTS and path.is_file()
        ]
    else:
        found = [(relative, safe_join(root, relative)) for relative in _meta_rows(Path(meta))]
    if not found:
        raise ValueError(f"no videos in {meta if meta is not None else root}")
    return found


def _meta_rows(meta: Path) -> list[str]:
    with open(meta, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if META_COLUMN not in (reader.fieldnames or ()):
            raise ValueError(f"{meta}: no {META_COLUMN!r} column (columns: {reader.fieldnames})")
        return [row[META_COLUMN].strip() for row in reader if (row[META_COLUMN] or "").strip()]


# ---------------------------------------------------------------------- reading


def frame_stride(video_fps: float, fps: float) -> int:
    """VidTok's sampling stride: every ``round(video_fps / fps)``-th frame, at least every frame."""
    return max(1, round(video_fps / fps))


def read_video(path: str | os.PathLike, height: int, width: int, fps: float) -> tuple[torch.Tensor, float]:
    """A whole video as the evaluation reads it (module docstring): frames ``(F, 3, height,
    width)`` float32 in [-1, 1], and their rate (the video's over the stride: ``fps`` only
    when it divides the video's).

    Raises:
        MediaError: a video that cannot be read (corrupt, no frames, ...).
        FileNotFoundError: no such file.
    """
    info = probe_video(path)
    if info.num_frames < 1:
        raise MediaError("no_frames", "the container reports no frames")
    stride = frame_stride(info.fps, fps)
    times_s = np.arange(0, info.num_frames, stride) / info.fps
    return to_model_pixels(read_frames_at(path, times_s), (height, width)), info.fps / stride


# ------------------------------------------------------------ tokenizer, scoring


def tokenizer_config(
    name: str, ckpt: str | None = None, overrides: Sequence[str] = (), **eval_paths: str | None
) -> DivotConfig:
    """The composed config with ``video_tokenizer=name`` (its weights from ``ckpt``: a
    released ``.ckpt``/``.safetensors`` or a save_pretrained folder) -- or, when ``name``
    is a save_pretrained folder, the tokenizer saved there -- and the ``eval.*``
    weights paths given (None: the config's), every path it reads checked.

    Raises:
        ConfigError: an unknown option or key, a ``ckpt`` for a tokenizer that takes none,
            a path that is not there (``PathError``).
    """
    saved = Path(name) / TOKENIZER_CONFIG
    if saved.is_file():  # a save_pretrained folder (divot-export vidtok): its own config and weights
        if ckpt is not None:
            raise ConfigError(f"--ckpt: {name} is a saved video tokenizer and holds its weights")
        cfg = compose_config(list(overrides))
        fields = json.loads(saved.read_text())
        config_class = video_tokenizer_class(fields["arch"]).config_class
        cfg.video_tokenizer = config_class(**(fields | {"pretrained_path": str(name)}))
    else:
        cfg = compose_config([f"video_tokenizer={name}", *overrides])
    if ckpt is not None:
        if not hasattr(cfg.video_tokenizer, "pretrained_path"):
            raise ConfigError(f"--ckpt: the video tokenizer {name!r} has no pretrained_path to set")
        cfg.video_tokenizer.pretrained_path = ckpt
    for key, path in eval_paths.items():
        if path is not None:
            setattr(cfg.eval, key, path)
    check_config_paths(cfg, ["video_tokenizer", "eval"])
    return cfg


def load_reconstructing_tokenizer(
    cfg: DivotConfig, device: torch.device, dtype: torch.dtype
) -> VideoTokenizer:
    """The video tokenizer of ``cfg`` on ``device``; it must decode itself (``reconstruct``).

    Raises:
        ValueError: a tokenizer that cannot reconstruct (Divot's needs a de-tokenizer: use
            ``divot-infer reconstruct --release``).
    """
    tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    if not callable(getattr(tokenizer, "reconstruct", None)):
        raise ValueError(
            f"the video tokenizer {type(tokenizer).__name__} does not decode itself; reconstruct "
            "through its de-tokenizer with divot-infer reconstruct --release REL"
        )
    return tokenizer.to(device, dtype)


@torch.no_grad()
def reconstruct_frames(tokenizer: VideoTokenizer, frames_fchw: torch.Tensor) -> torch.Tensor:
    """One whole video ``(F, 3, H, W)`` in [-1, 1] through the tokenizer's
    ``reconstruct`` (chunked by the tokenizer, frame count kept): ``(F, 3, H, W)`` fp32 on
    the CPU, clamped to [-1, 1]."""
    x = frames_fchw[None].to(tokenizer.device, tokenizer.dtype)
    return tokenizer.reconstruct(x)[0].float().clamp(-1, 1).cpu()


@dataclass
class VideoScores:
    video: str  # the path as listed (relative to DATA_DIR for divot-eval)
    frames: int
    psnr: float  # means over the video's frames
    ssim: float
    lpips: float | None = None


@torch.no_grad()
def score_video(
    name: str, recon_fchw: torch.Tensor, input_fchw: torch.Tensor, lpips: LPIPS | None = None
) -> VideoScores:
    """Per-frame PSNR, SSIM (and LPIPS) of a reconstruction, averaged over the frames,
    ``SCORE_CHUNK`` frames at a time (on the LPIPS module's device when given)."""
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    for start in range(0, input_fchw.shape[0], SCORE_CHUNK):
        pred = frames01(recon_fchw[None, start : start + SCORE_CHUNK])
        target = frames01(input_fchw[None, start : start + SCORE_CHUNK])
        sums["psnr"] += psnr_frames(pred, target).sum().item()
        sums["ssim"] += ssim_frames(pred, target).sum().item()
        if lpips is not None:
            sums["lpips"] += (
                lpips(pred.to(lpips.device) * 2 - 1, target.to(lpips.device) * 2 - 1).sum().item()
            )
    count = input_fchw.shape[0]
    return VideoScores(
        name,
        count,
        sums["psnr"] / count,
        sums["ssim"] / count,
        sums["lpips"] / count if lpips is not None else None,
    )


def fvd_clips(frames_fchw: torch.Tensor, clip_frames: int) -> torch.Tensor:
    """Non-overlapping ``clip_frames``-frame clips ``(C, clip_frames, 3, H, W)`` of a
    video from its first frame (a shorter remainder is left out; C may be 0)."""
    count = frames_fchw.shape[0] // clip_frames
    return frames_fchw[: count * clip_frames].reshape(count, clip_frames, *frames_fchw.shape[1:])


# ---------------------------------------------------------------------- the run


@dataclass
class EvalSettings:
    model: str  # the video_tokenizer option evaluated
    height: int
    width: int
    fps: float
    fvd_frames: int = 16
    lpips: bool = False
    fvd: bool = False


@dataclass
class EvalReport:
    settings: EvalSettings
    tokenizer: dict  # Regularizer, Causal, VCR: the seed README's columns (``tokenizer_columns``)
    videos: list[VideoScores] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"video", "reason", "detail"}
    fvd: float | None = None
    fvd_clips: int = 0  # clips per set the FVD was fitted to
    fvd_note: str | None = None  # why no FVD, when its weights were given

    def summary(self) -> dict[str, float | None]:
        """Means over all frames of all videos (VidTok's numbers), and the FVD."""
        frames = sum(v.frames for v in self.videos)

        def mean(key: str) -> float | None:
            values = [getattr(v, key) for v in self.videos]
            if not frames or any(value is None for value in values):
                return None
            return sum(value * v.frames for value, v in zip(values, self.videos, strict=True)) / frames

        return {"videos": len(self.videos), "frames": frames, "psnr": mean("psnr"),
                "ssim": mean("ssim"), "lpips": mean("lpips"), "fvd": self.fvd}  # fmt: skip

    def to_json(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "tokenizer": self.tokenizer,
            "summary": self.summary(),
            "fvd_clips": self.fvd_clips,
            "fvd_note": self.fvd_note,
            "videos": [asdict(v) for v in self.videos],
            "skipped": self.skipped,
        }


def tokenizer_columns(tokenizer: VideoTokenizer) -> dict[str, str]:
    """Regularizer, Causal and VCR (compression T x H x W) as the seed README's table
    writes them: ``KL-4chn`` / ``FSQ-262,144``, ✔️ / ✖️, ``4x8x8``."""
    codes = getattr(tokenizer, "codebook_size", None)
    regularizer = f"FSQ-{codes:,}" if codes else f"KL-{tokenizer.latent_channels}chn"
    spatial = tokenizer.spatial_factor
    return {
        "regularizer": regularizer,
        "causal": "✔️" if tokenizer.is_causal else "✖️",
        "vcr": f"{tokenizer.temporal_factor}x{spatial}x{spatial}",
    }


def evaluate_reconstruction(
    videos: Sequence[tuple[str, Path]],
    tokenizer: VideoTokenizer,
    settings: EvalSettings,
    lpips: LPIPS | None = None,
    i3d: torch.nn.Module | None = None,
    on_video: Callable[[VideoScores], None] | None = None,
) -> EvalReport:
    """Read, reconstruct and score each (name, path) of ``videos`` (a video that cannot be
    read is skipped and listed in the report), then fit the FVD over all of them when
    ``i3d`` is given. ``on_video`` is called with each video's scores as soon as they are
    known."""
    if i3d is not None and settings.fvd_frames < I3D_MIN_FRAMES:
        raise ValueError(f"FVD clips need at least {I3D_MIN_FRAMES} frames (I3D), got {settings.fvd_frames}")
    settings = replace(settings, lpips=lpips is not None, fvd=i3d is not None)
    report = EvalReport(settings, tokenizer_columns(tokenizer))
    feats_real, feats_recon = [], []
    for name, path in videos:
        try:
            frames, _ = read_video(path, settings.height, settings.width, settings.fps)
        except FileNotFoundError as exc:
            report.skipped.append(
                {"video": name, "reason": "missing_file", "detail": exc.strerror or str(exc)}
            )
            continue
        except MediaError as exc:
            report.skipped.append({"video": name, "reason": exc.reason, "detail": exc.detail})
            continue
        recon = reconstruct_frames(tokenizer, frames)
        scores = score_video(name, recon, frames, lpips)
        report.videos.append(scores)
        if on_video is not None:
            on_video(scores)
        if i3d is not None:
            clips_real = fvd_clips(frames, settings.fvd_frames)
            if len(clips_real):
                feats_real.append(i3d_features(i3d, clips_real))
                feats_recon.append(i3d_features(i3d, fvd_clips(recon, settings.fvd_frames)))
    if i3d is not None:
        report.fvd_clips = sum(len(f) for f in feats_real)
        if report.fvd_clips >= 2:
            report.fvd = frechet_distance(torch.cat(feats_real), torch.cat(feats_recon))
        else:
            report.fvd_note = f"FVD needs at least 2 clips of {settings.fvd_frames} frames; the videos gave {report.fvd_clips}"
    return report


def load_eval_weights(cfg: DivotConfig, device: torch.device) -> tuple[LPIPS | None, torch.nn.Module | None]:
    """LPIPS and the I3D from ``cfg.eval`` (None where its path is null), on ``device``."""
    lpips = load_lpips(cfg.eval)
    i3d = load_i3d(cfg.eval.i3d_path, device) if cfg.eval.i3d_path is not None else None
    return (lpips.to(device) if lpips is not None else None), i3d
