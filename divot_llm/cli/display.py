"""Showing untrusted text (captions, tar member names, file names from the command line)
on a terminal: one line, escaped, bounded, and never an exception; and the inputs a batch
command skipped (``SkippedInputs``)."""

from __future__ import annotations

import sys

TEXT_LIMIT = 200  # characters of one shown text before it is cut
PATH_LIMIT = 4096  # characters of a file name shown (PATH_MAX): never cut a real one
EXIT_SKIPPED = 3  # some inputs could not be used; every other result was written


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


class SkippedInputs:
    """Inputs of a batch command that could not be used: each is named on stderr when it
    happens, and the exit code says whether there were any (``EXIT_SKIPPED``)."""

    def __init__(self, total: int):
        self.total = total
        self.count = 0

    def report(self, name: object, reason: str, detail: str) -> None:
        self.count += 1
        line = f"divot-infer: skipped {printable(name, PATH_LIMIT)} ({reason}): {printable(detail, 500)}"
        print(line, file=sys.stderr, flush=True)

    def exit_code(self) -> int:
        if not self.count:
            return 0
        print(
            f"divot-infer: {self.total - self.count} of {self.total} inputs done, "
            f"{self.count} skipped (named above)",
            file=sys.stderr,
        )
        return EXIT_SKIPPED
