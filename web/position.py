"""Where a stream starts, worked out once per request before the stream begins.

A viewer asks for a position in one of three ways: ``Last-Event-ID`` (or ``?after=N``) to
resume after an entry, ``?tail=N`` to begin with the last N values, or nothing (the whole
log). ``Last-Event-ID`` and ``?after=`` win over ``?tail=``, so a reconnect stays exact.

The log is capped, so the entries after the asked position may be gone. That is never
silent: :class:`Start` knows the first entry still kept and how many were lost, and each
stream says so before its first entry (SSE ``event: trimmed``, the ``Jobcast-First-Value``
header, a line in the HTML stream).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flask import request
from redis import Redis

from jobcast.joblog import Entry, first_kept, job_keys
from web.lookup import int_param, resume_position
from web.services import state

TAIL_PAGE = 5000
"""Entries read per step while looking back for the tail's first value."""


@dataclass(frozen=True)
class Start:
    """A stream's starting point: follow the entries with ``seq > after``."""

    after: int
    tail: int | None = None          # ?tail=N, when it decided the start
    skipped: int = 0                 # values before the first one this stream sends
    first_seq: int | None = None     # oldest entry still in the log
    first_value: int | None = None   # index of the oldest value still in the log
    lost: int = 0                    # entries after `after` that the log no longer has

    @property
    def trimmed(self) -> bool:
        """True when entries the viewer asked for are no longer kept."""
        return self.lost > 0

    def sse_prelude(self) -> bytes:
        """SSE events that come before the first entry: ``tail`` and ``trimmed`` (no ids,
        so they never move the client's Last-Event-ID)."""
        out = b""
        if self.tail is not None:
            out += b"event: tail\ndata: %s\n\n" % _json({
                "tail": self.tail, "skipped": self.skipped, "after": self.after})
        if self.trimmed:
            out += b"event: trimmed\ndata: %s\n\n" % _json({
                "after": self.after, "first_seq": self.first_seq, "lost": self.lost,
                "first_value": self.first_value})
        return out

    def lost_values(self, start: int = 0) -> int:
        """Values from ``start`` on that are gone (for readers who count values)."""
        if not self.trimmed or self.first_value is None:
            return 0
        return max(0, self.first_value - max(start, self.skipped))

    def first_sent(self, start: int = 0) -> int | None:
        """Index of the first value a value stream sends, when it is not value ``start``."""
        if self.tail is not None:
            return max(start, self.skipped, self.first_value or 0)
        if self.lost_values(start):
            return self.first_value
        return None

    def headers(self, start: int = 0) -> dict[str, str]:
        """Headers for the text and HTML streams: where their values begin."""
        first = self.first_sent(start)
        if first is None:
            return {}
        headers = {"Jobcast-First-Value": str(first)}
        lost = self.lost_values(start)
        if lost:
            headers["Jobcast-Values-Lost"] = str(lost)
        return headers

    def notice(self, start: int = 0) -> str:
        """The HTML stream's line about values it will not show ("" when none)."""
        lost = self.lost_values(start)
        if lost:
            return f"{lost:,} earlier values are no longer kept"
        if self.tail is not None and self.skipped > start:
            return f"{self.skipped - start:,} earlier values skipped (tail={self.tail})"
        return ""


def _json(data: dict) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(data, separators=(",", ":")).encode()


def tail_param() -> int | None:
    """``?tail=N`` as an int, or None when absent."""
    raw = request.args.get("tail")
    if raw is None or raw == "":
        return None
    return int_param("tail", raw)


def resuming() -> bool:
    """True when the request names an exact position (``Last-Event-ID`` or ``?after=``)."""
    return bool(request.headers.get("Last-Event-ID")) or bool(request.args.get("after"))


def tail_position(redis: Redis, job_id: str, n: int, last_seq: int) -> tuple[int, int]:
    """``(after, skipped)`` for a stream of the last ``n`` values.

    Reads the log backwards from its newest entry until the n-th last value; ``after`` is
    the seq just before it and ``skipped`` its index. When the tail holds every value, or
    fewer than n are kept: the whole log, from ``queued`` on (a trimmed log then says what
    is missing).
    """
    if n == 0:
        return last_seq, int(redis.hget(job_keys(redis, job_id).meta, "values") or 0)
    key = job_keys(redis, job_id).log
    count, newest = 0, "+"
    page = min(TAIL_PAGE, n + 8)
    while True:
        batch = redis.xrevrange(key, max=newest, min="-", count=page)
        for stream_id, fields in batch:
            raw = fields[b"e"]
            if b'"kind":"value"' in raw:
                count += 1
                if count == n:
                    entry = Entry.parse(raw)
                    return (0, 0) if not entry.i else (entry.seq - 1, entry.i)
        if len(batch) < page:
            return 0, 0
        last = batch[-1][0]
        newest = "(" + (last.decode() if isinstance(last, bytes) else last)
        page = TAIL_PAGE


def may_be_trimmed(last_seq: int, maxlen: int) -> bool:
    """False when the log cannot have lost an entry: it never held more than the cap.

    Redis trims a stream only while it has more than ``maxlen`` entries, and every entry
    of a job's log was appended with the job's seq, so a log with ``last_seq <= maxlen``
    is whole. Most jobs are, and their viewers cost no extra read (JOBCAST_LOG_MAXLEN is
    the same for every service, like every setting).
    """
    return last_seq > maxlen


def stream_start(job_id: str, last_seq: int) -> Start:
    """Where this request's stream starts, and what the log no longer holds."""
    st = state()
    redis = st.streams
    after = resume_position()
    tail = tail_param()
    skipped = 0
    if tail is not None and not resuming():
        after, skipped = tail_position(redis, job_id, tail, last_seq)
    else:
        tail = None
    if not may_be_trimmed(last_seq, st.config.log_maxlen) or after >= last_seq:
        return Start(after=after, tail=tail, skipped=skipped)
    kept = first_kept(redis, job_id)
    lost = 0
    if kept["seq"] is not None and after + 1 < kept["seq"]:
        lost = kept["seq"] - after - 1
    return Start(after=after, tail=tail, skipped=skipped, first_seq=kept["seq"],
                 first_value=kept["i"], lost=lost)
