"""The training step in-process (1 rank, real DeepSpeed engine): NaN/inf losses are
skipped together and abort a run after the configured streak; real loader batches have
only their real clips encoded by the frozen video tokenizer; an unknown stage name stops
the trainer before it starts anything."""

from __future__ import annotations

import pytest
import torch

from divot_llm.config import ConfigError, compose_config
from divot_llm.data.loader import build_loader
from divot_llm.text import load_text_tokenizer
from divot_llm.train.metrics import TokenizerFlops
from divot_llm.train.trainer import NonFiniteLossError, Trainer
from tests.train.conftest import RUN_OVERRIDES, BatchList, hand_batches, tiny_cfg


def test_nonfinite_losses_are_skipped_then_abort(ds_process_group, mistral_tokenizer_dir, tmp_path):
    good = hand_batches(mistral_tokenizer_dir, 8, 16, count=2)
    bad = {
        **good[0],
        "video_feats": torch.full_like(good[0]["video_feats"], float("nan")),
    }  # a corrupt feature cache
    stream = [good[0], bad, good[1], bad, bad, bad]
    cfg = tiny_cfg(f"train.output_dir={tmp_path}", "train.max_steps=10", "train.max_nonfinite_steps=3")
    trainer = Trainer(cfg, build_loader=lambda *args, **kwargs: BatchList(stream))
    trainer.setup()
    try:
        with pytest.raises(NonFiniteLossError, match="3 micro-batches in a row"):
            trainer.train()
    finally:
        trainer.cleanup()
    assert trainer.step == 2  # step 1: good; step 2: one skip, then good; step 3: three skips
    assert trainer.nonfinite_total == 4
    assert all(torch.isfinite(p).all() for p in trainer.engine.module.parameters())


def test_an_unknown_stage_is_refused_before_anything_starts(tmp_path):
    trainer = Trainer(tiny_cfg(f"train.output_dir={tmp_path}", "stage.name=finetune"))
    known = "known stages: pretrain, sft_comp, sft_gen, detok, tokenizer, detok_adapt, t2v"
    with pytest.raises(ConfigError, match=f"stage.name='finetune' is not a stage; {known}"):
        trainer.setup()
    assert not tmp_path.joinpath("config.yaml").exists()  # the output dir was not touched


def test_only_real_clips_are_encoded(ds_process_group, train_data, tmp_path):
    cfg = compose_config(
        [
            *RUN_OVERRIDES,
            f"data.root={train_data}",
            "data.num_workers=0",
            "data.batch_size=4",
            "train.eval_every=0",
        ]
    )
    vt = cfg.video_tokenizer
    loader = build_loader(
        cfg.data, load_text_tokenizer(None), vt.num_tokens, vt.frames_per_clip, vt.input_size
    )
    batch = next(
        b for b in loader if not (b["embeds_cmp_mask"] | b["embeds_gen_mask"]).all()
    )  # has padded clips
    cfg.train.output_dir = str(tmp_path)
    cfg.train.max_steps = 1
    cfg.train.eval_at_start = False
    trainer = Trainer(cfg, build_loader=lambda *args, **kwargs: BatchList([batch]))
    trainer.setup()
    try:
        feats = trainer.prepare(batch)["video_feats"]
        real = batch["embeds_cmp_mask"] | batch["embeds_gen_mask"]
        assert feats.shape == (*real.shape, vt.num_tokens, vt.feature_dim)
        assert (feats[~real] == 0).all()
        # the batch's frames are its real clips, in the order the mask selects them
        expected = trainer.video_tokenizer.encode(batch["frames"].float() / 127.5 - 1)
        torch.testing.assert_close(feats[real], expected)
        assert trainer.train() == "finished"
    finally:
        trainer.cleanup()


def _first_loss(cfg, tmp_path) -> tuple[float, dict]:
    cfg.train.output_dir = str(tmp_path)
    cfg.train.max_steps = 1
    cfg.train.eval_at_start = False
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        batch = next(iter(trainer.loader))
        inputs = trainer.prepare(batch)
        with torch.no_grad():
            loss = trainer.engine(**inputs).total_loss.item()
    finally:
        trainer.cleanup()
    return loss, inputs


def test_packed_batches_reach_the_model_with_their_segments(ds_process_group, train_data, tmp_path):
    cfg = compose_config([*RUN_OVERRIDES, f"data.root={train_data}", "data.num_workers=0", "data.batch_size=4",
                          "data.packing=true", "data.pack_length=400", "train.eval_every=0"])  # fmt: skip
    loss, inputs = _first_loss(cfg, tmp_path)
    assert "segment_ids" in inputs and int(inputs["segment_ids"].max()) >= 2
    assert torch.isfinite(torch.tensor(loss))


def test_training_from_the_feature_cache_gives_the_same_loss_as_from_frames(
    ds_process_group, train_data, tmp_path
):
    import dataclasses

    from divot_llm.data.cache_build import build_feature_cache
    from divot_llm.data.feature_cache import expected_info

    overrides = [*RUN_OVERRIDES, f"data.root={train_data}", "data.num_workers=0", "train.eval_every=0"]
    cfg = compose_config(overrides)
    loss_frames, _ = _first_loss(compose_config(overrides), tmp_path / "frames")
    # the cache must be made by the tokenizer the trainer builds (same seed -> same weights)
    trainer = Trainer(compose_config([*overrides, f"train.output_dir={tmp_path / 'probe'}"]))
    trainer.setup()
    try:
        tok = trainer.video_tokenizer
        info = expected_info(tok, dataclasses.asdict(cfg.video_tokenizer), cfg.data)
        build_feature_cache(cfg.data, tok, info, tmp_path / "cache", splits=("train",))
    finally:
        trainer.cleanup()
    # from the cache: no ViT built (its expected info still matches), no tokenizer FLOPs, a step trains
    cfg = compose_config([*overrides, f"data.feature_cache={tmp_path / 'cache'}"])
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.eval_at_start = str(tmp_path / "cached"), 1, False
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        assert trainer.video_tokenizer.frame_encoder is None
        assert not any("vit" in name for name, _ in trainer.video_tokenizer.named_parameters())
        assert trainer.stage.flop_model.tokenizer == TokenizerFlops()
        batch = next(iter(trainer.loader))
        with torch.no_grad():
            loss_cache = trainer.engine(**trainer.prepare(batch)).total_loss.item()
        assert trainer.train() == "finished"
    finally:
        trainer.cleanup()
    assert loss_cache == pytest.approx(loss_frames, rel=1e-5, abs=1e-6)
