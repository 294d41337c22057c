"""Showing untrusted text (captions, tar member names, file names from the command line)
on a terminal: one line, escaped, bounded, and never an exception."""

from __future__ import annotations

import sys

TEXT_LIMIT = 200  # characters of one shown text before it is cut


def printable(text: object, limit: int = TEXT_LIMIT) -> str:
    """``text`` as one safe terminal line.

    Line breaks, control characters (a ``\\x1b`` would drive the terminal), lone
    surrogates (from JSON ``"\\ud800"`` or undecodable file names; printing them raises
    UnicodeEncodeError) and other unprintable characters (bidi overrides, zero-width
    marks) are shown as Python escapes; text longer than ``limit`` characters is cut,
    saying how much was left out; characters stdout cannot encode are escaped too.
    """
    text = text if isinstance(text, str) else str(text)
    shown = "".join(ch if ch.isprintable() else _escaped(ch) for ch in text[:limit])
    if len(text) > limit:
        shown += f"... ({len(text) - limit:,} more characters)"
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        return shown.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # a stream with an encoding Python does not know
        return shown.encode("ascii", "backslashreplace").decode("ascii")


def _escaped(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")  # "\x1b" -> "\\x1b", "\ud800" -> "\\ud800"
