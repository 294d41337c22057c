"""The loader end to end on real synthetic media: batch layout, exactly-once epochs over
2 ranks x 2 workers, bit-exact resume, and bad data skipped and counted."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from divot_llm.config import compose_config
from divot_llm.data.loader import ExampleStream, build_loader, example_maker, loader_spec, open_source
from divot_llm.data.sources import Consumer, DataError
from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset
from divot_llm.text import DivotTextTokenizer
from tests import helpers
from tests.data.test_sources import write_tar

COUNTS = SyntheticCounts(train_videos=12, val_videos=4, images=8, samples_per_shard=4)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader") / "synthetic"
    write_synthetic_dataset(root, seed=11, counts=COUNTS)
    return root


@pytest.fixture(scope="module")
def text_tokenizer(mistral_tokenizer_dir):
    return DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)


def make_loader(cfg, tokenizer, rank=0, world_size=1, split="train"):
    vt = cfg.video_tokenizer
    return build_loader(
        cfg.data, tokenizer, vt.num_tokens, vt.frames_per_clip, vt.input_size, rank, world_size, split
    )


def demo_cfg(root, *overrides):
    return compose_config([f"data.root={root}", *overrides])


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_batches_have_the_model_layout(synthetic_root, text_tokenizer):
    cfg = demo_cfg(synthetic_root, "data.num_workers=0")
    n = cfg.video_tokenizer.num_tokens
    for batch in take(make_loader(cfg, text_tokenizer), 6):
        b, t = batch["input_ids"].shape
        real = batch["embeds_cmp_mask"] | batch["embeds_gen_mask"]
        assert batch["frames"].dtype == torch.uint8  # converted to [-1, 1] on the accelerator
        size = cfg.video_tokenizer.input_size
        assert batch["frames"].shape == (int(real.sum()), 5, 3, size, size)  # only the real clips
        for key in ("labels", "attention_mask", "ids_cmp_mask", "ids_gen_mask"):
            assert batch[key].shape == (b, t)
        for row in range(b):
            clips_cmp = int(batch["embeds_cmp_mask"][row].sum())
            clips_gen = int(batch["embeds_gen_mask"][row].sum())
            assert int(batch["ids_cmp_mask"][row].sum()) == n * clips_cmp
            assert int(batch["ids_gen_mask"][row].sum()) == n * clips_gen
            assert (batch["attention_mask"][row] == -1).sum() == n * clips_gen  # bidirectional queries
            padded = batch["attention_mask"][row] == 0
            assert torch.all(batch["input_ids"][row][padded] == text_tokenizer.pad_id)
            assert torch.all(batch["labels"][row][padded] == -100)
            assert not (batch["embeds_cmp_mask"][row] & batch["embeds_gen_mask"][row]).any()
            assert real[row].sum() == 0 or real[row, : int(real[row].sum())].all()  # padded slots last


def test_two_ranks_two_workers_see_every_sample_exactly_once_per_epoch(synthetic_root, text_tokenizer):
    cfg = demo_cfg(
        synthetic_root,
        "data.infinite=false",
        "data.num_workers=2",
        "~data.sources.video_gen",
        "~data.sources.image_gen",
    )
    seen = []
    for rank in range(2):
        for batch in make_loader(cfg, text_tokenizer, rank=rank, world_size=2):
            seen += batch["keys"]
    assert len(seen) == COUNTS.train_videos + COUNTS.images
    assert len(set(seen)) == len(seen)


def test_batch_mixing_gives_every_rank_the_same_source_each_step(synthetic_root, text_tokenizer):
    cfg = demo_cfg(synthetic_root, "data.mixing=batch", "data.num_workers=2", "~data.sources.video_comp")
    per_rank = []
    for rank in range(2):
        batches = take(make_loader(cfg, text_tokenizer, rank=rank, world_size=2), 6)
        assert all(len(set(b["sources"])) == 1 for b in batches)  # one source per batch
        per_rank.append(([b["sources"][0] for b in batches], [b["keys"] for b in batches]))
    (sources_0, keys_0), (sources_1, keys_1) = per_rank
    assert sources_0 == sources_1 and len(set(sources_0)) > 1
    assert keys_0[0] != keys_1[0]  # each rank still reads its own share of the source


def test_resume_continues_the_exact_batches(synthetic_root, text_tokenizer):
    cfg = demo_cfg(synthetic_root, "data.num_workers=2")
    uninterrupted = take(make_loader(cfg, text_tokenizer), 8)
    first = make_loader(cfg, text_tokenizer)
    head = take(first, 3)  # odd: the next batch is the second worker's turn
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = make_loader(cfg, text_tokenizer)
    resumed.load_state_dict(state)
    tail = take(resumed, 5)
    for expected, got in zip(uninterrupted, head + tail, strict=True):
        assert expected["keys"] == got["keys"]
        assert torch.equal(expected["input_ids"], got["input_ids"])
        assert torch.equal(expected["frames"], got["frames"])  # bit-exact pixels
    wrong_layout = make_loader(demo_cfg(synthetic_root, "data.num_workers=1"), text_tokenizer)
    with pytest.raises(ValueError, match="same layout"):
        wrong_layout.load_state_dict(state)


def test_bad_media_and_lines_are_skipped_and_counted(tmp_path, synthetic_root, text_tokenizer):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    videos = root / "media" / "videos"
    victim = sorted(videos.glob("*.mp4"))[0]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated upload
    (videos / "junk.mp4").write_bytes(b"\x00" * 2000)  # not a video at all
    with open(root / "annotations" / "video_caption.jsonl", "a") as handle:
        handle.write('{"video": "videos/junk.mp4", "caption": "junk"}\n')
        handle.write('{"video": "videos/gone.mp4", "caption": "missing"}\n')
        handle.write("{broken json\n")
    cfg = demo_cfg(root, "data.infinite=false", "data.num_workers=0", "~data.sources.video_gen",
                   "~data.sources.image_comp", "~data.sources.image_gen")  # fmt: skip
    loader = make_loader(cfg, text_tokenizer)
    keys = [k for batch in loader for k in batch["keys"]]
    assert len(keys) == COUNTS.train_videos - 1
    counts = loader.skip_counts()
    assert counts["corrupt_video"] == 2 and counts["missing_file"] == 1 and counts["bad_json_line"] == 1


def test_too_small_images_are_filtered(synthetic_root, text_tokenizer):
    threshold = 241
    cfg = demo_cfg(synthetic_root, "data.infinite=false", "data.num_workers=0", "~data.sources.video_comp",
                   "~data.sources.video_gen", "~data.sources.image_gen",
                   f"data.sources.image_comp.min_resolution={threshold}")  # fmt: skip
    loader = make_loader(cfg, text_tokenizer)
    kept = [k for batch in loader for k in batch["keys"]]
    sizes = [json.loads(line)["image"] for line in (synthetic_root / "annotations" / "image_qa.jsonl").open()]
    big_enough = sum(
        1 for path in sizes if min(Image.open(synthetic_root / "media" / path).size) >= threshold
    )
    assert 0 < big_enough < COUNTS.images  # the seed gives both kinds
    assert len(kept) == big_enough
    assert loader.skip_counts()["too_small"] == COUNTS.images - big_enough


def test_start_up_errors_name_the_problem(synthetic_root, text_tokenizer):
    cfg = demo_cfg(synthetic_root, "data.sources.image_comp.paths=[nowhere/*.tar]")
    with pytest.raises(DataError, match="source image_comp: no file matches"):
        make_loader(cfg, text_tokenizer)
    cfg = demo_cfg(synthetic_root, "data.frame_stride=2")
    with pytest.raises(ValueError, match="video tokenizer takes 5"):
        make_loader(cfg, text_tokenizer)


def cut_copy(shard: Path, out: Path, sample: int) -> Path:
    """``shard`` cut in the middle of the media member of its ``sample``-th sample."""
    with tarfile.open(shard) as tar:
        media = [m for m in tar.getmembers() if m.name.endswith((".jpg", ".png", ".mp4", ".webm", ".gif"))]
    target = media[sample]
    out.write_bytes(shard.read_bytes()[: target.offset_data + target.size // 2])
    return out


def test_every_bad_record_is_skipped_and_counted_and_every_good_one_read(tmp_path, synthetic_root,
                                                                        text_tokenizer):  # fmt: skip
    """Bad records of each class planted in real files, read by 2 dataloader workers: the
    epoch completes, the skip counts equal what was planted, every good sample is read."""
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    video = json.loads((root / "annotations" / "video_caption.jsonl").open().readline())["video"]
    planted = {
        json.dumps({"video": video, "question": "What?", "answer": "That."}): "wrong_task",
        json.dumps({"video": video, "questions": "What?", "answers": "That."}): "bad_fields",
        json.dumps({"video": video, "caption": {"en": "a dict"}}): "bad_fields",
        json.dumps({"video": video, "caption": "lone \ud800"}): "bad_text",  # written as \\ud800
        json.dumps({"video": "videos/nul\u0000.mp4", "caption": "x"}): "bad_path",
    }
    with open(root / "annotations" / "video_caption.jsonl", "a") as handle:
        handle.writelines(line + "\n" for line in planted)
    images = root / "train" / "images"
    cut_copy(images / "shard-00000.tar", images / "shard-00090.tar", sample=2)  # 2 complete samples kept
    with open(images / "shard-00000.tar", "rb") as whole, tarfile.open(fileobj=whole) as tar:
        jpeg_or_png = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()[:1]}
    ext, image = next(iter(jpeg_or_png.items()))
    qa = json.dumps({"questions": ["What?"], "answers": ["That."]}).encode()
    write_tar(images / "shard-00091.tar", [(f"qa.{ext}", image), ("qa.json", qa)])  # QA in a caption tar
    cfg = demo_cfg(root, "data.infinite=false", "data.num_workers=2", "~data.sources.video_gen",
                   "~data.sources.image_gen")  # fmt: skip
    loader = make_loader(cfg, text_tokenizer)
    keys = [k for batch in loader for k in batch["keys"]]
    assert len(keys) == len(set(keys)) == COUNTS.train_videos + COUNTS.images + 2
    assert sum(k.startswith("shard-00090.tar:") for k in keys) == 2
    assert loader.skip_counts() == {"wrong_task": 2, "bad_fields": 2, "bad_text": 1, "bad_path": 1,
                                    "truncated_shard": 1}  # fmt: skip


def test_a_source_without_a_usable_sample_stops_at_start_up_naming_it(tmp_path, synthetic_root,
                                                                      text_tokenizer):  # fmt: skip
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    (root / "annotations" / "video_caption.jsonl").write_text(
        '{"video": "videos/gone.mp4", "caption": "x"}\n{"video": "videos/x.mp4", "caption": 5}\n{oops\n'
    )
    cfg = demo_cfg(root, "data.num_workers=2")
    with pytest.raises(DataError, match="source video_comp has no usable sample") as stopped:
        make_loader(cfg, text_tokenizer)
    assert "missing_file 1" in str(stopped.value) and "bad_json_line 1" in str(stopped.value)


def test_text_the_tokenizer_cannot_encode_skips_only_its_sample(synthetic_root, text_tokenizer):
    """An exception from the text encoding inside SequenceBuilder.build (here a caption
    with a lone surrogate, which the readers refuse, handed straight to the real
    tokenizer) skips that one sample."""
    cfg = demo_cfg(synthetic_root, "data.infinite=false")
    vt = cfg.video_tokenizer
    spec = loader_spec(cfg.data, vt.num_tokens, vt.frames_per_clip, vt.input_size)
    src = spec.sources["video_comp"]
    make = example_maker(spec, src, text_tokenizer)
    poisoned = "video_caption.jsonl:2"

    def make_with_bad_text(raw, epoch):
        if raw.key == poisoned:
            raw = dataclasses.replace(raw, captions=["lone \ud800 surrogate"])
        return make(raw, epoch)

    source = open_source(spec, "video_comp", src, Consumer(), infinite=False)
    stream = ExampleStream(source, make_with_bad_text)
    keys = [example["key"] for example in stream]
    assert len(keys) == COUNTS.train_videos - 1 and poisoned not in keys
    # the reason depends on what the tokenizer raises (UnicodeEncodeError: bad_text; the
    # SentencePiece binding: unexpected_RuntimeError); one skip, whatever it is
    [(reason, count)] = stream.source.skipped.items()
    assert count == 1 and (reason == "bad_text" or reason.startswith("unexpected_"))


def test_a_worker_error_that_does_not_pickle_reaches_the_rank():
    """torch pickles a worker's exception to send it to its rank; one that does not pickle
    (a class local to a function) used to leave the rank waiting for that worker forever."""
    script = """
import torch
from divot_llm.data.loader import picklable_errors

class Broken(torch.utils.data.IterableDataset):
    def __iter__(self):
        class LocalError(Exception):  # a class pickle cannot find by name
            pass
        with picklable_errors():
            raise LocalError("odd record in shard-7.tar")
            yield

try:
    next(iter(torch.utils.data.DataLoader(Broken(), batch_size=None, num_workers=1)))
except RuntimeError as exc:
    print("RAISED", exc)
"""
    done = subprocess.run(
        [helpers.PYTHON, "-c", script], capture_output=True, text=True, timeout=60, cwd=helpers.REPO_ROOT
    )
    assert "RAISED" in done.stdout, done.stderr[-2000:]
    assert "LocalError: odd record in shard-7.tar" in done.stdout
