"""The recipes' building blocks: path/key safety, annotation readers with line numbers,
and size-balanced shard planning checked against real tar files."""

from __future__ import annotations

import tarfile
from pathlib import PurePosixPath

import numpy as np
import pytest

from data_recipes.__main__ import main
from data_recipes.inputs import SkipLog, read_json_records, read_table, safe_relative_path, webdataset_key
from data_recipes.shards import Sample, plan_shards, tar_file_bytes, write_shards


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a/b.mp4", "a/b.mp4"),
        ("./a/./b.mp4", "a/b.mp4"),
        ("videos/x y.mp4", "videos/x y.mp4"),
        ("", None),
        ("..", None),
        ("../x.mp4", None),
        ("a/../../x.mp4", None),
        ("a/..", None),
        ("/etc/passwd", None),
        ("//host/share/x", None),
        ("C:\\x.mp4", None),
        ("C:x.mp4", None),
        ("a\\..\\b.mp4", None),
        (".", None),
    ],
)
def test_safe_relative_path_keeps_paths_under_their_root(text, expected):
    result = safe_relative_path(text)
    assert result == (PurePosixPath(expected) if expected else None)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1066779796", "1066779796"),
        ("v_abc-DEF_1", "v_abc-DEF_1"),
        ("a.b.c", "a_b_c"),  # a dot would split the sample into key "a" + extension "b.c"
        ("coco/train2017/000001", "coco_train2017_000001"),
        ("x y\t#é", "x_y___"),
        ("", None),
        ("   ", None),
        ("../etc", None),
        ("a/../b", None),
        ("/abs", None),
        ("\\abs", None),
        ("C:x", None),
    ],
)
def test_webdataset_key_is_a_single_safe_member_prefix(raw, expected):
    assert webdataset_key(raw) == expected


def test_long_keys_are_shortened_without_colliding():
    a, b = "x" * 100 + "a", "x" * 100 + "b"
    key_a, key_b = webdataset_key(a), webdataset_key(b)
    assert len(key_a) <= 64 and len(key_b) <= 64 and key_a != key_b


def test_json_list_records_carry_their_line_and_a_syntax_error_is_counted(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text('[\n  {"id": 1},\n  {"id": 2,\n   "x": [1,\n 2]},\n  {"id": 3}\n  {"id": 4}\n]\n')
    skips = SkipLog()
    records = list(read_json_records(path, skips))
    assert records == [
        (f"{path}:2", {"id": 1}),
        (f"{path}:3", {"id": 2, "x": [1, 2]}),
        (f"{path}:6", {"id": 3}),
    ]
    # the missing comma before {"id": 4} ends the file: counted once, with its line
    assert skips.counts == {"bad_json": 1}
    assert skips.lines[0].startswith(f"skip {path}:7 (bad_json)")


def test_json_lines_skip_a_bad_line_and_read_on(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2\n{"id": 3}\n')
    skips = SkipLog()
    assert list(read_json_records(path, skips)) == [(f"{path}:1", {"id": 1}), (f"{path}:4", {"id": 3})]
    assert skips.counts == {"bad_json": 1} and f"{path}:3 (bad_json)" in skips.lines[0]


def test_table_rows_carry_their_line_and_bad_rows_are_counted(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"caption\tpath\na cat\tcat.jpg\nno path\n\xff\xfe bad\tx.jpg\na dog\tdog.jpg\n")
    skips = SkipLog()
    rows = list(read_table(path, skips))
    assert rows == [
        (f"{path}:2", {"caption": "a cat", "path": "cat.jpg"}),
        (f"{path}:5", {"caption": "a dog", "path": "dog.jpg"}),
    ]
    assert skips.counts == {"bad_row": 1, "bad_encoding": 1}
    assert any(f"{path}:3 (bad_row)" in line for line in skips.lines)
    assert any(f"{path}:4 (bad_encoding)" in line for line in skips.lines)


def _shard_sizes(sizes: list[int], plan: list[range]) -> list[int]:
    return [tar_file_bytes(sum(sizes[i] for i in shard)) for shard in plan]


def test_plan_uses_the_fewest_shards_within_the_limits_and_balances_bytes():
    sizes = [int(s) for s in np.random.default_rng(0).integers(1, 40, 200) * 1024]
    max_bytes = 1_000_000
    plan = plan_shards(sizes, max_bytes, max_count=1000)
    assert [i for shard in plan for i in shard] == list(range(len(sizes)))  # in order, each once
    shard_bytes = _shard_sizes(sizes, plan)
    assert max(shard_bytes) <= max_bytes
    assert len(plan) == -(-tar_file_bytes(sum(sizes)) // max_bytes)  # no extra shard
    # balanced: a greedy fill would leave a small last shard; here shards differ by at
    # most a couple of samples (plus tar record padding)
    assert max(shard_bytes) - min(shard_bytes) <= 2 * max(sizes) + 10240


def test_plan_respects_the_sample_count_and_isolates_oversized_samples():
    plan = plan_shards([10_000] * 10, max_bytes=10**9, max_count=4)
    assert sorted(len(s) for s in plan) == [3, 3, 4]
    plan = plan_shards([10_000, 5_000_000, 10_000, 10_000], max_bytes=1_000_000, max_count=100)
    assert [list(s) for s in plan] == [[0], [1], [2, 3]]
    assert plan_shards([], 1000, 10) == []


def test_written_tar_sizes_match_the_plan(tmp_path):
    rng = np.random.default_rng(1)
    samples = [
        Sample(f"k{i}", {"bin": rng.bytes(int(rng.integers(1, 30_000))), "txt": b"caption"})
        for i in range(30)
    ]
    sizes = [s.tar_bytes() for s in samples]
    plan = plan_shards(sizes, max_bytes=200_000, max_count=100)
    written = write_shards(tmp_path, samples, plan, progress=lambda n: None)
    assert [w["bytes"] for w in written] == _shard_sizes(sizes, plan)
    assert all(w["bytes"] <= 200_000 for w in written)
    with tarfile.open(tmp_path / "shard-00000.tar") as tar:
        assert tar.getnames()[:2] == ["k0.bin", "k0.txt"]


@pytest.mark.parametrize(
    "argv, missing",
    [
        (["webvid", "--videos", "{tmp}", "--csv", "{tmp}/none.csv"], "{tmp}/none.csv is not a file"),
        (["webvid", "--videos", "{tmp}/none", "--csv", "{tmp}/a.csv"], "{tmp}/none is not a folder"),
        (
            ["videollava", "--json", "{tmp}/none.json", "--media-root", "{tmp}"],
            "{tmp}/none.json is not a file",
        ),
        (["cc3m", "--images", "{tmp}/none"], "{tmp}/none is not a folder"),
    ],
)
def test_recipes_name_a_missing_input_and_write_nothing(tmp_path, capsys, argv, missing):
    (tmp_path / "a.csv").write_text("videoid,name\n")
    args = [a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert missing.format(tmp=tmp_path) in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
