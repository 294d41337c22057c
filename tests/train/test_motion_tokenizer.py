"""stage=motion_tokenizer: the EMA codebook's arithmetic on hand-made tensors (through the
all-reduce of a 1-rank gloo group), the objective around the tiny Video-LaVIT motion
tokenizer, and the stage through the trainer in-process (1 rank, real DeepSpeed ZeRO-2,
the synthetic set's motion fields at gop 6, 10 x 18): validation MSE below the zero-motion
guess's, codebook perplexity above a floor, SIGTERM + resume=auto equal to the
uninterrupted run (losses and the codebook bit for bit), and the export's round trip; and
two real gloo ranks (spawned) keeping one codebook."""

from __future__ import annotations

import math
import re

import pytest
import torch

from divot_llm.cli.export import main as export_main
from divot_llm.config import compose_config
from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import MotionVQConfig
from divot_llm.data.motion_examples import build_motion_loader
from divot_llm.tokenizers.motion.objective import EmaCodebook, MotionTokenizerObjective, perplexity
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer, load_motion_tokenizer
from divot_llm.train import checkpoint
from divot_llm.train.stages import make_stage
from divot_llm.train.trainer import FINISHED, INTERRUPTED
from tests.train.conftest import read_metrics, run_trainer, sigterm_at
from tests.train.motion_ema_ranks import ema_inputs, ema_rank


def test_ema_codebook_follows_the_assigned_latents_and_restarts_dead_codes(ds_process_group):
    """Decay 0.5 by hand: the counts and latent sums (all-reduced over the 1-rank group)
    fold into the averages, each code becomes its sum's direction, and the code left
    unused restarts at one of the batch's latents, the same one for the same state."""
    codebook_kd = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    z_nd = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    codes_n = torch.tensor([0, 0, 1, 1])
    cfg = MotionVQConfig(ema_decay=0.5, restart_threshold=0.5)
    ema = EmaCodebook(codebook_kd, cfg, seed=7)
    stats = ema.update(codebook_kd, z_nd, codes_n)

    assert stats["counts"].tolist() == [2.0, 2.0, 0.0]
    assert float(perplexity(stats["counts"])) == pytest.approx(2.0)  # two codes, equally used
    # 0.5 x the start (cluster sizes 0, sums the codebook) + 0.5 x this step
    assert ema.cluster_size[:2].tolist() == [1.0, 1.0]
    assert torch.allclose(ema.embed_sum[:2], torch.tensor([[1.4, 0.3], [0.3, 1.4]]))
    norm = math.hypot(1.4, 0.3)
    assert torch.allclose(codebook_kd[:2], torch.tensor([[1.4, 0.3], [0.3, 1.4]]) / norm)
    # code 2: 0 assignments < 0.5 x the uniform share 4/3 -> restarted at a batch latent
    assert int(stats["restarts"]) == 1 and int(ema.updates) == 1
    floor = 0.5 * 4 / 3
    assert any(torch.allclose(codebook_kd[2], row) for row in z_nd), codebook_kd[2]
    assert float(ema.cluster_size[2]) == pytest.approx(floor)
    assert torch.allclose(ema.embed_sum[2], codebook_kd[2] * floor)

    # the draw depends on the seed and the update count alone (a resumed run repeats it)
    again_kd = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    again = EmaCodebook(again_kd, cfg, seed=7)
    again.update(again_kd, z_nd, codes_n)
    assert torch.equal(again_kd, codebook_kd)

    # a non-finite latent (a NaN step the trainer skips) leaves everything as it was
    state = {name: tensor.clone() for name, tensor in again.state_dict().items()}
    kept_kd = again_kd.clone()
    again.update(again_kd, torch.full_like(z_nd, float("nan")), codes_n)
    assert torch.equal(again_kd, kept_kd)
    assert all(torch.equal(again.state_dict()[name], tensor) for name, tensor in state.items())

    # without restarts the unused code keeps its direction (its sum only decays)
    still_kd = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    quiet = EmaCodebook(still_kd, MotionVQConfig(ema_decay=0.5, restart_threshold=0.0), seed=7)
    assert int(quiet.update(still_kd, z_nd, codes_n)["restarts"]) == 0
    assert still_kd[2].tolist() == [-1.0, 0.0] and quiet.cluster_size[2] == 0


def test_objective_trains_the_tokenizer_and_moves_the_codebook_outside_autograd():
    cfg = compose_config(["data.root=unused", "motion_tokenizer=lavit_tiny"])
    objective = MotionTokenizerObjective(
        build_motion_tokenizer(cfg.motion_tokenizer), MotionVQConfig(), seed=0
    )
    key = "tokenizer.quantize.embedding.weight"
    # the codebook is a buffer under its released key: saved and restored with the module,
    # never an optimizer's parameter
    assert key not in dict(objective.named_parameters()) and key in dict(objective.named_buffers())
    assert key in objective.state_dict()
    assert all(p.requires_grad for p in objective.parameters())
    assert torch.allclose(objective.codebook.norm(dim=1), torch.ones(64))

    fields = torch.randn(2, 2, 12, 10, 18, generator=torch.Generator().manual_seed(1))
    objective.eval()
    before = objective.codebook.clone()
    with torch.no_grad():
        out = objective(fields)
    assert torch.equal(objective.codebook, before) and int(objective.ema.updates) == 0  # eval: no update
    assert out["recon"].shape == fields.shape and out["codes"].shape == (2, 135)
    assert float(out["mse"]) == pytest.approx(float((out["recon"] - fields).square().mean()), rel=1e-6)

    objective.train()
    out = objective(fields)
    out["loss"].backward()
    assert not torch.equal(objective.codebook, before) and int(objective.ema.updates) == 1
    assert torch.allclose(objective.codebook.norm(dim=1), torch.ones(64))
    head = objective.tokenizer.encode_task_layer[0].weight  # reached through the straight-through path
    assert head.grad is not None and head.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("deepspeed=zero3", "needs deepspeed.zero_stage <= 2"),
        ("data.motion.gop=12", "data.motion gives (24, 10, 18)"),  # the tokenizer takes 12 frames
    ],
)
def test_the_stage_refuses_zero3_and_fields_of_another_size(override, message):
    cfg = compose_config(["experiment=motion_tokenizer_tiny", "data.root=unused", override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_stage(cfg, torch.device("cpu"), torch.float32).build()


# ---------------------------------------------------------------- through the trainer

STEPS, SIGTERM_AT = 16, 6
PERPLEXITY_FLOOR = 4.0  # of 64 codes: the 4 x 135 validation codes are spread at least this wide
# The held-out curve takes minutes (docs/lavit.md); here the stage learns its own clips:
# training reads the same fixed first clip of each held-out video that validation scores.
FIXED_CLIPS = ("data.sources.videos.paths=[val/videos/shard-*.tar]", "+data.sources.videos.start_index=0")


def motion_cfg(data_root, out, *overrides):
    return compose_config(
        [
            "experiment=motion_tokenizer_tiny",
            f"data.root={data_root}",
            f"train.output_dir={out}",
            "data.num_workers=0",
            "data.batch_size=2",
            *FIXED_CLIPS,
            f"train.max_steps={STEPS}",
            "train.save_every=8",
            "train.log_every=1",
            f"train.eval_every={STEPS}",
            "train.max_eval_batches=2",
            "train.progress_bar=false",
            "optim.warmup_steps=0",
            "optim.lr=2e-3",
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def motion_run(ds_process_group, train_data, tmp_path_factory):
    """The uninterrupted reference, validated before the first step and after the last."""
    out = tmp_path_factory.mktemp("motion_reference")
    status, trainer = run_trainer(motion_cfg(train_data, out))
    assert status == FINISHED
    return out, trainer


def test_motion_tokenizer_learns_validates_and_exports(motion_run, tmp_path):
    out, trainer = motion_run
    train = read_metrics(out)
    assert sorted(train) == list(range(1, STEPS + 1))
    assert train[1]["train/restarts"] > 0  # the first step seeds the codebook from the batch
    val = read_metrics(out, kind="val")
    assert sorted(val) == [0, STEPS]
    start, end = val[0], val[STEPS]
    assert start["val/mse_zero"] == end["val/mse_zero"] > 0  # the same clips
    assert end["val/mse"] < end["val/mse_zero"] < start["val/mse"], (start, end)
    assert end["val/perplexity"] > PERPLEXITY_FLOOR and 0 < end["val/usage"] <= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("val/motion")] == [0, STEPS]

    # the codebook travels in the checkpoint as a buffer of the module (frozen parameters
    # are left out of our checkpoints), and the export loads back as the trained tokenizer
    engine_dir = out / "checkpoints" / checkpoint.step_dir_name(STEPS) / "engine"
    saved = torch.load(next(engine_dir.rglob("mp_rank_00_model_states.pt")), weights_only=True)
    assert "tokenizer.quantize.embedding.weight" in saved["buffer_names"]
    assert export_main(["motion-tokenizer", str(out), str(tmp_path / "export")]) == 0
    loaded = load_motion_tokenizer(tmp_path / "export")
    trained = trainer.stage.module.tokenizer.state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    for name, tensor in trained.items():
        assert torch.equal(loaded.state_dict()[name], tensor.cpu()), name


def test_motion_tokenizer_resumes_exactly(motion_run, train_data, tmp_path):
    reference, ref_trainer = motion_run
    quiet = ("train.eval_every=0", "train.eval_at_start=false")
    status, first = run_trainer(
        motion_cfg(train_data, tmp_path, *quiet), build_loader=sigterm_at(SIGTERM_AT, build_motion_loader)
    )
    assert status == INTERRUPTED and first.step == SIGTERM_AT
    status, second = run_trainer(motion_cfg(train_data, tmp_path, *quiet))  # train.resume=auto
    assert status == FINISHED and second.resumed_from == tmp_path / "checkpoints" / checkpoint.step_dir_name(
        SIGTERM_AT
    )
    ref, resumed = read_metrics(reference), read_metrics(tmp_path)
    for step in range(1, STEPS + 1):
        for name in ("loss", "mse", "commit_loss", "perplexity", "restarts"):
            key = f"train/{name}"
            assert resumed[step][key] == pytest.approx(ref[step][key], abs=1e-6), (step, name)
    ours, theirs = second.stage.module, ref_trainer.stage.module
    assert int(ours.ema.updates) == STEPS
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name  # the codebook and EMA state included


def test_two_ranks_keep_one_codebook_equal_to_one_process_over_both_batches(tmp_path):
    """Two real gloo ranks with different latents: without restarts their codebooks and
    averages equal one process's over both batches (the all-reduce sums them); with
    restarts the ranks still agree bit for bit (rank 0's latents, broadcast)."""
    import torch.multiprocessing as mp

    # spawned, not forked: a forked child would inherit this process's 1-rank group
    mp.start_processes(
        ema_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    saved = {
        (rank, threshold): torch.load(tmp_path / f"rank{rank}_{threshold}.pt", weights_only=True)
        for rank in (0, 1)
        for threshold in (0.0, 0.5)
    }
    for threshold in (0.0, 0.5):
        for name, value in saved[0, threshold].items():
            assert torch.equal(value, saved[1, threshold][name]), (threshold, name)
    # the restarts did restart codes (else the second case would test nothing new)
    assert not torch.equal(saved[0, 0.5]["codebook"], saved[0, 0.0]["codebook"])

    codebook_kd, ema, z_snd, codes_sn = ema_inputs(0.0, None)
    for z_nd, codes_n in zip(z_snd, codes_sn, strict=True):
        ema.update(codebook_kd, z_nd, codes_n)
    assert torch.allclose(saved[0, 0.0]["codebook"], codebook_kd, atol=1e-6)
    assert torch.allclose(saved[0, 0.0]["embed_sum"], ema.embed_sum, atol=1e-6)
    assert torch.equal(saved[0, 0.0]["cluster_size"], ema.cluster_size)
