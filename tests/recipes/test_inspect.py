"""`divot-data inspect --show / --contact-sheet` on real synthetic shards."""

from __future__ import annotations

import json
import tarfile

import numpy as np
from PIL import Image

from data_recipes.__main__ import main
from data_recipes.contact_sheet import GAP, LABEL_WIDTH
from divot_llm.data.synthetic import SyntheticCounts, nearest_color, write_synthetic_dataset
from divot_llm.data.video_io import VIDEO_CODECS


def _write(tmp_path):
    out = tmp_path / "set"
    write_synthetic_dataset(
        out, seed=7, counts=SyntheticCounts(train_videos=4, val_videos=0, images=1, samples_per_shard=4)
    )
    return out


def test_show_prints_members_caption_and_video_facts(tmp_path, capsys):
    out = _write(tmp_path)
    shard = out / "train" / "videos" / "shard-00000.tar"
    assert main(["inspect", str(shard), "--show", "2"]) == 0
    report = capsys.readouterr().out
    with tarfile.open(shard) as tar:
        members = {m.name: m.size for m in tar.getmembers()}
        metas = [json.loads(tar.extractfile(n).read()) for n in sorted(members) if n.endswith(".json")]
    for meta in metas[:2]:
        key, ext = meta["key"], VIDEO_CODECS[meta["codec"]].extension
        assert f"shard-00000.tar:{key}\n" in report
        assert (
            f"{ext} {members[f'{key}.{ext}']:,} B" in report and f"txt {members[f'{key}.txt']:,} B" in report
        )
        assert f"caption: {meta['captions'][0]}\n" in report
        assert f"video: {meta['width']}x{meta['height']}, " in report
        assert f", {meta['num_frames']} frames, " in report
    assert report.count("shard-00000.tar:") == 2  # only the first two samples


def test_contact_sheet_shows_one_sampled_clip_per_sample(tmp_path, capsys):
    out = _write(tmp_path)
    sheet_path = tmp_path / "sheet.png"
    size = 32
    shard = out / "train" / "videos" / "shard-00000.tar"
    argv = [
        "inspect",
        str(shard),
        "--contact-sheet",
        str(sheet_path),
        "--sheet-rows",
        "3",
        "--sheet-size",
        str(size),
    ]
    assert main(argv) == 0
    assert "contact sheet: 3 rows" in capsys.readouterr().out
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    assert sheet.shape == (3 * (size + GAP) + GAP, LABEL_WIDTH + 5 * (size + GAP), 3)
    with tarfile.open(shard) as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    for row, meta in enumerate(metas[:3]):
        top = GAP + row * (size + GAP)
        for col in range(5):
            left = LABEL_WIDTH + col * (size + GAP)
            cell = sheet[top : top + size, left : left + size].reshape(-1, 3)
            # the scene's background covers most of every frame of that video
            assert nearest_color(np.median(cell, axis=0)) == meta["scene"]["background"], (row, col)
