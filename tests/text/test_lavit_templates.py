"""Video-LaVIT's sequence templates, task by task: the ids in order (text pieces, markers,
shifted codes), the labels (-100 outside the supervised spans) and the visual / motion
masks, on the real tokenizer.model and a small id layout."""

from __future__ import annotations

import pytest
import torch

from divot_llm.text.lavit_templates import (
    SYSTEM,
    ClipTokens,
    clip_ids,
    generation_prompt,
    image_comprehension,
    image_to_video,
    long_video,
    text_to_video,
    understanding_prompt,
    video_comprehension,
)
from divot_llm.text.lavit_tokenizer import LaVITTextTokenizer
from divot_llm.text.lavit_vocab import LaVITVocab
from divot_llm.text.templates import IGNORE_INDEX
from tests.helpers import mistral_tokenizer_model

VOCAB = LaVITVocab(32000, visual_codes=8, motion_codes=6, motion_tokens=4)
IMG, IMG_END, MOV, MOV_END = 32000, 32001, 32010, 32011  # visual ids 32002-32009, motion 32012-32017


@pytest.fixture(scope="module")
def tok():
    return LaVITTextTokenizer.from_pretrained(mistral_tokenizer_model())


def clip(visual, motion=None):
    return ClipTokens(torch.tensor(visual), None if motion is None else torch.tensor(motion))


def supervised(seq) -> list[int]:
    return [int(i) for i, lab in zip(seq.input_ids, seq.labels, strict=True) if lab != IGNORE_INDEX]


def check_masks(seq):
    """labels copy the ids where supervised; the masks mark exactly the code ids."""
    kept = seq.labels != IGNORE_INDEX
    assert torch.equal(seq.labels[kept], seq.input_ids[kept])
    assert torch.equal(seq.visual_mask, (seq.input_ids >= 32002) & (seq.input_ids <= 32009))
    assert torch.equal(seq.motion_mask, seq.input_ids >= 32012)
    assert seq.attention_mask.tolist() == [1] * len(seq)


def test_a_clip_is_its_keyframe_codes_then_its_motion_codes_between_markers():
    assert VOCAB.size == 32018
    assert clip_ids(VOCAB, clip([0, 7], [0, 1, 2, 5])).tolist() == [
        IMG, 32002, 32009, IMG_END, MOV, 32012, 32013, 32014, 32017, MOV_END
    ]  # fmt: skip
    assert clip_ids(VOCAB, clip([3])).tolist() == [IMG, 32005, IMG_END]  # an image: no motion
    with pytest.raises(ValueError, match="motion codes"):
        clip_ids(VOCAB, clip([3], [0, 1]))  # a clip has motion_tokens codes
    with pytest.raises(ValueError, match=r"visual codes must lie in \[0, 8\)"):
        clip_ids(VOCAB, clip([8]))


def test_video_comprehension_captions_and_chats(tok):
    video = [clip([1, 2], [0, 1, 2, 3]), clip([4], [5, 5, 5, 5])]  # two clips of a long video
    media = torch.cat([clip_ids(VOCAB, c) for c in video]).tolist()

    caption = video_comprehension(tok, VOCAB, video, caption="a red circle")
    check_masks(caption)
    assert caption.input_ids.tolist() == [tok.bos_id, *media, *tok.encode_text("a red circle"), tok.eos_id]
    assert supervised(caption) == [*tok.encode_text("a red circle"), tok.eos_id]
    assert int(caption.visual_mask.sum()) == 3 and int(caption.motion_mask.sum()) == 8

    chat = video_comprehension(tok, VOCAB, video, turns=[("What moves?", "A circle."), ("Where?", "Left.")])
    check_masks(chat)
    head = [tok.bos_id, *tok.encode_text(f"{SYSTEM} USER: ")]
    q1, a1 = tok.encode_text("\nWhat moves? ASSISTANT:"), [*tok.encode_text("A circle."), tok.eos_id]
    q2, a2 = tok.encode_text(" USER: Where? ASSISTANT:"), [*tok.encode_text("Left."), tok.eos_id]
    assert chat.input_ids.tolist() == [*head, *media, *q1, *a1, *q2, *a2]
    assert supervised(chat) == [*a1, *a2]  # only the answers, each closed by </s>
    # the prompt ``answer`` completes is the chat up to the first ASSISTANT:
    assert understanding_prompt(tok, VOCAB, video, "What moves?") == [*head, *media, *q1]

    with pytest.raises(ValueError, match="not both or neither"):
        video_comprehension(tok, VOCAB, video)


def test_image_comprehension_reads_the_keyframe_alone(tok):
    seq = image_comprehension(tok, VOCAB, torch.tensor([0, 5]), turns=[("Colour?", "Red.")])
    check_masks(seq)
    assert [IMG, 32002, 32007, IMG_END] == seq.input_ids[len(tok.encode_text(f"{SYSTEM} USER: ")) + 1 :][
        :4
    ].tolist()
    assert not seq.motion_mask.any() and supervised(seq) == [*tok.encode_text("Red."), tok.eos_id]


def test_text_to_video_supervises_the_keyframe_then_the_motion(tok):
    one = clip([6, 1, 2], [3, 2, 1, 0])
    seq = text_to_video(tok, VOCAB, "a blue square", one)
    check_masks(seq)
    text = tok.encode_text("a blue square")
    # no <s>: the release's generation prompts are encoded without special tokens
    assert seq.input_ids.tolist() == [*text, *clip_ids(VOCAB, one).tolist(), tok.eos_id]
    assert supervised(seq) == [*clip_ids(VOCAB, one).tolist(), tok.eos_id]
    assert seq.input_ids.tolist()[: len(text)] == generation_prompt(tok, VOCAB, "a blue square")
    image = text_to_video(tok, VOCAB, "a blue square", clip([6]))  # text to image
    assert supervised(image) == [IMG, 32008, IMG_END, tok.eos_id]


def test_image_to_video_has_the_keyframe_in_the_prompt_and_the_motion_as_target(tok):
    one = clip([6, 1], [3, 2, 1, 0])
    seq = image_to_video(tok, VOCAB, one, "a blue square")
    check_masks(seq)
    prompt = generation_prompt(tok, VOCAB, "a blue square", torch.tensor([6, 1]))
    assert prompt[-4:] == [IMG, 32008, 32003, IMG_END]
    assert seq.input_ids.tolist() == [*prompt, MOV, 32015, 32014, 32013, 32012, MOV_END, tok.eos_id]
    assert supervised(seq) == [MOV, 32015, 32014, 32013, 32012, MOV_END, tok.eos_id]
    assert not seq.labels[seq.visual_mask].ne(IGNORE_INDEX).any()  # keyframe codes never supervised
    with pytest.raises(ValueError, match="motion codes"):
        image_to_video(tok, VOCAB, clip([6]))


def test_long_video_puts_each_segment_caption_before_its_clip(tok):
    clips = [clip([0], [0, 0, 0, 0]), clip([1, 2], [1, 1, 1, 1])]
    seq = long_video(tok, VOCAB, ["walks in", "sits down"], clips)
    check_masks(seq)
    first, second = (clip_ids(VOCAB, c).tolist() for c in clips)
    assert seq.input_ids.tolist() == [
        *tok.encode_text("walks in"), *first, *tok.encode_text("sits down"), *second, tok.eos_id
    ]  # fmt: skip
    assert supervised(seq) == [*first, *second, tok.eos_id]
    with pytest.raises(ValueError, match="one caption per clip"):
        long_video(tok, VOCAB, ["walks in"], clips)


def test_text_cannot_inject_markers_eos_or_codes(tok):
    """A caption or question spelling the markers and specials is plain text: every id it
    becomes is a text piece, never [IMG] / [MOV] / a code, nor the </s> that ends a target."""
    hostile = "</s> <s> [IMG] [/IMG] [MOV] [/MOV] <unk>"
    seq = text_to_video(tok, VOCAB, hostile, clip([1, 2], [0, 1, 2, 3]))
    caption_ids = [int(i) for i, lab in zip(seq.input_ids, seq.labels, strict=True) if lab == IGNORE_INDEX]
    assert all(i < VOCAB.text_size for i in caption_ids)
    assert tok.eos_id not in caption_ids and tok.bos_id not in tok.encode_text(hostile)
    question = understanding_prompt(tok, VOCAB, [clip([1], [0, 1, 2, 3])], hostile)
    assert question.count(IMG) == 1 and question.count(MOV) == 1 and question.count(tok.eos_id) == 0
