"""Inference library on a tiny random model: prompts follow the reference templates,
features reach the model, outputs have the right shapes and are reproducible."""

from __future__ import annotations

import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.data.errors import MediaError
from divot_llm.data.synthetic import encode_synthetic_video, sample_video_spec
from divot_llm.infer import comprehend, comprehension_prompt_ids, encode_media, generate_features_for_captions
from divot_llm.model import build_divot_llm
from divot_llm.text import DivotTextTokenizer, video_tokens
from divot_llm.tokenizers import build_video_tokenizer


@pytest.fixture(scope="module")
def parts(mistral_tokenizer_dir, tmp_path_factory):
    cfg = compose_config()
    torch.manual_seed(0)
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    model = build_divot_llm(
        cfg.model, feature_tokens=video_tokenizer.num_tokens, feature_dim=video_tokenizer.feature_dim
    )
    folder = tmp_path_factory.mktemp("media")
    paths = []
    for index in range(2):
        path = folder / f"v{index}.mp4"
        path.write_bytes(encode_synthetic_video(sample_video_spec(0, "train", index + 1)))
        paths.append(path)
    return model.eval(), DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir), video_tokenizer, paths


def test_prompt_is_the_reference_instruct_template(parts):
    _, tok, _, _ = parts
    ids = comprehension_prompt_ids(tok, "video", 2, 8, "What color is it?")
    expected = [tok.bos_id, *tok.encode("[INST] " + video_tokens(2, 8) + "What color is it? [/INST]\n")]
    assert ids == expected
    assert comprehension_prompt_ids(tok, "video", 2, 8, None) == [tok.bos_id, *tok.encode(video_tokens(2, 8))]


def test_media_features_are_the_tokenizer_output_of_the_sampled_clips(parts):
    _, _, video_tokenizer, paths = parts
    feats, kind = encode_media(paths[0], video_tokenizer, num_clips=3)
    assert kind == "video" and feats.shape == (3, video_tokenizer.num_tokens, video_tokenizer.feature_dim)
    again, _ = encode_media(paths[0], video_tokenizer, num_clips=3)
    assert torch.equal(feats, again)


def test_comprehend_is_reproducible_and_uses_the_video(parts):
    model, tok, video_tokenizer, paths = parts
    greedy = dict(do_sample=False, max_new_tokens=6)
    answers = comprehend(model, tok, video_tokenizer, paths, "Describe the video.", num_clips=2, **greedy)
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    assert answers == comprehend(
        model, tok, video_tokenizer, paths, "Describe the video.", num_clips=2, **greedy
    )
    # different videos -> different features -> (for this random model) different greedy text
    assert answers[0] != answers[1]


def test_generated_features_have_the_tokenizer_shape_and_follow_the_seed(parts):
    model, tok, video_tokenizer, _ = parts
    feats = generate_features_for_captions(
        model, tok, ["a red circle", "a blue square"], seed=3, max_new_tokens=4
    )
    assert feats.shape == (2, video_tokenizer.num_tokens, video_tokenizer.feature_dim)
    same = generate_features_for_captions(
        model, tok, ["a red circle", "a blue square"], seed=3, max_new_tokens=4
    )
    assert torch.equal(feats, same)
    mean = generate_features_for_captions(model, tok, ["a red circle"], instruct=False, sample=False)
    assert mean.shape == (1, video_tokenizer.num_tokens, video_tokenizer.feature_dim)


def test_a_file_that_cannot_be_used_is_a_media_error_naming_it(parts, tmp_path):
    _, _, video_tokenizer, paths = parts
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(paths[0].read_bytes()[:600])  # an interrupted download
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = [(cut, "corrupt_video"), (text, "corrupt_image"), (tmp_path / "none.mp4", "missing_file"),
             (tmp_path, "missing_file")]  # fmt: skip
    for path, reason in cases:
        with pytest.raises(MediaError) as error:
            encode_media(path, video_tokenizer, num_clips=2)
        assert error.value.reason == reason and str(path) in str(error.value), path
