"""Video-LaVIT's vocabulary layout and the constrained generation of one clip, through a
real (tiny, random) transformers LlamaForCausalLM's ``generate``."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from divot_llm.text.lavit_vocab import LaVITVocab, VideoTokenConstraint

SMALL = LaVITVocab(text_size=50, visual_codes=30, motion_codes=20, motion_tokens=6)
EOS = 2


def test_the_released_layout_on_a_32000_token_base():
    """seed-systems.md b.1: 49412 ids; [IMG] 32000, codes 32002-48385, [MOV] 48386,
    [/MOV] 48387, motion 48388-49411 (understanding offsets motion by 32000 + 16384 + 4)."""
    v = LaVITVocab()
    assert (v.img_start, v.img_end, v.visual_offset) == (32000, 32001, 32002)
    assert v.visual_ids(torch.tensor([0, 16383])).tolist() == [32002, 48385]
    assert (v.mov_start, v.mov_end, v.motion_offset) == (48386, 48387, 32000 + 16384 + 4)
    assert v.motion_ids(torch.tensor([0, 1023])).tolist() == [48388, 49411]
    assert v.size == 49412


def test_codes_and_ids_round_trip_and_out_of_range_is_refused():
    codes = torch.arange(SMALL.visual_codes)
    assert torch.equal(SMALL.visual_codes_of(SMALL.visual_ids(codes)), codes)
    motion = torch.arange(SMALL.motion_codes)
    assert torch.equal(SMALL.motion_codes_of(SMALL.motion_ids(motion)), motion)
    with pytest.raises(ValueError, match=r"visual codes must lie in \[0, 30\)"):
        SMALL.visual_ids(torch.tensor([30]))
    with pytest.raises(ValueError, match="motion-code id"):
        SMALL.motion_codes_of(torch.tensor([SMALL.mov_end]))  # a mark, not a code
    clip = SMALL.video_ids(torch.tensor([3, 4]), torch.arange(6))
    assert clip.tolist() == [50, 55, 56, 51, 82, 84, 85, 86, 87, 88, 89, 83]
    with pytest.raises(ValueError, match="a clip has 6 motion codes, got 5"):
        SMALL.video_ids(torch.tensor([3]), torch.arange(5))


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=SMALL.size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=EOS, pad_token_id=0)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def generate(model, prompt_ids: torch.Tensor, max_visual: int) -> list[list[int]]:
    constraint = VideoTokenConstraint(SMALL, prompt_ids.shape[1], EOS, max_visual_tokens=max_visual)
    out = model.generate(
        prompt_ids, attention_mask=torch.ones_like(prompt_ids), logits_processor=LogitsProcessorList([constraint]),
        do_sample=True, max_new_tokens=40, pad_token_id=0,
    )  # fmt: skip
    return [row[prompt_ids.shape[1] :].tolist() for row in out]


def check_motion_and_end(tail: list[int]) -> None:
    """``[MOV]``, exactly motion_tokens motion ids, ``[/MOV]``, EOS (then padding)."""
    assert tail[0] == SMALL.mov_start
    motion = tail[1 : 1 + SMALL.motion_tokens]
    assert all(SMALL.motion_offset <= t < SMALL.size for t in motion), tail
    assert tail[1 + SMALL.motion_tokens : 3 + SMALL.motion_tokens] == [SMALL.mov_end, EOS], tail


def test_text_to_video_draws_a_keyframe_then_exactly_the_motion_run(tiny_llama):
    torch.manual_seed(1)
    prompts = torch.randint(3, SMALL.text_size, (16, 5))  # text only
    lengths = set()
    for gen in generate(tiny_llama, prompts, max_visual=10):
        assert gen[0] == SMALL.img_start
        end = gen.index(SMALL.img_end)
        keyframe = gen[1:end]
        assert 1 <= len(keyframe) <= 10
        # no text, motion or mark id inside the keyframe span
        assert all(SMALL.visual_offset <= t < SMALL.mov_start for t in keyframe), gen
        lengths.add(len(keyframe))
        check_motion_and_end(gen[end + 1 :])
    assert len(lengths) > 1 and 10 in lengths  # the model ends the keyframe, or the cap does


def test_image_to_video_continues_a_given_keyframe_with_motion_alone(tiny_llama):
    torch.manual_seed(2)
    keyframe = SMALL.visual_ids(torch.tensor([1, 2, 3]))
    prompt = torch.cat([torch.tensor([5, 6, SMALL.img_start]), keyframe, torch.tensor([SMALL.img_end])])
    for gen in generate(tiny_llama, prompt.expand(4, -1), max_visual=4):
        check_motion_and_end(gen)
