"""Generation: the frame-token logits processor, batched text and feature generation
against step-by-step reference computations."""

from __future__ import annotations

import pytest
import torch

from divot_llm.model import FrameTokenLogitsProcessor, generate_features, generate_text
from divot_llm.text import (
    FRAME_END,
    FRAME_START,
    QUERY,
    VID_START,
    comprehension_prompt,
    generation_prompt,
    video_tokens,
)
from tests.model.samples import perturb_trainable


@pytest.fixture
def trained(make_model):
    model = make_model()
    perturb_trainable(model, scale=0.2)
    return model


def test_processor_forces_the_frame_sequence_and_forbids_it_elsewhere(text_tokenizer):
    tok = text_tokenizer
    frame_ids = tok.frame_token_ids(3)
    start, end = tok.token_to_id(FRAME_START), tok.token_to_id(FRAME_END)
    proc = FrameTokenLogitsProcessor(start, frame_ids, end)
    last = torch.tensor([[5, start], [5, frame_ids[0]], [5, frame_ids[2]], [5, 100]])
    scores = torch.randn(4, len(tok))
    out = proc(last, scores)
    forced = [frame_ids[0], frame_ids[1], end]
    for row, token in enumerate(forced):
        assert out[row].argmax() == token and torch.isinf(out[row]).sum() == len(tok) - 1
    free = out[3]
    assert torch.isinf(free[[*frame_ids, end]]).all() and (free[[*frame_ids, end]] < 0).all()
    others = torch.ones(len(tok), dtype=torch.bool)
    others[[*frame_ids, end]] = False
    assert torch.equal(free[others], scores[3][others])  # <frame> itself stays allowed


def greedy_reference(model, tok, prompt, feats, steps, stop_id) -> list[int]:
    """Step-by-step greedy decoding without a KV cache, for one prompt."""
    n = model.tokens_per_clip
    proc = FrameTokenLogitsProcessor(
        tok.token_to_id(FRAME_START), tok.frame_token_ids(n), tok.token_to_id(FRAME_END)
    )
    ids = list(prompt)
    placeholders = torch.tensor([i in set(tok.frame_token_ids(n)) and feats is not None for i in prompt])
    for _ in range(steps):
        input_ids = torch.tensor([ids])
        cmp_ids = torch.cat([placeholders, torch.zeros(len(ids) - len(prompt), dtype=torch.bool)])[None]
        with torch.no_grad():
            embeds = model.embed(
                input_ids,
                None if feats is None else feats[None],
                None if feats is None else torch.ones(1, feats.shape[0], dtype=torch.bool),
                cmp_ids,
            )
            hidden = model.hidden_states(embeds, torch.ones_like(input_ids))
            logits = model.causal_lm.lm_head(hidden[:, -1])
        ids.append(int(proc(input_ids, logits).argmax()))
        if ids[-1] == stop_id:
            break
    return ids[len(prompt) :]


def test_batched_greedy_text_generation_matches_step_by_step_decoding(trained, text_tokenizer, feat_shape):
    tok = text_tokenizer
    n, d = feat_shape
    feats = torch.randn(2, n, d)
    prompts = [
        [tok.bos_id, *tok.encode(comprehension_prompt(video_tokens(2, n), "What is moving?"))],
        [tok.bos_id, *tok.encode("a short text prompt")],
    ]
    trained.train()  # generation must switch dropout off itself and restore the mode
    out = generate_text(trained, tok, prompts, video_feats=[feats, None], max_new_tokens=6, do_sample=False)
    assert trained.training
    trained.eval()
    for prompt, video, got in zip(prompts, [feats, None], out, strict=True):
        assert got == greedy_reference(trained, tok, prompt, video, 6, tok.eos_id)


def test_feature_generation_is_one_query_forward_after_vid(trained, text_tokenizer, feat_shape):
    tok = text_tokenizer
    n, d = feat_shape
    prompts = [
        [tok.bos_id, *tok.encode(generation_prompt("a red circle moving left"))],
        [tok.bos_id, *tok.encode(generation_prompt("green"))],
    ]
    result = generate_features(trained, tok, prompts, max_new_tokens=4, do_sample=False, sample=False)
    assert result.feats.shape == (2, n, d)
    vid = tok.token_to_id(VID_START)
    queries = [tok.token_to_id(FRAME_START), *tok.frame_token_ids(n)]
    trained.eval()
    for row, prompt in enumerate(prompts):
        text = greedy_reference(trained, tok, prompt, None, 4, vid)
        if text[-1] != vid:
            text.append(vid)  # not generated within the budget: appended
        seq = [*prompt, *text, *queries]
        assert result.sequences[row] == seq
        # reference: the sequence alone, queries marked -1, GMM weighted mean at the queries
        ids = torch.tensor([seq])
        mask = torch.ones_like(ids)
        mask[0, -n:] = QUERY
        with torch.no_grad():
            hidden = trained.hidden_states(trained.embed(ids), mask)
            expected = trained.video_head.predict(trained.output_resampler(hidden[0, -n:]))
        torch.testing.assert_close(result.feats[row], expected, atol=1e-5, rtol=1e-5)


def test_sampled_features_are_seeded_gmm_draws(trained, text_tokenizer, feat_shape):
    tok = text_tokenizer
    prompts = [[tok.bos_id, *tok.encode(generation_prompt("a blue square"))]]
    draw = generate_features(
        trained, tok, prompts, max_new_tokens=0, generator=torch.Generator().manual_seed(0)
    )
    again = generate_features(
        trained, tok, prompts, max_new_tokens=0, generator=torch.Generator().manual_seed(0)
    )
    mean = generate_features(trained, tok, prompts, max_new_tokens=0, sample=False)
    assert draw.sequences[0][len(prompts[0])] == tok.token_to_id(VID_START)
    assert torch.equal(draw.feats, again.feats)
    assert not torch.allclose(draw.feats, mean.feats)
