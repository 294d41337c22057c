"""`divot-data webvid`: a folder of real h264 videos + a WebVid-style CSV -> shards."""

from __future__ import annotations

import glob
import json
import tarfile

import pytest
import webdataset as wds

from data_recipes.__main__ import main
from tests.recipes.media import truncate, write_video

HEADER = "videoid,contentUrl,duration,page_dir,name\n"


@pytest.fixture
def webvid(tmp_path):
    """Six good videos in both accepted layouts, and one row per kind of bad input.
    Returns (root, csv path, {videoid: (caption, relative path, duration)})."""
    videos = tmp_path / "videos"
    good = {}
    for i in range(6):
        videoid, page_dir = str(1000 + i), ("006001_006050" if i % 2 else "")
        relative = f"{page_dir}/{videoid}.mp4" if page_dir else f"{videoid}.mp4"
        duration = write_video(videos / relative, seed=i, duration_s=1.0 + i, size=(64 + 16 * i, 48))
        good[videoid] = (f"clip number {i}, with a comma", relative, duration, page_dir)
    write_video(videos / "006001_006050" / "2000.mp4", seed=9)
    truncate(videos / "006001_006050" / "2000.mp4")
    (videos / "2001.mp4").write_bytes(b"")  # an empty download
    write_video(videos / "2002.mp4", seed=10)
    rows = [f'{v},https://x/{v}.mp4,PT0{i}S,{p},"{c}"\n' for i, (v, (c, _, _, p)) in enumerate(good.items())]
    rows += [
        '2000,u,PT2S,006001_006050,"truncated"\n',  # line 8
        '2001,u,PT2S,,"empty file"\n',  # line 9
        '3000,u,PT2S,006001_006050,"not downloaded"\n',  # line 10
        '2002,u,PT2S,,"   "\n',  # line 11: blank caption
        '../2002,u,PT2S,,"escaping id"\n',  # line 12
        '2002,u,PT2S,../..,"escaping page_dir"\n',  # line 13
        '2002,u,PT2S,/etc,"absolute page_dir"\n',  # line 14
        '1001,u,PT2S,006001_006050,"repeated id"\n',  # line 15
        "2002,u\n",  # line 16: short row
    ]
    csv_path = tmp_path / "results_2M_val.csv"
    csv_path.write_text(HEADER + "".join(rows))
    return tmp_path, csv_path, good


EXPECTED_SKIPS = {
    "corrupt_video": 2,
    "missing_video": 1,
    "empty_caption": 1,
    "unsafe_path": 3,
    "duplicate_key": 1,
    "bad_row": 1,
}


def test_webvid_packs_good_videos_and_skips_bad_rows_with_their_line(webvid, capsys):
    root, csv_path, good = webvid
    out = root / "out"
    max_bytes = 20 * 1024  # the six videos take about 30 KiB as tar members
    argv = ["webvid", "--videos", str(root / "videos"), "--csv", str(csv_path), "--out", str(out)]
    assert main([*argv, "--max-shard-bytes", str(max_bytes)]) == 0
    report = capsys.readouterr().out

    for line, reason in [(8, "corrupt_video"), (9, "corrupt_video"), (10, "missing_video"),
                         (11, "empty_caption"), (12, "unsafe_path"), (13, "unsafe_path"),
                         (14, "unsafe_path"), (15, "duplicate_key"), (16, "bad_row")]:  # fmt: skip
        assert f"{csv_path}:{line} ({reason})" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == EXPECTED_SKIPS and manifest["skipped_total"] == 9
    assert len((out / "skipped.txt").read_text().splitlines()) == 9
    assert manifest["samples"] == manifest["videos"] == 6
    durations = [d for _, _, d, _ in good.values()]
    assert manifest["video_durations"]["total_s"] == pytest.approx(sum(durations), abs=0.01)
    assert manifest["video_durations"]["max_s"] == pytest.approx(max(durations), abs=0.01)

    # size-balanced: within the byte limit, more than one shard, and the manifest is true
    shards = sorted(glob.glob(str(out / "shard-*.tar")))
    assert len(shards) == len(manifest["shards"]) > 1
    for path, entry in zip(shards, manifest["shards"], strict=True):
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert entry["bytes"] <= max_bytes and entry["samples"] == len(names) // 3
        assert all("/" not in n and n.count(".") == 1 for n in names)

    samples = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)}
    assert sorted(samples) == sorted(good)
    for videoid, (caption, relative, duration, page_dir) in good.items():
        sample = samples[videoid]
        assert sample["mp4"] == (root / "videos" / relative).read_bytes()  # copied, not re-encoded
        assert sample["txt"].decode() == caption
        meta = json.loads(sample["json"])
        assert meta["duration_s"] == pytest.approx(duration, abs=0.01)
        assert meta.get("page_dir", "") == page_dir and meta["contentUrl"] == f"https://x/{videoid}.mp4"
    lines = [json.loads(x) for x in (out / "video_caption.jsonl").read_text().splitlines()]
    assert lines == [{"video": r, "caption": c} for c, r, _, _ in good.values()]


def test_webvid_is_deterministic_with_worker_processes(webvid, capsys):
    root, csv_path, _ = webvid
    argv = ["webvid", "--videos", str(root / "videos"), "--csv", str(csv_path), "--max-shard-samples", "4"]
    assert main([*argv, "--out", str(root / "one")]) == 0
    assert main([*argv, "--out", str(root / "two"), "--workers", "2"]) == 0
    for name in ("shard-00000.tar", "shard-00001.tar", "manifest.json", "video_caption.jsonl", "skipped.txt"):
        assert (root / "one" / name).read_bytes() == (root / "two" / name).read_bytes(), name


def test_webvid_names_a_missing_column_and_refuses_a_used_out(webvid, capsys):
    root, csv_path, _ = webvid
    bad_csv = root / "bad.csv"
    bad_csv.write_text("videoid,caption\n1000,a clip\n")
    argv = ["webvid", "--videos", str(root / "videos"), "--out", str(root / "out")]
    assert main([*argv, "--csv", str(bad_csv)]) == 2
    assert "no column name" in capsys.readouterr().out
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("x")
    assert main([*argv, "--csv", str(csv_path)]) == 2
    assert "--overwrite" in capsys.readouterr().out
    assert (root / "out" / "keep.txt").exists()


def test_links_out_of_videos_are_skipped_and_an_unclosed_quote_costs_one_line(tmp_path, capsys):
    videos, outside = tmp_path / "videos", tmp_path / "private"
    for videoid in ("1000", "1002", "1003"):
        write_video(videos / f"{videoid}.mp4", seed=int(videoid) % 7)
    write_video(outside / "secret.mp4", seed=5)
    (videos / "3000.mp4").symlink_to(outside / "secret.mp4")  # a file linking out
    (videos / "linked").symlink_to(outside, target_is_directory=True)  # a folder linking out
    (outside / "3001.mp4").symlink_to(outside / "secret.mp4")
    (videos / "1004.mp4").symlink_to(videos / "1003.mp4")  # a link that stays inside is fine
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(
        HEADER
        + '1000,u,PT2S,,"first"\n'  # line 2
        + '3000,u,PT2S,,"linked file"\n'  # line 3
        + '3001,u,PT2S,linked,"linked folder"\n'  # line 4
        + '1001,u,PT2S,,"never closed\n'  # line 5: the quote swallowed lines 6-8 before
        + '1002,u,PT2S,,"second"\n'  # line 6
        + '1003,u,PT2S,,"spans\n'  # line 7: a quoted field over two lines...
        + 'two lines",x\n'  # line 8: ...is two bad lines, never one merged row
        + '1004,u,PT2S,,"third, via an inside link"\n'  # line 9
    )
    out = tmp_path / "out"
    assert main(["webvid", "--videos", str(videos), "--csv", str(csv_path), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"{csv_path}:3 (unsafe_path): 3000.mp4 leads outside {videos} through a link" in report
    assert f"{csv_path}:4 (unsafe_path): linked/3001.mp4 leads outside {videos} through a link" in report
    assert f"{csv_path}:5 (bad_row): unclosed quote" in report
    assert f"{csv_path}:7 (bad_row): unclosed quote" in report
    assert f"{csv_path}:8 (bad_row)" in report
    samples = {s["__key__"]: s for s in wds.WebDataset(glob.glob(str(out / "*.tar")), shardshuffle=False)}
    assert {k: s["txt"].decode() for k, s in samples.items()} == {
        "1000": "first",
        "1002": "second",
        "1004": "third, via an inside link",
    }
    assert samples["1004"]["mp4"] == (videos / "1003.mp4").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == {"bad_row": 3, "unsafe_path": 2}
