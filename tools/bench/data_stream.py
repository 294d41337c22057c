"""A streamed shard next to a local one: clips/s through the loader's webdataset source.

The bench videos are packed into one tar shard (``<key>.mp4`` + ``<key>.txt``), served by
``http.server`` on 127.0.0.1 (a free port, in a thread), and read by the real source
(``loader.open_source``) twice over: once from ``http://127.0.0.1:PORT/bench.tar``
(streamed: read in order, no seeking) and once from the file (random access). Each pass
makes every sample's clips as a dataloader worker does (``loader.sample_clips``, one
generation clip per video: the least decoding, so reading costs show most); the passes
alternate and each reading's best pass counts.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from data_media import Timing, race

from data_recipes.shards import SHARD_PATTERN, Sample, write_shards
from divot_llm.config.schema import DataConfig, SourceConfig, SourceKind, Task
from divot_llm.data.loader import LoaderSpec, loader_spec, open_source, sample_clips
from divot_llm.data.sources import Consumer, RawSample

SHARD = "bench.tar"
SOURCE = "streamed_bench"


@dataclass
class StreamResult:
    videos: int
    shard_bytes: int
    streamed: Timing
    local: Timing


def write_shard(folder: Path, videos: list[bytes]) -> Path:
    samples = [Sample(f"video-{i:03d}", {"mp4": v, "txt": b"a bench video"}) for i, v in enumerate(videos)]
    write_shards(folder, samples, [range(len(samples))], lambda _n: None)
    return (folder / SHARD_PATTERN.format(0)).rename(folder / SHARD)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        """No line per request on stderr."""


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on the loopback interface; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def shard_spec(root: Path, shard: str) -> tuple[LoaderSpec, SourceConfig]:
    """The loader's view of one webdataset source reading ``shard`` (a path or a URL)."""
    src = SourceConfig(kind=SourceKind.webdataset, task=Task.pretrain_gen, paths=[shard])
    data = DataConfig(root=str(root), sources={SOURCE: src})  # the schema's defaults otherwise
    return loader_spec(data, tokens_per_clip=64, frames_per_clip=5, image_size=256), src


def clips_of_pass(spec: LoaderSpec, src: SourceConfig, expected: int, seed: int) -> int:
    """Read the source once, making every sample's clips; the clips made."""
    source = open_source(spec, SOURCE, src, Consumer(), infinite=False)

    def clips(raw: RawSample) -> int:
        return len(sample_clips(raw, src, spec, np.random.default_rng([seed, len(raw.key)])))

    made = list(source.iterate(clips))
    if len(made) != expected or source.skipped:
        raise RuntimeError(
            f"read {len(made)} of {expected} samples of {src.paths[0]} ({source.skip_summary()})"
        )
    return sum(made)


def measure_stream(root: Path, videos: list[bytes], rounds: int, seed: int) -> StreamResult:
    """Clips/s of the shard streamed over loopback HTTP and read from the local file."""
    folder = root / "streamed"
    shard = write_shard(folder, videos)
    with serve(folder) as base_url:
        streamed = shard_spec(root, f"{base_url}/{SHARD}")
        local = shard_spec(root, str(shard.relative_to(root)))
        best = race(
            {
                "streamed": lambda: clips_of_pass(*streamed, len(videos), seed),
                "local": lambda: clips_of_pass(*local, len(videos), seed),
            },
            rounds,
        )
    return StreamResult(len(videos), shard.stat().st_size, best["streamed"], best["local"])


def format_stream(result: StreamResult, rounds: int) -> str:
    return (
        f"# streamed shard (loopback HTTP) {result.streamed.clips_per_s:.2f} clips/s vs local shard "
        f"{result.local.clips_per_s:.2f} clips/s ({result.streamed.clips_per_s / result.local.clips_per_s:.2f}x): "
        f"{result.videos} videos in one {result.shard_bytes / 1e6:.1f} MB shard through the loader's webdataset "
        f"source, one generation clip each, best of {rounds} passes (wall-clock: waiting for bytes counts)"
    )
