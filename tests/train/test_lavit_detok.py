"""stage=lavit_detok: Video-LaVIT's tiny video de-tokenizer through the trainer in-process (1
rank, real DeepSpeed ZeRO-2, the synthetic set's gop-6 clips at 32 x 32 with their 10 x 18
motion fields): the seeded validation loss falls and the sampled latents beat the all-zero
guess, the VAE stays frozen, SIGTERM + resume=auto
equals the uninterrupted run, and the export loads back as the trained de-tokenizer."""

from __future__ import annotations

import re

import pytest
import torch

from divot_llm.cli.export import main as export_main
from divot_llm.config import compose_config
from divot_llm.config.loading import ConfigError
from divot_llm.data.lavit_clips import build_lavit_clip_loader
from divot_llm.detokenizers.motion.registry import load_motion_detokenizer
from divot_llm.train import checkpoint
from divot_llm.train.stages import make_stage
from divot_llm.train.trainer import FINISHED, INTERRUPTED
from tests.train.conftest import read_metrics, run_trainer, sigterm_at

STEPS, SIGTERM_AT = 4, 2
# training reads the fixed first clip of each held-out video that validation scores
FIXED_CLIPS = ("data.sources.videos.paths=[val/videos/shard-*.tar]", "+data.sources.videos.start_index=0")


def detok_cfg(data_root, out, *overrides):
    return compose_config(
        [
            "experiment=lavit_detok_tiny",
            f"data.root={data_root}",
            f"train.output_dir={out}",
            "data.num_workers=0",
            *FIXED_CLIPS,
            f"train.max_steps={STEPS}",
            "train.save_every=2",
            "train.log_every=1",
            f"train.eval_every={STEPS}",
            "train.max_eval_batches=2",
            "train.progress_bar=false",
            "optim.warmup_steps=0",
            "optim.lr=3e-3",
            "stage.recon_steps=2",
            *overrides,
        ]
    )


def test_the_stage_refuses_clips_of_another_length():
    cfg = compose_config(["experiment=lavit_detok_tiny", "data.root=unused", "data.motion.gop=4"])
    with pytest.raises(
        ConfigError, match=re.escape("motion_detokenizer.num_frames=12 but data.motion gives 8")
    ):
        make_stage(cfg, torch.device("cpu"), torch.float32).build()


@pytest.fixture(scope="module")
def detok_run(ds_process_group, train_data, tmp_path_factory):
    """The uninterrupted reference, validated before the first step and after the last."""
    out = tmp_path_factory.mktemp("lavit_detok_reference")
    status, trainer = run_trainer(detok_cfg(train_data, out))
    assert status == FINISHED
    return out, trainer


def test_lavit_detok_learns_validates_and_exports(detok_run, tmp_path):
    out, trainer = detok_run
    assert sorted(read_metrics(out)) == list(range(1, STEPS + 1))
    val = read_metrics(out, kind="val")
    assert sorted(val) == [0, STEPS]
    start, end = val[0], val[STEPS]
    assert end["val/loss"] < 0.9 * start["val/loss"], (start, end)
    # the sampled latents: worse than the all-zero guess at the random start, better after
    assert start["val/latent_mse_zero"] == end["val/latent_mse_zero"] > 0  # the same clips
    assert end["val/latent_mse"] < end["val/latent_mse_zero"] < start["val/latent_mse"], (start, end)
    assert 0 < end["val/psnr"] < 60 and end["val/samples"] > 0

    module = trainer.stage.module
    assert not any(p.requires_grad for p in module.vae.parameters())
    assert export_main(["motion-detokenizer", str(out), str(tmp_path / "export")]) == 0
    loaded = load_motion_detokenizer(tmp_path / "export")
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.cpu()), name


def test_lavit_detok_resumes_exactly(detok_run, train_data, tmp_path):
    reference, ref_trainer = detok_run
    quiet = ("train.eval_every=0", "train.eval_at_start=false")
    status, first = run_trainer(
        detok_cfg(train_data, tmp_path, *quiet), build_loader=sigterm_at(SIGTERM_AT, build_lavit_clip_loader)
    )
    assert status == INTERRUPTED and first.step == SIGTERM_AT
    status, second = run_trainer(detok_cfg(train_data, tmp_path, *quiet))  # train.resume=auto
    assert status == FINISHED and second.resumed_from == tmp_path / "checkpoints" / checkpoint.step_dir_name(
        SIGTERM_AT
    )
    ref, resumed = read_metrics(reference), read_metrics(tmp_path)
    for step in range(1, STEPS + 1):
        assert resumed[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], abs=1e-6), step
    for name, tensor in ref_trainer.stage.module.state_dict().items():
        assert torch.equal(second.stage.module.state_dict()[name], tensor), name
