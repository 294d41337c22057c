"""Where webdataset shards live and the byte streams that read them.

A shard list entry is a local path (a glob under ``data.root``), ``pipe:CMD`` (CMD runs
through ``/bin/sh`` as webdataset runs it; its stdout is the tar), an ``http://`` or
``https://`` URL (read with urllib), or a URL whose scheme has a command template in
``data.stream.commands`` (``s3://`` -> ``aws s3 cp {url} -``, ``gs://`` -> ``gcloud storage
cat {url}``: the user's own CLI and credentials). A template is split with ``shlex`` and the
URL replaces its ``{url}`` words, each one argument (``fill_command``, which also fills
``divot-data features --upload``): nothing passes through a shell or an eval. An HTTP URL's
user info (``https://user:pw@host/...``) is sent as a basic-auth header to that host only
(not on a redirect). Brace patterns (``shard-{000000..000099}.tar``, ``{a,b}``) expand as
in bash and webdataset (``braceexpand``, webdataset's own).

Every stream has a timeout: a read that gets no byte for ``timeout`` seconds fails (HTTP:
the socket timeout; a pipe: ``select`` on its descriptor). A transport failure -- a
connection reset, a body shorter than its Content-Length, a command that exits non-zero,
a stall -- raises ``TransportError``; closing a pipe stream kills its process group and
reaps it, so no command outlives a failed read or a closed reader.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import posixpath
import re
import select
import shlex
import signal
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from braceexpand import braceexpand

PIPE_PREFIX = "pipe:"
HTTP_SCHEMES = ("http", "https")
URL_PLACEHOLDER = "{url}"  # the words of a command template that the shard's URL replaces
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# HTTP statuses worth retrying among the 4xx (timeouts, rate limits); other 4xx are final
_RETRYABLE_CLIENT_ERRORS = (408, 425, 429)
_STDERR_TAIL = 600  # bytes of a failed command's stderr quoted in its error
_PIPE_CHUNK = 1 << 16  # bytes asked of a pipe at a time (Linux pipes hold 64 KiB)


class TransportError(Exception):
    """A shard's byte stream failed. ``permanent``: retrying cannot help (an HTTP 404, a
    command that does not exist, a local file that is not there)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


# ------------------------------------------------------------------ shard names


def expand_braces(pattern: str) -> list[str]:
    """``pattern`` with its brace groups expanded as bash and webdataset do, by webdataset's
    own ``braceexpand``: ``{000..099}`` is a numeric range (zero-padded to the wider end
    when either end starts with 0; an optional third part is the step), ``{a..e}`` a letter
    range, ``{a,b,c}`` alternatives; groups may nest and repeat. A group with none of these
    (``{x}``, ``${HOME}``) stays as written, and so do backslashes (``escape=False``: a
    ``pipe:`` command reaches the shell as written).

    Raises:
        ValueError: unbalanced braces.
    """
    if "{" not in pattern and "}" not in pattern:  # most shard-list lines: skip the parser
        return [pattern]
    return list(braceexpand(pattern, escape=False))


def shard_scheme(entry: str) -> str | None:
    """``"pipe"``, a URL's scheme in lower case (``"https"``, ``"s3"``), or None for a
    local path."""
    if entry.startswith(PIPE_PREFIX):
        return "pipe"
    matched = _URL_SCHEME.match(entry)
    return matched[1].lower() if matched else None


def shard_file_name(entry: str | Path) -> str:
    """What a shard is called in sample keys (``<name>:<key>``) and seeds: a local shard's
    file name, the last segment of a URL's path, or for ``pipe:CMD`` the file name of the
    last word of CMD naming a ``.tar`` (the whole command if none does). Shards of one
    source should have distinct names, as local shards of one folder do."""
    if isinstance(entry, Path):
        return entry.name
    scheme = shard_scheme(entry)
    if scheme is None:
        return posixpath.basename(entry)
    if scheme == "pipe":
        return _piped_file_name(entry[len(PIPE_PREFIX) :])
    return posixpath.basename(urllib.parse.urlsplit(entry).path) or shard_display(entry)


def _piped_file_name(command: str) -> str:
    """The file name of the last word of a shell command naming a ``.tar``, else the command."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)  # ;, |, && as words of their own
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes: plain words will do for a name
        words = command.split()
    named = [word for word in words if ".tar" in word]
    return shard_file_name(named[-1]) if named else command.strip()


def shard_display(entry: str | Path) -> str:
    """A shard as logs and skip messages name it: a URL without its user info or query
    (signed URLs carry credentials there), anything else as written."""
    if isinstance(entry, Path) or shard_scheme(entry) in (None, "pipe"):
        return str(entry)
    parts = urllib.parse.urlsplit(entry)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def fill_command(template: str, placeholder: str, value: str, *, whole_word: bool = False,
                 what: str = "the value") -> list[str]:  # fmt: skip
    """The argv of a command template: ``template`` split with shlex as a shell splits it,
    then ``placeholder`` replaced by ``value`` inside each word, so that the value lands in
    one argument whatever it holds (spaces, quotes, ``;``): no shell runs, nothing is
    evaluated. ``whole_word``: the placeholder must be a word of its own, for values read
    from data (a shard list's URLs), which then cannot be spliced into a word that a
    program interprets (``sh -c "aws s3 cp {url} -"`` is refused; ``sh -c 'aws s3 cp "$1"
    -' sh {url}`` passes the URL as data). ``what``: what the placeholder stands for, in
    the error.

    Raises:
        ValueError: a template shlex cannot split (unbalanced quotes), or one without the
            placeholder (with ``whole_word``: or with it inside a longer word), naming it.
    """
    words = shlex.split(template)
    holding = [word for word in words if placeholder in word]
    if not holding or (whole_word and any(word != placeholder for word in holding)):
        own = ", as a word of its own" if whole_word else ""
        raise ValueError(f"{template!r} does not name {what}: put {placeholder} where it goes{own}")
    return [word.replace(placeholder, value) for word in words]


def command_argv(template: str, url: str) -> list[str]:
    """The argv of a ``data.stream.commands`` template (``aws s3 cp {url} -``) for
    ``url``: its ``{url}`` words replaced by the URL, one argument each (``fill_command``).

    Raises:
        ValueError: a template shlex cannot split, or without ``{url}`` as a word of its own.
    """
    return fill_command(template, URL_PLACEHOLDER, url, whole_word=True, what="the shard's URL")


# ---------------------------------------------------------------------- streams


class ShardStream(Protocol):
    """A shard's bytes, read front to back: ``read`` returns b"" only at a clean end."""

    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


def open_stream(shard: str | Path, timeout: float, commands: dict[str, str]) -> ShardStream:
    """The byte stream of one shard (a local ``Path``, or a URL / ``pipe:`` entry).

    Raises:
        TransportError: it cannot be opened (retryable unless ``permanent``).
    """
    if isinstance(shard, Path):
        return _FileStream(shard)
    scheme = shard_scheme(shard)
    if scheme == "pipe":
        return _PipeStream(["/bin/sh", "-c", shard[len(PIPE_PREFIX) :]], timeout)
    if scheme in HTTP_SCHEMES:
        return _HttpStream(shard, timeout)
    if scheme in commands:
        return _PipeStream(command_argv(commands[scheme], shard), timeout)
    raise TransportError(f"no way to read {scheme}:// shards (data.stream.commands)", permanent=True)


def http_request(url: str) -> urllib.request.Request:
    """The GET of an HTTP(S) shard. User info in the URL (``https://user:pw@host/...``,
    percent-encoded as URLs are), which urllib would take for part of the host, becomes a
    basic-auth header sent to that host only: a redirect elsewhere does not get it."""
    parts = urllib.parse.urlsplit(url)
    user_info, at, host = parts.netloc.rpartition("@")
    if not at:
        return urllib.request.Request(url)
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)))
    user, _, password = user_info.partition(":")
    credentials = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(credentials).decode("ascii"))
    return request


class _FileStream:
    """A local shard read front to back (a local file in a source that also streams)."""

    def __init__(self, path: Path):
        try:
            self._file = open(path, "rb")  # noqa: SIM115  (closed by close())
        except OSError as exc:
            raise TransportError(str(exc), permanent=True) from exc

    def read(self, size: int) -> bytes:
        try:
            return self._file.read(size)
        except OSError as exc:  # a network file system's hiccup: worth a retry
            raise TransportError(str(exc)) from exc

    def close(self) -> None:
        self._file.close()


class _HttpStream:
    """An HTTP(S) response body. The socket timeout bounds every wait for a byte; a body
    that ends before its Content-Length is a failure (http.client just returns b"")."""

    def __init__(self, url: str, timeout: float):
        self._display = shard_display(url)
        try:
            self._response = urllib.request.urlopen(http_request(url), timeout=timeout)  # noqa: S310 (http(s) only)
        except urllib.error.HTTPError as exc:
            exc.close()
            final = 400 <= exc.code < 500 and exc.code not in _RETRYABLE_CLIENT_ERRORS
            raise TransportError(f"HTTP {exc.code} {exc.reason}", permanent=final) from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, refused, timeout; ValueError: a malformed URL; HTTPException: a reply
            # that is not HTTP (BadStatusLine), e.g. from a proxy or server in trouble
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        self._expected = self._response.length  # None without a Content-Length (chunked)
        self._received = 0

    def read(self, size: int) -> bytes:
        try:
            data = self._response.read(size)
        except Exception as exc:  # reset, timeout, http.client.IncompleteRead (a broken chunk)
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        self._received += len(data)
        if not data and self._expected is not None and self._received < self._expected:
            raise TransportError(f"the body ended after {self._received} of {self._expected} bytes")
        return data

    def close(self) -> None:
        self._response.close()


class _PipeStream:
    """A command's stdout. Reads wait at most ``timeout`` for a byte (``select``); at the
    end the command must exit 0 within ``timeout``. The command runs in its own process
    group, which ``close`` kills (a shell's children too) and reaps unless it has exited."""

    def __init__(self, argv: list[str], timeout: float):
        self._timeout = timeout
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty command cannot block on it
        try:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:  # no such command
            self._stderr.close()
            raise TransportError(f"cannot run {argv[0]!r}: {exc}", permanent=True) from exc
        self._fd = self._process.stdout.fileno()
        self._pending, self._offset = b"", 0  # read from the pipe, not yet returned

    def read(self, size: int) -> bytes:
        if self._offset >= len(self._pending):  # one system call per pipe-full, not per read
            ready, _, _ = select.select([self._fd], [], [], self._timeout)
            if not ready:
                raise TransportError(f"no byte from the command for {self._timeout:g} s")
            self._pending, self._offset = os.read(self._fd, _PIPE_CHUNK), 0
            if not self._pending:
                self._check_exit()
                return b""
        data = self._pending[self._offset : self._offset + size]
        self._offset += len(data)
        return data

    def _check_exit(self) -> None:
        try:
            status = self._process.wait(timeout=self._timeout)
        except subprocess.TimeoutExpired as exc:
            raise TransportError(
                f"the command closed its output but did not exit in {self._timeout:g} s"
            ) from exc
        if status != 0:
            raise TransportError(f"the command exited with status {status}{self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - _STDERR_TAIL))
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return f": {text}" if text else ""

    def close(self) -> None:
        if self._process.returncode is None:  # still running, or exited but not reaped
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process.stdout.close()
        self._stderr.close()
