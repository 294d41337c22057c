"""Inference: text generation (comprehension) and feature generation (video/image).

Feature generation follows the reference's two phases (divot-reference.md §5.8): sample
text until the model emits ``<vid>`` (``<img>`` for images), then append ``<frame>`` + N
query tokens and run ONE forward pass in which the queries attend to each other; their
final hidden states go through the output projection and the GMM is sampled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from divot_llm.text.special_tokens import FRAME_END, FRAME_START, IMG_START, VID_START
from divot_llm.text.templates import ATTEND, PADDING, QUERY

if TYPE_CHECKING:
    from divot_llm.model.divot import DivotLLM
    from divot_llm.text.tokenizer import DivotTextTokenizer


class FrameTokenLogitsProcessor(LogitsProcessor):
    """Keeps frame tokens well-formed during text sampling.

    After ``<frame>`` the next tokens are forced to ``<frame_00000> ... <frame_{N-1}>
    </frame>``; anywhere else frame tokens and ``</frame>`` are forbidden. Scores are set
    to -inf (the reference sets forbidden scores to 0.0, which still lets them be sampled).

    Args:
        frame_start_id: Id of ``<frame>``.
        frame_ids: Ids of the N frame tokens of one clip, in order.
        frame_end_id: Id of ``</frame>``.
    """

    def __init__(self, frame_start_id: int, frame_ids: Sequence[int], frame_end_id: int):
        chain = [frame_start_id, *frame_ids, frame_end_id]
        self._next_of = dict(zip(chain[:-1], chain[1:], strict=True))  # token -> forced successor
        self._forbidden = torch.tensor([*frame_ids, frame_end_id])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()
        out[:, self._forbidden.to(out.device)] = float("-inf")
        if input_ids.shape[1] == 0:
            return out
        for row, last in enumerate(input_ids[:, -1].tolist()):
            forced = self._next_of.get(last)
            if forced is not None:
                out[row] = float("-inf")
                out[row, forced] = 0.0
        return out


@dataclass
class GeneratedFeatures:
    """Output of ``generate_features``."""

    feats: torch.Tensor  # (B, N, D) fp32 features for the de-tokenizer
    sequences: list[list[int]]  # per sample: prompt + generated text + <frame> + N queries


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout (LoRA's included) off while generating; the caller's mode comes back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_text(
    model: DivotLLM,
    tokenizer: DivotTextTokenizer,
    prompts: Sequence[Sequence[int]],
    video_feats: Sequence[torch.Tensor | None] | None = None,
    max_new_tokens: int = 256,
    do_sample: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.5,
    top_k: int = 50,
    eos_token_id: int | None = None,
    streamer=None,
) -> list[list[int]]:
    """Sample continuations of a batch of prompts (reference settings by default).

    Args:
        model: The Divot LLM.
        tokenizer: Its text tokenizer (special-token ids).
        prompts: Token ids per sample (with bos), e.g. ``[bos] + encode(comprehension_prompt(...))``.
        video_feats: Per sample ``(C, N, D)`` features of the C clips whose frame-token
            placeholders appear in its prompt, or None for a text-only prompt.
        max_new_tokens: Upper bound on generated tokens.
        do_sample: Sample (True) or greedy.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        top_k: Top-k filter (the reference got transformers' default of 50).
        eos_token_id: Stop token; default ``</s>``.
        streamer: A transformers streamer (``put(ids)`` / ``end()``) that receives the new
            tokens as they are sampled; batch size 1 only, as in transformers.

    Returns:
        The new token ids of each sample, ending with the stop token when it was produced.
    """
    eos = tokenizer.eos_id if eos_token_id is None else eos_token_id
    n = model.tokens_per_clip
    frame_ids = tokenizer.frame_token_ids(n)
    device = model.device

    # Left padding: every prompt ends at the same position, where sampling starts.
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), tokenizer.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        attention_mask[row, length - len(prompt) :] = ATTEND
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

    feats, clip_mask, placeholder_mask = None, None, None
    if video_feats is not None and any(v is not None for v in video_feats):
        feats, clip_mask = _stack_clips(video_feats, n, model.feature_dim, device)
        has_video_b1 = clip_mask.any(dim=1, keepdim=True)
        placeholder_mask = torch.isin(input_ids, torch.tensor(frame_ids, device=device)) & has_video_b1

    processor = FrameTokenLogitsProcessor(
        tokenizer.token_to_id(FRAME_START), frame_ids, tokenizer.token_to_id(FRAME_END)
    )
    with _eval_mode(model), torch.no_grad():
        inputs_embeds = model.embed(input_ids, feats, clip_mask, placeholder_mask)
        out = model.llm.generate(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            logits_processor=LogitsProcessorList([processor]),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=top_k if do_sample else None,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_id,
            use_cache=True,
            streamer=streamer,
        )
    new_tokens = out[:, length:].tolist()
    return [_cut_after(tokens, eos) for tokens in new_tokens]


def generate_features(
    model: DivotLLM,
    tokenizer: DivotTextTokenizer,
    prompts: Sequence[Sequence[int]],
    media: str = "video",
    max_new_tokens: int = 64,
    do_sample: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.5,
    sample: bool = True,
    var_scale: float | None = None,
    generator: torch.Generator | None = None,
) -> GeneratedFeatures:
    """Generate one clip of features per prompt.

    Phase 1 samples text until ``<vid>`` (``<img>``); a sample that does not produce it
    within ``max_new_tokens`` gets it appended (``max_new_tokens=0`` skips phase 1).
    Phase 2 appends ``<frame>`` + N queries, runs one forward pass with the queries in a
    bidirectional block, and samples the GMM (or takes its weighted mean).

    Args:
        model: The Divot LLM.
        tokenizer: Its text tokenizer.
        prompts: Token ids per sample, e.g. ``[bos] + encode(generation_prompt(caption))``.
        media: ``"video"`` or ``"image"``: which start token ends phase 1.
        max_new_tokens: Text budget of phase 1.
        do_sample: Phase-1 sampling (True) or greedy.
        temperature: Phase-1 temperature.
        top_p: Phase-1 nucleus mass.
        sample: Draw from the GMM (True, the reference) or return its weighted mean.
        var_scale: Variance scale when sampling; default the GMM's ``sample_var_scale``.
        generator: RNG for the GMM draw.

    Returns:
        ``GeneratedFeatures`` with ``feats (B, N, D)``.
    """
    start_id = tokenizer.token_to_id({"video": VID_START, "image": IMG_START}[media])
    n = model.tokens_per_clip
    if max_new_tokens > 0:
        texts = generate_text(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=start_id,
        )
    else:
        texts = [[] for _ in prompts]
    queries = [tokenizer.token_to_id(FRAME_START), *tokenizer.frame_token_ids(n)]
    sequences = []
    for prompt, text in zip(prompts, texts, strict=True):
        if not text or text[-1] != start_id:
            text = [*text, start_id]
        sequences.append([*prompt, *text, *queries])

    # Right padding; the last N real positions of each row are the query block.
    device = model.device
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), tokenizer.pad_id, dtype=torch.long)
    attention_mask = torch.full((len(sequences), length), PADDING, dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = ATTEND
        attention_mask[row, len(seq) - n : len(seq)] = QUERY
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    with _eval_mode(model), torch.no_grad():
        hidden_bth = model.hidden_states(model.embed(input_ids), attention_mask)
        params_bnp = model.query_gmm_params(hidden_bth, attention_mask == QUERY)
        if sample:
            feats_bnd = model.gmm.sample(params_bnp, var_scale=var_scale, generator=generator)
        else:
            feats_bnd = model.gmm.predict(params_bnp)
    return GeneratedFeatures(feats=feats_bnd, sequences=sequences)


def _stack_clips(
    video_feats: Sequence[torch.Tensor | None], n: int, dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(C_b, N, D)`` features -> ``(B, C, N, D)`` zero-padded + ``(B, C)`` mask."""
    max_clips = max(v.shape[0] for v in video_feats if v is not None)
    feats_bcnd = torch.zeros(len(video_feats), max_clips, n, dim, device=device)
    clip_mask_bc = torch.zeros(len(video_feats), max_clips, dtype=torch.bool, device=device)
    for row, clips in enumerate(video_feats):
        if clips is None:
            continue
        if clips.shape[1:] != (n, dim):
            raise ValueError(
                f"sample {row}: video features have shape {tuple(clips.shape)}, expected (C, {n}, {dim})"
            )
        feats_bcnd[row, : clips.shape[0]] = clips.to(device)
        clip_mask_bc[row, : clips.shape[0]] = True
    return feats_bcnd, clip_mask_bc


def _cut_after(tokens: list[int], stop_id: int) -> list[int]:
    return tokens[: tokens.index(stop_id) + 1] if stop_id in tokens else tokens

from divot_llm.infer.generate import generate_features_for_captions  # noqa: E402,F401 TEMP re-export (the model helper moves it here)
