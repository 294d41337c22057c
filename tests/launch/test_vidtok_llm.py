"""The LLM over VidTok tokens end to end, on 2 CPU ranks, both paths:

* ``kl``: the tiny KL VidTok's latents, normalised per channel with the statistics
  ``divot-data latent-stats`` stored with the tokenizer config, through the GMM head;
* ``fsq``: the tiny FSQ VidTok's code digits through the factorized softmax head.

One torchrun launch pretrains both (``tests/launch/llm_runs.py``: the synthetic
pretraining mix, captioning and generation, 20 steps each, validated before the first
step and after the last). For each path: the validation losses fall, ``divot-merge
--verify`` passes, ``divot-infer comprehend`` answers every video, and ``divot-infer
generate`` writes an mp4 per caption, decoded by the VidTok itself (no de-tokenizer), with
the tokenizer's frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from divot_llm.cli.infer import main as infer_main
from divot_llm.cli.merge import main as merge_main
from divot_llm.data.media_out import frame_strip
from divot_llm.infer import load_inference_models, release_config
from tests import helpers
from tests.helpers import run_main
from tests.train.conftest import read_metrics

pytestmark = pytest.mark.slow

STEPS = 20
SCHEDULE = (
    f"train.max_steps={STEPS}",
    f"train.save_every={STEPS}",
    "train.keep_last=1",
    f"train.eval_every={STEPS}",
    "train.eval_at_start=true",
    "optim.warmup_steps=5",
)
# The tiny VidToks at experiment=demo_vidtok's shape, the cheapest: 3 resolution levels, 9-frame clips
# (frames 0, 2, ..., 14 and 15 of a 2-s window at 8 fps) -> 3 x 8 x 8 latents, 2 x 2 patches
# -> 48 LLM tokens per clip, of 16 dims.
SHAPE = (
    "video_tokenizer.ch_mult=[1,2,2]",
    "video_tokenizer.frames_per_clip=9",
    "video_tokenizer.llm_patch_size=2",
    "data.frame_stride=2",
)
TOKENIZERS = {
    "kl": ("video_tokenizer=vidtok_tiny", *SHAPE),
    "fsq": ("video_tokenizer=vidtok_tiny_fsq", *SHAPE),
}
HEADS = {"kl": "model.head=gmm", "fsq": "model.head=fsq_factorized"}
PATHS = tuple(TOKENIZERS)


@pytest.fixture(scope="session")
def latent_stats(export_data, tmp_path_factory) -> Path:
    """The KL tokenizer with the statistics of its latents over a few training clips
    (``divot-data latent-stats``: its ``video_tokenizer/`` folder)."""
    from data_recipes.__main__ import main as data_main

    out = tmp_path_factory.mktemp("latent_stats")
    overrides = ("experiment=demo", f"data.root={export_data}", *TOKENIZERS["kl"])
    args = ["latent-stats", "--out", str(out), "--max-clips", "8", "--workers", "0", "--", *overrides]
    assert data_main(args) == 0
    return out / "video_tokenizer"


@pytest.fixture(scope="session")
def vidtok_runs(export_data, latent_stats, tmp_path_factory) -> Path:
    """``<out>/kl`` and ``<out>/fsq``: the two pretraining runs, one launch for both."""
    runs = {
        "kl": [*TOKENIZERS["kl"], f"video_tokenizer.pretrained_path={latent_stats}", HEADS["kl"], *SCHEDULE],
        "fsq": [*TOKENIZERS["fsq"], HEADS["fsq"], *SCHEDULE],
    }  # fmt: skip
    out = tmp_path_factory.mktemp("vidtok_llm")
    helpers.run_command(
        [
            helpers.PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={helpers.free_port()}", "-m", "tests.launch.llm_runs",
            str(export_data), str(out), json.dumps(runs),
        ],
        cwd=helpers.REPO_ROOT,
        timeout=400,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def releases(vidtok_runs, tmp_path_factory) -> dict[str, Path]:
    """Each run's verified fp32 release (``divot-merge --verify``, in this process)."""
    out = tmp_path_factory.mktemp("vidtok_releases")
    for path in PATHS:
        code = merge_main(["--checkpoint", str(vidtok_runs / path), "--out", str(out / path), "--verify"])
        assert code == 0, path
    return {path: out / path for path in PATHS}


@pytest.mark.parametrize("path", PATHS)
def test_the_llm_learns_over_each_vidtok_path(vidtok_runs, path):
    val = read_metrics(vidtok_runs / path, kind="val")
    assert sorted(val) == [0, STEPS]
    start, end = val[0], val[STEPS]
    assert end["val/lm_loss"] < 0.85 * start["val/lm_loss"], (start, end)
    assert end["val/gmm_nll"] < start["val/gmm_nll"], (start, end)  # GMM NLL / code cross-entropy
    assert sorted(read_metrics(vidtok_runs / path)) == list(range(1, STEPS + 1))


@pytest.mark.parametrize("path", PATHS)
def test_a_release_answers_every_video_and_generates_decoded_videos(
    releases, export_data, path, tmp_path, capsys
):
    release = releases[path]
    assert json.loads((release / "release.json").read_text())["verified"]
    annotations = export_data / "annotations" / "val_video_caption.jsonl"
    records = [json.loads(line) for line in annotations.read_text().splitlines()[:2]]
    videos = [str(export_data / "media" / r["video"]) for r in records]
    captions = [r["caption"] for r in records]

    answers = tmp_path / "answers.jsonl"
    run_main(infer_main, "comprehend", "--release", str(release), *videos, "--greedy", "--num-clips", "2",
             "--max-new-tokens", "6", "--no-stream", "--jsonl", str(answers), capsys=capsys)  # fmt: skip
    # one answer per video (20 steps teach captions' words, not yet when to start one: a
    # greedy caption can be just </s>, an empty answer)
    answered = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [a["media"] for a in answered] == videos
    assert all(isinstance(a["answer"], str) for a in answered), answered

    generated = tmp_path / "generated"
    # fsq: guidance (code heads only) and a frame rate of our choice; kl: the default 8 fps
    options, fps = (["--cfg-scale", "2", "--fps", "4"], 4) if path == "fsq" else ([], 8)
    _, out, _ = run_main(infer_main, "generate", "--release", str(release), *captions, "--out", str(generated),
                         "--jsonl", str(generated / "generated.jsonl"), *options, capsys=capsys)  # fmt: skip
    assert "only the features were saved" not in out
    tokenizer = load_inference_models(release_config(release), with_llm=False).video_tokenizer  # as the CLI's
    rows = [json.loads(line) for line in (generated / "generated.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == captions
    for row in rows:
        with av.open(row["video"]) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert float(container.streams.video[0].average_rate) == fps
        size = tokenizer.input_size
        assert len(decoded) == tokenizer.frames_per_clip and decoded[0].shape == (size, size, 3)
        feats_nd = load_file(row["features"])["features"]
        assert feats_nd.shape == (tokenizer.num_tokens, tokenizer.feature_dim)
        if path == "fsq":  # code digits, each within its level's range
            levels_d = torch.tensor(tokenizer.feature_levels, dtype=feats_nd.dtype)
            assert torch.equal(feats_nd, feats_nd.round())
            assert bool(((feats_nd >= 0) & (feats_nd < levels_d)).all())
        # the video is the tokenizer's decoding of the saved features (the strip: lossless)
        expected = frame_strip([tokenizer.decode_features(feats_nd[None])[0]])
        assert np.array_equal(np.asarray(Image.open(row["strip"])), np.asarray(expected))


REFUSED = {  # id: (path, flags, exit code, the line said)
    "kl-guidance": ("kl", ["--cfg-scale", "2"], 1, "classifier-free guidance (cfg_scale=2.0) needs a code"),
    "kl-top-k": ("kl", ["--top-k", "4"], 2, "--top-k go with a code head (model.head=fsq_*)"),
    "fsq-var-scale": ("fsq", ["--var-scale", "0.5"], 2, "--var-scale go with a GMM head (model.head=gmm)"),
    "fsq-steps": ("fsq", ["--steps", "4"], 2, "--steps go with a de-tokenizer (--detokenizer)"),
}


@pytest.mark.parametrize(("path", "flags", "code", "said"), REFUSED.values(), ids=REFUSED.keys())
def test_generate_refuses_what_the_release_cannot_do_in_one_line(
    releases, path, flags, code, said, tmp_path, capsys
):
    exit_code, _, err = run_main(infer_main, "generate", "--release", str(releases[path]), "a red circle",
                                 "--out", str(tmp_path / "out"), *flags, capsys=capsys, check=False)  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("divot-infer: ")]  # not the load's progress
    assert exit_code == code and len(lines) == 1 and said in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
