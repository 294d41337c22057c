"""stage=vidtok through the trainer in-process (1 rank, real DeepSpeed engines for the
autoencoder and the discriminator, the tiny causal KL VidTok on 5 frames of 16x16 from the
synthetic set): the discriminator and the generator term start at disc_start, validation
logs PSNR/SSIM and a reconstruction strip, SIGTERM + resume=auto gives the uninterrupted
losses of both optimizers and the same LeCAM averages, the export loads back in both forms,
and a second stage with a frozen encoder leaves it bit-identical."""

from __future__ import annotations

import pytest
import torch

from divot_llm.cli.export import main as export_main
from divot_llm.config import compose_config
from divot_llm.data.vidtok_examples import build_vidtok_loader
from divot_llm.layout import VIDEO_TOKENIZER_DIR
from divot_llm.tokenizers.registry import load_video_tokenizer
from divot_llm.tokenizers.vidtok import VidTokAutoencoder, load_vidtok_weights
from divot_llm.tokenizers.vidtok.discriminator import PatchDiscriminator2D, PatchDiscriminator3D
from divot_llm.tokenizers.vidtok.objective import (
    AutoencoderObjective,
    DiscriminatorObjective,
    adaptive_weight,
    generator_loss,
    hinge_loss,
)
from divot_llm.train import checkpoint
from divot_llm.train.trainer import FINISHED, INTERRUPTED
from tests.helpers import run_main
from tests.train.conftest import read_metrics, run_trainer, sigterm_at

STEPS, DISC_START = 6, 2
SMALL = (  # 5 frames of 16x16 -> 2 x 2 x 2 latents
    "video_tokenizer.frames_per_clip=5",
    "video_tokenizer.input_height=16",
    "video_tokenizer.input_width=16",
    "stage.vidtok_loss.disc_channels=8",
)


def vidtok_cfg(data_root, out, *overrides):
    return compose_config(
        [
            "experiment=vidtok_tiny",
            f"data.root={data_root}",
            f"train.output_dir={out}",
            "data.num_workers=0",
            "data.batch_size=2",
            f"train.max_steps={STEPS}",
            "train.save_every=3",
            "train.log_every=1",
            f"train.eval_every={STEPS}",
            "train.max_eval_batches=1",
            "train.progress_bar=false",
            "optim.warmup_steps=0",
            f"stage.vidtok_loss.disc_start={DISC_START}",
            "stage.disc_optim.lr=1e-3",
            *SMALL,
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def vidtok_run(ds_process_group, train_data, tmp_path_factory):
    """The uninterrupted reference, validated before the first step and after the last."""
    out = tmp_path_factory.mktemp("vidtok_reference")
    status, trainer = run_trainer(vidtok_cfg(train_data, out))
    assert status == FINISHED
    return out, trainer


@pytest.fixture(scope="module")
def vidtok_export(vidtok_run, tmp_path_factory):
    out, _ = vidtok_run
    export = tmp_path_factory.mktemp("vidtok_export")
    assert export_main(["vidtok", str(out), str(export)]) == 0
    return export


def test_gan_terms_follow_their_definitions():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    assert float(hinge_loss(real, fake)) == pytest.approx(0.5 * (0.5 + 0.75))
    logits = torch.tensor([[[1.0, 3.0]], [[-1.0, -1.0]]])  # per-sample means 2 and -1
    expected = (
        torch.nn.functional.softplus(torch.tensor(-2.0)) + torch.nn.functional.softplus(torch.tensor(1.0))
    ) / 2
    assert float(generator_loss(logits, cross_entropy=True)) == pytest.approx(float(expected))
    assert float(generator_loss(logits, cross_entropy=False)) == pytest.approx(-0.5)

    # the adaptive weight: |d nll / dw| / (|d g / dw| + 1e-4) x disc_weight, clamped
    cfg = compose_config(["experiment=vidtok_tiny", "data.root=unused"]).stage.vidtok_loss
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    nll, g = (3 * w).sum(), (w * w).sum()  # gradients (3, 3) and (2, 4)
    expected = 18**0.5 / (20**0.5 + 1e-4) * cfg.disc_weight
    assert float(adaptive_weight(nll, g, w, cfg)) == pytest.approx(expected)

    # shapes: per-frame 2D and spatio-temporal 3D PatchGANs
    assert PatchDiscriminator2D(ndf=8, n_layers=2)(torch.zeros(10, 3, 16, 16)).shape == (10, 1, 2, 2)
    assert PatchDiscriminator3D(ndf=8, n_layers=2)(torch.zeros(2, 3, 5, 16, 16)).shape == (2, 1, 2, 4, 4)

    # LeCAM's averages move by (1 - decay) x the mean logits and travel in the state dict
    disc = DiscriminatorObjective(PatchDiscriminator2D(ndf=8, n_layers=2), cfg)
    video, recon = torch.rand(1, 3, 5, 16, 16), torch.rand(1, 3, 5, 16, 16)
    out = disc(video, recon)
    decay = cfg.lecam_decay
    assert disc.lecam_real_ema == pytest.approx(float(out["logits_real"]) * (1 - decay))
    assert disc.lecam_fake_ema == pytest.approx(float(out["logits_fake"]) * (1 - decay))
    copy = DiscriminatorObjective(PatchDiscriminator2D(ndf=8, n_layers=2), cfg)
    copy.load_state_dict(disc.state_dict())
    assert (copy.lecam_real_ema, copy.lecam_fake_ema) == (disc.lecam_real_ema, disc.lecam_fake_ema)


def test_the_perceptual_term_is_lpips_per_frame_with_gradients_to_the_reconstruction(lpips_files):
    cfg = compose_config(
        ["experiment=vidtok_tiny", "data.root=unused", "stage.vidtok_loss.perceptual_weight=0.5"]
    )
    lpips = lpips_files.model  # random weights: the wiring, not the values
    objective = AutoencoderObjective(torch.nn.Module(), torch.nn.Module(), cfg.stage.vidtok_loss, lpips)
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    recon = (torch.rand(1, 3, 2, 16, 16) * 2 - 1).requires_grad_()
    parts = objective.reconstruction(video, recon)
    frames_real, frames_fake = video[0].transpose(0, 1), recon[0].transpose(0, 1)  # (T, 3, H, W)
    p_loss = lpips(frames_real, frames_fake)
    assert torch.allclose(parts["p_loss"], p_loss)
    expected = (frames_real - frames_fake).abs() + 0.5 * p_loss.view(-1, 1, 1, 1)
    assert torch.allclose(parts["rec"], expected)
    parts["p_loss"].sum().backward()
    assert recon.grad.abs().sum() > 0 and all(p.grad is None for p in lpips.parameters())


def test_vidtok_gan_starts_at_disc_start_validates_and_exports(vidtok_run, vidtok_export):
    out, trainer = vidtok_run
    train = read_metrics(out)
    assert sorted(train) == list(range(1, STEPS + 1))
    for step, record in train.items():  # step s is optimizer step s - 1 (0-based)
        gan = step - 1 >= DISC_START
        assert ("train/lr_disc" in record) == gan, step
        assert (record["train/disc_loss"] > 0) == gan and (record["train/d_weight"] > 0) == gan, record
        assert record["train/kl_loss"] > 0 and record["train/rec_loss"] > 0
    assert trainer.engine.global_steps == STEPS
    assert trainer.engines["disc"].global_steps == STEPS - DISC_START  # never updated before disc_start

    val = read_metrics(out, kind="val")
    assert sorted(val) == [0, STEPS]
    assert all(0 < val[s]["val/psnr"] < 60 and -1 < val[s]["val/ssim"] <= 1 for s in val)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    strips = events.Images("val/reconstruction")
    assert [e.step for e in strips] == [0, STEPS]
    assert (strips[0].width, strips[0].height) == (5 * 18 - 2, 4 * 18 - 2)  # 2 clips x (input, recon)
    assert (out / "checkpoints" / checkpoint.step_dir_name(STEPS) / "engine_disc").is_dir()

    # both export forms hold the trained autoencoder
    trained = {k: v.cpu() for k, v in trainer.stage.autoencoder.state_dict().items()}
    loaded = load_video_tokenizer(vidtok_export / VIDEO_TOKENIZER_DIR).autoencoder.state_dict()
    released = torch.load(vidtok_export / "vidtok.ckpt", weights_only=True)["state_dict"]
    assert loaded.keys() == trained.keys() == released.keys()
    assert all(k.startswith(("encoder.", "decoder.")) for k in released)
    fresh = VidTokAutoencoder(trainer.cfg.video_tokenizer)
    load_vidtok_weights(fresh, vidtok_export / "vidtok.ckpt")
    for name, tensor in trained.items():
        assert torch.equal(loaded[name], tensor) and torch.equal(fresh.state_dict()[name], tensor), name


def test_vidtok_resumes_both_optimizers_exactly(vidtok_run, train_data, tmp_path):
    reference, ref_trainer = vidtok_run
    quiet = ("train.eval_every=0", "train.eval_at_start=false")
    status, first = run_trainer(
        vidtok_cfg(train_data, tmp_path, *quiet), build_loader=sigterm_at(4, build_vidtok_loader)
    )
    assert status == INTERRUPTED and first.step == 4  # the discriminator has trained 2 steps
    status, second = run_trainer(vidtok_cfg(train_data, tmp_path, *quiet))  # train.resume=auto
    assert status == FINISHED and second.resumed_from == tmp_path / "checkpoints" / "step_00000004"
    ref, resumed = read_metrics(reference), read_metrics(tmp_path)
    for step in range(1, STEPS + 1):
        for name in ("ae_loss", "disc_loss", "nll_loss", "g_loss", "lecam_loss", "logvar"):
            key = f"train/{name}"
            assert resumed[step][key] == pytest.approx(ref[step][key], abs=1e-6), (step, name)
    ours, theirs = second.stage.disc_objective, ref_trainer.stage.disc_objective
    assert ours.lecam_real_ema != 0 and ours.lecam_real_ema == pytest.approx(theirs.lecam_real_ema, abs=1e-9)
    assert ours.lecam_fake_ema == pytest.approx(theirs.lecam_fake_ema, abs=1e-9)


def test_second_stage_trains_the_decoder_alone(vidtok_export, train_data, lpips_files, tmp_path, capsys):
    """From the first stage's export, with the 3D discriminator from the first step and
    the perceptual term (LPIPS weights from files)."""
    start = vidtok_export / VIDEO_TOKENIZER_DIR
    cfg = vidtok_cfg(
        train_data,
        tmp_path / "run",
        "stage.fix_encoder=true",
        f"stage.init_from={start}",
        "stage.vidtok_loss.disc_type=3d",
        "stage.vidtok_loss.disc_start=0",
        "stage.vidtok_loss.perceptual_weight=0.5",
        f"eval.lpips_path={lpips_files.vgg}",
        f"eval.lpips_heads_path={lpips_files.heads}",
        "train.max_steps=2",
        "train.save_every=0",
        "train.eval_every=0",
        "train.eval_at_start=false",
    )
    status, trainer = run_trainer(cfg)
    assert status == FINISHED
    assert trainer.engines["disc"].global_steps == 2
    assert all(r["train/p_loss"] > 0 for r in read_metrics(tmp_path / "run").values())
    before = load_video_tokenizer(start).autoencoder.state_dict()
    after = trainer.stage.autoencoder.state_dict()
    for name, tensor in before.items():
        same = torch.equal(after[name].cpu(), tensor)
        assert same == name.startswith("encoder."), name  # every decoder tensor moved
    run_main(export_main, "vidtok", str(tmp_path / "run"), str(tmp_path / "export"), capsys=capsys)
    exported = torch.load(tmp_path / "export" / "vidtok.ckpt", weights_only=True)["state_dict"]
    for name in before:  # the frozen encoder rebuilt from stage.init_from, the trained decoder
        assert torch.equal(exported[name], after[name].cpu()), name
