"""Video (or image) + question -> answer text, with the reference prompt templates.

The media goes through the same clip sampling as training (the QA rule: always
``num_clips`` clips; the run's window, stride and rate, ``ClipSampling``) and the frozen
video tokenizer; its features replace the frame-token placeholders of the prompt.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from divot_llm.config.schema import DataConfig
from divot_llm.data.clip_sampling import (
    SAMPLE_FPS,
    STRIDE,
    WINDOW_FRAMES,
    MediaError,
    image_clip,
    sample_video_clips,
)
from divot_llm.data.sources import IMAGE_EXTS
from divot_llm.model.divot import DivotLLM
from divot_llm.model.generation import generate_text
from divot_llm.text import templates
from divot_llm.text.tokenizer import DivotTextTokenizer
from divot_llm.tokenizers.base import VideoTokenizer


@dataclass(frozen=True)
class ClipSampling:
    """Which frames of a video make a clip: a ``window`` of frames at ``fps``, every
    ``stride``-th kept plus the last -- the reference's 16 / 4 / 8 (5 frames, Divot's
    tokenizer) unless the run was configured otherwise (a 17-frame VidTok: e.g. window
    16, stride 1)."""

    window: int = WINDOW_FRAMES
    stride: int = STRIDE
    fps: float = SAMPLE_FPS

    @classmethod
    def of(cls, data_cfg: DataConfig) -> ClipSampling:
        """The sampling a run's data config trained with (``data.frames_per_window``,
        ``data.frame_stride``, ``data.fps``)."""
        return cls(data_cfg.frames_per_window, data_cfg.frame_stride, data_cfg.fps)


def encode_media(
    path: str | os.PathLike,
    video_tokenizer: VideoTokenizer,
    num_clips: int,
    seed: int = 0,
    sampling: ClipSampling = ClipSampling(),
) -> tuple[torch.Tensor, str]:
    """Features ``(C, N, D)`` of a video or image file and its kind ("video" | "image").

    Raises:
        MediaError: the file cannot be used; ``reason`` says why (``missing_file``,
            ``corrupt_video``, ``corrupt_image``, ``no_frames``, ...), the message names
            the file.
    """
    clips, kind = read_media_clips(Path(path), video_tokenizer, num_clips, seed, sampling)
    feats = video_tokenizer.encode(clips.to(video_tokenizer.device, video_tokenizer.dtype))  # (C, N, D)
    return feats.float(), kind


def read_media_clips(
    path: Path,
    video_tokenizer: VideoTokenizer,
    num_clips: int,
    seed: int,
    sampling: ClipSampling = ClipSampling(),
) -> tuple[torch.Tensor, str]:
    """The clips of a video (the QA rule: ``num_clips`` dense clips) or image (one static
    clip) at the tokenizer's size, and the kind; MediaError for a file that cannot be used."""
    try:
        if not path.is_file():
            raise MediaError("missing_file", f"{path}: {'not a file' if path.exists() else 'no such file'}")
        if path.suffix.lower().lstrip(".") in IMAGE_EXTS:  # the training reader's list
            # from the bytes, as training: every PIL mode becomes 8-bit RGB the same way
            clip = image_clip(path.read_bytes(), video_tokenizer.frames_per_clip, video_tokenizer.input_size)
            return clip, "image"
        rng = np.random.default_rng(seed)
        size = video_tokenizer.input_size
        clips = sample_video_clips(
            path, num_clips, rng, dense=True, image_size=size,
            window=sampling.window, sample_fps=sampling.fps, stride=sampling.stride,
        )  # fmt: skip
        return clips, "video"
    except MediaError as exc:
        if str(path) in str(exc):
            raise
        raise MediaError(exc.reason, f"{path}: {exc.detail}") from exc
    except Exception as exc:  # decoders fail in many ways on hostile files; it is this file's problem
        raise MediaError("unreadable_media", f"{path}: {type(exc).__name__}: {exc}") from exc


def comprehension_prompt_ids(
    tokenizer: DivotTextTokenizer, kind: str, num_clips: int, tokens_per_clip: int, question: str | None
) -> list[int]:
    """``[bos] [INST] <media> question [/INST]\\n`` (SFT models) or, without a question,
    ``[bos] <media>`` (a pretrained model continues with a caption)."""
    media = (
        templates.image_tokens(tokens_per_clip)
        if kind == "image"
        else templates.video_tokens(num_clips, tokens_per_clip)
    )
    if question is None:
        return [tokenizer.bos_id, *tokenizer.encode(media)]
    return [tokenizer.bos_id, *tokenizer.encode(templates.comprehension_prompt(media, question))]


def comprehend(
    model: DivotLLM,
    tokenizer: DivotTextTokenizer,
    video_tokenizer: VideoTokenizer,
    media_paths: list[str | os.PathLike],
    question: str | None,
    num_clips: int = 20,
    seed: int = 0,
    sampling: ClipSampling = ClipSampling(),
    **generation,
) -> list[str]:
    """Answers (or captions, with ``question=None``) for a batch of media files, their
    clips sampled as ``sampling`` says (``ClipSampling.of(cfg.data)``).

    ``generation`` goes to ``generate_text`` (``do_sample``, ``temperature``, ``top_p``,
    ``max_new_tokens``, ...). Raises MediaError, naming the file, for the first file
    that cannot be used (``divot-infer`` encodes one by one and skips such files).
    """
    encoded = [encode_media(path, video_tokenizer, num_clips, seed, sampling) for path in media_paths]
    return answer_media(model, tokenizer, encoded, question, seed, **generation)


def answer_media(
    model: DivotLLM,
    tokenizer: DivotTextTokenizer,
    encoded: list[tuple[torch.Tensor, str]],
    question: str | None,
    seed: int = 0,
    **generation,
) -> list[str]:
    """Answers for media already encoded by ``encode_media`` (``(features, kind)`` each):
    a batch can encode its files one by one, set aside those that cannot be read, and
    answer the rest."""
    prompts = [
        comprehension_prompt_ids(tokenizer, kind, feats.shape[0], model.tokens_per_clip, question)
        for feats, kind in encoded
    ]
    torch.manual_seed(seed)
    outputs = generate_text(
        model, tokenizer, prompts, video_feats=[feats for feats, _ in encoded], **generation
    )
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]


class TextPrinter(BaseStreamer):
    """Writes an answer while it is sampled (a transformers streamer: ``put`` / ``end``).

    transformers hands the prompt to ``put`` first; it is skipped. The text is re-decoded
    from all new ids each time, and only a longer version of what is already out is
    written, so multi-piece words and multi-byte characters come out whole and the
    printed text is the answer ``answer_media`` returns. transformers' ``TextStreamer``
    is not used: it restarts decoding after each newline, and SentencePiece drops the
    leading space of a fresh decode (``"\\n The"`` would print as ``"\\nThe"``).
    """

    def __init__(self, tokenizer: DivotTextTokenizer, write: Callable[[str], object] | None = None):
        self.tokenizer = tokenizer
        self.write = write or _write_stdout
        self.ids: list[int] = []
        self.printed = ""
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if text.startswith(self.printed) and len(text) > len(self.printed):
            self.write(text[len(self.printed) :])
            self.printed = text

    def end(self) -> None:
        self.write("\n")


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
