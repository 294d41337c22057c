"""Video-LaVIT's token layout and its constrained video generation (seed-systems.md b.1).

An LLM over keyframe + motion tokens extends a base text vocabulary of T ids with, in order::

    [IMG]  [/IMG]  V visual codes  [MOV]  [/MOV]  M motion codes

so that on a 32000-token LLaMA base (V = 16384, M = 1024) ``[IMG]`` is 32000, the visual
codes 32002-48385, ``[MOV]`` 48386, ``[/MOV]`` 48387, the motion codes 48388-49411: 49412
ids, the released model's. A generated video is a keyframe's visual codes between ``[IMG]``
and ``[/IMG]`` (as many as the keyframe tokenizer keeps), then exactly 135 motion codes
between ``[MOV]`` and ``[/MOV]``. Upstream generates the two in separate calls, suppressing
the text and motion ranges during the first, and truncates or pads a motion run of the
wrong length afterwards; ``VideoTokenConstraint`` makes one ``generate`` call follow that
grammar exactly, for text to video (the keyframe generated) and image to video (the
keyframe in the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


@dataclass(frozen=True)
class LaVITVocab:
    """Where each kind of id lives, for a base vocabulary of ``text_size`` ids."""

    text_size: int = 32000
    visual_codes: int = 16384  # the keyframe tokenizer's codebook
    motion_codes: int = 1024  # the motion tokenizer's codebook
    motion_tokens: int = 135  # motion codes per clip (3 x 5 x 9)

    def __post_init__(self):
        if min(self.text_size, self.visual_codes, self.motion_codes, self.motion_tokens) < 1:
            raise ValueError(f"every part of a LaVIT vocabulary needs at least one id, got {self}")

    @property
    def img_start(self) -> int:
        return self.text_size

    @property
    def img_end(self) -> int:
        return self.text_size + 1

    @property
    def visual_offset(self) -> int:
        return self.text_size + 2

    @property
    def mov_start(self) -> int:
        return self.visual_offset + self.visual_codes

    @property
    def mov_end(self) -> int:
        return self.mov_start + 1

    @property
    def motion_offset(self) -> int:
        return self.mov_start + 2

    @property
    def size(self) -> int:
        """Ids in all: the embedding rows the LLM needs."""
        return self.motion_offset + self.motion_codes

    def visual_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Keyframe codes in [0, V) -> their ids."""
        return _shift(codes, self.visual_codes, self.visual_offset, "visual code")

    def motion_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Motion codes in [0, M) -> their ids."""
        return _shift(codes, self.motion_codes, self.motion_offset, "motion code")

    def visual_codes_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Visual-code ids -> codes in [0, V)."""
        return _shift(ids - self.visual_offset, self.visual_codes, 0, "visual-code id")

    def motion_codes_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Motion-code ids -> codes in [0, M)."""
        return _shift(ids - self.motion_offset, self.motion_codes, 0, "motion-code id")

    def video_ids(self, visual_codes: torch.Tensor, motion_codes: torch.Tensor) -> torch.Tensor:
        """One clip's ids ``(2 + n + 2 + motion_tokens,)``: ``[IMG] v.. [/IMG] [MOV] m.. [/MOV]``
        (what the understanding templates put where the video goes)."""
        if motion_codes.numel() != self.motion_tokens:
            raise ValueError(f"a clip has {self.motion_tokens} motion codes, got {motion_codes.numel()}")
        visual = self.visual_ids(visual_codes.flatten())
        motion = self.motion_ids(motion_codes.flatten())
        marks = torch.tensor([self.img_start, self.img_end, self.mov_start, self.mov_end], dtype=visual.dtype)
        return torch.cat([marks[:1], visual, marks[1:3], motion, marks[3:]])


def _shift(values: torch.Tensor, count: int, offset: int, what: str) -> torch.Tensor:
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= count):
        raise ValueError(f"{what}s must lie in [0, {count}), got {int(values.min())}..{int(values.max())}")
    return values.long() + offset


class VideoTokenConstraint(LogitsProcessor):
    """Constrains ``generate`` to emit one clip after the prompt, then end.

    Text to video (the prompt does not end with a keyframe): ``[IMG]``, 1 to
    ``max_visual_tokens`` visual codes, ``[/IMG]``, ``[MOV]``, exactly ``motion_tokens``
    motion codes, ``[/MOV]``, ``eos_token_id``. Image to video (the prompt ends with
    ``[/IMG]``: its keyframe is given): the same from ``[MOV]`` on. Within each span only its
    kind of id can be drawn, so the text and motion ranges are suppressed while keyframe
    codes are generated, and the motion run is never too short or too long.

    Args:
        vocab: the layout.
        prompt_length: the prompt's length (every row of a batch, left-padded).
        eos_token_id: what ends generation after ``[/MOV]``.
        max_visual_tokens: the most keyframe codes before ``[/IMG]`` is forced (LaVIT's
            dynamic tokenizer keeps a variable number per image; 256 patches at 224 px).
    """

    def __init__(
        self, vocab: LaVITVocab, prompt_length: int, eos_token_id: int, max_visual_tokens: int = 256
    ):
        if max_visual_tokens < 1:
            raise ValueError(f"max_visual_tokens must be >= 1, got {max_visual_tokens}")
        self.vocab, self.prompt_length = vocab, prompt_length
        self.eos_token_id, self.max_visual_tokens = eos_token_id, max_visual_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for row, ids in enumerate(input_ids):
            start, stop = self._allowed(ids)
            allowed[row, start:stop] = True
        return scores.masked_fill(~allowed, float("-inf"))

    def _allowed(self, ids: torch.Tensor) -> tuple[int, int]:
        """The id range [start, stop) the next token of one row may take."""
        v = self.vocab
        generated = ids[self.prompt_length :].tolist()
        keyframe_given = int(ids[self.prompt_length - 1]) == v.img_end if self.prompt_length else False
        marks = [
            i for i, tok in enumerate(generated) if tok in (v.img_start, v.img_end, v.mov_start, v.mov_end)
        ]
        if not marks:
            return (v.mov_start, v.mov_start + 1) if keyframe_given else (v.img_start, v.img_start + 1)
        last = generated[marks[-1]]
        run = len(generated) - marks[-1] - 1  # ids drawn since that mark
        if last == v.img_start:
            if run == 0:  # at least one keyframe code
                return v.visual_offset, v.mov_start
            if run >= self.max_visual_tokens:
                return v.img_end, v.img_end + 1
            return v.img_end, v.mov_start  # [/IMG] or another code: adjacent ids
        if last == v.img_end:
            return v.mov_start, v.mov_start + 1
        if last == v.mov_start:
            if run < v.motion_tokens:
                return v.motion_offset, v.size
            return v.mov_end, v.mov_end + 1
        return self.eos_token_id, self.eos_token_id + 1  # after [/MOV]
