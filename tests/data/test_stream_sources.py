"""Streamed shards (divot_llm/data/shard_stream.py) over real transports: exact resume that
opens no finished shard, transport faults retried or skipped and counted (nothing hangs,
no command outlives its read), shard lists and start-up errors naming the key, and the
training loader reading an HTTP source end to end. The coverage, skip-count and resume
tests shared with local shards run over every transport in test_sources.py."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import logging
import os
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import SourceKind, StreamConfig
from divot_llm.data.loader import build_loader, check_sources_usable, loader_spec
from divot_llm.data.shard_stream import (
    SHARD_READ_ERROR,
    StreamTarSource,
    _read_shard_list,
    list_shards,
    refuse_streams,
)
from divot_llm.data.shard_transport import command_argv, expand_braces, fill_command
from divot_llm.data.sources import Consumer, DataError
from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset
from divot_llm.text import DivotTextTokenizer
from tests.data.shard_servers import Fault, pipe_cat
from tests.data.test_sources import READERS, make_shards, tar_of_samples, write_tar

pytestmark = pytest.mark.timeout(60)

# fault tests: no real waiting between retries, a short stall limit
FAULTY = StreamConfig(timeout=0.4, retries=2, retry_backoff=0.001)


def keys_of(source, n: int | None = None) -> list[str]:
    return [sample.key for sample in itertools.islice(iter(source), n)]


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize(("num_shards", "readers"), [(4, 2), (2, 3)])  # dealt by shard / by sample
def test_resume_anywhere_is_exact_and_opens_no_finished_shard(tmp_path, shard_server, num_shards, readers):
    """A small shuffle buffer (replayed on resume) and an epoch boundary inside the run."""
    shards = make_shards(tmp_path, num_shards, 5)
    urls = [shard_server.url(shard) for shard in shards]
    stream = StreamConfig(shuffle_buffer=3, timeout=20.0)
    reader = Consumer(readers - 1, readers)

    def build(infinite=True):
        return StreamTarSource("v", urls, stream, seed=4, consumer=reader, infinite=infinite)

    per_epoch = len(keys_of(build(infinite=False)))
    uninterrupted = keys_of(build(), 2 * per_epoch + 3)
    first_shard = shard_server.url_path(tmp_path / uninterrupted[0].split(":")[0])
    finished_at = []  # cuts at which the cursor says the reader's first shard is finished
    for cut in range(1, len(uninterrupted)):
        first = build()
        samples = iter(first)
        head = [next(samples).key for _ in range(cut)]
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint holds it
        samples.close()
        before = shard_server.requests[first_shard]
        resumed = build()
        resumed.load_state_dict(state)
        rest = iter(resumed)
        epoch_rest = [sample.key for sample in itertools.islice(rest, max(0, per_epoch - cut))]
        cursor = state["shard_cursor"]
        if cursor["epoch"] == 0 and not cursor["borrowing"] and cursor["shards_done"] >= 1:
            finished_at.append(cut)
            assert shard_server.requests[first_shard] == before, cut  # finished: not opened again
        tail = [sample.key for sample in itertools.islice(rest, len(uninterrupted) - cut - len(epoch_rest))]
        assert head + epoch_rest + tail == uninterrupted, cut
    assert finished_at  # the check above ran
    if num_shards > readers:  # right after the last sample of its first shard (5 samples, the
        assert finished_at[0] == 5  # last from the buffer, the shard read to its end) it is finished


@pytest.mark.parametrize("entries", [6, 3])  # dealt by shard / by sample (2 ranks x 2 workers)
def test_a_source_mixing_local_and_streamed_shards_covers_its_epoch_and_resumes_exactly(
    tmp_path, shard_server, entries
):
    shards = make_shards(tmp_path / "mixed", 6, 3)
    (tmp_path / "list.txt").write_text("mixed/shard-00005.tar\n")
    http = shard_server.url(shards[2]).replace("00002", "{00002..00003}")
    paths = ["mixed/shard-0000[01].tar", http, pipe_cat(shards[4])]  # local, http, pipe; then a listed local
    listed = list_shards(tmp_path, "data.sources.m", paths, "list.txt", {})
    mixed = [listed[0], listed[2], listed[4]] if entries == 3 else listed
    assert {isinstance(shard, Path) for shard in mixed} == {True, False}  # local Paths and streamed entries
    stream = StreamConfig(shuffle_buffer=2, timeout=20.0)

    def build(reader, infinite=True):
        return StreamTarSource("m", mixed, stream, seed=5, consumer=reader, infinite=infinite)

    seen = [key for reader in READERS for key in keys_of(build(reader, infinite=False))]
    names = [
        shard.name if isinstance(shard, Path) else shard.rsplit("/", 1)[-1].split()[-1] for shard in mixed
    ]
    expected = [f"{name}:s{name[-5]}-{i:03d}" for name in names for i in range(3)]
    assert sorted(seen) == sorted(expected)  # each sample once over the readers
    reader = READERS[1]
    uninterrupted = keys_of(build(reader), len(expected))  # more than its share of an epoch
    for cut in range(1, len(uninterrupted)):
        first = build(reader)
        samples = iter(first)
        head = [next(samples).key for _ in range(cut)]
        state = json.loads(json.dumps(first.state_dict()))
        samples.close()
        resumed = build(reader)
        resumed.load_state_dict(state)
        assert head + keys_of(resumed, len(uninterrupted) - cut) == uninterrupted, cut


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("kind", ["reset", "short"])
def test_a_broken_http_body_is_read_again_and_the_order_is_unchanged(tmp_path, shard_server, kind):
    shards = make_shards(tmp_path, 3, 6)
    urls = [shard_server.url(shard) for shard in shards]
    expected = keys_of(StreamTarSource("v", urls, FAULTY, seed=2, infinite=False))
    victim = shard_server.inject(shards[1], Fault(kind, after=shards[1].stat().st_size // 2, times=2))
    before = shard_server.requests[victim]
    source = StreamTarSource("v", urls, FAULTY, seed=2, infinite=False)
    assert keys_of(source) == expected  # recovered: the same samples in the same order
    assert source.skipped == Counter() and shard_server.requests[victim] - before == 3


def test_a_shard_that_keeps_failing_is_skipped_once_and_the_rest_is_read(tmp_path, shard_server, caplog):
    shards = make_shards(tmp_path, 3, 6)
    urls = [shard_server.url(shard) for shard in shards]
    victim = shard_server.inject(shards[0], Fault("reset", after=1500))
    before = shard_server.requests[victim]
    source = StreamTarSource("v", urls, FAULTY, seed=2, infinite=False)
    with caplog.at_level(logging.WARNING):
        got = keys_of(source)
    others = [k for k in got if not k.startswith("shard-00000.tar:")]
    assert sorted(others) == sorted(f"shard-{s:05d}.tar:s{s}-{i:03d}" for s in (1, 2) for i in range(6))
    assert len(got) == len(set(got))  # what was read of the failing shard, at most once
    assert source.skipped == Counter(shard_read_error=1)
    assert shard_server.requests[victim] - before == 1 + FAULTY.retries
    assert urls[0] in caplog.text and "retry 2 of 2" in caplog.text  # the shard and the error, logged


def test_a_missing_http_shard_is_counted_without_retries(tmp_path, shard_server, caplog):
    good = make_shards(tmp_path, 1, 2)
    missing = shard_server.url(tmp_path / "gone.tar")
    source = StreamTarSource("v", [missing, shard_server.url(good[0])], FAULTY, seed=1, infinite=False)
    with caplog.at_level(logging.WARNING):
        assert sorted(keys_of(source)) == ["shard-00000.tar:s0-000", "shard-00000.tar:s0-001"]
    assert source.skipped == Counter(shard_read_error=1)
    assert shard_server.requests[shard_server.url_path(tmp_path / "gone.tar")] == 1  # a 404 is final
    assert "HTTP 404" in caplog.text and "retry" not in caplog.text


def test_http_5xx_and_429_are_retried_other_4xx_are_final(tmp_path, shard_server):
    shards = make_shards(tmp_path, 1, 3)
    url = shard_server.url(shards[0])
    expected = keys_of(StreamTarSource("v", [url], FAULTY, seed=1, infinite=False))
    for status, final in [(500, False), (503, False), (429, False), (403, True), (404, True)]:
        victim = shard_server.inject(shards[0], Fault("status", status=status, times=FAULTY.retries))
        before = shard_server.requests[victim]
        source = StreamTarSource("v", [url], FAULTY, seed=1, infinite=False)
        if final:  # one attempt, then the shard is skipped and counted
            assert keys_of(source) == [] and source.skipped == Counter(shard_read_error=1), status
            assert shard_server.requests[victim] - before == 1, status
        else:  # the last retry gets the shard
            assert keys_of(source) == expected and source.skipped == Counter(), status
            assert shard_server.requests[victim] - before == 1 + FAULTY.retries, status


def test_http_user_info_is_sent_as_basic_auth_to_that_host_only(tmp_path, shard_server, caplog):
    shard = make_shards(tmp_path, 1, 2)[0]
    url = shard_server.url(shard)
    path = shard_server.url_path(shard)
    shard_server.protected[path] = "Basic " + base64.b64encode(b"u@x:p:w").decode()
    moved = shard_server.url_path(tmp_path / "moved.tar")
    shard_server.redirects[moved] = path  # a redirect gets no credentials
    with_user = url.replace("://", "://u%40x:p%3Aw@")
    try:
        source = StreamTarSource("v", [with_user], FAULTY, seed=1, infinite=False)
        assert sorted(keys_of(source)) == ["shard-00000.tar:s0-000", "shard-00000.tar:s0-001"]
        for unauthorised in (url, with_user.replace(path, moved)):
            before = shard_server.requests[path]
            source = StreamTarSource("v", [unauthorised], FAULTY, seed=1, infinite=False)
            with caplog.at_level(logging.WARNING):
                assert keys_of(source) == [] and source.skipped == Counter(shard_read_error=1)
            assert shard_server.requests[path] - before == 1  # a 401 is final
    finally:
        del shard_server.protected[path], shard_server.redirects[moved]
    assert "HTTP 401" in caplog.text and "p%3Aw" not in caplog.text and "u%40x" not in caplog.text


def test_a_reply_that_is_not_http_is_retried_then_skipped(tmp_path, shard_server):
    shards = make_shards(tmp_path, 2, 2)
    urls = [shard_server.url(shard) for shard in shards]
    victim = shard_server.inject(shards[0], Fault("garbage", after=0))
    before = shard_server.requests[victim]
    source = StreamTarSource("v", urls, FAULTY, seed=1, infinite=False)
    assert sorted(keys_of(source)) == ["shard-00001.tar:s1-000", "shard-00001.tar:s1-001"]
    assert source.skipped == Counter(shard_read_error=1)
    assert shard_server.requests[victim] - before == 1 + FAULTY.retries  # BadStatusLine: retried


def test_a_resumed_reader_counts_a_read_error_met_while_passing_over(tmp_path, shard_server):
    shard = make_shards(tmp_path, 1, 8)[0]
    first = StreamTarSource("v", [shard_server.url(shard)], FAULTY, seed=1, infinite=False)
    samples = iter(first)
    head = [next(samples).key for _ in range(6)]
    state = json.loads(json.dumps(first.state_dict()))
    samples.close()
    assert state["shard_cursor"]["in_shard"] == 6 and len(set(head)) == 6
    shard_server.inject(shard, Fault("reset", after=0))  # every read fails before the 6 passed
    resumed = StreamTarSource("v", [shard_server.url(shard)], FAULTY, seed=1, infinite=False)
    resumed.load_state_dict(state)
    assert keys_of(resumed) == [] and resumed.skipped == Counter(shard_read_error=1)
    again = StreamTarSource("v", [shard_server.url(shard)], FAULTY, seed=1, infinite=False)
    again.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    assert keys_of(again) == [] and again.skipped == Counter(shard_read_error=1)  # counted once: finished


def test_a_shard_read_by_every_reader_has_its_problems_counted_once(tmp_path, shard_server):
    """One shard, three readers, one reader's reads failing after the unsafe member."""
    samples = [(f"k{i}.{ext}", bytes([i]) * 2000) for i in range(6) for ext in ("mp4", "txt")]
    shard = write_tar(tmp_path / "one.tar", [("../escape.txt", b"x"), *samples])
    url = shard_server.url(shard)
    total: Counter[str] = Counter()
    for index in range(3):
        if index == 1:  # the failing reader reads the unsafe member (in the first tar record), then breaks
            shard_server.inject(
                shard, Fault("short", after=tarfile.RECORDSIZE + 100, times=1 + FAULTY.retries)
            )
        source = StreamTarSource("v", [url], FAULTY, seed=1, consumer=Consumer(index, 3), infinite=False)
        keys_of(source)
        assert (source.skipped[SHARD_READ_ERROR] == 1) == (index == 1), index
        total += source.skipped
    assert total == Counter(unsafe_member_path=1, shard_read_error=1)


def committed_before(members: list[tarfile.TarInfo], size: int) -> int:
    """Samples of a 2-member-per-sample shard a reader has complete when its stream stops
    after ``size`` bytes: those whose next sample's header was read."""
    firsts = members[::2]
    return sum(1 for nxt in firsts[1:] if nxt.offset + tarfile.BLOCKSIZE <= size)


def test_a_failing_pipe_command_is_run_again_then_skipped_and_counted(tmp_path):
    shard, members = tar_of_samples(tmp_path / "bad.tar", 6)
    good = make_shards(tmp_path / "good", 2, 3)
    failing = f"pipe:head -c 9000 {shard}; exit 3"  # part of the tar, then a failure
    source = StreamTarSource("v", [failing, *map(pipe_cat, good)], FAULTY, seed=1, infinite=False)
    got = keys_of(source)
    read = committed_before(members, 9000)
    assert read == 2  # the test reads some of the failing shard
    assert sorted(got) == sorted([f"bad.tar:k{i}" for i in range(read)] +
                                 [f"shard-{s:05d}.tar:s{s}-{i:03d}" for s in range(2) for i in range(3)])  # fmt: skip
    assert source.skipped == Counter(shard_read_error=1)


def process_gone(pid: int) -> bool:
    """Not running and not a zombie: killed and reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_stalled_transport_times_out_is_retried_then_skipped(tmp_path, shard_server):
    shard, _ = tar_of_samples(tmp_path / "stall.tar", 6)
    good = make_shards(tmp_path / "good", 1, 3)
    pids = tmp_path / "pids"
    stalled_pipe = f"pipe:echo $$ >> {pids}; head -c 9000 {shard}; exec sleep 30"
    stalled_http = shard_server.url(shard)
    shard_server.inject(shard, Fault("stall", after=9000))
    expected_good = sorted(f"shard-00000.tar:s0-{i:03d}" for i in range(3))
    for stalled in (stalled_pipe, stalled_http):
        started = time.monotonic()
        source = StreamTarSource("v", [stalled, pipe_cat(good[0])], FAULTY, seed=1, infinite=False)
        got = keys_of(source)
        assert sorted(k for k in got if k.startswith("shard")) == expected_good
        assert source.skipped == Counter(shard_read_error=1)
        assert time.monotonic() - started < 10 * FAULTY.timeout  # three timed-out reads, no hang
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 1 + FAULTY.retries and all(map(process_gone, started))


def test_closing_a_reader_kills_and_reaps_its_pipe_command(tmp_path):
    shard, _ = tar_of_samples(tmp_path / "slow.tar", 6)
    pid_file = tmp_path / "pid"
    entry = f"pipe:echo $$ > {pid_file}; cat {shard}; exec sleep 30"
    source = StreamTarSource("v", [entry], StreamConfig(shuffle_buffer=1, timeout=20.0), infinite=False)
    samples = iter(source)
    assert next(samples).key == "slow.tar:k0"  # a buffer of one: tar order
    pid = int(pid_file.read_text())
    assert not process_gone(pid)
    samples.close()
    assert process_gone(pid)


# ------------------------------------------------------------- shard lists, start-up


def test_brace_patterns_expand_as_in_webdataset():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/{8..10}") == ["a/8", "a/9", "a/10", "b/8", "b/9", "b/10"]
    assert expand_braces("pipe:cat ${HOME}/{x}.tar") == ["pipe:cat ${HOME}/{x}.tar"]  # nothing to expand


def test_a_command_template_reads_shards_and_gets_the_url_as_data(tmp_path):
    """An s3:// list read through a data.stream.commands template (a shell script given
    the URL as an argument, mapping it onto a local folder); a URL holding shell syntax
    reaches the command as data and runs nothing."""
    make_shards(tmp_path / "bucket", 3, 2)
    (tmp_path / "list.txt").write_text(
        "s3://bucket/shard-{00000..00002}.tar\ns3://bucket/x;touch${IFS}pwned\n"
    )
    template = f"""sh -c 'exec cat "$0/${{1#s3://}}"' {tmp_path} {{url}}"""
    stream = dataclasses.replace(FAULTY, commands={"s3": template})
    shards = list_shards(tmp_path, "data.sources.w", [], "list.txt", stream.commands)
    assert shards[-1] == "s3://bucket/x;touch${IFS}pwned"
    source = StreamTarSource("w", shards, stream, seed=1, infinite=False)
    assert sorted(keys_of(source)) == sorted(
        f"shard-{s:05d}.tar:s{s}-{i:03d}" for s in range(3) for i in range(2)
    )
    assert source.skipped == Counter(shard_read_error=1)  # cat found no such file
    assert not list(tmp_path.glob("pwned*")) and not list(Path.cwd().glob("pwned*"))


def test_fill_command_puts_the_value_in_one_argument_and_names_a_missing_placeholder():
    assert fill_command("cp -r {dir} 'a b'", "{dir}", "x y;z") == ["cp", "-r", "x y;z", "a b"]
    assert fill_command("cp {dir}/ c", "{dir}", "$(d)") == ["cp", "$(d)/", "c"]
    assert command_argv("aws s3 cp {url} -", "s3://b/k 1.tar") == ["aws", "s3", "cp", "s3://b/k 1.tar", "-"]
    with pytest.raises(ValueError, match=r"'cp a b' does not name the folder: put \{dir\} where it goes$"):
        fill_command("cp a b", "{dir}", "x", what="the folder")
    with pytest.raises(ValueError, match=r"put \{url\} where it goes, as a word of its own"):
        command_argv("aws s3 cp s3:{url} -", "x")  # inside a word: refused for URLs from data


def test_a_shard_list_is_read_once_per_process_while_unchanged(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("https://h/a-{0..1}.tar\n")
    reads = _read_shard_list.cache_info().misses
    for _ in range(3):  # loader_spec, the start-up check, a worker
        assert list_shards(tmp_path, "data.sources.w", [], "list.txt", {}) == [
            "https://h/a-0.tar",
            "https://h/a-1.tar",
        ]
    assert _read_shard_list.cache_info().misses - reads == 1
    listing.write_text("https://h/b.tar\n")  # changed: read again
    assert list_shards(tmp_path, "data.sources.w", [], "list.txt", {}) == ["https://h/b.tar"]


def test_a_streamed_shard_keeps_no_member_headers(tmp_path, monkeypatch):
    shard = make_shards(tmp_path, 1, 1500)[0]  # 3000 members
    kept = []
    real_next = tarfile.TarFile.next

    def next_member(tar):
        kept.append(len(tar.members))  # headers tarfile holds as it reads the next
        return real_next(tar)

    monkeypatch.setattr(tarfile.TarFile, "next", next_member)
    source = StreamTarSource("v", [shard], StreamConfig(shuffle_buffer=1, timeout=20.0), infinite=False)
    assert len(keys_of(source)) == 1500 and len(kept) > 3000
    assert max(kept) <= 1


def test_a_shard_list_names_shards_in_order(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "local.tar").write_bytes(b"")
    (tmp_path / "lists" / "shards.txt").write_text(
        "# WebVid, part 1\n\nhttps://bucket.example/w-{0..1}.tar\n  s3://bucket/w-2.tar  \nlocal.tar\n"
    )
    shards = list_shards(
        tmp_path, "data.sources.w", ["pipe:cat a.tar"], "lists/shards.txt", {"s3": "aws s3 cp {url} -"}
    )
    assert shards == ["pipe:cat a.tar", "https://bucket.example/w-0.tar", "https://bucket.example/w-1.tar",
                      "s3://bucket/w-2.tar", (tmp_path / "local.tar").resolve()]  # fmt: skip


@pytest.fixture(scope="module")
def stream_root(tmp_path_factory):
    """A synthetic set with 4 image shards (2 samples each) and a shard list of them."""
    root = tmp_path_factory.mktemp("stream") / "synthetic"
    write_synthetic_dataset(root, seed=3, counts=SyntheticCounts(train_videos=2, val_videos=1, images=8,
                                                                 samples_per_shard=2))  # fmt: skip
    return root


def test_start_up_refuses_what_cannot_be_read_naming_the_key(stream_root):
    cfg = compose_config([f"data.root={stream_root}"])
    data = cfg.data
    vt = cfg.video_tokenizer

    def check(match: str, source: str = "image_comp", commands: dict | None = None, **changes):
        sources = {**data.sources, source: dataclasses.replace(data.sources[source], **changes)}
        stream = dataclasses.replace(
            data.stream, commands=commands if commands is not None else data.stream.commands
        )
        with pytest.raises(DataError, match=match):
            loader_spec(dataclasses.replace(data, sources=sources, stream=stream), vt.num_tokens,
                        vt.frames_per_clip, vt.input_size)  # fmt: skip

    check(
        r"data\.sources\.image_comp\.shard_list: cannot read the shard list 'nope\.txt'",
        shard_list="nope.txt",
    )
    check(
        r"data\.sources\.video_comp\.shard_list: only a webdataset source", "video_comp", shard_list="x.txt"
    )
    check(r"data\.sources\.video_comp\.paths\[0\]: 'https://h/a\.jsonl' is streamed", "video_comp",
          paths=["https://h/a.jsonl"])  # fmt: skip
    check(r"data\.sources\.image_comp\.paths\[1\]: 'ftp://h/a\.tar' has the unknown shard scheme ftp://",
          paths=["train/images/*.tar", "ftp://h/a.tar"])  # fmt: skip
    check(r"data\.stream\.commands\.s3: .* put \{url\} where it goes, as a word of its own",
          commands={"s3": "sh -c 'aws s3 cp {url} -'"})  # fmt: skip
    check(r"data\.sources\.image_comp\.paths\[0\]: Unbalanced braces", paths=["https://h/s-{0..3.tar"])
    (stream_root / "bad_list.txt").write_text("train/images/shard-00000.tar\n../../escape.tar\n")
    check(r"data\.sources\.image_comp\.shard_list \(bad_list\.txt:2\): .*escapes", shard_list="bad_list.txt")
    (stream_root / "pipe_list.txt").write_text("# a list is data\npipe:cat train/images/shard-00000.tar\n")
    check(
        r"data\.sources\.image_comp\.shard_list \(pipe_list\.txt:2\): .* may not hold pipe:",
        shard_list="pipe_list.txt",
    )
    assert data.sources["image_comp"].kind is SourceKind.webdataset
    with pytest.raises(ConfigError, match="data.stream.shufle_buffer"):
        compose_config([f"data.root={stream_root}", "+data.stream.shufle_buffer=3"])


def test_start_up_errors_name_a_url_without_its_credentials(tmp_path):
    secret = "https://user:pw@host/x.tar?sig=SECRET"
    with pytest.raises(DataError) as refused:
        refuse_streams("data.sources.j", "jsonl", [secret], None)
    with pytest.raises(DataError) as unknown:
        list_shards(tmp_path, "data.sources.w", [secret.replace("https", "ftp")], None, {})
    for error in (refused, unknown):
        assert "://host/x.tar'" in str(error.value)
        assert "pw" not in str(error.value) and "SECRET" not in str(error.value)


# --------------------------------------------------------------------- the loader


def test_the_start_up_check_reads_one_sample_and_names_urls_without_credentials(stream_root, shard_server,
                                                                                 mistral_tokenizer_dir):  # fmt: skip
    """The check reads a streamed source with a buffer of one: no further than its first
    sample (every shard stalls past it; a full buffer would wait, then read it again)."""
    tokenizer = DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)
    shards = sorted((stream_root / "train" / "images").glob("shard-*.tar"))
    victims = [
        shard_server.inject(shard, Fault("stall", after=_past_first_sample(shard))) for shard in shards
    ]
    before = sum(shard_server.requests[victim] for victim in victims)
    pattern = shard_server.url(shards[0]).replace("00000", "{00000..00003}")
    unreadable = shard_server.url(stream_root / "gone.tar").replace("://", "://user:pw@") + "?sig=SECRET"

    def check(paths: str) -> None:
        cfg = compose_config([
            f"data.root={stream_root}", "data.stream.timeout=0.5", "data.stream.retries=1",
            "data.stream.retry_backoff=0", "~data.sources.video_comp", "~data.sources.video_gen",
            "~data.sources.image_gen", f"data.sources.image_comp.paths=['{paths}']",
        ])  # fmt: skip
        vt = cfg.video_tokenizer
        check_sources_usable(
            loader_spec(cfg.data, vt.num_tokens, vt.frames_per_clip, vt.input_size), tokenizer
        )

    try:
        check(pattern)
    finally:
        with shard_server.lock:  # the shards serve the loader test below
            for victim in victims:
                del shard_server.faults[victim]
    assert sum(shard_server.requests[victim] for victim in victims) - before == 1  # no stall, no retry
    with pytest.raises(DataError, match=r"no usable sample") as error:
        check(unreadable)
    assert (
        "127.0.0.1" in str(error.value) and "pw" not in str(error.value) and "SECRET" not in str(error.value)
    )


def _past_first_sample(shard: Path) -> int:
    """Bytes a stream reader reads (whole 10 KiB tar records) to complete a shard's first sample."""
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    second = next(m for m in members if m.name.split(".", 1)[0] != members[0].name.split(".", 1)[0])
    end = -(-(second.offset + tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
    assert end < shard.stat().st_size  # the stall is before the shard's end
    return end


def test_the_training_loader_reads_an_http_source_and_resumes_exactly(stream_root, shard_server,
                                                                      mistral_tokenizer_dir):  # fmt: skip
    tokenizer = DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)
    shards = sorted((stream_root / "train" / "images").glob("shard-*.tar"))
    assert len(shards) == 4
    pattern = shard_server.url(shards[0]).replace("00000", "{00000..00003}")
    cfg = compose_config([
        f"data.root={stream_root}", "data.num_workers=2", "data.batch_size=2", "data.stream.shuffle_buffer=2",
        "~data.sources.video_comp", "~data.sources.video_gen", "~data.sources.image_gen",
        f"data.sources.image_comp.paths=['{pattern}']",
    ])  # fmt: skip
    vt = cfg.video_tokenizer

    def make_loader():
        return build_loader(cfg.data, tokenizer, vt.num_tokens, vt.frames_per_clip, vt.input_size)

    def take(loader, n):
        return list(itertools.islice(iter(loader), n))

    uninterrupted = take(make_loader(), 7)  # 14 samples: past the 8-sample epoch
    seen = [k for batch in uninterrupted[:4] for k in batch["keys"]]
    assert sorted(seen) == sorted(f"shard-{s:05d}.tar:{k}" for s in range(4) for k in _shard_keys(shards[s]))
    first = make_loader()
    head = take(first, 3)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make_loader()
    resumed.load_state_dict(state)
    for expected, got in zip(uninterrupted, head + take(resumed, 4), strict=True):
        assert expected["keys"] == got["keys"]
        assert torch.equal(expected["input_ids"], got["input_ids"])
        assert torch.equal(expected["frames"], got["frames"])


def _shard_keys(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return sorted({member.name.split(".", 1)[0] for member in tar.getmembers()})
