"""A Video-LaVIT release root, read part by part (the layout: ``divot_llm.layout``).

The released ``rain1011/Video-LaVIT-v1`` folder and the ones our LaVIT exports write have the
same layout; each part loads through its component's own loader, which takes the released
file as it is (the release's sizes) or, when our sidecar config sits beside it, a
component of other sizes (the tiny ones of tests and CPU runs). Parts load on first use,
so a mode reads only what it needs (``comprehend`` never touches the de-tokenizers), and a
missing part is named with the mode that needed it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from divot_llm.config.schema import LaVITModelConfig, MotionFieldConfig
from divot_llm.detokenizers.motion.image import LaVITImageDetokenizer
from divot_llm.detokenizers.motion.registry import load_motion_detokenizer
from divot_llm.layout import (
    LAVIT_IMAGE_DETOKENIZER_DIR,
    LAVIT_LLM_DIR,
    LAVIT_MOTION_TOKENIZER,
    LAVIT_MOTION_TOKENIZER_DIR,
    LAVIT_SFT_LLM_DIR,
    LAVIT_VIDEO_DETOKENIZER_DIR,
    LAVIT_VISUAL_TOKENIZER_DIR,
    LAVIT_VISUAL_WEIGHT,
)
from divot_llm.model.lavit_llm import SIDECAR as LAVIT_LLM_SIDECAR
from divot_llm.model.lavit_llm import LaVITLLM
from divot_llm.text.lavit_tokenizer import LaVITTextTokenizer
from divot_llm.tokenizers.keyframe.registry import load_keyframe_tokenizer
from divot_llm.tokenizers.keyframe.visual_weight import load_visual_weight
from divot_llm.tokenizers.motion.lavit_config import LaVITMotionConfig
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer, load_motion_tokenizer

RELEASE_FPS = 6.0  # the motion re-encode's frame rate the release was trained at


class MissingPart(FileNotFoundError):
    """A release root without a part a mode needs."""


@dataclass
class LaVITModels:
    """The parts of one release root, loaded on first use onto ``device`` in ``dtype``
    (frozen, eval). ``sft``: the LLM is ``language_model_sft/`` (comprehension), else
    ``language_model/`` (generation); either falls back to the other when only one is there."""

    root: Path
    device: torch.device
    dtype: torch.dtype = torch.float32
    sft: bool = False
    _parts: dict[str, Any] = field(default_factory=dict)

    def _part(self, name: str, load) -> Any:
        if name not in self._parts:
            module = load()
            if isinstance(module, torch.nn.Module):
                module = module.to(self.device).eval().requires_grad_(False)
            self._parts[name] = module
        return self._parts[name]

    def _path(self, *names: str) -> Path:
        """The first of ``names`` under the root that exists."""
        for name in names:
            if (self.root / name).exists():
                return self.root / name
        raise MissingPart(f"{self.root} has no {' or '.join(names)} (a Video-LaVIT release root)")

    # ------------------------------------------------------------------------- LLM

    @property
    def llm_dir(self) -> Path:
        order = (LAVIT_SFT_LLM_DIR, LAVIT_LLM_DIR) if self.sft else (LAVIT_LLM_DIR, LAVIT_SFT_LLM_DIR)
        return self._path(*order)

    @property
    def llm(self) -> LaVITLLM:
        return self._part("llm", self._load_llm)

    def _load_llm(self) -> LaVITLLM:
        folder = self.llm_dir
        config = None
        if not (folder / LAVIT_LLM_SIDECAR).is_file() and folder.name == LAVIT_SFT_LLM_DIR:
            # the released understanding model reads keyframes as continuous features
            config = LaVITModelConfig(keyframe_input="features")
        return LaVITLLM.from_pretrained(folder, dtype=self.dtype, config=config)

    @property
    def text_tokenizer(self) -> LaVITTextTokenizer:
        return self._part("text_tokenizer", lambda: LaVITTextTokenizer.from_pretrained(self.llm_dir))

    # ------------------------------------------------------------------ tokenizers

    @property
    def keyframe_tokenizer(self):
        return self._tokenizers()[0]

    @property
    def motion_tokenizer(self):
        return self._tokenizers()[1]

    def _tokenizers(self) -> tuple:
        """(keyframe, motion) tokenizer. For comprehension (``sft``) they carry the LLM
        folder's ``visual_weight.bin`` when it has one: the copies the LLM was trained to
        read, as LaVIT's understanding model loads them; otherwise the root's."""
        if "tokenizers" not in self._parts:
            keyframe = load_keyframe_tokenizer(self._path(LAVIT_VISUAL_TOKENIZER_DIR))
            motion = self._load_motion_tokenizer()
            weight = self.llm_dir / LAVIT_VISUAL_WEIGHT if self.sft else None
            if weight is not None and weight.is_file():
                load_visual_weight(weight, keyframe, motion)
            self._parts["tokenizers"] = tuple(
                t.to(self.device).eval().requires_grad_(False) for t in (keyframe, motion)
            )
        return self._parts["tokenizers"]

    def _load_motion_tokenizer(self):
        path = self._path(LAVIT_MOTION_TOKENIZER_DIR, LAVIT_MOTION_TOKENIZER)
        if path.is_dir():  # ours: a save_pretrained folder (its config says its sizes)
            return load_motion_tokenizer(path)
        return build_motion_tokenizer(LaVITMotionConfig(pretrained_path=str(path)))  # the release's sizes

    @property
    def motion(self) -> MotionFieldConfig:
        """The motion-field extraction the motion tokenizer reads: two GOPs of its frames at
        its field size, at the release's 6 fps."""
        config = self.motion_tokenizer.config
        return MotionFieldConfig(
            fps=RELEASE_FPS, gop=config.frames // 2, height=config.height, width=config.width
        )

    # --------------------------------------------------------------- de-tokenizers

    @property
    def video_detokenizer(self):
        return self._part(
            "video_detokenizer", lambda: load_motion_detokenizer(self._path(LAVIT_VIDEO_DETOKENIZER_DIR))
        )

    @property
    def image_detokenizer(self) -> LaVITImageDetokenizer:
        return self._part(
            "image_detokenizer",
            lambda: LaVITImageDetokenizer.from_pretrained(self._path(LAVIT_IMAGE_DETOKENIZER_DIR)),
        )


def open_lavit_release(
    root: str | os.PathLike, device: torch.device, dtype: torch.dtype = torch.float32, sft: bool = False
) -> LaVITModels:
    """A release root's parts, loaded as they are asked for.

    Raises:
        MissingPart: ``root`` is not a folder.
    """
    path = Path(root)
    if not path.is_dir():
        raise MissingPart(f"{path} is not a folder (a Video-LaVIT release root)")
    return LaVITModels(path, device, dtype, sft)
