"""Generation with Video-LaVIT's LLM: one clip's codes from a prompt, an answer about clips.

``generate_clip_codes`` is upstream's two-phase generation (keyframe codes with the text and
motion ranges suppressed, then motion codes after ``[MOV]``) in one ``generate`` call under
``VideoTokenConstraint``: 1 to ``max_visual_tokens`` keyframe codes, then exactly
``motion_tokens`` motion codes, where upstream truncates or pads a motion run of the wrong
length afterwards. Given ``keyframe_codes`` (image to video) only the motion is drawn.
``answer`` completes the understanding chat with text ids only (upstream suppresses every
visual and motion id while answering).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from divot_llm.model.lavit_llm import LaVITLLM
from divot_llm.runtime import rng_devices
from divot_llm.text.lavit_templates import ClipTokens, generation_prompt, understanding_prompt
from divot_llm.text.lavit_tokenizer import LaVITTextTokenizer
from divot_llm.text.lavit_vocab import VideoTokenConstraint


class TextOnly(LogitsProcessor):
    """Masks every id at or above ``text_size`` (the visual and motion ranges)."""

    def __init__(self, text_size: int):
        self.text_size = text_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.text_size :] = float("-inf")
        return scores


def _device(llm: LaVITLLM) -> torch.device:
    return llm.llm.get_input_embeddings().weight.device


def _sampling(temperature: float, top_k: int, top_p: float) -> dict:
    """``generate``'s sampling arguments; temperature 0 is greedy."""
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(
            f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}"
        )
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": top_k or None, "top_p": top_p}


@torch.no_grad()
def generate_clip_codes(
    llm: LaVITLLM,
    text_tokenizer: LaVITTextTokenizer,
    prompt: str,
    keyframe_codes: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_visual_tokens: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip for ``prompt``: ``(visual_codes (n,), motion_codes (motion_tokens,))``, int64
    on the CPU. Text to video draws the keyframe's codes (1..``max_visual_tokens``, default
    ``model.lavit.max_visual_tokens``) then the motion's; image to video
    (``keyframe_codes`` given, returned as they are) draws the motion only. ``seed`` fixes
    the draws (the global RNG is left as it was)."""
    vocab = llm.vocab
    max_visual = max_visual_tokens or llm.config.max_visual_tokens
    ids = generation_prompt(text_tokenizer, vocab, prompt, keyframe_codes)
    device = _device(llm)
    input_ids = torch.tensor([ids], device=device)
    constraint = VideoTokenConstraint(vocab, len(ids), text_tokenizer.eos_id, max_visual)
    # [IMG] + codes + [/IMG] + [MOV] + motion + [/MOV] + eos: the constraint ends it earlier
    longest = max_visual + vocab.motion_tokens + 5
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(seed)
        out = llm.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            logits_processor=LogitsProcessorList([constraint]),
            max_new_tokens=longest,
            eos_token_id=text_tokenizer.eos_id,
            pad_token_id=text_tokenizer.pad_id,
            **_sampling(temperature, top_k, top_p),
        )
    new = out[0, len(ids) :].cpu()
    mov = int((new == vocab.mov_start).nonzero()[0])
    motion = vocab.motion_codes_of(new[mov + 1 : mov + 1 + vocab.motion_tokens])
    if keyframe_codes is not None:
        return keyframe_codes.long().cpu(), motion
    end = int((new == vocab.img_end).nonzero()[0])
    return vocab.visual_codes_of(new[1:end]), motion


@torch.no_grad()
def answer(
    llm: LaVITLLM,
    text_tokenizer: LaVITTextTokenizer,
    question: str,
    clips: Sequence[ClipTokens],
    max_new_tokens: int = 256,
    keyframe_feats: Sequence[torch.Tensor] | None = None,
) -> str:
    """The greedy answer to ``question`` about ``clips`` (a video's clips in order, or one
    image's ``ClipTokens`` without motion), text ids only, up to ``</s>``.

    ``keyframe_feats``: per clip, its keyframe's continuous features ``(n_i, H)`` (the
    keyframe tokenizer's ``encode_features``, H the LLM width: the release's understanding
    input) in place of its codes; the clips' ``visual_codes`` then only count the
    positions (``n_i`` each)."""
    ids = understanding_prompt(text_tokenizer, llm.vocab, clips, question)
    input_ids = torch.tensor([ids], device=_device(llm))
    inputs: dict = {"input_ids": input_ids}
    if keyframe_feats is not None:
        if len(keyframe_feats) != len(clips):
            raise ValueError(f"{len(keyframe_feats)} keyframe feature sets for {len(clips)} clips")
        visual_mask = (input_ids >= llm.vocab.visual_offset) & (input_ids < llm.vocab.mov_start)
        feats = torch.cat(list(keyframe_feats)).to(input_ids.device)
        inputs = {"inputs_embeds": llm.input_embeds(input_ids, feats, visual_mask)}
    out = llm.generate(
        **inputs,
        attention_mask=torch.ones_like(input_ids),
        logits_processor=LogitsProcessorList([TextOnly(llm.vocab.text_size)]),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=text_tokenizer.eos_id,
        pad_token_id=text_tokenizer.pad_id,
    )
    new = out[0] if keyframe_feats is not None else out[0, len(ids) :]  # from embeds: new ids only
    return text_tokenizer.decode(new.tolist()).strip()
