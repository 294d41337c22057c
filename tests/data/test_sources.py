"""Sources: exact partitioning across readers, exact resume, bad data skipped and counted."""

from __future__ import annotations

import io
import itertools
import json
import logging
import tarfile
from pathlib import Path

import pytest

from divot_llm.data.sources import (
    Consumer,
    DataError,
    JsonlSource,
    TarSource,
    expand_paths,
    parse_annotation,
    safe_join,
)

READERS = [Consumer.of(rank, 2, worker, 2) for rank in range(2) for worker in range(2)]  # 2 ranks x 2 workers


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_shards(folder: Path, num_shards: int, per_shard: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(num_shards):
        members = []
        for i in range(per_shard):
            key = f"s{s}-{i:03d}"
            members += [(f"{key}.mp4", f"video {key}".encode()), (f"{key}.txt", f"caption {key}".encode())]
        shards.append(write_tar(folder / f"shard-{s:05d}.tar", members))
    return shards


def make_jsonl(folder: Path, n: int) -> tuple[Path, Path]:
    media = folder / "media"
    (media / "videos").mkdir(parents=True)
    lines = []
    for i in range(n):
        (media / "videos" / f"v{i}.mp4").write_bytes(b"x")
        lines.append(json.dumps({"video": f"videos/v{i}.mp4", "caption": f"caption {i}"}))
    path = folder / "ann.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, media


def keys(source) -> list[str]:
    return [sample.key for sample in source]


@pytest.mark.parametrize("num_shards", [7, 2])  # dealt by shard / dealt by sample
def test_tar_epoch_is_partitioned_exactly_across_readers(tmp_path, num_shards):
    shards = make_shards(tmp_path, num_shards, 5)
    seen = [
        k for reader in READERS for k in keys(TarSource("v", shards, seed=1, consumer=reader, infinite=False))
    ]
    assert len(seen) == num_shards * 5 and len(set(seen)) == len(seen)


def test_jsonl_epoch_is_partitioned_exactly_across_readers(tmp_path):
    path, media = make_jsonl(tmp_path, 23)
    seen = [
        k for r in READERS for k in keys(JsonlSource("c", [path], media, seed=1, consumer=r, infinite=False))
    ]
    assert sorted(seen) == sorted(f"ann.jsonl:{i}" for i in range(1, 24))


def test_order_is_seeded_shuffled_and_changes_per_epoch(tmp_path):
    shards = make_shards(tmp_path, 3, 6)
    first = list(itertools.islice(TarSource("v", shards, seed=3), 36))
    again = list(itertools.islice(TarSource("v", shards, seed=3), 36))
    assert [s.key for s in first] == [s.key for s in again]
    epoch0, epoch1 = [s.key for s in first[:18]], [s.key for s in first[18:]]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    assert epoch0 != sorted(epoch0)  # shuffled inside shards too


@pytest.mark.parametrize("kind", ["tar", "jsonl"])
def test_resume_continues_the_exact_stream(tmp_path, kind):
    def build():
        if kind == "tar":
            return TarSource("v", make_shards(tmp_path / "s", 3, 4) if not (tmp_path / "s").exists()
                             else sorted((tmp_path / "s").glob("*.tar")), seed=9, consumer=READERS[1])  # fmt: skip
        path, media = (
            (tmp_path / "ann.jsonl", tmp_path / "media")
            if (tmp_path / "ann.jsonl").exists()
            else make_jsonl(tmp_path, 9)
        )
        return JsonlSource("c", [path], media, seed=9, consumer=READERS[1])

    uninterrupted = [s.key for s in itertools.islice(iter(build()), 10)]
    source = build()
    stream = iter(source)
    head = [next(stream).key for _ in range(4)]
    state = json.loads(json.dumps(source.state_dict()))  # as saved in a checkpoint
    resumed = build()
    resumed.load_state_dict(state)
    tail = [s.key for s in itertools.islice(iter(resumed), 6)]
    assert head + tail == uninterrupted


def test_bad_jsonl_lines_are_skipped_counted_and_reported(tmp_path, caplog):
    path, media = make_jsonl(tmp_path, 3)
    (tmp_path / "outside.mp4").write_bytes(b"x")
    bad = [
        "{not json",  # line 4
        json.dumps({"video": "videos/missing.mp4", "caption": "x"}),  # 5
        json.dumps({"video": "../outside.mp4", "caption": "x"}),  # 6
        json.dumps({"video": "videos/v0.mp4", "caption": "  "}),  # 7
        json.dumps({"caption": "no media"}),  # 8
        json.dumps({"image": "videos/v1.mp4", "questions": ["q1", "q2"], "answers": ["a1"]}),  # 9
    ]
    with open(path, "a") as handle:
        handle.write("\n".join(bad) + "\n")
    source = JsonlSource("c", [path], media, seed=0, infinite=False)
    with caplog.at_level(logging.WARNING):
        assert len(keys(source)) == 3
    assert dict(source.skipped) == {"bad_json_line": 3, "missing_file": 1, "unsafe_path": 1, "empty_text": 1}
    assert "ann.jsonl:4" in caplog.text and "ann.jsonl:9" in caplog.text
    assert source.state_dict()["skipped"]["missing_file"] == 1


def test_bad_tar_members_and_shards_are_skipped_and_counted(tmp_path):
    good = make_shards(tmp_path, 1, 3)[0]
    evil = write_tar(tmp_path / "evil.tar", [
        ("../escape.mp4", b"x"), ("../escape.txt", b"caption"),  # path outside the shard
        ("nocap.mp4", b"x"), ("nocap.txt", b"   "),  # empty caption
        ("textonly.txt", b"just text"),  # no media member
        ("ok.webm", b"x"), ("ok.txt", b"a caption"),
    ])  # fmt: skip
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 40)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:1200])  # cut inside the first sample's data
    source = TarSource("v", [good, evil, garbage, truncated], seed=0, infinite=False)
    got = keys(source)
    assert sorted(k.split(":")[1] for k in got if k.startswith(("shard", "evil"))) == [
        "ok",
        "s0-000",
        "s0-001",
        "s0-002",
    ]
    counts = dict(source.skipped)
    assert counts["unsafe_member_path"] == 2 and counts["empty_text"] == 1 and counts["no_media_member"] == 1
    assert counts["corrupt_shard"] == 1 and counts["truncated_shard"] == 1


def test_a_source_that_yields_nothing_is_an_error_naming_it(tmp_path):
    path, media = make_jsonl(tmp_path, 2)
    path.write_text('{"video": "videos/nope.mp4", "caption": "x"}\n')
    with pytest.raises(DataError, match="source webvid_comp yielded no usable sample"):
        list(JsonlSource("webvid_comp", [path], media, infinite=True))
    with pytest.raises(DataError, match="source cc3m: no file matches"):
        expand_paths(tmp_path, ["nothing/*.tar"], "cc3m")
    with pytest.raises(DataError, match="fewer samples than readers"):
        list(
            JsonlSource(
                "tiny", [make_jsonl(tmp_path / "one", 1)[0]], tmp_path / "one" / "media", consumer=READERS[3]
            )
        )


def test_paths_cannot_escape_their_roots(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="without '..'"):
        expand_paths(tmp_path / "data", ["../secret.jsonl"], "s")
    with pytest.raises(DataError):
        expand_paths(tmp_path / "data", [str(tmp_path / "secret.jsonl")], "s")
    (tmp_path / "data" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="escapes"):
        safe_join(tmp_path / "data", "link/secret.jsonl")


def test_annotation_formats_of_the_reference():
    assert parse_annotation({"video": "a.mp4", "caption": ["one", "two"]}) == (
        "video",
        "a.mp4",
        ["one", "two"],
        [],
    )
    assert parse_annotation({"video": "a.mp4", "question": "<video>\nWhat?", "answer": "That."})[3] == [
        ("What?", "That.")
    ]
    assert parse_annotation({"image": "i.jpg", "data": ["q1", "a1", "q2", "a2"]})[3] == [
        ("q1", "a1"),
        ("q2", "a2"),
    ]
    assert parse_annotation({"image": "i.jpg", "questions": ["<image> q"], "answers": ["a"]})[:2] == (
        "image",
        "i.jpg",
    )
    with pytest.raises(ValueError):
        parse_annotation({"image": "i.jpg", "data": ["q1"]})


def test_tar_samples_may_carry_qa_turns_in_their_json_member(tmp_path):
    qa = {"questions": ["<video>\nWhat moves?", "Where?"], "answers": ["A circle.", "Left."]}
    shard = write_tar(tmp_path / "qa.tar", [("clip.mp4", b"x"), ("clip.json", json.dumps(qa).encode()),
                                            ("bad.mp4", b"x"), ("bad.json", b'{"questions": ["q"], "answers": []}')])  # fmt: skip
    source = TarSource("qa", [shard], infinite=False)
    samples = list(source)
    assert [s.turns for s in samples] == [[("What moves?", "A circle."), ("Where?", "Left.")]]
    assert dict(source.skipped) == {"bad_json_member": 1}
