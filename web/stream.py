"""The streams: one job's log as plain text lines, as SSE, and as streamed HTML.

Each view checks the request, sends the response headers (and a first line: the SSE retry
interval, the HTML head), and then either

- hands the connection to the process's relay (:mod:`web.relay`), when the gunicorn worker
  lets it take the connection (:class:`web.handover.StreamWorker`, Jobcast's default): the
  request's greenlet ends there, and the relay writes the history and every live entry; or
- follows the job in the request's own greenlet (:func:`web.fallback.follow_batches`), under any
  other server. Both paths frame entries with :mod:`web.frames`, so they send the same bytes.
"""

from __future__ import annotations

import errno
import socket
from typing import Callable, Iterator

from flask import Blueprint, Response, request, stream_with_context, url_for
from werkzeug.exceptions import ServiceUnavailable

from jobcast.joblog import JobLog
from jobcast.urls import JOB_PATHS
from web.fallback import HEARTBEAT, follow_batches
from web.frames import HTML, SSE, TEXT, Transport, html_head, html_notice
from web.handover import HandoverSocket, can_take
from web.limits import StreamSlot, open_slot
from web.lookup import int_param, stream_position
from web.position import stream_start
from web.relay import HeldViewer, Relay
from web.services import state

bp = Blueprint("stream", __name__)

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    # Tell proxies such as nginx not to buffer, and browsers not to sniff (which buffers).
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}


def client_alive(environ: dict) -> Callable[[], bool]:
    """A check that the client has not closed its connection, without writing to it.

    The text stream has no room for heartbeat bytes, so a quiet stream peeks at the socket:
    a readable socket with no data means the peer has closed it.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return lambda: True
    # A gevent socket's recv() waits for data on EAGAIN, even with MSG_DONTWAIT, which would
    # park a quiet stream here until the client sends or closes: peek at the OS socket.
    sock = getattr(sock, "_sock", sock)
    sock = getattr(sock, "_sock", sock)

    def alive() -> bool:
        """False once the peer has closed or reset the connection."""
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)

    return alive


def open_stream(job_id: str, transport: Transport, after: int, *, start: int = 0,
                preamble: bytes = b"") -> Response:
    """The streaming response for ``job_id`` from seq ``after`` on, counted against the caps."""
    st = state()
    if request.method == "HEAD":
        return Response(b"", mimetype=transport.mimetype, headers=STREAM_HEADERS)
    if not st.hub.watch(job_id):
        # Without the subscription confirmed, live entries could not be vouched for.
        raise ServiceUnavailable("Redis did not confirm the subscription to this job's "
                                 "announcements; retry shortly", retry_after=2)
    slot = open_slot(st.limiter, st.config)
    conn = can_take(request.environ)
    if conn is not None:
        conn.claim()  # the headers then say Connection: close, as the relay will close it
        body = _hand_over(conn, st.hub.relay, job_id, transport, after, start, preamble, slot)
    else:
        # The body runs after the view has returned: keep the request (and app) context.
        body = stream_with_context(_follow(job_id, transport, after, start, preamble))
    response = Response(body, mimetype=transport.mimetype, headers=STREAM_HEADERS)
    # Runs even if the body was never iterated (the client left at once); a held stream's
    # slot is released by the relay when it ends.
    response.call_on_close(slot.release_unless_held)
    return response


def _hand_over(conn: HandoverSocket, relay: Relay, job_id: str, transport: Transport, after: int,
               start: int, preamble: bytes, slot: StreamSlot) -> Iterator[bytes]:
    """Send the headers and ``preamble`` through gunicorn, then give the socket to the relay.

    Runs after the view has returned (outside the app context), so it is handed what it needs.
    """
    yield preamble  # even when empty, this makes gunicorn send the headers
    viewer = HeldViewer(job_id, conn.take(), transport, chunked=conn.chunked, cursor=after,
                        start=start, on_close=slot.release)
    slot.held = True
    relay.hold(viewer, here=True)


def _follow(job_id: str, transport: Transport, after: int, start: int,
            preamble: bytes) -> Iterator[bytes]:
    """Follow the job in this greenlet: each batch of entries ready at once is one write."""
    st = state()
    hub = st.hub
    batches = follow_batches(hub, JobLog(st.streams, job_id), after, heartbeat=st.config.heartbeat,
                             alive=client_alive(request.environ))
    try:
        if preamble:
            yield preamble
        for batch in batches:
            if batch is HEARTBEAT:
                if transport.heartbeat:
                    yield transport.heartbeat
                continue
            data = transport.frames(batch, start)
            if data:
                yield data
        if hub.closing and transport.shutdown:
            # This process is stopping: reconnect soon (to another process, or to us once
            # restarted) from the last id.
            yield transport.shutdown
    finally:
        batches.close()


@bp.route(JOB_PATHS["stream"], methods=["GET", "HEAD"])
def text_stream(job_id: str):
    """``text/plain``: one ``"{}\\n".format(value)`` line per value; ends with the job.

    ``?start=K`` skips the first K values, so a reader that counted lines can resume;
    ``?tail=N`` begins with the last N values (web/position.py).
    """
    _, last_seq = stream_position(job_id)
    start = int_param("start", request.args.get("start"))
    begin = stream_start(job_id, last_seq)  # tail, and what a capped log no longer has
    response = open_stream(job_id, TEXT, begin.after, start=start)
    response.headers.update(begin.headers(start))
    return response


@bp.route(JOB_PATHS["events"], methods=["GET", "HEAD"])
def sse_stream(job_id: str):
    """Server-sent events: ``id:`` is the entry's seq, the event type is its kind.

    Resumes after ``Last-Event-ID`` (or ``?after=N``) with no gap and no duplicate;
    ``?tail=N`` begins with the last N values. ``tail`` and ``trimmed`` events come first.
    """
    ended, last_seq = stream_position(job_id)
    begin = stream_start(job_id, last_seq)  # tail, and what a capped log no longer has
    after = begin.after
    if ended and after >= last_seq:
        # Nothing more will come: 204 tells EventSource to stop reconnecting.
        return Response(status=204)
    return open_stream(job_id, SSE, after, preamble=b"retry: 2000\n\n" + begin.sse_prelude())


@bp.route(JOB_PATHS["frame"], methods=["GET", "HEAD"])
def html_stream(job_id: str):
    """Streamed HTML for an ``<iframe>``: a stylesheet first, then ``<p>i: value</p>`` each.

    Every value is escaped (:mod:`web.frames`), so a value cannot inject markup.
    """
    _, last_seq = stream_position(job_id)
    start = int_param("start", request.args.get("start"))
    begin = stream_start(job_id, last_seq)  # tail, and what a capped log no longer has
    head = html_head(url_for("static", filename="frame.css"))
    notice = begin.notice(start)
    response = open_stream(job_id, HTML, begin.after, start=start,
                           preamble=head + (html_notice(notice) if notice else b""))
    response.headers.update(begin.headers(start))
    return response
