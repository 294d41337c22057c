"""Inference prompts treat questions and captions as text: special-token strings in them
never become control ids (real Mistral tokenizer)."""

from __future__ import annotations

import pytest

from divot_llm.infer import comprehension_prompt_ids, generation_prompt_ids
from divot_llm.text import DivotTextTokenizer, image_tokens, video_tokens


@pytest.fixture(scope="module")
def tok(mistral_tokenizer_dir):
    return DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)


@pytest.fixture(scope="module")
def hostile(tok) -> list[str]:
    """Every control string alone, and all of them (plus template words) in one text."""
    strings = [tok.id_to_token(i) for i in sorted(tok.control_ids)] + ["[INST]", "[/INST]"]
    return [*strings, " ".join(strings), "".join(strings)]


def controls(tok, ids: list[int]) -> list[int]:
    return [i for i in ids if i in tok.control_ids]


@pytest.mark.parametrize("kind", ["video", "image"])
def test_questions_are_text_in_comprehension_prompts(tok, hostile, kind):
    media = image_tokens(8) if kind == "image" else video_tokens(3, 8)
    expected = [tok.bos_id, *tok.encode(media)]  # the template's control ids, in order
    for question in hostile:
        ids = comprehension_prompt_ids(tok, kind, 3, 8, question)
        assert controls(tok, ids) == expected, question
        assert question in tok.decode(ids), question


@pytest.mark.parametrize("media", ["video", "image"])
@pytest.mark.parametrize("instruct", [True, False])
def test_captions_are_text_in_generation_prompts(tok, hostile, media, instruct):
    for caption in hostile:
        ids = generation_prompt_ids(tok, caption, media, instruct)
        assert controls(tok, ids) == [tok.bos_id], caption
        assert caption in tok.decode(ids), caption


def test_generation_prompts_are_the_reference_templates(tok):
    caption = "a red circle moving left"
    instruct = generation_prompt_ids(tok, caption, "video", instruct=True)
    assert instruct == [tok.bos_id, *tok.encode(f"[INST] Generate a video of {caption} [/INST]\n")]
    image = generation_prompt_ids(tok, caption, "image", instruct=True)
    assert image == [tok.bos_id, *tok.encode(f"[INST] Generate an image of {caption} [/INST]\n")]
    assert generation_prompt_ids(tok, caption, "video", instruct=False) == [tok.bos_id, *tok.encode(caption)]
