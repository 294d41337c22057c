"""Write the motion-field parity fixture (``tests/fixtures/lavit/motion_fields.npz``) with
Video-LaVIT's own recipe code.

``divot_llm.data.motion_vectors`` re-implements upstream's ``VideoLaVIT/models/transform.py``
(scatter, pad, max-pool, the frame-12 fill, the clip rule, the resize). Re-encoding cannot
match upstream byte for byte (PyAV's FFmpeg encodes differently from upstream's ffmpeg 5.1,
seed-systems.md b.1a), so the fixture fixes the re-encoded stream: ours, of a small synthetic
video. Upstream's ``LaVITEvalVideoProcessor.sample_video_clips`` and ``MotionVectorProcessor``
then run on that stream, and the test requires our fields from the same stream to equal
theirs exactly.

Upstream imports pieces it cannot get here; this script gives its own process stand-ins:

- ``mvextractor.videocap.VideoCap``: PyAV with ``flags2=+export_mvs``, returning what
  mv-extractor 1.1.0 returns (BGR frame; vectors as an int array with its columns
  source, w, h, src_x, src_y, dst_x, dst_y, motion_x, motion_y, motion_scale; the frame type
  letter);
- ``torchvision.transforms.Resize`` on tensors as torchvision 0.14 (torch 1.13, upstream's
  pin) ran it: ``interpolate(mode="bicubic", align_corners=False, antialias=False)``;
- ``cv2`` and ``diffusers.image_processor``: imported by the file, unused by this path.

Run (upstream's file, nothing installed)::

    git clone https://github.com/jy0205/LaVIT /work/scratch/lavit_src    # @8cde9b4f
    python tools/lavit_motion_fixture.py --transform /work/scratch/lavit_src/VideoLaVIT/models/transform.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from divot_llm.config.schema import MotionFieldConfig
from divot_llm.data.motion_vectors import reencode_for_motion
from divot_llm.data.video_codec import encode_video

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lavit" / "motion_fields.npz"
# 56 x 24 (neither a multiple of 16: the padding is exercised), 10 s at 12 fps -> 60 frames
# at 6 fps: four I-frames qualify, upstream keeps two clips; fields of 5 x 9 (small file)
WIDTH, HEIGHT, SECONDS, INPUT_FPS = 56, 24, 10, 12
FIELD_HEIGHT, FIELD_WIDTH = 5, 9
MV_COLUMNS = ("source", "w", "h", "src_x", "src_y", "dst_x", "dst_y", "motion_x", "motion_y", "motion_scale")


def fixture_video() -> bytes:
    """Smooth texture panning right 1 px/frame under a square moving down-left."""
    rng = np.random.default_rng(21)
    frames = SECONDS * INPUT_FPS
    coarse = rng.integers(0, 256, (HEIGHT // 8 + 1, (WIDTH + frames) // 8 + 1, 3), dtype=np.uint8)
    size = (coarse.shape[1] * 8, coarse.shape[0] * 8)
    texture = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC))  # smooth: a small stream
    square = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    video = []
    for t in range(frames):
        image = texture[:HEIGHT, frames - t : frames - t + WIDTH].copy()
        x, y = WIDTH - 14 - (t % (WIDTH - 14)), 1 + (t // 3) % (HEIGHT - 13)
        image[y : y + 12, x : x + 12] = square
        video.append(image)
    return encode_video(video, INPUT_FPS, "h264")


class VideoCap:
    """mv-extractor 1.1.0's reader, over PyAV."""

    def open(self, path: str) -> bool:
        self.container = av.open(path, format="m4v")
        stream = self.container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        self.frames = self.container.decode(stream)
        return True

    def read(self):
        frame = next(self.frames, None)
        if frame is None:
            return False, None, None, None, None
        side = frame.side_data.get("MOTION_VECTORS")
        if side is None or len(side) == 0:
            vectors = np.zeros((0, len(MV_COLUMNS)), dtype=np.int64)
        else:
            array = side.to_ndarray()
            vectors = np.stack([array[name].astype(np.int64) for name in MV_COLUMNS], axis=1)
        kind = av.video.frame.PictureType(frame.pict_type).name
        return True, frame.to_ndarray(format="bgr24"), vectors, kind, 0.0


class _Resize:
    def __init__(self, size, interpolation=None):
        self.size = size

    def __call__(self, x):
        return F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=False)


class _Compose:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x


def install_stand_ins() -> None:
    modules = {
        "cv2": {},
        "mvextractor": {},
        "mvextractor.videocap": {"VideoCap": VideoCap},
        "diffusers": {},
        "diffusers.image_processor": {"VaeImageProcessor": None},
        "torchvision": {},
        "torchvision.transforms": {
            "Resize": _Resize,
            "Compose": _Compose,
            **{name: object for name in ("ToTensor", "Normalize", "CenterCrop")},
        },
        "torchvision.transforms.functional": {"InterpolationMode": types.SimpleNamespace(BICUBIC="bicubic")},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module


def upstream_fields(transform: Path, stream_path: Path) -> torch.Tensor:
    install_stand_ins()
    spec = importlib.util.spec_from_file_location("lavit_transform", transform)
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    processor = upstream.LaVITEvalVideoProcessor.__new__(upstream.LaVITEvalVideoProcessor)  # no temp dir
    processor.max_frames, processor.fps, processor.max_clips = 24, 6, 8
    processor.temp_dir = str(stream_path.parent)
    processor.motion_transform = upstream.MotionVectorProcessor(width=FIELD_WIDTH, height=FIELD_HEIGHT)
    _, clips = processor.sample_video_clips(str(stream_path), raw_file=False)
    return torch.stack([processor.motion_transform(clip) for clip in clips])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--transform", type=Path, required=True, help="upstream's VideoLaVIT/models/transform.py"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    stream = reencode_for_motion(fixture_video(), MotionFieldConfig())
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "stream.m4v"
        path.write_bytes(stream)
        fields = upstream_fields(args.transform, path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        stream=np.frombuffer(stream, dtype=np.uint8),
        fields=fields.numpy().astype(np.float32),
        field_size=np.asarray([FIELD_HEIGHT, FIELD_WIDTH]),
    )
    print(
        f"{args.out}: stream {len(stream):,} B, upstream fields {tuple(fields.shape)}, {args.out.stat().st_size:,} B"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
