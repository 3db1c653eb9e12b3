"""How each transport puts a log entry on the wire, built once per entry for every viewer.

A stream is one of three transports: newline-delimited text, server-sent events, and
streamed HTML for an ``<iframe>``. Each turns an :class:`~jobcast.core.joblog.Entry` into bytes
(possibly none: the text stream shows only values), has a heartbeat (or none), and bytes to
send before the server closes a stream on shutdown. The relay frames a live entry once per
transport and writes the same bytes to every viewer, whatever its sink.

The text a value shows is made once, where it is logged (:func:`jobcast.core.values.value_text`),
so it is always valid Unicode; frames still encode with ``backslashreplace``, so an entry
logged before that rule (or by another writer) can never stop a stream.

An SSE id names an entry across the log's incarnations: ``id: <seq>:<epoch>`` (just ``<seq>``
for an entry from before epochs). Seq first, so a page that still does
``parseInt(lastEventId)`` reads the seq. When a viewer's position is not in the log as it is
(entries lost in a failover, see :mod:`jobcast.core.epoch`), a transport says so in-band where
it can (:attr:`Transport.reset`): SSE with one ``event: reset``, HTML with a line; the text
stream cannot, so its stream is cut and the client is told when it resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from markupsafe import Markup

from jobcast.core.epoch import Reset, sse_id
from jobcast.core.joblog import Entry


def _sse(entry: Entry) -> bytes:
    """An entry as one SSE event: ``id`` is its seq and epoch, the event type its kind."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (sse_id(entry.seq, entry.ep),
                                                  entry.kind.encode(), entry.raw)


def event_data(data: dict) -> bytes:
    """An event's data: compact JSON."""
    return json.dumps(data, separators=(",", ":")).encode()


def sse_reset(reset: Reset) -> bytes:
    """``event: reset``: its id is where the stream goes on (so a reconnect right after it is
    not reset again; it names no entry, so it is never reused with another value)."""
    return b"id: %s\nevent: reset\ndata: %s\n\n" % (sse_id(reset.after, reset.epoch),
                                                     event_data(reset.data()))


_LINE_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r"})


def text_line(text: str | None) -> bytes:
    """A value's text as one line of the text stream: a line feed inside it is written as the
    two characters ``\\n``, a carriage return as ``\\r``, so every value is exactly one line."""
    text = text or ""
    if "\n" in text or "\r" in text:
        text = text.translate(_LINE_BREAKS)
    return f"{text}\n".encode("utf-8", "backslashreplace")


def _text(entry: Entry) -> bytes:
    """A value as one line (:func:`text_line`); other entries send nothing."""
    return text_line(entry.text) if entry.kind == "value" else b""


_HTML_VALUE = Markup("<p>{}: {}</p>\n")
_HTML_DONE = Markup('<p class="end">Done</p>\n')
_HTML_CANCELLED = Markup('<p class="end cancelled">Cancelled</p>\n')
_HTML_ENDED = Markup('<p class="end {}">{}: {}</p>\n')


def _html(entry: Entry) -> bytes:
    """A value or the terminal entry as one escaped HTML line; others send nothing."""
    if entry.kind == "value":
        return _HTML_VALUE.format(entry.i, entry.text).encode("utf-8", "backslashreplace")
    if entry.kind == "finished":
        return _HTML_DONE.encode()
    if entry.kind == "cancelled":
        return _HTML_CANCELLED.encode()
    if entry.terminal:
        reason = entry.data.get("reason") or ""
        return _HTML_ENDED.format(entry.kind, entry.kind.capitalize(), reason).encode(
            "utf-8", "backslashreplace")
    return b""


def html_head(stylesheet: str, script: str = "", heartbeat: float = 0) -> bytes:
    """The first bytes of the HTML stream: doctype, charset, the stylesheet, and the script
    that brings the stream back when it stops short of the job's end (``heartbeat``: the
    seconds between its heartbeats, by which it tells a cut connection)."""
    head = Markup('<!doctype html><meta charset="utf-8"><link rel="stylesheet" href="{}">'
                  ).format(stylesheet)
    if script:
        head += Markup('<script src="{}" data-heartbeat="{:g}"></script>').format(script,
                                                                                 heartbeat)
    return (head + "\n").encode()


def html_notice(text: str, kind: str = "") -> bytes:
    """A line of the HTML stream that is not a value (e.g. a notice about trimmed history);
    ``kind`` is one more class (``reset``)."""
    return Markup('<p class="{}">{}</p>\n').format(f"note {kind}".strip(), text).encode()


def html_reset(reset: Reset) -> bytes:
    """The HTML stream's line saying the log was reset, and from which value it goes on."""
    return html_notice(reset.notice(), "reset")


def sse_goodbye(retry: int) -> bytes:
    """The SSE stream's goodbye: reconnect after ``retry`` ms (EventSource resumes with its
    Last-Event-ID)."""
    return b"retry: %d\n\n" % retry


_HTML_GOODBYE = Markup('<p class="note">The server is restarting: this list comes back in a '
                       'moment.</p>\n<noscript><meta http-equiv="refresh" content="{}">'
                       '</noscript>\n')


def html_goodbye(retry: int) -> bytes:
    """The HTML stream's goodbye: a line that says so. The stream's script (static/frame.js)
    loads it again once the server answers (an iframe of it, anyone's: every value, then the
    live ones); without scripts, a refresh after ``retry`` ms, each stream its own, so that a
    restart's viewers do not all come back at once."""
    return _HTML_GOODBYE.format(f"{retry / 1000:.3f}").encode()


def sse_trimmed(trim: dict) -> bytes:
    """``event: trimmed``, as a stream that begins in a trimmed log has it (no id)."""
    return b"event: trimmed\ndata: %s\n\n" % event_data(trim)


def html_trimmed(trim: dict) -> bytes:
    """The HTML stream's line saying values it had not shown are no longer kept."""
    first = trim.get("first_value")
    goes_on = f": it goes on from value {first:,}" if first is not None else ""
    return html_notice(f"Values this page had not shown yet are no longer kept{goes_on}")


@dataclass(frozen=True, eq=False)
class Transport:
    """One way of streaming a job's log."""

    name: str
    mimetype: str
    encode: Callable[[Entry], bytes]
    heartbeat: bytes
    """Sent on a quiet stream; empty where the format has no room for one (text)."""
    shutdown: Callable[[int], bytes] | None
    """What the stream is sent before the server closes it because it is stopping, given its
    reconnection delay (see :meth:`goodbye`); None: nothing (text)."""
    filters_values: bool
    """True when ``?start=K`` hides values with index below K."""
    reset: Callable[[Reset], bytes] | None = None
    """How the stream says that the log was reset under it; None: it cannot (its stream is
    cut instead, and the client is told when it resumes)."""
    trimmed: Callable[[dict], bytes] | None = None
    """How the stream says that entries after its position were trimmed from a capped log
    while it caught up (``after``, ``first_seq``, ``lost``, ``first_value``); None: it cannot
    (cut, and told when it resumes)."""
    values_only: bool = False
    """True when the stream shows only values and the job's end: the other entries (what the
    job printed, its start) write nothing, so a job busy with those leaves it quiet."""

    def goodbye(self, retry: int) -> bytes:
        """What a stream says before the server closes it because it is stopping: come back
        after ``retry`` ms (each connection its own, so they do not all come back at once);
        nothing on the text stream, whose reader cannot be told."""
        return self.shutdown(retry) if self.shutdown else b""

    def frames(self, entries: list[Entry], start: int = 0) -> bytes:
        """The bytes of ``entries`` in order, skipping values below index ``start``."""
        if start and self.filters_values:
            return b"".join([self.encode(e) for e in entries
                             if e.kind != "value" or e.i >= start])
        return b"".join([self.encode(e) for e in entries])


SSE = Transport("sse", "text/event-stream", _sse, b": heartbeat\n\n", sse_goodbye, False,
                sse_reset, sse_trimmed)
TEXT = Transport("text", "text/plain", _text, b"", None, True, values_only=True)
HTML = Transport("html", "text/html", _html, b"<!-- -->\n", html_goodbye, True, html_reset,
                 html_trimmed, values_only=True)


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (empty data would end the body, so it stays empty)."""
    return b"%X\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
