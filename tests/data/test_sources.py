"""Sources: exact partitioning across readers, exact resume, bad data skipped and counted.

The webdataset tests run over every transport (``open_tar``): local shards by random
access, and the same shards streamed from a loopback HTTP server and through ``pipe:cat``."""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from divot_llm.data.errors import MediaError
from divot_llm.data.sources import (
    Consumer,
    DataError,
    FolderSource,
    JsonlSource,
    expand_paths,
    parse_annotation,
    safe_join,
)
from tests.data.shard_servers import TRANSPORTS, tar_source

pytestmark = pytest.mark.timeout(120)  # the streamed cases read over loopback HTTP and pipes

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


def make_folder(root: Path, n: int) -> Path:
    """The seed's layout: ``gifs/v<i>.gif`` + ``gifs/v<i>.txt`` (the source reads no pixels)."""
    folder = root / "gifs"
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"v{i}.gif").write_bytes(b"x")
        (folder / f"v{i}.txt").write_text(f"caption {i}\n")
    return folder


def keys(source) -> list[str]:
    return [sample.key for sample in source]


@pytest.fixture(params=TRANSPORTS)
def open_tar(request, shard_server):
    """``open_tar(name, shards, **kwargs)``: a reader of local shards over one transport."""
    return functools.partial(tar_source, request.param, shard_server)


@pytest.mark.parametrize("num_shards", [7, 2])  # dealt by shard / dealt by sample
def test_tar_epoch_is_partitioned_exactly_across_readers(tmp_path, num_shards, open_tar):
    shards = make_shards(tmp_path, num_shards, 5)
    sources = [open_tar("v", shards, seed=1, consumer=reader, infinite=False) for reader in READERS]
    seen = [k for source in sources for k in keys(source)]
    assert len(seen) == num_shards * 5 and len(set(seen)) == len(seen)


def test_jsonl_epoch_is_partitioned_exactly_across_readers(tmp_path):
    path, media = make_jsonl(tmp_path, 23)
    seen = [
        k for r in READERS for k in keys(JsonlSource("c", [path], media, seed=1, consumer=r, infinite=False))
    ]
    assert sorted(seen) == sorted(f"ann.jsonl:{i}" for i in range(1, 24))


def test_folder_epoch_is_partitioned_exactly_across_readers(tmp_path):
    folder = make_folder(tmp_path, 23)
    sources = [FolderSource("g", [folder], tmp_path, seed=1, consumer=r, infinite=False) for r in READERS]
    seen = [k for source in sources for k in keys(source)]
    assert sorted(seen) == sorted(f"gifs/v{i}.gif" for i in range(23))


def test_order_is_seeded_shuffled_and_changes_per_epoch(tmp_path, open_tar):
    shards = make_shards(tmp_path, 3, 6)
    first = list(itertools.islice(open_tar("v", shards, seed=3), 36))
    again = list(itertools.islice(open_tar("v", shards, seed=3), 36))
    assert [s.key for s in first] == [s.key for s in again]
    epoch0, epoch1 = [s.key for s in first[:18]], [s.key for s in first[18:]]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    assert epoch0 != sorted(epoch0)  # shuffled inside shards too


@pytest.mark.parametrize("kind", ["tar", "http", "pipe", "jsonl", "folder"])
def test_resume_continues_the_exact_stream(tmp_path, kind, shard_server):
    def build():
        if kind == "folder":
            folder = tmp_path / "gifs" if (tmp_path / "gifs").exists() else make_folder(tmp_path, 9)
            return FolderSource("g", [folder], tmp_path, seed=9, consumer=READERS[1])
        if kind in ("tar", "http", "pipe"):
            shards = make_shards(tmp_path / "s", 3, 4) if not (tmp_path / "s").exists() else sorted(
                (tmp_path / "s").glob("*.tar"))  # fmt: skip
            return tar_source("local" if kind == "tar" else kind, shard_server, "v", shards, seed=9,
                              consumer=READERS[1])  # fmt: skip
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
    assert dict(source.skipped) == {
        "bad_json_line": 1, "bad_fields": 2, "missing_file": 1, "unsafe_path": 1, "empty_text": 1
    }  # fmt: skip
    assert "ann.jsonl:4" in caplog.text and "ann.jsonl:9" in caplog.text
    assert source.state_dict()["skipped"]["missing_file"] == 1


def test_folder_files_are_captioned_by_their_txt_and_the_rest_skipped_and_counted(tmp_path):
    root = tmp_path / "data"
    folder = make_folder(root, 2)
    (folder / "v0.txt").write_text("first caption\n\n  second caption  \n")
    (folder / "deeper" / "still").mkdir(parents=True)
    (folder / "deeper" / "still" / "clip.MP4").write_bytes(b"x")  # nested, upper-case extension
    (folder / "deeper" / "still" / "clip.txt").write_text("nested")
    (folder / "photo.png").write_bytes(b"x")
    (folder / "photo.txt").write_text("an image")
    (folder / "notes.md").write_text("not media: not a record")
    (folder / "uncaptioned.gif").write_bytes(b"x")
    (folder / "blank.gif").write_bytes(b"x")
    (folder / "blank.txt").write_text(" \n\n")
    (folder / "latin1.gif").write_bytes(b"x")
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "secret.gif").write_bytes(b"x")
    (folder / "leak.gif").symlink_to(tmp_path / "secret.gif")  # a file leading out of the root
    (tmp_path / "secret.txt").write_text("secret")
    (folder / "peek.gif").write_bytes(b"x")
    (folder / "peek.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "outside").symlink_to(tmp_path, target_is_directory=True)  # folder symlinks: not entered

    source = FolderSource("g", expand_paths(root, ["gifs"], "g", folders=True), root, infinite=False,
                          task="pretrain_gen")  # fmt: skip
    samples = {sample.key: sample for sample in source}
    assert sorted(samples) == ["gifs/deeper/still/clip.MP4", "gifs/photo.png", "gifs/v0.gif", "gifs/v1.gif"]
    assert samples["gifs/v0.gif"].captions == ["first caption", "second caption"]
    assert samples["gifs/v0.gif"].media == (folder / "v0.gif").resolve()
    assert samples["gifs/deeper/still/clip.MP4"].media_kind == "video"
    assert samples["gifs/photo.png"].media_kind == "image"
    assert dict(source.skipped) == {"missing_caption": 1, "empty_text": 1, "bad_text": 1, "unsafe_path": 2}

    with pytest.raises(DataError, match="no question/answer turns, which task sft_comp trains on"):
        FolderSource("g", [folder], root, task="sft_comp")
    with pytest.raises(DataError, match="source g: no folder matches"):
        expand_paths(root, ["gifs/*.gif"], "g", folders=True)


def test_bad_tar_members_and_shards_are_skipped_and_counted(tmp_path, open_tar):
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
    source = open_tar("v", [good, evil, garbage, truncated], seed=0, infinite=False)
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
    with pytest.raises(DataError, match="source webvid_comp has no usable sample.*missing_file 1"):
        list(JsonlSource("webvid_comp", [path], media, infinite=True))
    with pytest.raises(DataError, match="source cc3m: no file matches"):
        expand_paths(tmp_path, ["nothing/*.tar"], "cc3m")


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


def test_tar_samples_may_carry_qa_turns_in_their_json_member(tmp_path, open_tar):
    qa = {"questions": ["<video>\nWhat moves?", "Where?"], "answers": ["A circle.", "Left."]}
    shard = write_tar(tmp_path / "qa.tar", [("clip.mp4", b"x"), ("clip.json", json.dumps(qa).encode()),
                                            ("bad.mp4", b"x"), ("bad.json", b'{"questions": ["q"], "answers": []}')])  # fmt: skip
    source = open_tar("qa", [shard], infinite=False)
    samples = list(source)
    assert [s.turns for s in samples] == [[("What moves?", "A circle."), ("Where?", "Left.")]]
    assert dict(source.skipped) == {"bad_fields": 1}


# ------------------------------------------------------- one bad record never stops a pass

LONG_NAME = "v" * 300 + ".mp4"  # longer than any file system allows for one name

# (jsonl line as written, the reason it is skipped under), per task kind of the source
BAD_CAPTION_LINES = [
    ('{"video": "videos/v0.mp4", "question": "What?", "answer": "That."}', "wrong_task"),
    ('{"video": "videos/v0.mp4", "questions": ["What?"], "answers": ["That."]}', "wrong_task"),
    ('{"video": "videos/v0.mp4", "caption": {"text": "a dict"}}', "bad_fields"),
    ('{"video": "videos/v0.mp4", "caption": 7}', "bad_fields"),
    ('{"video": "videos/v0.mp4", "caption": null}', "bad_fields"),
    ('{"video": "videos/v0.mp4", "caption": [["nested"], "list"]}', "bad_fields"),
    ('{"video": "videos/v0.mp4", "caption": ["ok", 3]}', "bad_fields"),
    ('{"video": "videos/v0.mp4", "caption": "lone \\ud800 surrogate"}', "bad_text"),
    ('{"video": 12, "caption": "x"}', "bad_fields"),
    ('{"video": ["videos/v0.mp4"], "caption": "x"}', "bad_fields"),
    ('{"video": "videos/v\\u0000.mp4", "caption": "x"}', "bad_path"),  # NUL byte
    ('{"video": "videos/\\udc80.mp4", "caption": "x"}', "bad_path"),  # undecodable name
    (json.dumps({"video": f"videos/{LONG_NAME}", "caption": "x"}), "bad_path"),
    ('{"video": "videos/loop", "caption": "x"}', "bad_path"),  # a symlink to itself
    ('["a", "list"]', "bad_json_line"),
    ('"just a string"', "bad_json_line"),
    ("[" * 100_000 + "]" * 100_000, "bad_json_line"),  # nesting deeper than the parser recurses
    ('{"video": "videos/v0.mp4", "caption": "x"', "bad_json_line"),  # cut mid-line
]
BAD_QA_LINES = [
    ('{"video": "videos/v0.mp4", "caption": "a caption, not a question"}', "wrong_task"),
    ('{"video": "videos/v0.mp4", "questions": "What?", "answers": ["That."]}', "bad_fields"),  # not a list
    ('{"video": "videos/v0.mp4", "questions": ["What?"]}', "bad_fields"),  # no answers
    ('{"video": "videos/v0.mp4", "questions": [1], "answers": ["one"]}', "bad_fields"),
    ('{"video": "videos/v0.mp4", "data": ["q", {"a": 1}]}', "bad_fields"),
    ('{"video": "videos/v0.mp4", "question": "What?", "answer": null}', "bad_fields"),
    ('{"video": "videos/v0.mp4", "question": "What?", "answer": "\\udfff"}', "bad_text"),
]


@pytest.mark.parametrize(
    ("task", "good", "bad"),
    [
        ("pretrain_comp", {"caption": "a caption"}, BAD_CAPTION_LINES),
        ("sft_comp", {"questions": ["<video>\nWhat?"], "answers": ["That."]}, BAD_QA_LINES),
    ],
)
def test_each_mismatched_jsonl_record_is_skipped_under_its_reason(tmp_path, task, good, bad):
    media = tmp_path / "media"
    (media / "videos").mkdir(parents=True)
    (media / "videos" / "loop").symlink_to("loop")
    lines = []
    for i in range(6):
        (media / "videos" / f"v{i}.mp4").write_bytes(b"x")
        lines.append(json.dumps({"video": f"videos/v{i}.mp4", **good}))
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(lines + [line for line, _ in bad]) + "\n")
    source = JsonlSource("s", [path], media, seed=0, infinite=False, task=task, max_skip_fraction=0.5)
    assert sorted(keys(source)) == sorted(f"ann.jsonl:{i}" for i in range(1, 7))  # every good one
    assert source.skipped == Counter(reason for _, reason in bad)  # each bad one, once


def test_each_mismatched_tar_sample_is_skipped_under_its_reason(tmp_path, open_tar):
    qa = json.dumps({"questions": ["What?"], "answers": ["That."]}).encode()
    non_utf8_name = "caf\udce9"  # a member name whose bytes are not UTF-8: still a good sample
    shard = write_tar(tmp_path / "mixed.tar", [
        ("good.mp4", b"x"), ("good.txt", b"a caption"), ("good.json", b'{"meta": 1}'),
        (f"{non_utf8_name}.mp4", b"x"), (f"{non_utf8_name}.txt", b"a caption"),
        ("jsoncap.mp4", b"x"), ("jsoncap.json", b'{"caption": ["from json"]}'),
        ("qaonly.mp4", b"x"), ("qaonly.json", qa),  # QA member in a caption source
        ("dictcap.mp4", b"x"), ("dictcap.json", b'{"caption": {"nested": "dict"}}'),
        ("garbage.mp4", b"x"), ("garbage.json", b"{not json"),
        ("latin1.mp4", b"x"), ("latin1.txt", "café".encode("latin-1")),
        ("surrogate.mp4", b"x"), ("surrogate.json", b'{"caption": "\\ud800"}'),
    ])  # fmt: skip
    source = open_tar("captions", [shard], infinite=False, task="pretrain_gen")
    assert sorted(s.key for s in source) == ["mixed.tar:caf\\udce9", "mixed.tar:good", "mixed.tar:jsoncap"]
    assert source.skipped == Counter(
        wrong_task=1, bad_fields=1, bad_json_member=1, bad_text=2
    )  # fmt: skip
    qa_shard = write_tar(tmp_path / "qa.tar", [
        ("qa.mp4", b"x"), ("qa.txt", b"ignored caption"), ("qa.json", qa),
        ("caponly.mp4", b"x"), ("caponly.txt", b"a caption, no QA"),  # caption in a QA source
    ])  # fmt: skip
    source = open_tar("qa", [qa_shard], infinite=False, task="sft_comp")
    assert [(s.key, s.turns) for s in source] == [("qa.tar:qa", [("What?", "That.")])]
    assert source.skipped == Counter(wrong_task=1)


def test_an_unforeseen_error_skips_only_its_record(tmp_path, caplog):
    """The last-resort guard: whatever a conversion raises is counted under its type."""
    path, media = make_jsonl(tmp_path, 5)
    source = JsonlSource("c", [path], media, infinite=False)

    def convert(raw):
        if raw.key == "ann.jsonl:3":
            return {}["missing"]  # a bug in the conversion of one record
        return raw.key

    with caplog.at_level(logging.WARNING):
        assert sorted(source.iterate(convert)) == ["ann.jsonl:1", "ann.jsonl:2", "ann.jsonl:4", "ann.jsonl:5"]
    assert source.skipped == Counter(unexpected_KeyError=1)
    assert "Traceback" in caplog.text and "ann.jsonl:3" in caplog.text  # the bug is visible


def tar_of_samples(path: Path, count: int) -> tuple[Path, list[tarfile.TarInfo]]:
    """A shard of ``count`` samples (a 2000-byte .mp4 and a .txt each) and its members."""
    members = []
    for i in range(count):
        members += [(f"k{i}.mp4", bytes([i]) * 2000), (f"k{i}.txt", f"caption {i}".encode())]
    write_tar(path, members)
    with tarfile.open(path) as tar:
        return path, tar.getmembers()


@pytest.mark.parametrize(
    "cut",
    ["inside_media", "inside_text_header", "before_text_member", "between_samples", "no_end_marker"],
)
def test_a_truncated_shard_keeps_every_complete_sample(tmp_path, cut, open_tar):
    shard, members = tar_of_samples(tmp_path / "whole.tar", 6)
    media3, text3, media4 = members[6], members[7], members[8]  # k3.mp4, k3.txt, k4.mp4
    size = {
        "inside_media": media3.offset_data + 1000,  # k3 lost
        "inside_text_header": text3.offset + 300,  # k3 lost: its caption's header is cut
        "before_text_member": text3.offset,  # k3 lost: it has no caption
        "between_samples": media4.offset,  # k0..k3 complete
        "no_end_marker": members[-1].offset_data + 512,  # every sample complete
    }[cut]
    complete = {"inside_media": 3, "inside_text_header": 3, "before_text_member": 3, "between_samples": 4,
                "no_end_marker": 6}[cut]  # fmt: skip
    cut_shard = tmp_path / "cut.tar"
    cut_shard.write_bytes(shard.read_bytes()[:size])
    good = make_shards(tmp_path / "good", 1, 2)
    readers = [Consumer(0, 1)] + [Consumer(i, 3) for i in range(3)]  # one reader; three (sample dealing)
    for reader in readers[:1], readers[1:]:
        sources = [open_tar("v", [cut_shard, *good], seed=2, consumer=r, infinite=False) for r in reader]
        got = sorted(k for source in sources for k in keys(source))
        assert got == sorted([f"cut.tar:k{i}" for i in range(complete)] + ["shard-00000.tar:s0-000",
                                                                             "shard-00000.tar:s0-001"])  # fmt: skip
        assert sum((s.skipped for s in sources), Counter()) == Counter(
            truncated_shard=1
        )  # once, by one reader


# --------------------------------------------------------- systemic: stop, naming the source


def test_only_a_skip_rate_above_the_threshold_stops_a_source(tmp_path, caplog):
    path, media = make_jsonl(tmp_path, 60)
    with open(path, "a") as handle:
        handle.writelines('{"video": "videos/gone.mp4", "caption": "x"}\n' for _ in range(90))  # 60% bad

    def read_all(max_skip_fraction):
        return keys(JsonlSource("webvid", [path], media, infinite=False, max_skip_fraction=max_skip_fraction))

    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as stopped:
        read_all(0.5)
    message = str(stopped.value)
    assert "source webvid" in message and "max_skip_fraction=0.5" in message and "missing_file" in message
    assert len(read_all(0.7)) == 60  # a threshold above the rate: every good sample
    # Records the size filters drop are not bad data: 150 records, 60% too small, read through.
    sized, sized_media = make_jsonl(tmp_path / "sized", 150)

    def size_filter(raw):
        if int(raw.key.split(":")[1]) % 5 < 3:
            raise MediaError("too_small", "below min_resolution")
        return raw

    source = JsonlSource("sized", [sized], sized_media, infinite=False, max_skip_fraction=0.5)
    assert len(list(source.iterate(size_filter))) == 60 and source.skipped == Counter(too_small=90)
    # Fewer records than the check needs: a source 95% bad is read to the end.
    small, small_media = make_jsonl(tmp_path / "small", 1)
    with open(small, "a") as handle:
        handle.writelines("{broken\n" for _ in range(19))
    source = JsonlSource("small", [small], small_media, infinite=False, max_skip_fraction=0.5)
    assert keys(source) == ["ann.jsonl:1"] and source.skipped == Counter(bad_json_line=19)


def test_a_reader_without_samples_borrows_them(tmp_path):
    """Fewer samples than readers, or a reader dealt only a corrupt shard: on an infinite
    stream it reads from the whole source instead of failing; what it skips there is not
    counted twice; a finite (validation) reader simply ends."""
    one, media = make_jsonl(tmp_path / "one", 1)
    for reader in READERS:
        got = list(itertools.islice(JsonlSource("tiny", [one], media, consumer=reader), 3))
        assert [s.key for s in got] == ["ann.jsonl:1"] * 3
    assert keys(JsonlSource("tiny", [one], media, consumer=READERS[3], infinite=False)) == []


def test_a_tar_reader_dealt_only_a_corrupt_shard_borrows(tmp_path, open_tar):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar" * 200)
    good = make_shards(tmp_path / "good", 1, 3)[0]
    two = [Consumer(0, 2), Consumer(1, 2)]  # two shards for two readers: one gets the garbage each epoch
    sources = [open_tar("v", [garbage, good], seed=5, consumer=r) for r in two]
    for source in sources:  # epochs 0-3, and the first sample of epoch 4
        assert next(s for s in source if source.epoch == 4)
    # each epoch one reader is dealt the garbage and counts it; borrowing counts nothing
    assert sum((s.skipped for s in sources), Counter()) == Counter(corrupt_shard=5)

    # resuming in the middle of a borrowing epoch continues the exact stream
    def build():
        return open_tar("v", [garbage, good], seed=5, consumer=two[0])

    uninterrupted = [s.key for s in itertools.islice(iter(build()), 10)]
    first = build()
    stream = iter(first)
    head = [next(stream).key for _ in range(5)]
    resumed = build()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + [s.key for s in itertools.islice(iter(resumed), 5)] == uninterrupted
