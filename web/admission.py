"""Admission: one stream request, parsed once, checked, and handed to the relay as a viewer.

The three stream views (text, SSE, HTML) share this one prologue (:func:`admit`):

1. :meth:`StreamRequest.parse` reads the request once: the job id and where to start, from
   ``Last-Event-ID`` (or ``?after=``: ``<seq>`` or ``<seq>:<epoch>``) to resume after an entry,
   ``?tail=N`` to begin with the last N values, ``?start=K`` (with ``&epoch=E``) to skip the
   first K values (text and HTML), or nothing (the whole log). A resume wins over ``?tail=``, so
   a reconnect stays exact. Bad values are a 400 naming the parameter, before any Redis key is
   built.
2. The job's position (ended, last seq, epoch) comes from the relay (memory when it watches the
   job, else one read shared by a burst of newcomers). A pending RQ job that Jobcast did not
   enqueue gets its log opened (:meth:`~jobcast.core.logstore.LogStore.adopt`); anything else
   unknown is a 404. A resume in another epoch, or past the log's end, is placed in the log as
   it is (:func:`placed`): it continues, or gets one reset before anything else (SSE ``event:
   reset``; ``Jobcast-Reset`` on the text and HTML streams, and a line of the HTML stream).
3. :func:`stream_start` works out the first entry to send, and what a capped log no longer
   holds: never silent (SSE ``event: trimmed``, the ``Jobcast-First-Value`` header, a line of
   the HTML stream).
4. The job's subscription is leased once (503 if Redis does not confirm it), a stream slot is
   taken (429/503 over the caps), and both belong to the new :class:`Viewer` from then on.
5. The response either hands its connection to the relay once the headers are out (Jobcast's
   gunicorn worker class), or drains the viewer's bounded queue in its WSGI generator (any
   other server). The relay writes the same bytes either way.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Mapping

from flask import Response, abort, request, url_for
from werkzeug.exceptions import ServiceUnavailable

from jobcast.core.epoch import Position, Reset, resolve, sse_id
from jobcast.core.joblog import JobInfo, JobLog, UnknownJob
from jobcast.web.frames import (HTML, SSE, Transport, html_head, html_notice, html_reset,
                                sse_reset, sse_trimmed)
from jobcast.web.handover import HandoverSocket, can_take
from jobcast.web.limits import StreamSlot, client_address
from jobcast.web.metrics import admitted
from jobcast.web.models import no_content, stream_head
from jobcast.web.params import checked_id, epoch_param, int_param, position_param
from jobcast.web.relay import NotSubscribed, Relay
from jobcast.web.services import State, state
from jobcast.web.viewer import Lease, QueueSink, SocketSink, Viewer, drained_alive


STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    # Tell proxies such as nginx not to buffer, and browsers not to sniff (which buffers).
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}

RETRY = (500, 2500)
"""The range each SSE connection's ``retry:`` (milliseconds) is drawn from, so a restart does
not bring every client back at the same instant."""


def retry_ms() -> int:
    """A new SSE connection's reconnection delay, in milliseconds."""
    return random.randint(*RETRY)


def load_job(job_id: str) -> JobInfo:
    """The job's info, or 400 for a malformed id and 404 for an unknown one (a pending RQ job
    that Jobcast did not enqueue has its log opened first)."""
    logs = state().logs
    jlog = logs.log(checked_id(job_id))
    try:
        return jlog.info()
    except UnknownJob:
        pass
    if logs.adopt(job_id):
        return jlog.info()
    abort(404, description=f"no job with id {job_id}")


@dataclass(frozen=True)
class StreamRequest:
    """What one stream request asks for, read once."""

    job_id: str
    transport: Transport
    resume: int | None = None  # Last-Event-ID, or ?after=: an exact position to resume after
    tail: int | None = None    # ?tail=N: begin with the last N values
    start: int = 0             # ?start=K: skip values below index K (text and HTML)
    epoch: str | None = None   # the epoch the resume (or the count of values) was taken in

    @classmethod
    def parse(cls, job_id: str, transport: Transport) -> "StreamRequest":
        """Read the current request; a 400 naming the parameter for a bad one."""
        return cls.of(job_id, transport, request.headers.get("Last-Event-ID"), request.args)

    @classmethod
    def of(cls, job_id: str, transport: Transport, last_event_id: str | None,
           args: Mapping[str, str]) -> "StreamRequest":
        """A stream request from its job id, ``Last-Event-ID`` header and query arguments; a
        400 naming the parameter for a bad one."""
        job_id = checked_id(job_id)
        epoch = None
        if last_event_id:
            resume, epoch = position_param("Last-Event-ID", last_event_id)
        elif args.get("after"):
            resume, epoch = position_param("after", args.get("after"))
        else:
            resume = None
        raw_tail = args.get("tail")
        tail = None if raw_tail is None or raw_tail == "" else int_param("tail", raw_tail)
        start = 0
        if transport.filters_values:
            start = int_param("start", args.get("start"))
            epoch = epoch or epoch_param(args.get("epoch"))
        return cls(job_id, transport, resume, tail, start, epoch)


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

    @property
    def cursor(self) -> int:
        """Where the viewer's catch-up reads on: past what the stream says is lost (told
        once, so that its first read does not find that gap and say it again)."""
        return self.first_seq - 1 if self.trimmed and self.first_seq is not None else self.after

    def sse_prelude(self, epoch: str | None = None) -> bytes:
        """SSE events that come before the first entry: ``tail`` and ``trimmed``.

        Given the stream's ``epoch`` (a single-job stream), ``tail`` has the id of the position
        it begins after, as a reset has: a browser cut off before any entry came resumes there
        with its Last-Event-ID, where without one it would ask for the tail anew, at the log's
        new end, and skip the values between in silence. ``trimmed`` has none: it must not
        move the client past what it says is lost. A stream of several jobs gives none (its
        ids are its own cursor).
        """
        out = b""
        if self.tail is not None:
            at = b"id: %s\n" % sse_id(self.after, epoch) if epoch else b""
            out += at + b"event: tail\ndata: %s\n\n" % _json({
                "tail": self.tail, "skipped": self.skipped, "after": self.after})
        if self.trimmed:
            out += sse_trimmed({"after": self.after, "first_seq": self.first_seq,
                                "lost": self.lost, "first_value": self.first_value})
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


def may_be_trimmed(last_seq: int, maxlen: int) -> bool:
    """False when the log cannot have lost an entry: it never held more than the cap.

    Redis trims a stream only while it has more than ``maxlen`` entries, and every entry
    of a job's log was appended with the job's seq, so a log with ``last_seq <= maxlen``
    is whole. Most jobs are, and their viewers cost no extra read (JOBCAST_LOG_MAXLEN is
    the same for every service, like every setting).
    """
    return last_seq > maxlen


def stream_start(req: StreamRequest, jlog: JobLog, last_seq: int, maxlen: int,
                 ended: bool = False) -> Start:
    """Where ``req``'s stream starts in ``jlog``, and what the log no longer holds
    (``ended``: the log's last entry, ``last_seq``, is the job's end)."""
    after, tail, skipped = req.resume or 0, req.tail, 0
    if tail is not None and req.resume is None:
        after, skipped = jlog.tail_start(tail, last_seq)
        if ended and after >= last_seq:
            # ``?tail=0`` of an ended job: of what comes live, there is only its end, which
            # every stream ends with (SSE's terminal event, the HTML stream's "Done").
            after = last_seq - 1
    else:
        tail = None
    if not may_be_trimmed(last_seq, maxlen) or after >= last_seq:
        return Start(after=after, tail=tail, skipped=skipped)
    first_seq, first_value = jlog.first_kept()
    lost = first_seq - after - 1 if first_seq is not None and after + 1 < first_seq else 0
    return Start(after=after, tail=tail, skipped=skipped, first_seq=first_seq,
                 first_value=first_value, lost=lost)


def placed(req: StreamRequest, position: Position,
           jlog: JobLog) -> tuple[StreamRequest, Reset | None, str | None]:
    """Where ``req`` resumes in the log as it is now: the request as it goes on (its resume,
    or its count of values, moved by a reset), the reset it must be told first (None), and the
    epoch its viewer follows.

    The common resume (the current epoch, not past the end) costs nothing more; any other one
    reads the log's head and is resolved (:func:`jobcast.core.epoch.resolve`). A position past
    the end is the client's claim only: it resets this client, and mints no epoch.
    """
    seq = req.resume
    values = req.start if seq is None and req.transport.filters_values and (
        req.start or req.epoch) else None
    if seq is None and values is None:
        return req, None, position.epoch
    if values is None and req.epoch == position.epoch and seq <= position.seq:
        return req, None, position.epoch
    head = jlog.head()
    if not head.exists:
        return req, None, position.epoch
    reset = resolve(head, req.epoch, seq=seq, values=values)
    if reset is None:
        return req, None, head.epoch
    moved = replace(req, resume=reset.after) if seq is not None else replace(req, start=reset.values)
    return moved, reset, reset.epoch


def client_alive(environ: dict) -> Callable[[], bool]:
    """A check that the client has not closed its connection, without writing to it.

    The text stream has no room for heartbeat bytes, so a quiet stream reads the socket: a
    readable socket with no data means the peer has closed it (:func:`drained_alive`).
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return lambda: True
    # A gevent socket's recv() waits for data on EAGAIN, even with MSG_DONTWAIT, which would
    # park a quiet stream here until the client sends or closes: read the OS socket.
    sock = getattr(sock, "_sock", sock)
    sock = getattr(sock, "_sock", sock)
    return lambda: drained_alive(sock)


PART = 64 * 1024
"""The most the app hands the server in one piece (see :func:`bound_writes`)."""


def bound_writes(environ: dict, timeout: float) -> None:
    """Give the server's own writes to this client a deadline of ``timeout`` seconds.

    The relay's writes have theirs (JOBCAST_WRITE_TIMEOUT). What the server writes for the
    app (a stream's first bytes before the relay holds it, a stream under any worker but
    Jobcast's, a download) goes through a blocking socket, which waits forever for a client
    that stopped reading: its request, its stream slot or download, and the bytes would be held
    for good. With a timeout on the socket the write fails instead, and the server closes the
    connection. The deadline is per write call, so the app hands the server :data:`PART`
    bytes at most at a time (:func:`parts`).
    """
    sock = environ.get("gunicorn.socket")
    settimeout = getattr(sock, "settimeout", None)
    if settimeout is not None and timeout > 0:
        settimeout(timeout)


def parts(data: bytes) -> Iterator[bytes]:
    """``data`` in pieces of :data:`PART` bytes at most; one empty piece for no data (the
    server sends the headers with the first piece)."""
    if len(data) <= PART:
        yield data
        return
    view = memoryview(data)
    for start in range(0, len(data), PART):
        yield bytes(view[start:start + PART])


@dataclass(frozen=True)
class Admission:
    """Where an admitted stream begins in the log as it is (steps 2 and 3), before anything
    is held for it: no request context needed, so the worker's fast path shares it."""

    req: StreamRequest
    begin: Start
    reset: Reset | None
    epoch: str | None
    ended: bool
    last_seq: int

    @property
    def nothing_more(self) -> bool:
        """An SSE stream of an ended job with nothing after its position: 204 tells
        EventSource to stop reconnecting."""
        return (self.req.transport is SSE and self.ended and self.begin.after >= self.last_seq
                and self.reset is None)

    def headers(self) -> dict[str, str]:
        """The stream's own response headers (the security headers come on top)."""
        headers = dict(STREAM_HEADERS)
        if self.req.transport.filters_values:
            headers.update(self.begin.headers(self.req.start))
        if self.epoch:
            headers["Jobcast-Epoch"] = self.epoch  # what a client resumes with (?start=K&epoch=E)
        if self.reset is not None:
            headers["Jobcast-Reset"] = self.reset.header()
        return headers

    def viewer(self, resources: tuple) -> Viewer:
        """The new viewer, owning ``resources`` (its lease and slot) from now on."""
        viewer = Viewer(self.req.job_id, None, self.req.transport, cursor=self.begin.cursor,
                        start=self.req.start, epoch=self.epoch, resources=resources)
        if self.begin.tail is not None and self.reset is None and not self.begin.trimmed:
            viewer.values = self.begin.skipped  # a tail begins after exactly these values
        viewer.retry = retry_ms()
        return viewer

    def preamble(self, retry: int, css: str = "", script: str = "", heartbeat: float = 0) -> bytes:
        """The bytes the stream sends before its first entry, a reset first of all (``css``,
        ``script`` and ``heartbeat``: the HTML stream's stylesheet and script, and its
        heartbeat's interval, :func:`~jobcast.web.frames.html_head`)."""
        req, begin, reset = self.req, self.begin, self.reset
        if req.transport is SSE:
            return (b"retry: %d\n\n" % retry + (sse_reset(reset) if reset else b"")
                    + begin.sse_prelude(self.epoch))
        if req.transport is HTML:
            notice = begin.notice(req.start)
            return (html_head(css, script, heartbeat) + (html_reset(reset) if reset else b"")
                    + (html_notice(notice) if notice else b""))
        return b""


def locate(st: State, req: StreamRequest, position: Position | None = None, *,
           read: bool = False) -> Admission | None:
    """Where ``req``'s stream begins; None when there is no such job. ``position``: the job's,
    when ``read`` already (a multi-job stream reads all of its jobs' at once; None there is a
    job the relay does not know, read no further)."""
    if not read:
        position = st.relay.position(req.job_id)
    if position is None and st.logs.adopt(req.job_id):
        position = st.relay.position(req.job_id)  # a plain RQ job, its log just opened
    if position is None:
        return None
    ended, last_seq, _ = position
    jlog = st.logs.log(req.job_id)
    req, reset, epoch = placed(req, position, jlog)
    begin = stream_start(req, jlog, last_seq, st.config.log_maxlen, ended)
    return Admission(req, begin, reset, epoch, ended, last_seq)


def reserve(st: State, job_ids: list[str], client: str) -> tuple[list[Lease], StreamSlot]:
    """What an open stream holds: a slot among ``client``'s streams and a confirmed
    subscription to each of ``job_ids``. 429/503 when the client or the process has too many
    streams, 503 when Redis did not confirm the subscriptions (live entries could not be
    vouched for).

    The slot comes first, with no wait before it: a caller that found room a moment ago
    (:meth:`~jobcast.web.limits.StreamLimiter.room`) still has it.
    """
    slot = StreamSlot(st.limiter, client)
    try:
        return st.relay.leases(job_ids), slot
    except NotSubscribed:
        slot.release()
        raise ServiceUnavailable("Redis did not confirm the subscription to the job's "
                                 "announcements; retry shortly", retry_after=2) from None
    except BaseException:
        slot.release()
        raise


def admit(req: StreamRequest) -> Response:
    """The streaming response for ``req``: every stream view's one prologue."""
    st = state()
    relay = st.relay
    adm = locate(st, req)
    if adm is None:
        abort(404, description=f"no job with id {req.job_id}")
    if adm.nothing_more:
        return no_content()
    req, headers = adm.req, adm.headers()
    if request.method == "HEAD":
        return stream_head(req.transport.mimetype, headers)
    (lease,), slot = reserve(st, [req.job_id], client_address(st.config))
    viewer = adm.viewer((lease, slot))
    try:
        admitted("flask")
        bound_writes(request.environ, st.config.write_timeout)
        first = (adm.preamble(viewer.retry, url_for("static", filename="frame.css"),
                              url_for("static", filename="frame.js"), st.config.heartbeat)
                 if req.transport is HTML else adm.preamble(viewer.retry))
        conn = can_take(request.environ)
        if conn is not None:
            conn.claim()  # the headers then say Connection: close, as the relay will close it
            body = hand_over(conn, viewer.attach, lambda: relay.hold(viewer, here=True),
                             relay.green, first)
        else:
            viewer.sink = QueueSink(st.config.viewer_buffer, alive=client_alive(request.environ))
            body = drain(relay, viewer, first)
        response = Response(body, mimetype=req.transport.mimetype, headers=headers)
    except BaseException:
        # No response carries the viewer, so nothing else would give back its lease and its
        # slot among the client's streams.
        viewer.abandon()
        raise
    # Runs even if the body was never iterated (the client left at once); a viewer the relay
    # took is ended by the relay instead.
    response.call_on_close(viewer.abandon)
    return response


def hand_over(conn: HandoverSocket, attach: Callable[..., None], hold: Callable[[], None],
              green: bool, first: bytes) -> Iterator[bytes]:
    """Send the headers and ``first`` through gunicorn, then give the socket to the relay:
    ``attach(sink, chunked=...)`` it to the stream, and ``hold()``.

    Runs after the view has returned (outside the app context), so it is handed what it needs.
    """
    yield from parts(first)  # even when empty, this makes gunicorn send the headers
    attach(SocketSink(conn.take(), green=green), chunked=conn.chunked)
    hold()


def drain(relay: Relay, viewer: Viewer, first: bytes, *, hold: Callable[[], None] | None = None,
          release: Callable[[], None] | None = None) -> Iterator[bytes]:
    """Under any other server: the relay writes into the viewer's bounded queue, and this
    generator hands what it finds to the server, until the relay ends the stream.

    ``hold`` and ``release`` default to the relay taking and ending ``viewer`` (a multi-job
    stream passes its connection's).
    """
    sink = viewer.sink
    try:
        # Even when empty (a text stream has no preamble): the server sends the headers with
        # the first thing yielded, and a queued job's first value may be minutes away.
        yield from parts(first)
        hold() if hold is not None else relay.hold(viewer)
        while True:
            data = sink.get(timeout=relay.heartbeat)
            if data is None:
                return
            if data:
                yield from parts(data)
    finally:
        # The server stopped iterating (the client went away during a write), or it ended.
        release() if release is not None else relay.release(viewer, "closed")
