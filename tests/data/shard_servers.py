"""Real transports for shard tests: a loopback HTTP server (with injectable faults) and
``pipe:cat`` entries, and a reader of local shards over any of them."""

from __future__ import annotations

import http.server
import shlex
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from divot_llm.config.schema import StreamConfig
from divot_llm.data.shard_stream import StreamTarSource
from divot_llm.data.sources import TarSource

TRANSPORTS = ("local", "http", "pipe")
# fault-free tests: a generous timeout that nothing reaches, no waiting between retries
TEST_STREAM = StreamConfig(timeout=20.0, retries=1, retry_backoff=0.0)


@dataclass(frozen=True)
class Fault:
    """What the server does to the next ``times`` requests of a file (None: every one):
    sends its first ``after`` bytes of the body, then resets the connection (``reset``),
    closes it early (``short``: a body shorter than its Content-Length), or sends nothing
    more until the server stops (``stall``); ``garbage`` answers a line that is not HTTP
    instead of a response, ``status`` the HTTP error ``status`` (``after`` unused)."""

    kind: str  # "reset" | "short" | "stall" | "garbage" | "status"
    after: int = 0
    times: int | None = None
    status: int = 503


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves the files under ``root`` on 127.0.0.1 (a free port), counting requests."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.faults: dict[str, Fault] = {}  # by URL path
        self.faulted: Counter[str] = Counter()  # requests the fault was applied to
        self.requests: Counter[str] = Counter()
        self.protected: dict[str, str] = {}  # URL path -> the Authorization header it needs (else 401)
        self.redirects: dict[str, str] = {}  # URL path -> where a 302 sends it
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # releases stalled requests
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: Path) -> str:
        return f"http://127.0.0.1:{self.server_port}{self.url_path(path)}"

    def url_path(self, path: Path) -> str:
        return "/" + quote(str(path.resolve().relative_to(self.root)))

    def inject(self, path: Path, fault: Fault) -> str:
        """Apply ``fault`` to the next requests of ``path``; returns its URL path."""
        url_path = self.url_path(path)
        with self.lock:
            self.faults[url_path] = fault
            self.faulted[url_path] = 0
        return url_path

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ShardServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urlsplit(self.path).path
        file = (self.server.root / unquote(path).lstrip("/")).resolve()
        with self.server.lock:
            self.server.requests[path] += 1
        if path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in self.server.protected and self.headers.get("Authorization") != self.server.protected[path]:
            self.send_error(401)
            return
        if not file.is_relative_to(self.server.root) or not file.is_file():
            self.send_error(404)
            return
        with self.server.lock:
            fault = self.server.faults.get(path)
            if fault is not None and fault.times is not None and self.server.faulted[path] >= fault.times:
                fault = None
            self.server.faulted[path] += fault is not None
        if fault is not None and fault.kind == "garbage":
            self.wfile.write(b"GARBAGE\r\n\r\n")
            self.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            self.send_error(fault.status)
            return
        body = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[: fault.after])
        if fault.kind == "stall":
            self.server.stopping.wait(60)
        elif fault.kind == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def log_message(self, *args) -> None:
        pass


def pipe_cat(path: Path) -> str:
    return f"pipe:cat {shlex.quote(str(path))}"


def shard_entries(transport: str, shards: list[Path], server: ShardServer | None) -> list:
    """The shards as a source's list names them over ``transport``."""
    if transport == "http":
        return [server.url(shard) for shard in shards]
    if transport == "pipe":
        return [pipe_cat(shard) for shard in shards]
    return list(shards)


def tar_source(transport: str, server: ShardServer | None, name: str, shards: list[Path], stream=TEST_STREAM,
               **kwargs) -> TarSource:  # fmt: skip
    """A reader of local ``shards`` over ``transport``: random access (``local``), or
    streamed from the loopback server (``http``) or through ``pipe:cat`` (``pipe``)."""
    if transport == "local":
        return TarSource(name, shards, **kwargs)
    return StreamTarSource(name, shard_entries(transport, shards, server), stream, **kwargs)
