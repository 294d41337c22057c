"""Video-LaVIT end to end (launch/lavit_tiny.sh) at test size: the parts built, the LLM
pretrained and merged, assembled into a release root in the published Video-LaVIT-v1 layout,
and every ``divot-infer lavit`` mode run on it -- each writes an mp4 that decodes, with the
frames the de-tokenizer makes. Learning is each stage's own tests' business
(tests/train/test_lavit_*, test_motion_tokenizer): here the LLM runs a few steps, and the
other stages are left to those tests (see STEPS)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import av
import pytest
import torch
from transformers import AutoModelForCausalLM

from divot_llm.config.schema import LaVITModelConfig
from divot_llm.infer.lavit import comprehend_video, video_clip_features
from divot_llm.layout import (
    LAVIT_IMAGE_DETOKENIZER_DIR,
    LAVIT_LLM_DIR,
    LAVIT_MOTION_TOKENIZER_DIR,
    LAVIT_SFT_LLM_DIR,
    LAVIT_TOKENIZER_DECODER,
    LAVIT_TOKENIZER_ENCODER,
    LAVIT_VIDEO_DETOKENIZER_DIR,
    LAVIT_VISUAL_TOKENIZER_DIR,
    LAVIT_VISUAL_WEIGHT,
)
from divot_llm.model.lavit_llm import LaVITLLM
from divot_llm.model.lavit_release import open_lavit_release
from divot_llm.tokenizers.keyframe.registry import load_keyframe_tokenizer
from divot_llm.tokenizers.motion.registry import load_motion_tokenizer
from tests import helpers
from tests.train.conftest import COUNTS, run_env

pytestmark = pytest.mark.slow

CLIP_FRAMES = 12  # the tiny parts' clips: two GOPs of 6 frames
EXPORT_DATA_SEED = 4  # tests/conftest.py's export_data, which the script finds in place
STEPS = {
    "LAVIT_MOTION_STEPS": "4",
    "LAVIT_PRETRAIN_STEPS": "4",
    "LAVIT_SFT_STEPS": "2",
    "LAVIT_DETOK_STEPS": "2",
}


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def lavit_run(export_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lavit_tiny")
    helpers.run_command(
        ["bash", "launch/lavit_tiny.sh"], cwd=helpers.REPO_ROOT, timeout=600,
        LAVIT_DATA=str(export_data), LAVIT_OUT=str(out), LAVIT_SEED=str(EXPORT_DATA_SEED),
        LAVIT_VIDEOS=str(COUNTS.train_videos), **STEPS, **run_env(),
    )  # fmt: skip
    return out


def test_the_release_root_has_the_published_layout(lavit_run):
    root = lavit_run / "release"
    keyframe_tokenizer = load_keyframe_tokenizer(root / LAVIT_VISUAL_TOKENIZER_DIR)
    motion_tokenizer = load_motion_tokenizer(root / LAVIT_MOTION_TOKENIZER_DIR)
    llm = root / LAVIT_LLM_DIR
    assert (llm / LAVIT_VISUAL_WEIGHT).is_file()
    assert json.loads((llm / "release.json").read_text())["verified"]
    # an HF folder any transformers user reads, with LaVIT's ids on the Mistral text vocabulary:
    # as many visual and motion codes as the release's tokenizers have
    model = AutoModelForCausalLM.from_pretrained(llm)
    vocab = LaVITLLM.from_pretrained(llm).vocab
    assert model.get_input_embeddings().weight.shape[0] == vocab.size
    codebooks = (keyframe_tokenizer.codebook_size, motion_tokenizer.codebook_size)
    assert (vocab.text_size, vocab.visual_codes, vocab.motion_codes) == (32000, *codebooks)
    for name in (LAVIT_TOKENIZER_ENCODER, LAVIT_TOKENIZER_DECODER):
        assert (root / LAVIT_VISUAL_TOKENIZER_DIR / name).is_file()
    assert (root / LAVIT_MOTION_TOKENIZER_DIR).is_dir()
    for part in (LAVIT_VIDEO_DETOKENIZER_DIR, LAVIT_IMAGE_DETOKENIZER_DIR):
        assert {p.name for p in (root / part).iterdir()} >= {"unet", "vae", "scheduler"}, part


def test_every_mode_writes_videos_that_decode(lavit_run, export_data):
    infer = lavit_run / "infer"
    expected = {  # mode -> (videos, frames each)
        "t2v": (2, CLIP_FRAMES),  # two held-out captions
        "i2v": (1, CLIP_FRAMES),
        "long": (1, 2 * CLIP_FRAMES),  # two segments, back to back
        "reconstruct": (2, CLIP_FRAMES),  # one clip of each of two held-out videos
    }
    for mode, (count, frames) in expected.items():
        videos = sorted((infer / mode).glob("*.mp4"))
        assert len(videos) == count, (mode, videos)
        for video in videos:
            assert decoded_frames(video) == frames, video
            assert video.with_name(video.stem + "_strip.png").is_file(), video
    metrics = json.loads((infer / "reconstruct" / "metrics.json").read_text())
    assert len(metrics) == 2 and all(math.isfinite(m["psnr"]) and m["clips"] == 1 for m in metrics)
    answers = (infer / "answers.txt").read_text().splitlines()  # "VIDEO: answer", one per held-out video
    assert [line.split(": ")[0] for line in answers] == [
        str(export_data / "media" / "videos" / f"val-vid-{i:06d}.mp4") for i in range(2)
    ]


def test_comprehension_reads_the_llm_folders_visual_weight_and_keyframe_features(
    lavit_run, export_data, tmp_path
):
    """The understanding path as released: the tokenizers are the LLM folder's own copies
    (its visual_weight.bin, here with a changed vit_proj), and an LLM that reads keyframes as
    continuous features (``keyframe_input=features``) gets the keyframe tokenizer's features."""
    root = tmp_path / "release"
    root.mkdir()
    for part in (LAVIT_VISUAL_TOKENIZER_DIR, LAVIT_MOTION_TOKENIZER_DIR):
        (root / part).symlink_to(lavit_run / "release" / part)
    shutil.copytree(lavit_run / "release" / LAVIT_LLM_DIR, root / LAVIT_SFT_LLM_DIR)  # as the SFT LLM
    weight_file = root / LAVIT_SFT_LLM_DIR / LAVIT_VISUAL_WEIGHT
    weights = torch.load(weight_file, weights_only=True)
    weights["model.visual_tokenizer.vit_proj.weight"] = weights["model.visual_tokenizer.vit_proj.weight"] * 2
    torch.save(weights, weight_file)

    models = open_lavit_release(root, torch.device("cpu"), sft=True)
    assert torch.equal(
        models.keyframe_tokenizer.vit_proj.weight, weights["model.visual_tokenizer.vit_proj.weight"]
    )
    models._parts["llm"] = LaVITLLM.from_pretrained(  # as the released language_model_sft/ is read
        root / LAVIT_SFT_LLM_DIR, config=LaVITModelConfig(keyframe_input="features")
    ).eval()
    video = export_data / "media" / "videos" / "val-vid-000000.mp4"
    clips, feats = video_clip_features(models, video, max_clips=2)
    assert [len(c.visual_codes) for c in clips] == [len(f) for f in feats]
    assert all(f.shape[1] == models.llm.hidden_size for f in feats)
    assert isinstance(comprehend_video(models, video, "What color is the shape?", 4, max_clips=2), str)
