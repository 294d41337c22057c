"""`divot-data cc3m`: image-text pairs (a caption table, or <key>.jpg + <key>.txt) -> shards."""

from __future__ import annotations

import glob
import json
import os

import webdataset as wds

from data_recipes.__main__ import main
from tests.recipes.media import truncate, write_image


def _samples(out) -> dict[str, dict]:
    shards = sorted(glob.glob(str(out / "shard-*.tar")))
    return {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)}


def test_cc3m_from_a_caption_table(tmp_path, capsys):
    images = tmp_path / "images"
    good = {
        "00000_000000001": ("00000/000000001.jpg", "a photo of noise", write_image(images / "00000/000000001.jpg", 1)),
        "00000_000000002": ("00000/000000002.png", "more noise", write_image(images / "00000/000000002.png", 2)),
        "00001_000000003": ("00001/000000003.jpeg", "noise again", write_image(images / "00001/000000003.jpeg", 3)),
    }  # fmt: skip
    write_image(images / "00001/broken.jpg", 4)
    truncate(images / "00001/broken.jpg", keep=0.5)
    (images / "00001/anim.gif").write_bytes(b"GIF89a")
    rows = [f"{caption}\t{path}" for path, caption, _ in good.values()]
    rows += [
        "missing\t00001/nope.jpg",  # line 5
        "truncated\t00001/broken.jpg",  # line 6
        " \t00000/000000001.jpg",  # line 7: blank caption
        "escape\t../secret.jpg",  # line 8
        "animated\t00001/anim.gif",  # line 9
        "twice\t00000/000000002.png",  # line 10
    ]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("caption\tpath\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["cc3m", "--images", str(images), "--pairs", str(pairs), "--out", str(out)]) == 0
    report = capsys.readouterr().out

    for line, reason in [(5, "missing_image"), (6, "corrupt_image"), (7, "empty_caption"),
                         (8, "unsafe_path"), (9, "unsupported_format"), (10, "duplicate_key")]:  # fmt: skip
        assert f"{pairs}:{line} ({reason})" in report
    samples = _samples(out)
    assert sorted(samples) == sorted(good)
    for key, (path, caption, data) in good.items():
        ext = "png" if path.endswith(".png") else "jpg"  # .jpeg is stored as .jpg
        assert samples[key][ext] == data and samples[key]["txt"].decode() == caption
        assert json.loads(samples[key]["json"]) == {"width": 40, "height": 30, "path": path}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"] == 3 and manifest["skipped_total"] == 6


def test_cc3m_from_image_and_caption_files(tmp_path, capsys):
    images = tmp_path / "cc3m"
    for i in range(5):
        write_image(images / f"0000{i % 2}" / f"{i:09d}.jpg", i)
        if i != 3:
            (images / f"0000{i % 2}" / f"{i:09d}.txt").write_text(f"caption {i}\n")
    (images / "00000" / "000000004.txt").write_text("   ")
    out = tmp_path / "shards"
    assert main(["cc3m", "--images", str(images), "--out", str(out), "--max-shard-samples", "2"]) == 0
    report = capsys.readouterr().out
    assert f"{images / '00001' / '000000003.jpg'} (missing_caption)" in report
    assert "(empty_caption)" in report
    samples = _samples(out)
    assert {k: s["txt"].decode() for k, s in samples.items()} == {
        "00000_000000000": "caption 0",
        "00000_000000002": "caption 2",
        "00001_000000001": "caption 1",
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] in ([2, 1], [1, 2])
    assert manifest["skipped"] == {"empty_caption": 1, "missing_caption": 1}


def test_cc3m_needs_caption_and_path_columns(tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("caption,url\na cat,http://x/cat.jpg\n")
    argv = ["cc3m", "--images", str(tmp_path), "--pairs", str(pairs), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "caption and path" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_cc3m_does_not_follow_links_out_of_the_images_folder(tmp_path, capsys):
    images, outside = tmp_path / "images", tmp_path / "private"
    write_image(images / "a.jpg", 1)
    (images / "a.txt").write_text("kept")
    write_image(outside / "secret.jpg", 2)
    (outside / "secret.txt").write_text("a private note")
    (images / "b.jpg").symlink_to(outside / "secret.jpg")  # an image linking out
    (images / "b.txt").write_text("linked image")
    write_image(images / "c.jpg", 3)
    (images / "c.txt").symlink_to(outside / "secret.txt")  # a caption linking out
    out = tmp_path / "out"
    assert main(["cc3m", "--images", str(images), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"{images / 'b.jpg'} (unsafe_path): b.jpg leads outside {images} through a link" in report
    assert f"{images / 'c.txt'} (unsafe_path)" in report
    assert {k: s["txt"].decode() for k, s in _samples(out).items()} == {"a": "kept"}

    pairs = tmp_path / "pairs.csv"
    pairs.write_text('caption,path\nlinked,b.jpg\n"open quote,a.jpg\nkept,a.jpg\n')
    out = tmp_path / "table"
    assert main(["cc3m", "--images", str(images), "--pairs", str(pairs), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"{pairs}:2 (unsafe_path)" in report and f"{pairs}:3 (bad_row): unclosed quote" in report
    assert {k: s["txt"].decode() for k, s in _samples(out).items()} == {"a": "kept"}


def test_cc3m_skips_a_file_name_that_is_not_utf8(tmp_path, capsys):
    images = tmp_path / "images"
    write_image(images / "a.jpg", 1)
    (images / "a.txt").write_text("kept")
    odd = images / os.fsdecode(b"b\xff.jpg")  # bytes a file system allows and UTF-8 does not
    write_image(odd, 2)
    odd.with_suffix(".txt").write_text("a caption")
    out = tmp_path / "out"
    assert main(["cc3m", "--images", str(images), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "b\\udcff.jpg (bad_encoding): the file name is not valid UTF-8" in report
    assert sorted(_samples(out)) == ["a"]
    assert "b\\udcff.jpg (bad_encoding)" in (out / "skipped.txt").read_text()
