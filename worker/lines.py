"""The pure parts of output capture: bytes into lines, and the bounds on them.

:class:`LineSplitter` turns one stream's bytes into lines: split on ``\\n``, a trailing ``\\r``
stripped, a line with other ``\\r`` keeping what follows the last one (what a terminal shows of
a progress bar), decoded as UTF-8. A line is kept up to :data:`LINE_MAX` bytes and the rest only
counted, so a stream costs that much memory whatever its lines' length. A line without its
newline :data:`PARTIAL_AFTER` seconds after its first byte is sent as ``partial``, and what
follows starts a new one; a piece that goes on with a partial line after a ``\\r`` (a progress
bar's next frame) is marked ``redraw``: it takes the place of what the line showed.

:class:`RateWindow` caps the lines (and bytes) a job may log per second, and counts the rest.

Nothing here does I/O or reads a clock: times are passed in, so the tests need no process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LINE_MAX = 8192
"""Bytes of a line kept; a longer line is cut there and marked with its whole length."""
PARTIAL_AFTER = 0.2
"""Seconds an unfinished line waits for its newline before it is sent as it is."""
WINDOW_BYTES = 256 * 1024
"""Bytes of output a job may log per second (with the lines per second of its setting)."""


@dataclass(slots=True)
class OutputLine:
    """One captured line, as it will be logged."""

    stream: str                 # "stdout", "stderr" or "logging"
    text: str
    ts: float                   # when it was captured
    partial: bool = False       # sent without its newline (the line goes on in the next one)
    redraw: bool = False        # goes on with a partial line after a "\r": it replaces its text
    cut: int = 0                # the line's whole length in bytes, when cut at LINE_MAX
    level: str | None = None    # logging records: level name and logger
    logger: str | None = None
    dropped: int = 0            # a notice: how many lines the rate cap dropped
    lost: int = 0               # a notice: how many lines Redis did not take
    echoed: bool = False        # already printed on the worker's console (sent again)

    @property
    def size(self) -> int:
        """What the line costs against the rate cap and the backlog: its text's bytes in UTF-8
        (an encode only for text that is not ASCII)."""
        text = self.text
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))

    def body(self, attempt: int | None) -> dict[str, Any]:
        """The ``log`` entry's fields (the append script adds ``seq``, ``kind`` and ``ts``)."""
        body: dict[str, Any] = {"stream": self.stream, "text": self.text}
        if self.level is not None:
            body["level"] = self.level
            body["logger"] = self.logger
        if self.partial:
            body["partial"] = True
        if self.redraw:
            body["redraw"] = True
        if self.cut:
            body["cut"] = self.cut
        if self.dropped:
            body["dropped"] = self.dropped
        if self.lost:
            body["lost"] = self.lost
        body["attempt"] = attempt
        return body


def utf8_prefix(data: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes of ``data`` or fewer, never ending inside a UTF-8 character."""
    if len(data) <= limit:
        return data
    end = limit
    # Step back over continuation bytes (0b10xxxxxx) to the character's first byte.
    start = end - 1
    while start > end - 4 and start > 0 and data[start] & 0xC0 == 0x80:
        start -= 1
    lead = data[start]
    need = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return data[:start] if end - start < need else data[:end]


def utf8_whole(data: bytes) -> int:
    """How many of ``data``'s bytes end on a whole UTF-8 character: all of them, or all but an
    unfinished last character (its first bytes written, the rest still to come)."""
    return len(utf8_prefix(data + b"\x00", len(data))) if data else 0


def clip(data: bytes, limit: int = LINE_MAX) -> tuple[str, int]:
    """``(text, cut)`` of one line's bytes: decoded, cut to ``limit`` bytes (``cut`` is then the
    line's whole length, else 0)."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), 0
    return utf8_prefix(data, limit).decode("utf-8", "replace"), len(data)


class LineSplitter:
    """One stream's bytes in, its lines out (see the module's docstring)."""

    def __init__(self, stream: str, limit: int = LINE_MAX, partial_after: float = PARTIAL_AFTER):
        """Split the stream named ``stream`` (``stdout`` or ``stderr``)."""
        self.stream = stream
        self.limit = limit
        self.partial_after = partial_after
        self.head = bytearray()         # the pending line's first `limit` bytes
        self.size = 0                   # the pending line's length so far
        self.since: float | None = None  # when its first byte came
        self.cut_at = float("-inf")     # when cut() last sent a pending line early
        self.continues = False          # the last line was sent partial: the next piece goes on
        self.over = False               # ... ending with "\r": the next piece starts it over

    def feed(self, data: bytes, now: float) -> list[OutputLine]:
        """The lines that ``data`` completes; its unfinished end stays pending."""
        pieces = data.split(b"\n")
        lines = []
        for piece in pieces[:-1]:
            self._add(piece, now)
            lines.append(self._take(now, partial=False))
        self._add(pieces[-1], now)
        return lines

    def skip(self, data: bytes, now: float) -> int:
        """Count the lines that ``data`` completes without keeping them (the rate cap is
        reached: counting newlines is one C call, however many there are)."""
        ended = data.count(b"\n")
        if ended:
            self.head.clear()
            self.size = 0
            self.since = None
            self.continues = self.over = False
            data = data[data.rindex(b"\n") + 1:]
        self._add(data, now)
        return ended

    def expire(self, now: float) -> OutputLine | None:
        """The pending line as a partial one, once it has waited long enough for its newline
        (None when it is only the first bytes of a character: they wait for the rest)."""
        if self.since is not None and now >= self.since + self.partial_after:
            return self._take(now, partial=True, whole=True)
        return None

    def deadline(self) -> float | None:
        """When the pending line will be sent unfinished, or None when nothing is pending."""
        return None if self.since is None else self.since + self.partial_after

    def cut(self, now: float) -> OutputLine | None:
        """The pending line as a partial one, sent early because a value printed after it is
        about to be logged; None when nothing is pending, or when a line was cut less than
        ``partial_after`` ago: a job printing a dot before each of a thousand values a second
        makes a partial line every ``partial_after``, not a thousand."""
        if self.since is None or now < self.cut_at + self.partial_after:
            return None
        self.cut_at = now
        return self._take(now, partial=True, whole=True)

    def flush(self, now: float, whole: bool = False) -> OutputLine | None:
        """The pending line as a partial one (the job has ended; with ``whole``, something
        printed after it must come after it, and an unfinished last character waits for its
        rest), or None."""
        return self._take(now, partial=True, whole=whole) if self.since is not None else None

    def _add(self, piece: bytes, now: float) -> None:
        """Append a piece of the pending line, keeping only its first ``limit`` bytes."""
        if not piece:
            return
        if self.since is None:
            self.since = now
        room = self.limit + 1 - len(self.head)  # one byte more than kept: tells a cut line
        if room > 0:
            self.head += piece[:room]
        self.size += len(piece)

    def _take(self, now: float, partial: bool, whole: bool = False) -> OutputLine | None:
        """The pending line as an OutputLine; nothing is pending afterwards. With ``whole``
        (a partial line the job goes on writing), the first bytes of a character split
        between two writes stay pending, to go out whole with the rest (decoded apart, each
        half would be U+FFFD for good); None when nothing else is pending."""
        data = bytes(self.head)
        size = self.size
        if whole and size <= self.limit:
            keep = utf8_whole(data)
            if keep == 0:
                self.since = now  # (not due again at once: a reader would spin on it)
                return None
            data, size = data[:keep], keep
            del self.head[:keep]
            self.size -= keep
            # What stays (a character's first bytes) waits its own while for the rest.
            self.since = now if self.head else None
        else:
            self.head.clear()
            self.size = 0
            self.since = None
        # A piece sent partial that ended with "\r" left the cursor at the line's start: what
        # comes next draws over it, unless it is only the "\n" of a "\r\n".
        over, self.over = self.over and bool(data), False
        if data.endswith(b"\r") and size <= self.limit:
            data, size = data[:-1], size - 1
            self.over = partial
        if b"\r" in data:
            # What a terminal shows: a progress bar redraws the line after each "\r".
            data = data[data.rindex(b"\r") + 1:]
            size = len(data) if size <= self.limit else size
            over = True
        redraw, self.continues = over and self.continues, partial
        text, _ = clip(data, self.limit)
        return OutputLine(self.stream, text, now, partial=partial, redraw=redraw,
                          cut=size if size > self.limit else 0)


class RateWindow:
    """At most ``lines`` lines and ``max_bytes`` bytes per one-second window; the lines refused
    are counted, and announced once their window has passed."""

    def __init__(self, lines: int, max_bytes: int = WINDOW_BYTES, span: float = 1.0):
        """A window of ``span`` seconds."""
        self.lines = lines
        self.max_bytes = max_bytes
        self.span = span
        self.start: float | None = None
        self.used = 0
        self.used_bytes = 0
        self.dropped = 0            # refused in the current window
        self.unannounced = 0        # refused in windows that have passed

    def _roll(self, now: float) -> None:
        """Begin a new window when the current one has passed."""
        if self.start is None or now >= self.start + self.span:
            self.start = now
            self.used = self.used_bytes = 0
            self.unannounced += self.dropped
            self.dropped = 0

    def full(self, now: float) -> bool:
        """True when no line fits in the current window."""
        self._roll(now)
        return self.used >= self.lines or self.used_bytes >= self.max_bytes

    def admit(self, size: int, now: float) -> bool:
        """Take a line of ``size`` bytes if it fits; else count it as dropped."""
        self._roll(now)
        if self.used < self.lines and self.used_bytes + size <= self.max_bytes:
            self.used += 1
            self.used_bytes += size
            return True
        self.dropped += 1
        return False

    def drop(self, count: int) -> None:
        """Count ``count`` lines dropped in the current window."""
        self.dropped += count

    def notice(self, now: float, final: bool = False) -> int:
        """How many dropped lines are to be announced now (and forget them): those of the
        windows that have passed, or, when ``final``, all of them."""
        self._roll(now)
        count = self.unannounced + (self.dropped if final else 0)
        self.unannounced = 0
        if final:
            self.dropped = 0
        return count
