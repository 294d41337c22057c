"""The de-tokenizer stages through the trainer in-process (1 rank, real DeepSpeed engine,
real synthetic videos): detok learns and resumes exactly, tokenizer trains only what it
should, detok_adapt starts from the stage-1 export and learns on GMM features from a
Divot-LLM release, and every export loads with ``from_pretrained`` and decodes."""

from __future__ import annotations

import os

import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.data.detok_examples import build_detok_loader
from divot_llm.detokenizers import video_detokenizer_class
from divot_llm.detokenizers.training import tokenizer_features
from divot_llm.export import merge_release
from divot_llm.export.detokenizer import DETOKENIZER_DIR, VIDEO_TOKENIZER_DIR, detok_checkpoint_to_pretrained
from divot_llm.tokenizers.divot import DivotTokenizer
from divot_llm.train import checkpoint
from divot_llm.train.trainer import FINISHED, INTERRUPTED, Trainer
from tests.helpers import run_entry_point
from tests.train.conftest import BatchList, hand_batches, read_metrics, sigterm_at, tiny_cfg
from tests.train.conftest import run_trainer as run

STEPS = 8
DETOK_OVERRIDES = (
    "experiment=detok_demo",
    "data.num_workers=0",
    "train.log_every=1",
    "train.progress_bar=false",
    "optim.lr=3e-3",
    "optim.warmup_steps=2",
    "train.save_every=4",
)


def detok_cfg(data_root, out, *overrides):
    return compose_config([*DETOK_OVERRIDES, f"data.root={data_root}", f"train.output_dir={out}", *overrides])


@pytest.fixture(scope="module")
def detok_run(ds_process_group, train_data, tmp_path_factory):
    """The uninterrupted reference: STEPS steps, validated before the first and after the last."""
    out = tmp_path_factory.mktemp("detok_reference")
    cfg = detok_cfg(train_data, out, f"train.max_steps={STEPS}", f"train.eval_every={STEPS}")
    status, trainer = run(cfg)
    assert status == FINISHED
    return out, trainer


@pytest.fixture(scope="module")
def detok_export(detok_run, tmp_path_factory):
    """Through the command users run (``divot-export detokenizer``)."""
    out = tmp_path_factory.mktemp("detok_export")
    run_entry_point("divot-export", "detokenizer", str(detok_run[0]), str(out))
    return out


def test_detok_stage_lowers_the_diffusion_loss(detok_run):
    out, trainer = detok_run
    val = read_metrics(out, kind="val")
    assert sorted(val) == [0, STEPS]
    assert val[STEPS]["val/loss"] < 0.85 * val[0]["val/loss"], (val[0], val[STEPS])
    for record in val.values():  # reconstruction metrics of the tiny random VAE: only defined
        assert -1 <= record["val/ssim"] <= 1 and record["val/psnr"] > 0
    train = read_metrics(out)
    assert sorted(train) == list(range(1, STEPS + 1))
    assert train[STEPS]["perf/samples_per_s"] > 0 and train[STEPS]["perf/tflops_per_device"] > 0
    # trains the UNet and the conditioning resampler, never the VAE
    trainable = {n.split(".")[0] for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {"diffusion_model", "image_proj_model"}


def test_detok_stage_resumes_exactly(detok_run, train_data, tmp_path):
    reference, _ = detok_run
    overrides = (f"train.max_steps={STEPS}", f"train.eval_every={STEPS}")
    status, first = run(detok_cfg(train_data, tmp_path, *overrides), build_loader=sigterm_at(3))
    assert status == INTERRUPTED and first.step == 3
    root = tmp_path / "checkpoints"
    assert [c.path.name for c in checkpoint.complete_checkpoints(root)] == ["step_00000003"]
    status, second = run(detok_cfg(train_data, tmp_path, *overrides))  # train.resume=auto
    assert status == FINISHED and second.resumed_from == root / "step_00000003"
    ref, resumed = read_metrics(reference), read_metrics(tmp_path)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], abs=1e-6), step
    val_ref, val_resumed = read_metrics(reference, "val"), read_metrics(tmp_path, "val")
    assert val_resumed[STEPS]["val/loss"] == pytest.approx(val_ref[STEPS]["val/loss"], abs=1e-6)


def test_detok_export_round_trips_and_decodes(detok_run, detok_export):
    _, trainer = detok_run
    assert sorted(os.listdir(detok_export)) == [DETOKENIZER_DIR]
    detok = video_detokenizer_class("dynamicrafter").from_pretrained(detok_export / DETOKENIZER_DIR)
    trained = trainer.model.state_dict()
    for name, tensor in detok.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0, msg=name)
    feats = tokenizer_features(trainer.video_tokenizer, torch.zeros(2, 8, 3, 16, 16))
    video = detok.decode(feats, seed=0)
    assert video.shape == (2, 8, 3, 16, 16) and torch.isfinite(video).all()
    torch.testing.assert_close(video, trainer.model.decode(feats, seed=0))


def test_tokenizer_stage_trains_only_the_tokenizer_after_its_vit(ds_process_group, train_data, tmp_path):
    cfg = detok_cfg(train_data, tmp_path, "stage=tokenizer", "train.max_steps=3", "train.eval_every=0",
                    "train.eval_at_start=false")  # fmt: skip
    trainer = Trainer(cfg)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    try:
        assert trainer.train() == FINISHED
    finally:
        trainer.cleanup()
    after = trainer.model.state_dict()

    def changed(prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    assert not changed("tokenizer.vit.") and not changed("detokenizer.first_stage_model.")
    # (3 steps: the UNet's zero-initialised attention outputs pass no gradient to the
    # conditioning before they have been updated twice)
    for part in ("tokenizer.encoder.temporal_encoder.", "tokenizer.encoder.image_proj_model.",
                 "detokenizer.diffusion_model.", "detokenizer.image_proj_model."):  # fmt: skip
        assert changed(part), part

    out = detok_checkpoint_to_pretrained(tmp_path, tmp_path / "export")
    assert sorted(os.listdir(out)) == [DETOKENIZER_DIR, VIDEO_TOKENIZER_DIR]
    tokenizer = DivotTokenizer.from_pretrained(out / VIDEO_TOKENIZER_DIR)
    for name, tensor in tokenizer.encoder.state_dict().items():
        torch.testing.assert_close(tensor, after[f"tokenizer.encoder.{name}"], rtol=0, atol=0, msg=name)
    detok = video_detokenizer_class("dynamicrafter").from_pretrained(out / DETOKENIZER_DIR)
    # guidance's null input is the *trained* tokenizer's zero-clip features
    zeros = torch.zeros(1, tokenizer.frames_per_clip, 3, tokenizer.input_size, tokenizer.input_size)
    torch.testing.assert_close(detok.null_features, tokenizer.encode(zeros)[0])
    video = detok.decode(tokenizer_features(tokenizer, torch.zeros(1, 8, 3, 16, 16)), seed=0)
    assert video.shape == (1, 8, 3, 16, 16) and torch.isfinite(video).all()


@pytest.fixture(scope="module")
def release(ds_process_group, mistral_tokenizer_dir, tmp_path_factory):
    """A tiny merged Divot-LLM release: one pretraining step, then ``merge_release``."""
    out = tmp_path_factory.mktemp("pretrain")
    batches = hand_batches(mistral_tokenizer_dir, 8, 16, count=1)
    cfg = tiny_cfg(f"train.output_dir={out}", "train.max_steps=1")
    status, _ = run(cfg, build_loader=lambda *args, **kwargs: BatchList(batches))
    assert status == FINISHED
    release_dir = tmp_path_factory.mktemp("release") / "pretrain"
    return merge_release(out, release_dir, overwrite=True, log=lambda _: None).out_dir


def test_detok_adapt_learns_on_gmm_features_from_the_stage1_detokenizer(
    release, detok_run, train_data, tmp_path
):
    # stage 1 half-way (its step-4 checkpoint): still far from a plateau, so 6 steps show
    stage1_dir = (
        detok_checkpoint_to_pretrained(
            detok_run[0] / "checkpoints" / checkpoint.step_dir_name(4), tmp_path / "stage1"
        )
        / DETOKENIZER_DIR
    )
    steps = 6
    cfg = detok_cfg(train_data, tmp_path / "run", "stage=detok_adapt", f"stage.init_from={release}",
                    f"stage.detokenizer_init_from={stage1_dir}", f"train.max_steps={steps}",
                    f"train.eval_every={steps}")  # fmt: skip
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        stage1 = video_detokenizer_class("dynamicrafter").from_pretrained(stage1_dir)
        start = trainer.model.state_dict()
        for name, tensor in stage1.state_dict().items():
            torch.testing.assert_close(start[name], tensor, rtol=0, atol=0, msg=name)
        batch = next(iter(build_detok_loader(cfg.data, trainer.stage.example_spec)))
        feats = trainer.prepare(batch)["features"]  # sampled from the release's GMM per caption
        own = tokenizer_features(trainer.video_tokenizer, batch["video"])
        assert feats.shape == own.shape == (2, 8, 16) and not torch.allclose(feats, own, atol=0.1)
        assert trainer.train() == FINISHED
    finally:
        trainer.cleanup()
    val = read_metrics(tmp_path / "run", kind="val")
    assert val[steps]["val/loss"] < 0.95 * val[0]["val/loss"], (val[0], val[steps])


def test_detok_stage_trains_the_vdm_detokenizer(ds_process_group, train_data, tmp_path, lpips_files):
    # detokenizer=vdm_tiny (pixel-space video diffusion) through the same stage, engine and
    # export: 2 steps, validated before and after (with LPIPS: eval.lpips_path is set), the
    # export decodes like the trained model
    cfg = compose_config(
        ["stage=detok", "video_tokenizer=divot_tiny", "detokenizer=vdm_tiny", "data=synthetic_detok",
         "deepspeed=zero2", "deepspeed.precision=fp32", "data.num_workers=0", "train.log_every=1",
         "train.progress_bar=false", "train.max_steps=2", "train.eval_every=2", "train.eval_at_start=true",
         "train.max_eval_batches=1", "stage.recon_clips=1", "stage.recon_steps=2",
         f"eval.lpips_path={lpips_files.vgg}", f"eval.lpips_heads_path={lpips_files.heads}",
         f"data.root={train_data}", f"train.output_dir={tmp_path}"]
    )  # fmt: skip
    status, trainer = run(cfg)
    assert status == FINISHED
    val = read_metrics(tmp_path, kind="val")
    assert sorted(val) == [0, 2]
    for record in val.values():
        assert record["val/loss"] > 0 and record["val/psnr"] > 0 and -1 <= record["val/ssim"] <= 1
        assert record["val/lpips"] > 0
    assert sorted(read_metrics(tmp_path)) == [1, 2]
    trainable = {n.split(".")[0] for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {"diffusion_model", "image_proj_model"}
    out = detok_checkpoint_to_pretrained(tmp_path, tmp_path / "export")
    detok = video_detokenizer_class("vdm_detokenizer").from_pretrained(out / DETOKENIZER_DIR)
    feats = tokenizer_features(trainer.video_tokenizer, torch.zeros(1, 8, 3, 16, 16))
    torch.testing.assert_close(
        detok.decode(feats, steps=2, seed=0), trainer.model.decode(feats, steps=2, seed=0)
    )
