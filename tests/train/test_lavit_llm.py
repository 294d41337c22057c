"""stage=lavit_pretrain / lavit_sft: Video-LaVIT's LLM (model=lavit_tiny) on a tokens cache of
the synthetic set (tests/train/lavit_cache.py: ``divot-data motion-cache --tokens`` with the
tiny motion and keyframe tokenizers: motion codes + keyframe codes per clip, keyframe codes
per image), through the real loader and the trainer in-process (1 rank, real
DeepSpeed ZeRO-2): the sequences carry the cache's codes, both stages' validation loss
falls, and SIGTERM + resume=auto repeats the uninterrupted run's losses exactly."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.config.loading import ConfigError
from divot_llm.data.lavit_sequences import LaVITSequenceSpec, build_lavit_loader
from divot_llm.data.loader import cache_group
from divot_llm.data.motion_cache import load_motion_record
from divot_llm.export.lavit_llm import lavit_llm_checkpoint_to_pretrained
from divot_llm.model.lavit_llm import LaVITLLM
from divot_llm.text.lavit_tokenizer import load_lavit_text_tokenizer
from divot_llm.text.lavit_vocab import LaVITVocab
from divot_llm.train import checkpoint
from divot_llm.train.stages import make_stage
from divot_llm.train.trainer import FINISHED, INTERRUPTED
from tests.train.conftest import read_metrics, run_trainer, sigterm_at
from tests.train.lavit_cache import TRIMMED

STEPS, SIGTERM_AT = 6, 3
VOCAB = LaVITVocab(32000, visual_codes=64, motion_codes=64)


def lavit_cfg(stage: str, data_root, cache, out, *overrides):
    return compose_config(
        [
            f"experiment=lavit_{stage}_tiny",
            f"data.root={data_root}",
            f"data.motion_cache={cache}",
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
            "optim.lr=1e-2",
            *TRIMMED[f"lavit_{stage}_tiny"],
            *overrides,
        ]
    )


def spans(ids: list[int], start: int, end: int) -> list[list[int]]:
    """The ids between each ``start`` marker and the next ``end``."""
    out, at = [], None
    for i, tok in enumerate(ids):
        if tok == start:
            at = i
        elif tok == end and at is not None:
            out.append(ids[at + 1 : i])
            at = None
    return out


def test_sequences_carry_the_cached_keyframe_and_motion_codes(train_data, lavit_tokens_cache):
    """Held-out video_comp rows (start_index 0, two clips): clips 0 and 1 of the video, each
    its keyframe codes then its motion codes; the caption supervised after them."""
    cfg = lavit_cfg("pretrain", train_data, lavit_tokens_cache, "unused")
    spec = LaVITSequenceSpec(VOCAB, load_lavit_text_tokenizer(None))
    batch = next(iter(build_lavit_loader(cfg.data, spec, split="val")))
    checked = 0
    for row, (source, key) in enumerate(zip(batch["sources"], batch["keys"], strict=True)):
        if source != "video_comp":
            continue
        record = load_motion_record(Path(lavit_tokens_cache), cache_group("val", source), key)
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        visual = spans(ids, VOCAB.img_start, VOCAB.img_end)
        motion = spans(ids, VOCAB.mov_start, VOCAB.mov_end)
        clips = min(2, record.values.shape[0])
        assert len(visual) == len(motion) == clips
        for k in range(clips):
            assert (
                VOCAB.visual_codes_of(torch.tensor(visual[k])).tolist() == record.keyframe_codes[k].tolist()
            )
            assert VOCAB.motion_codes_of(torch.tensor(motion[k])).tolist() == record.values[k].tolist()
        labels = batch["labels"][row]
        assert not labels[batch["visual_mask"][row] | batch["motion_mask"][row]].ne(-100).any()
        checked += 1
    assert checked
    # an image is its keyframe alone: one [IMG] span, no motion, the caption after it
    loader = build_lavit_loader(cfg.data, spec, split="train")
    for batch in itertools.islice(loader, 20):
        if "image_comp" in batch["sources"]:
            break
    row = batch["sources"].index("image_comp")
    ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
    record = load_motion_record(
        Path(lavit_tokens_cache), cache_group("train", "image_comp"), batch["keys"][row]
    )
    assert record.values is None and len(record.keyframe_codes) == 1
    assert spans(ids, VOCAB.img_start, VOCAB.img_end) == [VOCAB.visual_ids(record.keyframe_codes[0]).tolist()]
    assert VOCAB.mov_start not in ids


def test_packed_batches_give_the_unpacked_loss(train_data, lavit_tokens_cache, tmp_path):
    """data.packing: the same held-out examples packed into rows score the same loss."""
    cfg = lavit_cfg("pretrain", train_data, lavit_tokens_cache, tmp_path, "data.batch_size=3")
    packed_cfg = lavit_cfg("pretrain", train_data, lavit_tokens_cache, tmp_path, "data.batch_size=3",
                           "data.packing=true", "data.pack_length=1000")  # fmt: skip
    stage = make_stage(cfg, torch.device("cpu"), torch.float32)
    model = stage.build().eval()
    plain = next(iter(stage.loader("val", 0, 1)))
    packed = next(iter(build_lavit_loader(packed_cfg.data, stage.example_spec, split="val")))
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # rows were shared
    assert packed["keys"] == ["+".join(plain["keys"])] and int(packed["segment_ids"].max()) == 3
    with torch.no_grad():
        a, b = model(**stage.prepare(plain)), model(**stage.prepare(packed))
    for name in ("loss", "text_loss", "visual_loss", "motion_loss"):
        assert float(getattr(b, name)) == pytest.approx(float(getattr(a, name)), abs=1e-4), name


def test_the_stage_needs_a_lavit_model_and_a_tokens_cache(train_data, lavit_tokens_cache, tmp_path):
    cfg = lavit_cfg("pretrain", train_data, lavit_tokens_cache, tmp_path, "model=tiny")
    with pytest.raises(ConfigError, match="choose model=lavit_tiny"):
        make_stage(cfg, torch.device("cpu"), torch.float32).build()
    stage = make_stage(
        lavit_cfg("pretrain", train_data, "null", tmp_path), torch.device("cpu"), torch.float32
    )
    stage.build()
    with pytest.raises(ValueError, match=re.escape("set data.motion_cache")):
        stage.loader("train", 0, 1)


@pytest.fixture(scope="module")
def pretrain_run(ds_process_group, train_data, lavit_tokens_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("lavit_pretrain")
    status, _ = run_trainer(
        lavit_cfg("pretrain", train_data, lavit_tokens_cache, out, "train.eval_at_start=true")
    )
    assert status == FINISHED
    return out


def check_loss_falls(out):
    train, val = read_metrics(out), read_metrics(out, kind="val")
    assert sorted(train) == list(range(1, STEPS + 1)) and sorted(val) == [0, STEPS]
    assert val[STEPS]["val/loss"] < val[0]["val/loss"] - 0.5, (val[0], val[STEPS])
    assert train[STEPS]["train/loss"] < train[1]["train/loss"]
    return val


def test_lavit_pretrain_loss_falls(pretrain_run):
    check_loss_falls(pretrain_run)


def test_lavit_sft_starts_from_the_exported_pretrained_llm_and_its_loss_falls(
    pretrain_run, ds_process_group, train_data, lavit_tokens_cache, tmp_path
):
    """The pretraining run's last checkpoint as an HF folder (its trained weights), which
    SFT then reads as its LLM and text tokenizer."""
    folder = lavit_llm_checkpoint_to_pretrained(pretrain_run, tmp_path / "language_model")
    loaded = LaVITLLM.from_pretrained(folder)
    engine_dir = pretrain_run / "checkpoints" / checkpoint.step_dir_name(STEPS)
    states = next(engine_dir.rglob("mp_rank_00_model_states.pt"))
    trained = torch.load(states, weights_only=True)["module"]  # DeepSpeed's: plain tensors and names
    assert torch.equal(loaded.llm.lm_head.weight, trained["llm.lm_head.weight"].float())
    out = tmp_path / "sft"
    overrides = (f"model.llm.path={folder}", f"model.tokenizer_path={folder}", "train.eval_at_start=true")
    status, _ = run_trainer(lavit_cfg("sft", train_data, lavit_tokens_cache, out, *overrides))
    assert status == FINISHED
    val = check_loss_falls(out)
    pretrained_start = read_metrics(pretrain_run, kind="val")[0]["val/loss"]
    assert val[0]["val/loss"] < pretrained_start  # SFT did not start from a random LLM


def test_lavit_pretrain_resumes_exactly(
    pretrain_run, ds_process_group, train_data, lavit_tokens_cache, tmp_path
):
    status, first = run_trainer(
        lavit_cfg("pretrain", train_data, lavit_tokens_cache, tmp_path),
        build_loader=sigterm_at(SIGTERM_AT, build_lavit_loader),
    )
    assert status == INTERRUPTED and first.step == SIGTERM_AT
    status, second = run_trainer(
        lavit_cfg("pretrain", train_data, lavit_tokens_cache, tmp_path)
    )  # resume=auto
    assert status == FINISHED
    assert second.resumed_from == tmp_path / "checkpoints" / checkpoint.step_dir_name(SIGTERM_AT)
    reference, resumed = read_metrics(pretrain_run), read_metrics(tmp_path)
    for step in range(1, STEPS + 1):
        for name in ("loss", "text_loss", "visual_loss", "motion_loss"):
            assert resumed[step][f"train/{name}"] == reference[step][f"train/{name}"], (step, name)
