"""`divot-data videollava`: Video-LLaVA QA json + real media -> our QA jsonl and shards."""

from __future__ import annotations

import glob
import json

import pytest
import webdataset as wds

from data_recipes.__main__ import main
from tests.recipes.media import truncate, write_image, write_video


def _turns(*texts: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


# (record, skip reason or None); element k of the json list sits on line k + 2
RECORDS = [
    ({"id": "v_1", "video": "videos/v1.mp4", "conversations": _turns("<video>\nWhat happens?", "A shape moves.")}, None),
    ({"id": "v_1", "video": "videos/v1.mp4",
      "conversations": _turns("Which colour?\n<video>", "Red.", "And the background?", "Blue.")}, None),
    ({"id": "000000001", "image": "images/coco/1.jpg", "conversations": _turns("<image>\nWhat is it?", "Noise.")}, None),
    ({"id": "2.png", "image": "images/2.png", "conversations": _turns("Describe.\n<image>", "Static.")}, None),
    ({"id": "t", "conversations": _turns("Hello?", "Hi.")}, "no_media"),
    ({"id": "m", "video": "videos/missing.mp4", "conversations": _turns("Q", "A")}, "missing_video"),
    ({"id": "b", "video": "videos/broken.mp4", "conversations": _turns("Q", "A")}, "corrupt_video"),
    ({"id": "c", "image": "images/broken.jpg", "conversations": _turns("Q", "A")}, "corrupt_image"),
    ({"id": "u", "video": "../v1.mp4", "conversations": _turns("Q", "A")}, "unsafe_path"),
    ({"id": "u", "video": "/abs/v1.mp4", "conversations": _turns("Q", "A")}, "unsafe_path"),
    ({"id": "g", "video": "videos/v2.mp4", "conversations": _turns("Q", "A")[::-1]}, "bad_conversation"),
    ({"id": "o", "video": "videos/v2.mp4", "conversations": _turns("Q", "A", "Q2")}, "bad_conversation"),
    ({"id": "e", "video": "videos/v2.mp4", "conversations": _turns("<video>", "A")}, "empty_text"),
    ({"id": "f", "video": "videos/v2.txt", "conversations": _turns("Q", "A")}, "unsupported_format"),
    ("not a record", "bad_record"),
]  # fmt: skip


@pytest.fixture
def videollava(tmp_path):
    media = tmp_path / "media"
    durations = {
        "v1": write_video(media / "videos" / "v1.mp4", seed=1, duration_s=3.0),
        "v2": write_video(media / "videos" / "v2.mp4", seed=2, duration_s=2.0),
    }
    write_video(media / "videos" / "broken.mp4", seed=3)
    truncate(media / "videos" / "broken.mp4")
    write_image(media / "images" / "coco" / "1.jpg", seed=1)
    write_image(media / "images" / "2.png", seed=2)
    write_image(media / "images" / "3.jpg", seed=3)
    write_image(media / "images" / "broken.jpg", seed=4)
    truncate(media / "images" / "broken.jpg", keep=0.5)
    qa_json = tmp_path / "videochatgpt_tune_.json"
    qa_json.write_text("[\n" + ",\n".join(json.dumps(r) for r, _ in RECORDS) + "\n]\n")
    qa_jsonl = tmp_path / "extra.jsonl"
    qa_jsonl.write_text(
        json.dumps({"id": "clip.v2", "video": "videos/v2.mp4", "conversations": _turns("Q?", "A.")}) + "\n"
        + '{"id": "cut", "video": \n'
        + json.dumps({"image": "images/3.jpg", "conversations": _turns("Q3?", "A3.")}) + "\n"
    )  # fmt: skip
    return tmp_path, media, qa_json, qa_jsonl, durations


def _samples(folder) -> dict[str, dict]:
    shards = sorted(glob.glob(str(folder / "shard-*.tar")))
    return {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)}


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_videollava_converts_records_and_skips_bad_ones_with_their_line(videollava, capsys):
    root, media, qa_json, qa_jsonl, durations = videollava
    out = root / "out"
    argv = [
        "videollava",
        "--json",
        str(qa_json),
        str(qa_jsonl),
        "--media-root",
        str(media),
        "--out",
        str(out),
    ]
    assert main([*argv, "--shards"]) == 0
    report = capsys.readouterr().out

    for k, (_, reason) in enumerate(RECORDS):
        if reason:
            assert f"{qa_json}:{k + 2} ({reason})" in report
    assert f"{qa_jsonl}:2 (bad_json)" in report
    assert _lines(out / "video_qa.jsonl") == [
        {"video": "videos/v1.mp4", "questions": ["What happens?"], "answers": ["A shape moves."], "id": "v_1"},
        {"video": "videos/v1.mp4", "questions": ["Which colour?", "And the background?"],
         "answers": ["Red.", "Blue."], "id": "v_1"},
        {"video": "videos/v2.mp4", "questions": ["Q?"], "answers": ["A."], "id": "clip.v2"},
    ]  # fmt: skip
    assert _lines(out / "image_qa.jsonl") == [
        {
            "image": "images/coco/1.jpg",
            "questions": ["What is it?"],
            "answers": ["Noise."],
            "id": "000000001",
        },
        {"image": "images/2.png", "questions": ["Describe."], "answers": ["Static."], "id": "2.png"},
        {"image": "images/3.jpg", "questions": ["Q3?"], "answers": ["A3."], "id": "3"},
    ]

    manifest = json.loads((out / "manifest.json").read_text())
    expected_skips = {"bad_json": 1}
    for _, reason in RECORDS:
        if reason:
            expected_skips[reason] = expected_skips.get(reason, 0) + 1
    assert manifest["skipped"] == expected_skips
    assert (manifest["samples"], manifest["videos"], manifest["images"], manifest["qa_pairs"]) == (6, 3, 3, 7)
    assert manifest["distinct_videos"] == 2  # v1 carries two QA records
    assert manifest["video_durations"]["total_s"] == pytest.approx(sum(durations.values()), abs=0.01)

    videos = _samples(out / "videos")
    assert sorted(videos) == ["clip_v2", "v_1", "v_1-1"]  # a dot is not allowed in a key
    assert videos["v_1-1"]["mp4"] == (media / "videos" / "v1.mp4").read_bytes()
    assert json.loads(videos["v_1-1"]["json"]) == {
        "id": "v_1", "questions": ["Which colour?", "And the background?"], "answers": ["Red.", "Blue."]
    }  # fmt: skip
    images = _samples(out / "images")
    assert sorted(images) == ["000000001", "2_png", "3"]
    assert images["2_png"]["png"] == (media / "images" / "2.png").read_bytes()
    assert [s["name"] for s in manifest["shards"]["videos"]] == ["shard-00000.tar"]


def test_videollava_without_shards_writes_only_jsonl(videollava, capsys):
    root, media, qa_json, _, _ = videollava
    out = root / "out"
    assert main(["videollava", "--json", str(qa_json), "--media-root", str(media), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "image_qa.jsonl",
        "manifest.json",
        "skipped.txt",
        "video_qa.jsonl",
    ]


def test_videollava_with_nothing_usable_fails(tmp_path, capsys):
    qa_json = tmp_path / "qa.json"
    qa_json.write_text(json.dumps([{"id": "t", "conversations": _turns("Q", "A")}]))
    argv = [
        "videollava",
        "--json",
        str(qa_json),
        "--media-root",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 1
    assert "(no_media)" in capsys.readouterr().out


def test_videollava_does_not_follow_links_out_of_the_media_root(tmp_path, capsys):
    media, outside = tmp_path / "media", tmp_path / "private"
    write_video(media / "videos" / "v1.mp4", seed=1)
    write_image(outside / "secret.jpg", seed=2)
    (media / "images").mkdir()
    (media / "images" / "secret.jpg").symlink_to(outside / "secret.jpg")
    qa_json = tmp_path / "qa.json"
    records = [
        {"id": "v", "video": "videos/v1.mp4", "conversations": _turns("Q?", "A.")},  # line 2
        {"id": "s", "image": "images/secret.jpg", "conversations": _turns("Q?", "A.")},  # line 3
    ]
    qa_json.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    out = tmp_path / "out"
    assert main(["videollava", "--json", str(qa_json), "--media-root", str(media), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"{qa_json}:3 (unsafe_path): images/secret.jpg leads outside {media} through a link" in report
    assert _lines(out / "image_qa.jsonl") == [] and len(_lines(out / "video_qa.jsonl")) == 1


def test_videollava_skips_text_that_is_not_valid_unicode(tmp_path, capsys):
    """JSON can spell a lone surrogate, which no UTF-8 file (or tokenizer) can hold."""
    media = tmp_path / "media"
    write_video(media / "videos" / "v1.mp4", seed=1)
    qa_json = tmp_path / "qa.json"
    qa_json.write_text(
        "[\n"
        '{"id": "a", "video": "videos/v1.mp4", "conversations": [{"from": "human", "value": "Q \\ud800?"},'
        ' {"from": "gpt", "value": "A."}]},\n'  # line 2
        '{"id": "b", "video": "videos/v\\udcff.mp4", "conversations": [{"from": "human", "value": "Q?"},'
        ' {"from": "gpt", "value": "A."}]},\n'  # line 3
        '{"id": "c", "video": "videos/v1.mp4", "conversations": [{"from": "human", "value": "Q?"},'
        ' {"from": "gpt", "value": "A \\u00e9."}]}\n'  # line 4
        "]\n"
    )
    out = tmp_path / "out"
    argv = ["videollava", "--json", str(qa_json), "--media-root", str(media), "--out", str(out), "--shards"]
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert f"{qa_json}:2 (bad_encoding)" in report and f"{qa_json}:3 (bad_encoding)" in report
    assert _lines(out / "video_qa.jsonl") == [
        {"video": "videos/v1.mp4", "questions": ["Q?"], "answers": ["A \u00e9."], "id": "c"}
    ]
