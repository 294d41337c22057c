"""Token sequences of the four tasks, with labels and masks (divot-reference §5.8, §7.4).

Strings come from ``divot_llm.text.templates``; each piece is encoded on its own and the
pieces are concatenated with bos/eos added by hand, as the reference does. Captions,
questions and answers are user text (``encode_text`` / ``UserText``): special-token strings
in them are ordinary text, so control ids appear only where a template puts them. Per sample:

* ``input_ids (T,)`` long, ``labels (T,)`` long (-100 = not supervised);
* ``attention_mask (T,)`` long: 1 causal, -1 generation query (bidirectional block);
* ``ids_cmp_mask (T,)`` / ``ids_gen_mask (T,)`` bool: the N frame-token positions of each
  comprehension clip / generation clip, in clip order.

Task templates:

* pretrain_comp: ``<s> <vid>clips</vid> caption </s>`` -- caption and eos supervised;
* pretrain_gen: ``<s> caption <vid><frame>N</frame></vid> </s>`` -- only eos supervised;
* sft_gen: ``<s> [INST] prompt caption [/INST]\\n <vid><frame>N</frame></vid> </s>`` --
  ``<vid>``, ``</vid>`` and eos supervised;
* sft_comp: ``<s> [INST] media q1 [/INST]\\n a1 \\n[INST] q2 [/INST]\\n a2 ... </s>`` --
  answers and the final eos supervised.

Images use ``<img>...</img>`` with one static clip. Too-long samples are never silently
changed: captions and trailing QA turns are cut to fit ``max_length`` (counted as
``truncated``), and a sample whose media tokens alone do not fit is dropped
(``SequenceTooLong``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from divot_llm.text import templates
from divot_llm.text.templates import ATTEND, IGNORE_INDEX, QUERY
from divot_llm.text.tokenizer import DivotTextTokenizer

COMPREHENSION_TASKS = ("pretrain_comp", "sft_comp")
GENERATION_TASKS = ("pretrain_gen", "sft_gen")


class SequenceTooLong(ValueError):
    """The media tokens alone exceed max_length."""

    reason = "too_long"

    @property
    def detail(self) -> str:
        return str(self)


@dataclass
class Sequence:
    input_ids: torch.Tensor  # (T,) long
    labels: torch.Tensor  # (T,) long
    attention_mask: torch.Tensor  # (T,) long
    ids_cmp_mask: torch.Tensor  # (T,) bool
    ids_gen_mask: torch.Tensor  # (T,) bool
    truncated: bool


class SequenceBuilder:
    """Builds the sequence of one sample for one task.

    Args:
        tokenizer: the Divot text tokenizer.
        tokens_per_clip: the LLM's tokens per clip (``divot_llm.model.llm_tokens_per_clip``:
            the video tokenizer's N, or ``model.resampler.num_queries``).
        bidirectional_queries: mark generation queries with -1 (attend within their block).
    """

    def __init__(
        self, tokenizer: DivotTextTokenizer, tokens_per_clip: int, bidirectional_queries: bool = True
    ):
        self.tok = tokenizer
        self.n = tokens_per_clip
        self.bidirectional_queries = bidirectional_queries
        self._frame_ids = torch.tensor(tokenizer.frame_token_ids(tokens_per_clip))

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _clips(media_kind: str, num_clips: int) -> int:
        return 1 if media_kind == "image" else num_clips

    def _media(self, media_kind: str, num_clips: int) -> str:
        if media_kind == "image":
            return templates.image_tokens(self.n)
        return templates.video_tokens(num_clips, self.n)

    def _assemble(
        self, pieces: list[tuple[list[int], bool]], max_length: int
    ) -> tuple[list[int], list[int], bool]:
        """Concatenate (ids, supervised) pieces after bos, cut to max_length."""
        ids, labels = [self.tok.bos_id], [IGNORE_INDEX]
        for piece_ids, supervised in pieces:
            ids += piece_ids
            labels += piece_ids if supervised else [IGNORE_INDEX] * len(piece_ids)
        truncated = len(ids) > max_length
        return ids[:max_length], labels[:max_length], truncated

    def _finish(self, ids: list[int], labels: list[int], task: str, truncated: bool, clips: int) -> Sequence:
        ids_t = torch.tensor(ids, dtype=torch.long)
        is_frame = torch.isin(ids_t, self._frame_ids)
        if int(is_frame.sum()) != self.n * clips:  # a cut went through the media tokens
            raise SequenceTooLong(f"max_length cuts into the {clips} clip(s) of media tokens")
        generation = task in GENERATION_TASKS
        attention = torch.full_like(ids_t, ATTEND)
        if generation and self.bidirectional_queries:
            attention[is_frame] = QUERY
        return Sequence(
            input_ids=ids_t,
            labels=torch.tensor(labels, dtype=torch.long),
            attention_mask=attention,
            ids_cmp_mask=is_frame & (not generation),
            ids_gen_mask=is_frame & generation,
            truncated=truncated,
        )

    def _fit_text(self, text_ids: list[int], budget: int) -> tuple[list[int], bool]:
        if budget < 1:
            raise SequenceTooLong(f"no room for text within max_length (budget {budget})")
        return text_ids[:budget], len(text_ids) > budget

    # ------------------------------------------------------------------- tasks

    def build(
        self,
        task: str,
        media_kind: str,
        num_clips: int,
        max_length: int,
        rng: np.random.Generator,
        captions: list[str] = (),
        turns: list[tuple[str, str]] = (),
    ) -> Sequence:
        """The sequence of one sample; ``rng`` picks the caption / instruction prompt."""
        if task in ("pretrain_comp", "pretrain_gen", "sft_gen") and not captions:
            raise ValueError(f"{task} needs a caption")
        if task == "sft_comp" and not turns:
            raise ValueError("sft_comp needs question/answer turns")
        caption = captions[int(rng.integers(len(captions)))] if captions else ""
        return getattr(self, f"_{task}")(media_kind, num_clips, max_length, rng, caption, list(turns))

    def _pretrain_comp(self, media_kind, num_clips, max_length, rng, caption, turns) -> Sequence:
        media = self.tok.encode(self._media(media_kind, num_clips))
        text, cut = self._fit_text(self.tok.encode_text(caption), max_length - len(media) - 2)  # bos, eos
        ids, labels, _ = self._assemble([(media, False), (text, True), ([self.tok.eos_id], True)], max_length)
        return self._finish(ids, labels, "pretrain_comp", cut, self._clips(media_kind, num_clips))

    def _pretrain_gen(self, media_kind, num_clips, max_length, rng, caption, turns) -> Sequence:
        media = self.tok.encode(self._media(media_kind, 1))
        text, cut = self._fit_text(self.tok.encode_text(caption), max_length - len(media) - 2)
        ids, labels, _ = self._assemble(
            [(text, False), (media, False), ([self.tok.eos_id], True)], max_length
        )
        return self._finish(ids, labels, "pretrain_gen", cut, 1)

    def _sft_gen(self, media_kind, num_clips, max_length, rng, caption, turns) -> Sequence:
        prompts = (
            templates.IMAGE_GENERATION_PROMPTS
            if media_kind == "image"
            else templates.VIDEO_GENERATION_PROMPTS
        )
        prompt = prompts[int(rng.integers(len(prompts)))]
        head = self.tok.encode(templates.generation_instruction(prompt, ""))  # budget for the caption
        media = self.tok.encode(self._media(media_kind, 1))
        room = max_length - len(head) - len(media) - 2
        words, cut = self._fit_text(self.tok.encode_text(caption), room)
        if cut:  # re-encode the instruction with the caption cut at a token boundary
            caption = self.tok.decode(words)
        instruction = self.tok.encode(templates.generation_instruction(prompt, caption))
        # supervise <vid>/<img> (first media token) and </vid>/</img> (last) and eos
        media_labels = [media[0]] + [IGNORE_INDEX] * (len(media) - 2) + [media[-1]]
        ids = [self.tok.bos_id] + instruction + media + [self.tok.eos_id]
        labels = [IGNORE_INDEX] * (1 + len(instruction)) + media_labels + [self.tok.eos_id]
        if len(ids) > max_length:
            raise SequenceTooLong(f"{len(ids)} tokens > max_length {max_length}")
        return self._finish(ids, labels, "sft_gen", cut, 1)

    def _sft_comp(self, media_kind, num_clips, max_length, rng, caption, turns) -> Sequence:
        media = self._media(media_kind, num_clips)
        pieces: list[tuple[list[int], bool]] = []
        for i, (question, answer) in enumerate(turns):
            prompt = (
                templates.comprehension_prompt(media, question)
                if i == 0
                else templates.followup_turn(question)
            )
            pieces += [(self.tok.encode(prompt), False), (self.tok.encode_text(answer), True)]
        pieces.append(([self.tok.eos_id], True))
        media_len = len(self.tok.encode(media))
        if media_len + 2 > max_length:
            raise SequenceTooLong(f"media takes {media_len} tokens > max_length {max_length}")
        ids, labels, cut = self._assemble(pieces, max_length)
        return self._finish(ids, labels, "sft_comp", cut, self._clips(media_kind, num_clips))


def sequence_example(
    seq: Sequence, task: str, media_key: str, media: torch.Tensor, source: str, key: str
) -> dict:
    """One training example: the sequence of a ``task``, the media of its C clips under
    ``media_key`` (``frames`` (C, F, 3, S, S) or ``video_feats`` (C, N, D)), which of those
    clips the model reads (comprehension) or writes (generation), and where the sample
    came from (``source``, ``key``)."""
    count = media.shape[0]
    comprehension = task in COMPREHENSION_TASKS
    return {
        "input_ids": seq.input_ids,
        "labels": seq.labels,
        "attention_mask": seq.attention_mask,
        "ids_cmp_mask": seq.ids_cmp_mask,
        "ids_gen_mask": seq.ids_gen_mask,
        media_key: media,
        "embeds_cmp_mask": torch.full((count,), comprehension),
        "embeds_gen_mask": torch.full((count,), not comprehension),
        "source": source,
        "key": key,
    }
