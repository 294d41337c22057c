"""Video-LaVIT's sequences: clips of keyframe + motion codes with text, for each task.

A clip in a sequence is ``[IMG] visual codes [/IMG] [MOV] 135 motion codes [/MOV]``
(``LaVITVocab.video_ids``); an image is its ``[IMG] ... [/IMG]`` part alone. The formats
follow the release's inference code, the only record of how its LLM was trained:

* understanding (``video_comprehension``, ``image_comprehension`` with ``turns``; the
  prompt of ``understanding_prompt``) is a Vicuna-v1 chat: ``<s>`` system prompt,
  ``USER: <media>\\n<question> ASSISTANT:``, the answer supervised and closed by ``</s>``;
  each piece is encoded on its own, as upstream splits its prompt at the media marker;
* generation prompts are the caption's ids without ``<s>`` (upstream encodes them without
  special tokens) followed by the clip: ``text_to_video`` supervises the whole clip (the
  keyframe's codes, then the motion's) and the ``</s>`` that ends it -- what
  ``VideoTokenConstraint`` lets ``generate`` emit; ``image_to_video`` has the keyframe in
  the prompt and supervises ``[MOV] ... [/MOV] </s>``; ``long_video`` is segment after
  segment (caption, clip), each clip supervised, as upstream extends the prompt with every
  generated clip;
* pretraining captions (``caption=`` of the comprehension templates; the release's
  pretraining format is unpublished) are ``<s> <media> caption </s>``, the caption supervised.

Every builder returns a ``LaVITSequence``: ``labels`` are ``IGNORE_INDEX`` outside the
supervised spans; ``visual_mask`` / ``motion_mask`` mark the positions of keyframe-code
and motion-code ids (where continuous keyframe features replace the codes when the model
reads features, and what the per-kind losses count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from divot_llm.text.lavit_vocab import LaVITVocab
from divot_llm.text.templates import IGNORE_INDEX

# The Vicuna v1 chat the release's understanding model was tuned with (its conversation.py).
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
USER, ASSISTANT = "USER", "ASSISTANT"


class TextIds(Protocol):
    """What the templates need of a text tokenizer (``LaVITTextTokenizer``)."""

    bos_id: int
    eos_id: int

    def encode_text(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class ClipTokens:
    """One clip's codes: the keyframe's visual codes ``(n,)`` in [0, V) and its motion codes
    ``(motion_tokens,)`` in [0, M); an image has no motion (``motion_codes`` None)."""

    visual_codes: torch.Tensor
    motion_codes: torch.Tensor | None = None

    @property
    def is_image(self) -> bool:
        return self.motion_codes is None


@dataclass
class LaVITSequence:
    """One training sequence, all ``(T,)``."""

    input_ids: torch.Tensor  # int64
    labels: torch.Tensor  # int64, IGNORE_INDEX where not supervised
    attention_mask: torch.Tensor  # int64, all 1 (padding is added by collate)
    visual_mask: torch.Tensor  # bool: keyframe-code ids
    motion_mask: torch.Tensor  # bool: motion-code ids

    def __len__(self) -> int:
        return len(self.input_ids)


Piece = tuple[torch.Tensor | list[int], bool]  # ids, supervised


def clip_ids(vocab: LaVITVocab, clip: ClipTokens) -> torch.Tensor:
    """A clip's ids: ``[IMG] v.. [/IMG] [MOV] m.. [/MOV]``; an image's ``[IMG] v.. [/IMG]``."""
    if clip.is_image:
        visual = vocab.visual_ids(clip.visual_codes.flatten())
        return torch.cat([torch.tensor([vocab.img_start]), visual, torch.tensor([vocab.img_end])])
    return vocab.video_ids(clip.visual_codes, clip.motion_codes)


def assemble(vocab: LaVITVocab, pieces: Sequence[Piece]) -> LaVITSequence:
    """Concatenate ``(ids, supervised)`` pieces into a sequence with its labels and masks."""
    ids = torch.cat([torch.as_tensor(p, dtype=torch.long).reshape(-1) for p, _ in pieces])
    labels = torch.cat(
        [
            torch.as_tensor(p, dtype=torch.long).reshape(-1)
            if supervised
            else torch.full((len(p),), IGNORE_INDEX, dtype=torch.long)
            for p, supervised in pieces
        ]
    )
    visual = (ids >= vocab.visual_offset) & (ids < vocab.mov_start)
    motion = (ids >= vocab.motion_offset) & (ids < vocab.size)
    return LaVITSequence(ids, labels, torch.ones_like(ids), visual, motion)


def _media(vocab: LaVITVocab, clips: Sequence[ClipTokens]) -> torch.Tensor:
    if not clips:
        raise ValueError("a comprehension sequence needs at least one clip or image")
    return torch.cat([clip_ids(vocab, clip) for clip in clips])


def _chat_pieces(tok: TextIds, media: torch.Tensor, turns: Sequence[tuple[str, str | None]]) -> list[Piece]:
    """The chat's pieces; an answer of None ends the prompt at ``ASSISTANT:`` (generation)."""
    if not turns:
        raise ValueError("a chat needs at least one (question, answer) turn")
    pieces: list[Piece] = [([tok.bos_id, *tok.encode_text(f"{SYSTEM} {USER}: ")], False), (media, False)]
    for index, (question, answer) in enumerate(turns):
        lead = "\n" if index == 0 else f" {USER}: "  # the media precede the first question
        pieces.append((tok.encode_text(f"{lead}{question} {ASSISTANT}:"), False))
        if answer is None:
            if index != len(turns) - 1:
                raise ValueError("only the last turn may lack its answer")
            break
        pieces.append(([*tok.encode_text(answer), tok.eos_id], True))
    return pieces


def video_comprehension(
    tok: TextIds,
    vocab: LaVITVocab,
    clips: Sequence[ClipTokens],
    *,
    caption: str | None = None,
    turns: Sequence[tuple[str, str]] = (),
) -> LaVITSequence:
    """Clips (one or many: a long video's clips in order) -> text: a pretraining
    ``caption``, or chat ``turns`` (question, answer) about them."""
    media = _media(vocab, clips)
    if (caption is None) == (not turns):
        raise ValueError("give a caption or question/answer turns, not both or neither")
    if caption is not None:
        return assemble(vocab, [([tok.bos_id], False), (media, False),
                                ([*tok.encode_text(caption), tok.eos_id], True)])  # fmt: skip
    return assemble(vocab, _chat_pieces(tok, media, turns))


def image_comprehension(
    tok: TextIds,
    vocab: LaVITVocab,
    visual_codes: torch.Tensor,
    *,
    caption: str | None = None,
    turns: Sequence[tuple[str, str]] = (),
) -> LaVITSequence:
    """An image's keyframe codes -> text (a caption or chat turns)."""
    return video_comprehension(tok, vocab, [ClipTokens(visual_codes)], caption=caption, turns=turns)


def text_to_video(tok: TextIds, vocab: LaVITVocab, caption: str, clip: ClipTokens) -> LaVITSequence:
    """Caption -> the clip's keyframe codes, then its motion codes (an image clip: text to
    image), then ``</s>``; the clip and ``</s>`` supervised."""
    return assemble(vocab, [(tok.encode_text(caption), False), ([*clip_ids(vocab, clip), tok.eos_id], True)])


def image_to_video(
    tok: TextIds, vocab: LaVITVocab, clip: ClipTokens, caption: str | None = None
) -> LaVITSequence:
    """(Caption +) the keyframe in the prompt -> its motion: ``[MOV] m.. [/MOV] </s>`` supervised."""
    if clip.is_image:
        raise ValueError("image to video needs a clip with motion codes")
    ids = clip_ids(vocab, clip)
    keyframe_len = clip.visual_codes.numel() + 2  # [IMG] v.. [/IMG]
    text = tok.encode_text(caption) if caption else []
    return assemble(
        vocab, [(text, False), (ids[:keyframe_len], False), ([*ids[keyframe_len:], tok.eos_id], True)]
    )


def long_video(
    tok: TextIds, vocab: LaVITVocab, captions: Sequence[str], clips: Sequence[ClipTokens]
) -> LaVITSequence:
    """A long video, segment by segment: each segment's caption, then its clip (supervised);
    ``</s>`` after the last clip."""
    if len(captions) != len(clips) or not clips:
        raise ValueError(f"one caption per clip: got {len(captions)} captions for {len(clips)} clips")
    pieces: list[Piece] = []
    for caption, clip in zip(captions, clips, strict=True):
        pieces += [(tok.encode_text(caption), False), (clip_ids(vocab, clip), True)]
    pieces.append(([tok.eos_id], True))
    return assemble(vocab, pieces)


def understanding_prompt(
    tok: TextIds, vocab: LaVITVocab, clips: Sequence[ClipTokens], question: str
) -> list[int]:
    """The prompt ``answer`` completes: the chat up to ``ASSISTANT:``."""
    return assemble(vocab, _chat_pieces(tok, _media(vocab, clips), [(question, None)])).input_ids.tolist()


def generation_prompt(
    tok: TextIds, vocab: LaVITVocab, caption: str, keyframe_codes: torch.Tensor | None = None
) -> list[int]:
    """The prompt of text to video (the caption) or image to video (the caption, then the
    keyframe's ``[IMG] v.. [/IMG]``)."""
    ids = tok.encode_text(caption)
    if keyframe_codes is not None:
        ids += clip_ids(vocab, ClipTokens(keyframe_codes)).tolist()
    return ids
