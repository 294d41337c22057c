"""stage=t2v through the trainer in-process (1 rank, real DeepSpeed engine, real synthetic
videos and images, the llm_mean text encoder over a saved tiny Mistral): the loss falls,
samples are written as decodable gifs + a grid (also in TensorBoard), SIGTERM + resume=auto
gives the uninterrupted run's losses and EMA, and the export (EMA weights by default, raw
with ``raw=True``) loads in ``divot-infer t2v``, which writes a decodable gif and mp4."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from divot_llm.cli.infer import main as infer_main
from divot_llm.config import compose_config
from divot_llm.data.video_codec import decode_video
from divot_llm.detokenizers.registry import load_video_detokenizer
from divot_llm.export.detokenizer import detok_checkpoint_to_pretrained
from divot_llm.layout import DETOKENIZER_DIR, EMA_FILE
from divot_llm.train import checkpoint
from divot_llm.train.samples import GRID_FILE, samples_dir
from divot_llm.train.trainer import FINISHED, INTERRUPTED
from tests.helpers import run_main
from tests.train.conftest import read_metrics, run_trainer, sigterm_at

STEPS, ACCUM = 6, 2
PROMPTS = ("a red circle moving left on a blue background", "a green square on a white background")


def t2v_cfg(data_root, llm_dir, out, *overrides):
    return compose_config(
        [
            "experiment=t2v_tiny",
            f"data.root={data_root}",
            f"model.llm.path={llm_dir}",
            f"train.output_dir={out}",
            "data.num_workers=0",
            "data.batch_size=1",  # x 2 micro-batches: the EMA must move once per optimizer step
            f"train.grad_accum_steps={ACCUM}",
            f"train.max_steps={STEPS}",
            "train.save_every=3",
            "train.log_every=1",
            f"train.eval_every={STEPS}",
            "train.max_eval_batches=2",
            "train.sample_every=3",
            f"train.sample_prompts=[{','.join(repr(p) for p in PROMPTS)}]",
            "train.sample_steps=1",
            "train.progress_bar=false",
            "optim.lr=3e-3",
            "optim.warmup_steps=2",
            "stage.ema.start_step=4",  # a copy of the weights after steps 1-3, averages after 4-6
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def t2v_run(ds_process_group, train_data, tiny_mistral_dir, tmp_path_factory):
    """The uninterrupted reference, validated before the first step and after the last."""
    out = tmp_path_factory.mktemp("t2v_reference")
    status, trainer = run_trainer(t2v_cfg(train_data, tiny_mistral_dir, out))
    assert status == FINISHED
    return out, trainer


def test_t2v_learns_samples_and_exports_into_divot_infer(t2v_run, tmp_path, capsys):
    out, trainer = t2v_run
    val = read_metrics(out, kind="val")
    assert sorted(val) == [0, STEPS]
    assert val[STEPS]["val/loss"] < 0.9 * val[0]["val/loss"], (val[0], val[STEPS])
    assert "val/psnr" not in val[STEPS]  # a caption names no exact clip to rebuild
    trainable = {n.split(".")[0] for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {"diffusion_model"}  # pooling none: the text vector goes in as is

    for step in (3, STEPS):  # train.sample_every=3
        folder = samples_dir(out, step)
        gifs = sorted(folder.glob("*.gif"))
        assert [g.name[:3] for g in gifs] == ["00_", "01_"]
        for gif in gifs:
            with Image.open(gif) as image:
                assert image.n_frames == 8 and image.size == (16, 16)
        with Image.open(folder / GRID_FILE) as grid:
            assert grid.size == (8 * 18 - 2, 2 * 18 - 2)  # 8 frames x 2 prompts, 2-px gaps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("samples/grid")] == [3, STEPS]

    # the checkpoint's EMA is the live one; it moved away from the trained weights
    final = out / "checkpoints" / checkpoint.step_dir_name(STEPS)
    ema = load_file(final / EMA_FILE)
    assert ema.keys() == trainer.ema.state_dict().keys()
    trained = trainer.model.state_dict()
    for name, tensor in trainer.ema.state_dict().items():
        assert torch.equal(ema[name], tensor), name
    assert any(not torch.equal(ema[n], trained[n].cpu()) for n in ema)
    step3 = out / "checkpoints" / checkpoint.step_dir_name(3)
    raw3 = detok_checkpoint_to_pretrained(step3, tmp_path / "raw3", raw=True)
    weights3 = load_video_detokenizer(raw3 / DETOKENIZER_DIR).state_dict()
    for name, tensor in load_file(step3 / EMA_FILE).items():
        assert torch.equal(tensor, weights3[name]), name

    export = detok_checkpoint_to_pretrained(out, tmp_path / "export")  # EMA weights
    raw = detok_checkpoint_to_pretrained(out, tmp_path / "raw", raw=True)
    exported, exported_raw = (load_video_detokenizer(f / DETOKENIZER_DIR).state_dict() for f in (export, raw))
    for name, tensor in ema.items():
        assert torch.equal(exported[name], tensor) and torch.equal(exported_raw[name], trained[name].cpu()), (
            name
        )

    gif, mp4 = tmp_path / "one.gif", tmp_path / "two.mp4"
    common = ("--release", str(export), "--steps", "2", "--cond-scale", "2", "--device", "cpu")
    run_main(infer_main, "t2v", PROMPTS[0], *common, "--out", str(gif), capsys=capsys)
    with Image.open(gif) as image:
        assert image.n_frames == 8 and image.size == (16, 16)
    assert (tmp_path / "one_strip.png").is_file()
    _, stdout, _ = run_main(infer_main, "t2v", *PROMPTS, *common, "--out", str(mp4), capsys=capsys)
    for index in (0, 1):
        decoded = decode_video((tmp_path / f"two_{index:03d}.mp4").read_bytes())
        assert decoded.frames.shape == (8, 16, 16, 3) and decoded.codec == "h264", decoded.frames.shape
        assert (tmp_path / f"two_{index:03d}_strip.png").is_file()
    assert stdout.count("8 frames at 8 fps") == 2


def test_t2v_resumes_exactly_with_its_ema(t2v_run, train_data, tiny_mistral_dir, tmp_path):
    """Without validation or sampling this time: the reference's (sampling after steps 3
    and 6) must not have changed its training either."""
    reference, _ = t2v_run
    quiet = ("train.sample_every=0", "train.eval_every=0", "train.eval_at_start=false")
    cfg = t2v_cfg(train_data, tiny_mistral_dir, tmp_path, *quiet)
    status, first = run_trainer(cfg, build_loader=sigterm_at(ACCUM + 1))  # during step 2
    assert status == INTERRUPTED and first.step == 2
    status, second = run_trainer(t2v_cfg(train_data, tiny_mistral_dir, tmp_path, *quiet))  # train.resume=auto
    assert status == FINISHED and second.resumed_from == tmp_path / "checkpoints" / "step_00000002"
    ref, resumed = read_metrics(reference), read_metrics(tmp_path)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], abs=1e-6), step
    final = checkpoint.step_dir_name(STEPS)
    ema_ref = load_file(reference / "checkpoints" / final / EMA_FILE)
    ema_resumed = load_file(tmp_path / "checkpoints" / final / EMA_FILE)
    for name, tensor in ema_ref.items():
        torch.testing.assert_close(ema_resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert not (tmp_path / "samples").exists()
