"""The two kinds of data problem: one record that is skipped, or data that stops a run.

``RecordError`` (and its ``MediaError``) is per record: the readers catch it, skip the
record and count it under its ``reason``. ``DataError`` is systemic -- no files, a source
without a single usable sample, a skip rate above ``data.max_skip_fraction`` -- and is
never caught per record.
"""

from __future__ import annotations


class DataError(RuntimeError):
    """Data that cannot be used at all; the message names the source and why."""


class RecordError(ValueError):
    """One record that cannot become a sample; ``reason`` is its short skip-counter key
    (``bad_fields``, ``wrong_task``, ``bad_path``, ...), ``detail`` says what was wrong."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MediaError(RecordError):
    """A media file that cannot be used (corrupt, no frames, too small, ...)."""
