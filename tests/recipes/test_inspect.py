"""`divot-data inspect` on real shards: the training reader's view, problems named by
folder-qualified shard paths, a non-zero exit for any problem, safe --show output,
--verify-synthetic against freshly generated data, and the contact sheet."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
from PIL import Image

from data_recipes.__main__ import main
from data_recipes.contact_sheet import GAP, LABEL_WIDTH
from divot_llm.data.synthetic import SyntheticCounts, nearest_color, write_synthetic_dataset
from divot_llm.data.video_codec import VIDEO_CODECS
from tests.data.test_sources import write_tar
from tests.recipes.media import write_image, write_video


def _write(tmp_path, seed=7, **counts):
    out = tmp_path / "set"
    defaults = dict(train_videos=4, val_videos=0, images=1, samples_per_shard=4)
    write_synthetic_dataset(out, seed=seed, counts=SyntheticCounts(**{**defaults, **counts}))
    return out


def _members(shard) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_show_prints_media_facts_and_caption_of_the_first_samples(tmp_path, capsys):
    out = _write(tmp_path)
    shard = out / "train" / "videos" / "shard-00000.tar"
    assert main(["inspect", str(shard), "--show", "2"]) == 0
    report = capsys.readouterr().out
    shown = re.findall(r"^shard-00000\.tar:(\S+)$", report, flags=re.M)
    assert len(shown) == 2  # only the first two samples
    members = _members(shard)
    for key in shown:
        meta = json.loads(members[f"{key}.json"])
        ext = VIDEO_CODECS[meta["codec"]].extension
        block = report[report.index(f"shard-00000.tar:{key}\n") :]
        assert block.splitlines()[1].startswith(
            f"  video {len(members[f'{key}.{ext}']):,} B: {meta['width']}x{meta['height']}, "
        )
        assert f", {meta['num_frames']} frames, " in block.splitlines()[1]
        assert block.splitlines()[2] == f"  caption: {meta['captions'][0]}"


def test_verify_synthetic_passes_freshly_generated_data(tmp_path, capsys):
    """Seed 0's second video moves down so slowly (< 1 px per decoded frame) that a
    per-step reading of the motion named no direction; every sample must verify."""
    out = tmp_path / "fresh"
    argv = ["synthetic", "--out", str(out), "--seed", "0", "--train-videos", "4", "--val-videos", "1"]
    assert main([*argv, "--images", "3", "--samples-per-shard", "4"]) == 0
    assert main(["inspect", str(out / "*" / "*" / "*.tar"), "--verify-synthetic"]) == 0
    report = capsys.readouterr().out
    assert "8 samples: image 3, video 5" in report
    assert "0 problem shards" in report and "0 problem samples" in report


def test_verify_synthetic_reports_a_caption_the_pixels_do_not_show(tmp_path, capsys):
    out = _write(tmp_path, images=0)
    shard = out / "train" / "videos" / "shard-00000.tar"
    members = _members(shard)
    key = "train-vid-000002"
    scene = json.loads(members[f"{key}.json"])["scene"]
    turned = {"left": "right", "right": "left", "up": "down", "down": "up"}[scene["direction"]]
    caption = members[f"{key}.txt"].decode()
    members[f"{key}.txt"] = caption.replace(f"moving {scene['direction']}", f"moving {turned}").encode()
    write_tar(shard, list(members.items()))
    assert main(["inspect", str(shard), "--verify-synthetic"]) == 1
    report = capsys.readouterr().out
    assert "1 problem samples" in report
    assert f"shard-00000.tar:{key}: pixels disagree with the caption on direction " in report
    assert f"(pixels: {scene['direction']}, caption: {turned})" in report


def test_same_named_shards_in_three_folders_are_told_apart(tmp_path, capsys):
    media = tmp_path / "media"
    video = media / "v.mp4"
    write_video(video, seed=1)
    for folder in ("a", "b/deeper", "c"):
        members = [(f"{folder[0]}{i}.mp4", video.read_bytes()) for i in range(2)]
        members += [(f"{folder[0]}{i}.txt", b"a caption") for i in range(2)]
        if folder == "c":  # one cut-short video, found by decoding
            members[1] = ("c1.mp4", video.read_bytes()[:300])
        (tmp_path / "sets" / folder).mkdir(parents=True)
        write_tar(tmp_path / "sets" / folder / "shard-00000.tar", members)
    code = main(["inspect", str(tmp_path / "sets" / "*" / "shard-00000.tar"),
                 str(tmp_path / "sets" / "b" / "*" / "*.tar"), "--show", "6"])  # fmt: skip
    report = capsys.readouterr().out
    assert code == 1
    assert f"3 shards under {tmp_path / 'sets'}, 6 samples: video 6" in report
    for name in (
        "a/shard-00000.tar:a0",
        "a/shard-00000.tar:a1",
        "b/deeper/shard-00000.tar:b0",
        "c/shard-00000.tar:c0",
    ):
        assert f"\n{name}\n" in "\n" + report
    assert "1 problem samples\n  c/shard-00000.tar:c1: undecodable video" in report


def test_a_set_of_only_corrupt_and_empty_shards_fails(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "shard-00000.tar").write_bytes(np.random.default_rng(0).bytes(4096))  # not a tar
    (folder / "shard-00001.tar").write_bytes(b"")  # an empty download
    write_tar(folder / "shard-00002.tar", [])  # a valid tar without members
    write_tar(folder / "shard-00003.tar", [("readme", b"no sample here")])
    (folder / "shard-00004.tar").mkdir()  # the glob matches a folder
    assert main(["inspect", str(folder / "*.tar")]) == 1
    report = capsys.readouterr().out
    assert "5 shards under" in report and ", 0 samples" in report
    assert "5 problem shards" in report
    assert "shard-00000.tar (corrupt_shard)" in report and "shard-00001.tar (corrupt_shard)" in report
    assert "shard-00002.tar (empty_shard)" in report and "shard-00003.tar (empty_shard)" in report
    assert "shard-00004.tar: not a regular file" in report


def test_a_truncated_shard_is_a_problem_and_its_complete_samples_are_read(tmp_path, capsys):
    out = _write(tmp_path, images=0)
    shard = out / "train" / "videos" / "shard-00000.tar"
    with tarfile.open(shard) as tar:
        last_video = [m for m in tar.getmembers() if not m.name.endswith((".txt", ".json"))][-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: last_video.offset_data + last_video.size // 2])  # cut inside the last video
    assert main(["inspect", str(shard)]) == 1
    report = capsys.readouterr().out
    assert "1 shards under" in report and "3 samples: video 3" in report
    assert "1 problem shards\n  shard-00000.tar (truncated_shard)" in report


def test_show_and_problems_print_hostile_text_safely(tmp_path, capsys):
    image = write_image(tmp_path / "i.png", seed=1)
    huge = "w" * 100_000
    members = [
        ("ctl.png", image), ("ctl.txt", "red\x1b[2J\rgone\u202eevil\u0000".encode()),
        ("big.png", image), ("big.txt", huge.encode()),
        ("odd\udcff.png", image), ("odd\udcff.txt", b"a caption"),  # not UTF-8 on disk
        ("qa.png", image), ("qa.json", json.dumps({"questions": ["Q\n\t?"], "answers": ["A \U0001f600\u200b"]}).encode()),
        ("sur.png", image), ("sur.json", b'{"caption": "lone \\ud800 surrogate"}'),
    ]  # fmt: skip
    shard = write_tar(tmp_path / "odd.tar", members)
    code = main(["inspect", str(shard), "--show", "10", "--max-errors", "10"])
    report = capsys.readouterr().out
    assert code in (0, 1)  # whether the reader accepts a lone surrogate is its own business
    report.encode("utf-8")  # nothing unprintable reached stdout
    assert "\x1b" not in report and "\r" not in report and "\u202e" not in report and "\x00" not in report
    assert "caption: red\\x1b[2J\\rgone\\u202eevil\\x00" in report
    assert "caption: " + "w" * 200 + "... (99,800 more characters)" in report
    assert "odd.tar:odd\\udcff" in report
    assert "qa: 1 turns; Q: Q\\n\\t? A: A \U0001f600\\u200b" in report
    assert len(max(report.splitlines(), key=len)) < 400


def test_contact_sheet_shows_one_sampled_clip_per_sample(tmp_path, capsys):
    out = _write(tmp_path)
    sheet_path = tmp_path / "sheet.png"
    size = 32
    shard = out / "train" / "videos" / "shard-00000.tar"
    argv = ["inspect", str(shard), "--contact-sheet", str(sheet_path), "--sheet-rows", "3", "--sheet-size", str(size), "--show", "3"]  # fmt: skip
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "contact sheet: 3 rows" in report
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    assert sheet.shape == (3 * (size + GAP) + GAP, LABEL_WIDTH + 5 * (size + GAP), 3)
    members = _members(shard)
    shown = re.findall(r"^shard-00000\.tar:(\S+)$", report, flags=re.M)  # the rows, in order
    for row, key in enumerate(shown):
        meta = json.loads(members[f"{key}.json"])
        top = GAP + row * (size + GAP)
        for col in range(5):
            left = LABEL_WIDTH + col * (size + GAP)
            cell = sheet[top : top + size, left : left + size].reshape(-1, 3)
            # the scene's background covers most of every frame of that video
            assert nearest_color(np.median(cell, axis=0)) == meta["scene"]["background"], (row, col)


def test_an_unmatched_pattern_is_a_usage_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none-*.tar")]) == 2
    assert f"no shard matches '{tmp_path / 'none-*.tar'}'" in capsys.readouterr().out
