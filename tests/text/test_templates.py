"""The SFT-generation instruction prompts are the reference's, verbatim and in order
(divot-reference §5.8: ``gen_prompt_video_all``, ``gen_prompt_image_all``), and the sft_gen
sequences are built from them."""

from __future__ import annotations

import numpy as np
import pytest

from divot_llm.data.sequences import SequenceBuilder
from divot_llm.text import (
    IMAGE_GENERATION_PROMPTS,
    VIDEO_GENERATION_PROMPTS,
    DivotTextTokenizer,
    image_tokens,
    video_tokens,
)

# Copied from divot-reference.md §5.8; one changed word or a swapped pair fails the test.
REFERENCE_VIDEO_PROMPTS = (
    "Please show me a video of",
    "Please create a video of",
    "Please produce a video of",
    "Please generate a video of",
    "I'd like to see a video of",
    "I'd love to see a video of",
    "I'd like to view a video of",
    "I want to see a video of",
    "I would like to see a video of",
    "Show me a video of",
    "Generate a video of",
    "Create a video of",
    "Produce a video of",
    "Generate a video:",
    "Create a video:",
    "Produce a video:",
    "Show me a video:",
)
REFERENCE_IMAGE_PROMPTS = (
    "Please show me a picture of",
    "Please design an image of",
    "Please produce a photo of",
    "Please generate an image of",
    "Please draw a painting of",
    "I'd like to see a drawing of",
    "I'd love to see an illustration of",
    "I'd like to view an image of",
    "I want to see a picture of",
    "I would like to see a photo of",
    "Show me a photo of",
    "Generate a picture of",
    "Show me a photograph of",
    "Generate an image of",
    "Generate an image:",
    "Generate a picture:",
    "Generate a painting:",
    "Generate a photograph:",
    "Show me a photograph:",
    "Draw a picture:",
    "Draw a painting:",
    "Draw an image:",
)
PROMPTS = {"video": REFERENCE_VIDEO_PROMPTS, "image": REFERENCE_IMAGE_PROMPTS}
N = 4  # tokens per clip
CAPTION = "a red ball rolls to the left"


def test_prompt_lists_are_the_references_verbatim_and_in_order():
    assert len(REFERENCE_VIDEO_PROMPTS) == 17 and len(REFERENCE_IMAGE_PROMPTS) == 22
    assert VIDEO_GENERATION_PROMPTS == REFERENCE_VIDEO_PROMPTS
    assert IMAGE_GENERATION_PROMPTS == REFERENCE_IMAGE_PROMPTS


class PickIndex:
    """A stand-in generator: draws ``index`` from the prompt list, 0 from anything else
    (the one-caption list)."""

    def __init__(self, index: int, of: int):
        self.index, self.of = index, of

    def integers(self, high: int) -> int:
        return self.index if high == self.of else 0


@pytest.fixture(scope="module")
def tok(mistral_tokenizer_dir):
    return DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)


@pytest.fixture(scope="module")
def builder(tok):
    return SequenceBuilder(tok, tokens_per_clip=N)


@pytest.mark.parametrize("media", ["video", "image"])
def test_sft_gen_sequences_use_each_prompt_in_the_references_form(tok, builder, media):
    """Prompt i of the list gives ``<s> [INST] {prompt} {caption} [/INST]\\n media </s>``,
    the reference's string encoded as one."""
    prompts = PROMPTS[media]
    media_ids = tok.encode(video_tokens(1, N) if media == "video" else image_tokens(N))
    for i, prompt in enumerate(prompts):
        seq = builder.build("sft_gen", media, 1, 1024, PickIndex(i, len(prompts)), captions=[CAPTION])
        expected = [tok.bos_id, *tok.encode(f"[INST] {prompt} {CAPTION} [/INST]\n"), *media_ids, tok.eos_id]
        assert seq.input_ids.tolist() == expected, (media, i, prompt)


@pytest.mark.parametrize("media", ["video", "image"])
def test_seeded_draws_cover_the_whole_list_and_repeat(tok, builder, media):
    """The real seeded generator reaches every prompt, and the same seed picks the same one."""
    prompts = PROMPTS[media]
    heads = {tuple(tok.encode(f"[INST] {p} {CAPTION} [/INST]\n")): p for p in prompts}

    def drawn(seed: int) -> str:
        seq = builder.build("sft_gen", media, 1, 1024, np.random.default_rng(seed), captions=[CAPTION])
        ids = seq.input_ids.tolist()
        return next(p for head, p in heads.items() if tuple(ids[1 : 1 + len(head)]) == head)

    picks = [drawn(seed) for seed in range(300)]
    assert set(picks) == set(prompts)
    assert picks[:20] == [drawn(seed) for seed in range(20)]
