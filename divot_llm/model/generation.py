"""Generation with a ``DivotLLM``, as free functions over the model: text (comprehension)
and features (video/image generation), from token ids or from captions.

Feature generation follows the reference's two phases (divot-reference.md §5.8): sample
text until the model emits ``<vid>`` (``<img>`` for images), then append ``<frame>`` + M
query tokens and run ONE forward pass in which the queries attend to each other; their
final hidden states go through the output module (N feature tokens' parameters, from the
M states: ``model.resampler``) and the video head is sampled: the GMM,
or the code heads' softmaxes (temperature, top-k and classifier-free guidance, which runs
the generation prompt with an empty caption beside each prompt in the same pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from divot_llm.model.code_heads import guided_logits
from divot_llm.model.divot import DivotLLM
from divot_llm.model.gmm import GMMHead
from divot_llm.model.heads import VideoHead
from divot_llm.runtime import eval_mode
from divot_llm.text import templates
from divot_llm.text.special_tokens import FRAME_END, FRAME_START, IMG_START, VID_START
from divot_llm.text.templates import ATTEND, PADDING, QUERY
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

    feats: torch.Tensor  # (B, N, D) fp32 features (code heads: digits) for the de-tokenizer
    sequences: list[list[int]]  # per sample: prompt + generated text + <frame> + M queries


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
    streamer: BaseStreamer | None = None,
) -> list[list[int]]:
    """Sample continuations of a batch of prompts (reference settings by default).

    Args:
        model: The Divot LLM.
        tokenizer: Its text tokenizer (special-token ids).
        prompts: Token ids per sample (with bos), e.g. ``[bos] + encode(comprehension_prompt(...))``.
        video_feats: Per sample ``(C, N, D)`` features of the C clips whose frame-token
            placeholders (M per clip) appear in its prompt, or None for a text-only prompt.
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
    frame_ids = tokenizer.frame_token_ids(model.tokens_per_clip)
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
        feats, clip_mask = _stack_clips(video_feats, model.feature_tokens, model.feature_dim, device)
        has_video_b1 = clip_mask.any(dim=1, keepdim=True)
        placeholder_mask = torch.isin(input_ids, torch.tensor(frame_ids, device=device)) & has_video_b1

    processor = FrameTokenLogitsProcessor(
        tokenizer.token_to_id(FRAME_START), frame_ids, tokenizer.token_to_id(FRAME_END)
    )
    with eval_mode(model), torch.no_grad():
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
    code_temperature: float | None = None,
    code_top_k: int | None = None,
    cfg_scale: float = 1.0,
    uncond_prompt: Sequence[int] | None = None,
) -> GeneratedFeatures:
    """Generate one clip of features per prompt.

    Phase 1 samples text until ``<vid>`` (``<img>``); a sample that does not produce it
    within ``max_new_tokens`` gets it appended (``max_new_tokens=0`` skips phase 1).
    Phase 2 appends ``<frame>`` + M queries, runs one forward pass with the queries in a
    bidirectional block, and samples the video head (or takes its prediction: the GMM's
    weighted mean, the likeliest code). With guidance (``cfg_scale != 1``) the same pass
    also runs ``uncond_prompt`` + each sample's phase-1 text + queries, and the head
    samples ``uncond + cfg_scale * (cond - uncond)`` logits.

    Args:
        model: The Divot LLM.
        tokenizer: Its text tokenizer.
        prompts: Token ids per sample, e.g. ``[bos] + encode(generation_prompt(caption))``.
        media: ``"video"`` or ``"image"``: which start token ends phase 1.
        max_new_tokens: Text budget of phase 1.
        do_sample: Phase-1 sampling (True) or greedy.
        temperature: Phase-1 temperature.
        top_p: Phase-1 nucleus mass.
        sample: Draw from the head (True, the reference) or return its prediction.
        var_scale: GMM only: variance scale when sampling; default the GMM's ``sample_var_scale``.
        generator: RNG for the head's draw.
        code_temperature: Code heads only: softmax temperature; default ``model.code_head``'s.
        code_top_k: Code heads only: top-k cut (0: none); default ``model.code_head``'s.
        cfg_scale: Code heads only: classifier-free guidance scale (1: none).
        uncond_prompt: The unconditional prompt (the generation template with an empty
            caption, ``generation_prompt_ids(tokenizer, "", ...)``); needed for guidance.

    Returns:
        ``GeneratedFeatures`` with ``feats (B, N, D)``.

    Raises:
        ValueError: an option of another head, or guidance without ``uncond_prompt``.
    """
    sample_head = _head_sampler(model.video_head, sample, var_scale, code_temperature, code_top_k, generator)
    guided = cfg_scale != 1.0
    if guided and isinstance(model.video_head, GMMHead):
        raise ValueError(
            f"classifier-free guidance (cfg_scale={cfg_scale}) needs a code head (model.head=fsq_factorized "
            "or fsq_flat): the GMM's parameters are not logits"
        )
    if guided and uncond_prompt is None:
        raise ValueError(f"classifier-free guidance (cfg_scale={cfg_scale}) needs the unconditional prompt")
    start_id = tokenizer.token_to_id({"video": VID_START, "image": IMG_START}[media])
    m = model.tokens_per_clip
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
    queries = [tokenizer.token_to_id(FRAME_START), *tokenizer.frame_token_ids(m)]
    sequences, unconditional = [], []
    for prompt, text in zip(prompts, texts, strict=True):
        if not text or text[-1] != start_id:
            text = [*text, start_id]
        sequences.append([*prompt, *text, *queries])
        if guided:
            unconditional.append([*uncond_prompt, *text, *queries])

    # Right padding; the last M real positions of each row are the query block. Guidance
    # appends the unconditional rows after the conditional ones.
    device = model.device
    rows = sequences + unconditional
    length = max(len(s) for s in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    attention_mask = torch.full((len(rows), length), PADDING, dtype=torch.long)
    for row, seq in enumerate(rows):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = ATTEND
        attention_mask[row, len(seq) - m : len(seq)] = QUERY
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    with eval_mode(model), torch.no_grad():
        hidden_bth = model.hidden_states(model.embed(input_ids), attention_mask)
        params_rnp = model.query_head_params(hidden_bth, attention_mask == QUERY)  # (rows, N, P)
        params_bnp = params_rnp[: len(sequences)]
        if guided:
            params_bnp = guided_logits(params_bnp.float(), params_rnp[len(sequences) :].float(), cfg_scale)
        feats_bnd = sample_head(params_bnp)
    return GeneratedFeatures(feats=feats_bnd, sequences=sequences)


def _head_sampler(
    head: VideoHead,
    sample: bool,
    var_scale: float | None,
    code_temperature: float | None,
    code_top_k: int | None,
    generator: torch.Generator | None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``params (..., P) -> features (..., D)`` with the head's own options.

    Raises:
        ValueError: an option set for another kind of head.
    """
    gmm = isinstance(head, GMMHead)
    stray = [name for name, value, wrong in (
        ("var_scale", var_scale, not gmm),
        ("code_temperature", code_temperature, gmm),
        ("code_top_k", code_top_k, gmm),
    ) if wrong and value is not None]  # fmt: skip
    if stray:
        kind = "the GMM head" if gmm else "a code head"
        raise ValueError(f"{', '.join(stray)} does not apply to {kind}")
    if not sample:
        return head.predict
    if gmm:
        return lambda params: head.sample(params, var_scale=var_scale, generator=generator)
    return lambda params: head.sample(
        params, generator=generator, temperature=code_temperature, top_k=code_top_k
    )


def generation_prompt_ids(
    tokenizer: DivotTextTokenizer, caption: str, media: str, instruct: bool
) -> list[int]:
    """``[bos] [INST] Generate a video of {caption} [/INST]\\n`` (SFT-generation models) or
    ``[bos] {caption}`` (a pretrained model); the caption is always ordinary text."""
    if instruct:
        return [tokenizer.bos_id, *tokenizer.encode(templates.generation_prompt(caption, media))]
    return [tokenizer.bos_id, *tokenizer.encode_text(caption)]


def generate_features_for_captions(
    model: DivotLLM,
    tokenizer: DivotTextTokenizer,
    captions: list[str],
    media: str = "video",
    instruct: bool = True,
    var_scale: float | None = None,
    sample: bool = True,
    seed: int = 0,
    max_new_tokens: int = 64,
    code_temperature: float | None = None,
    code_top_k: int | None = None,
    cfg_scale: float = 1.0,
) -> torch.Tensor:
    """``(B, N, D)`` features for each caption (``divot-infer generate``, and the
    conditioning features of the ``detok_adapt`` training stage).

    Args:
        instruct: SFT-generation models get ``[INST] Generate a video of ... [/INST]\\n``;
            a pretrained model gets the bare caption (its training template) and no text
            phase.
        var_scale: GMM sampling variance scale (default: the model's ``sample_var_scale``).
        sample: draw from the head (True) or take its prediction (GMM mean, likeliest code).
        seed: seeds the text phase (the global RNG) and the head's draw.
        code_temperature, code_top_k, cfg_scale: code heads' sampling (``generate_features``);
            guidance's unconditional prompt is this template with an empty caption.
    """
    prompts = [generation_prompt_ids(tokenizer, c, media, instruct) for c in captions]
    # the pretrain template puts <vid> right after the caption: no text phase
    text_budget = max_new_tokens if instruct else 0
    generator = torch.Generator(device=model.device).manual_seed(seed)
    torch.manual_seed(seed)
    out = generate_features(
        model,
        tokenizer,
        prompts,
        media=media,
        max_new_tokens=text_budget,
        var_scale=var_scale,
        sample=sample,
        generator=generator,
        code_temperature=code_temperature,
        code_top_k=code_top_k,
        cfg_scale=cfg_scale,
        uncond_prompt=generation_prompt_ids(tokenizer, "", media, instruct) if cfg_scale != 1.0 else None,
    )
    return out.feats


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
