"""Video-LaVIT's five modes over a release (``divot_llm.model.lavit_release``):

* ``text_to_video``: a prompt -> the LLM's keyframe codes, then exactly 135 motion codes
  (one constrained ``generate``) -> the keyframe tokenizer's decoder embeddings -> the image
  de-tokenizer's keyframe -> the motion tokenizer's field -> the video de-tokenizer's clip.
* ``image_to_video``: an image (its keyframe codes in the prompt) -> motion codes -> a clip
  that starts from the image.
* ``long_video``: clip after clip, one prompt per segment; each new segment's keyframe is
  the previous clip's last frame (its codes in the prompt, as image to video).
* ``reconstruct_video``: a video -> its motion clips (``data.motion``) and keyframes -> motion
  codes -> the video de-tokenizer's clips, scored against the re-encoded frames.
* ``comprehend_video``: a video -> keyframe + motion codes per clip -> the LLM's answer.

Every clip is ``(F, 3, H, W)`` in [-1, 1], frames before channels, as every other clip here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from divot_llm.data.clip_sampling import resized_uint8, uint8_to_model_pixels
from divot_llm.data.motion_vectors import (
    MotionClips,
    motion_clips_from_stream,
    reencode_for_motion,
    stream_frames,
)
from divot_llm.model.lavit_generation import answer, generate_clip_codes
from divot_llm.model.lavit_release import LaVITModels
from divot_llm.text.lavit_templates import ClipTokens


@dataclass(frozen=True)
class Sampling:
    """How codes and clips are drawn (defaults: the release's inference settings)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    steps: int = 25  # video de-tokenizer (Euler) steps
    min_guidance: float = 1.0  # per-frame linear guidance, first frame
    max_guidance: float = 4.0  # last frame
    keyframe_steps: int = 25  # image de-tokenizer steps (text to video)
    keyframe_guidance: float = 7.0
    seed: int = 42


@dataclass
class GeneratedClip:
    """One generated clip and the codes it came from."""

    video: torch.Tensor  # (F, 3, H, W) in [-1, 1]
    keyframe: torch.Tensor  # (3, H, W) in [-1, 1]: the clip's conditioning keyframe
    visual_codes: torch.Tensor  # (n,) int64
    motion_codes: torch.Tensor  # (N,) int64, N = the motion tokenizer's 135


def keyframe_codes(models: LaVITModels, image_hw3: np.ndarray) -> torch.Tensor:
    """The keyframe tokenizer's codes ``(n,)`` of one RGB image, resized and centre-cropped
    to its input size."""
    tokenizer = models.keyframe_tokenizer
    pixels = resized_uint8([image_hw3], tokenizer.input_size).to(models.device)  # (1, 3, S, S) uint8
    return tokenizer.encode(pixels)[0]


def detokenizer_keyframe(models: LaVITModels, image_hw3: np.ndarray) -> torch.Tensor:
    """An RGB image as the video de-tokenizer's keyframe, ``(3, H, W)`` in [-1, 1]."""
    height, width = models.video_detokenizer.image_size
    return uint8_to_model_pixels(resized_uint8([image_hw3], (height, width)))[0].to(models.device)


def decode_motion(models: LaVITModels, motion_codes: torch.Tensor) -> torch.Tensor:
    """Motion codes ``(N,)`` -> the motion tokenizer's field ``(1, 2, F, h, w)``."""
    return models.motion_tokenizer.decode(motion_codes[None].to(models.device))


def render_clip(
    models: LaVITModels, keyframe_3hw: torch.Tensor, motion_codes: torch.Tensor, sampling: Sampling, seed: int
) -> torch.Tensor:
    """The video de-tokenizer's clip ``(F, 3, H, W)`` from a keyframe and motion codes."""
    detok = models.video_detokenizer
    field = decode_motion(models, motion_codes)
    video = detok.decode(
        keyframe_3hw[None].to(models.device),
        field,
        steps=sampling.steps,
        min_guidance=sampling.min_guidance,
        max_guidance=sampling.max_guidance,
        seed=seed,
    )
    return video[0].float().cpu()


@torch.no_grad()
def text_to_video(
    models: LaVITModels, prompt: str, sampling: Sampling, seed: int | None = None
) -> GeneratedClip:
    """A prompt -> keyframe codes + motion codes -> keyframe image -> clip."""
    seed = sampling.seed if seed is None else seed
    visual, motion = generate_clip_codes(
        models.llm, models.text_tokenizer, prompt, temperature=sampling.temperature, top_k=sampling.top_k,
        top_p=sampling.top_p, seed=seed,
    )  # fmt: skip
    context_bnd, pooled_bp = models.keyframe_tokenizer.decode_embeds([visual.to(models.device)])
    height, width = models.video_detokenizer.image_size
    keyframe = models.image_detokenizer.decode(
        context_bnd, pooled_bp, height=height, width=width, steps=sampling.keyframe_steps,
        guidance=sampling.keyframe_guidance, seed=seed,
    )[0]  # fmt: skip
    video = render_clip(models, keyframe, motion, sampling, seed)
    return GeneratedClip(video, keyframe.float().cpu(), visual.cpu(), motion.cpu())


@torch.no_grad()
def image_to_video(
    models: LaVITModels, image_hw3: np.ndarray, prompt: str, sampling: Sampling, seed: int | None = None
) -> GeneratedClip:
    """An image (+ a prompt, may be empty) -> motion codes -> a clip that starts from it."""
    seed = sampling.seed if seed is None else seed
    visual = keyframe_codes(models, image_hw3)
    _, motion = generate_clip_codes(
        models.llm, models.text_tokenizer, prompt, keyframe_codes=visual, temperature=sampling.temperature,
        top_k=sampling.top_k, top_p=sampling.top_p, seed=seed,
    )  # fmt: skip
    keyframe = detokenizer_keyframe(models, image_hw3)
    video = render_clip(models, keyframe, motion, sampling, seed)
    return GeneratedClip(video, keyframe.float().cpu(), visual.cpu(), motion.cpu())


@torch.no_grad()
def long_video(
    models: LaVITModels, prompts: list[str], sampling: Sampling, first_image_hw3: np.ndarray | None = None
) -> list[GeneratedClip]:
    """One clip per prompt, each after the last: the first from its prompt (text to video)
    or from ``first_image_hw3``; every next one image-to-video from the previous clip's last
    frame. Segment ``i`` draws with seed ``sampling.seed + i``."""
    clips: list[GeneratedClip] = []
    image = first_image_hw3
    for index, prompt in enumerate(prompts):
        seed = sampling.seed + index
        if image is None:
            clip = text_to_video(models, prompt, sampling, seed)
        else:
            clip = image_to_video(models, image, prompt, sampling, seed)
        clips.append(clip)
        image = pixels_to_hw3(clip.video[-1])
    return clips


def pixels_to_hw3(frame_3hw: torch.Tensor) -> np.ndarray:
    """A frame in [-1, 1] -> RGB uint8 ``(H, W, 3)``."""
    return ((frame_3hw.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def video_motion_clips(
    models: LaVITModels, video: str | os.PathLike | bytes, max_clips: int | None = None
) -> tuple[bytes, MotionClips]:
    """A video's re-encoded stream and its first ``max_clips`` motion clips (all: None), as
    the release's motion tokenizer reads them (``models.motion``).

    Raises:
        MediaError: ``corrupt_video``, ``no_motion_clip``.
    """
    stream = reencode_for_motion(video, models.motion)
    clips = motion_clips_from_stream(stream, models.motion)
    if max_clips is not None:
        clips = replace(clips, fields=clips.fields[:max_clips], start_frames=clips.start_frames[:max_clips])
    return stream, clips


@dataclass
class ReconstructedVideo:
    """A video's motion clips re-drawn from their tokens, next to the frames they came from."""

    inputs: list[torch.Tensor]  # per clip (F, 3, H, W) in [-1, 1]: the re-encoded frames
    outputs: list[torch.Tensor]  # per clip (F, 3, H, W): keyframe + motion codes -> de-tokenizer
    motion_codes: torch.Tensor  # (K, N)
    fps: float


@torch.no_grad()
def reconstruct_video(
    models: LaVITModels, video: str | os.PathLike | bytes, sampling: Sampling, max_clips: int | None = None
) -> ReconstructedVideo:
    """A video's clips (``models.motion``) through the motion tokenizer's codes and the video
    de-tokenizer, each clip from its real keyframe (upstream's reconstruction).

    Raises:
        MediaError: ``corrupt_video``, ``no_motion_clip``.
    """
    motion = models.motion
    stream, clips = video_motion_clips(models, video, max_clips)
    count = len(clips.start_frames)
    codes_kn = models.motion_tokenizer.encode(clips.fields.to(models.device))
    height, width = models.video_detokenizer.image_size
    inputs, outputs = [], []
    for k in range(count):
        start = int(clips.start_frames[k])
        frames = stream_frames(stream, np.arange(start, start + motion.clip_frames))
        target = uint8_to_model_pixels(resized_uint8(frames, (height, width)))  # (F, 3, H, W)
        inputs.append(target)
        outputs.append(
            render_clip(models, target[0].to(models.device), codes_kn[k], sampling, sampling.seed + k)
        )
    return ReconstructedVideo(inputs, outputs, codes_kn.cpu(), clips.fps)


@torch.no_grad()
def video_clip_tokens(
    models: LaVITModels, video: str | os.PathLike | bytes, max_clips: int | None = None
) -> list[ClipTokens]:
    """A video's clips as the LLM reads them: each keyframe's visual codes and the clip's
    motion codes.

    Raises:
        MediaError: ``corrupt_video``, ``no_motion_clip``.
    """
    stream, clips = video_motion_clips(models, video, max_clips)
    keyframes = stream_frames(stream, clips.start_frames)
    tokenizer = models.keyframe_tokenizer
    visual = tokenizer.encode(resized_uint8(keyframes, tokenizer.input_size).to(models.device))
    motion_kn = models.motion_tokenizer.encode(clips.fields.to(models.device))
    return [ClipTokens(v.cpu(), m.cpu()) for v, m in zip(visual, motion_kn, strict=True)]


@torch.no_grad()
def comprehend_video(
    models: LaVITModels,
    video: str | os.PathLike | bytes,
    question: str,
    max_new_tokens: int = 64,
    max_clips: int | None = None,
) -> str:
    """The LLM's answer to a question about a video (its clips' keyframe + motion codes)."""
    if models.llm.config.keyframe_input == "features":  # the release's understanding input
        clips, feats = video_clip_features(models, video, max_clips)
        return answer(
            models.llm, models.text_tokenizer, question, clips, max_new_tokens, keyframe_feats=feats
        )
    clips = video_clip_tokens(models, video, max_clips)
    return answer(models.llm, models.text_tokenizer, question, clips, max_new_tokens=max_new_tokens)


@torch.no_grad()
def video_clip_features(
    models: LaVITModels, video: str | os.PathLike | bytes, max_clips: int | None = None
) -> tuple[list[ClipTokens], list[torch.Tensor]]:
    """A video's clips as the released understanding model reads them: each keyframe's
    continuous features ``(n_i, H)`` (the keyframe tokenizer's ``encode_features``) with
    ``ClipTokens`` that hold ``n_i`` placeholder codes (the positions) and the motion codes.

    Raises:
        MediaError: ``corrupt_video``, ``no_motion_clip``.
    """
    stream, clips = video_motion_clips(models, video, max_clips)
    tokenizer = models.keyframe_tokenizer
    pixels = resized_uint8(stream_frames(stream, clips.start_frames), tokenizer.input_size).to(models.device)
    feats = tokenizer.encode_features(pixels)
    motion_kn = models.motion_tokenizer.encode(clips.fields.to(models.device)).cpu()
    tokens = [
        ClipTokens(torch.zeros(len(f), dtype=torch.long), m) for f, m in zip(feats, motion_kn, strict=True)
    ]
    return tokens, [f.to(models.dtype) for f in feats]
