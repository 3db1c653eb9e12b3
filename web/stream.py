"""The streams: one job's log as plain text lines, as SSE, and as streamed HTML."""

from __future__ import annotations

import errno
import socket
from typing import Callable, Iterator

from flask import Blueprint, Response, request, stream_template

from web import state
from web.follow import HEARTBEAT, follow, follow_batches
from web.limits import limit_stream
from web.lookup import int_param, load_job
from web.position import stream_start
from worker.joblog import TERMINAL, Entry, JobLog

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

    def alive() -> bool:
        """False once the peer has closed or reset the connection."""
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)

    return alive


def limited(response: Response) -> Response:
    """Apply the per-client and per-process stream caps (429/503 with Retry-After)."""
    st = state()
    return limit_stream(response, st.limiter, st.config)


def _follow(job_id: str, after: int) -> Iterator[Entry | None]:
    """Follow ``job_id`` from ``after`` with this process's hub and settings."""
    st = state()
    joblog = JobLog(st.redis, job_id)
    return follow(st.hub, joblog, after, heartbeat=st.config.heartbeat,
                  alive=client_alive(request.environ))


def _follow_batches(job_id: str, after: int) -> Iterator[list[Entry] | None]:
    """Like :func:`_follow`, in lists of the entries ready at once (HEARTBEAT alone)."""
    st = state()
    joblog = JobLog(st.redis, job_id)
    return follow_batches(st.hub, joblog, after, heartbeat=st.config.heartbeat,
                          alive=client_alive(request.environ))


class FrameCache:
    """Each live entry's bytes, encoded once for all the viewers of this process.

    Every viewer of a job is handed the very same Entry objects by the hub, whose ``raw``
    bytes object caches its own hash, so a lookup is cheap; the cache is emptied when full.
    """

    __slots__ = ("encode", "size", "_frames")

    def __init__(self, encode: Callable[[Entry], bytes], size: int = 4096):
        """Cache ``encode(entry)`` for up to ``size`` entries."""
        self.encode = encode
        self.size = size
        self._frames: dict[bytes, bytes] = {}

    def __call__(self, entry: Entry) -> bytes:
        """The frame of ``entry``."""
        frame = self._frames.get(entry.raw)
        if frame is None:
            if len(self._frames) >= self.size:
                self._frames.clear()
            frame = self._frames[entry.raw] = self.encode(entry)
        return frame


def _sse_frame(entry: Entry) -> bytes:
    """An entry as one SSE event."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (entry.seq, entry.kind.encode(), entry.raw)


def _text_line(entry: Entry) -> bytes:
    """A value entry as its text line (b"" for other entries)."""
    return f"{entry.text}\n".encode() if entry.kind == "value" else b""


sse_frame = FrameCache(_sse_frame)
text_line = FrameCache(_text_line)


@bp.get("/jobs/<job_id>/stream")
def text_stream(job_id: str):
    """``text/plain``: one ``"{}\\n".format(value)`` line per value; ends with the job.

    ``?start=K`` skips the first K values, so a reader that counted lines can resume;
    ``?tail=N`` begins with the last N values (web/position.py).
    """
    job = load_job(job_id)
    start = int_param("start", request.args.get("start"))
    begin = stream_start(job_id, job)  # tail, and what a capped log no longer has
    batches = _follow_batches(job_id, begin.after)

    def generate() -> Iterator[bytes]:
        """Encode value entries as lines, all those ready in one write; others send nothing."""
        try:
            for batch in batches:
                if batch is HEARTBEAT:
                    continue
                if len(batch) == 1:
                    entry = batch[0]
                    if entry.kind == "value" and entry.i >= start:
                        yield text_line(entry)
                    continue
                data = b"".join([text_line(e) for e in batch if e.kind == "value" and e.i >= start])
                if data:
                    yield data
        finally:
            batches.close()

    return limited(Response(generate(), mimetype="text/plain",
                            headers={**STREAM_HEADERS, **begin.headers(start)}))


@bp.get("/jobs/<job_id>/events")
def sse_stream(job_id: str):
    """Server-sent events: ``id:`` is the entry's seq, the event type is its kind.

    Resumes after ``Last-Event-ID`` (or ``?after=N``) with no gap and no duplicate;
    ``?tail=N`` begins with the last N values. ``tail`` and ``trimmed`` events come first.
    """
    job = load_job(job_id)
    begin = stream_start(job_id, job)  # tail, and what a capped log no longer has
    after = begin.after
    if job["status"] in TERMINAL and after >= job["last_seq"]:
        # Nothing more will come: 204 tells EventSource to stop reconnecting.
        return Response(status=204)
    batches = _follow_batches(job_id, after)
    hub = state().hub

    def generate() -> Iterator[bytes]:
        """Encode entries as SSE frames, all those ready in one write; heartbeats are comments."""
        try:
            yield b"retry: 2000\n\n" + begin.sse_prelude()
            for batch in batches:
                if batch is HEARTBEAT:
                    yield b": heartbeat\n\n"
                elif len(batch) == 1:
                    yield sse_frame(batch[0])
                else:
                    yield b"".join([sse_frame(e) for e in batch])
            if hub.closing:
                # This process is stopping: reconnect soon (to another process, or to us
                # once restarted) from the last id.
                yield b"retry: 250\n\n"
        finally:
            batches.close()

    headers = dict(STREAM_HEADERS)
    return limited(Response(generate(), mimetype="text/event-stream", headers=headers))


@bp.get("/jobs/<job_id>/frame")
def html_stream(job_id: str):
    """Streamed HTML for an ``<iframe>``: a stylesheet first, then ``<p>i: value</p>`` each.

    Jinja escapes every value, so a value cannot inject markup.
    """
    job = load_job(job_id)
    start = int_param("start", request.args.get("start"))
    begin = stream_start(job_id, job)  # tail, and what a capped log no longer has
    entries = _follow(job_id, begin.after)

    def items() -> Iterator[Entry | None]:
        """Values from ``start`` on, the terminal entry, and heartbeats."""
        try:
            for entry in entries:
                if entry is HEARTBEAT or entry.terminal or (entry.kind == "value" and entry.i >= start):
                    yield entry
        finally:
            entries.close()

    return limited(Response(stream_template("frame.html", entries=items(), notice=begin.notice(start)),
                            mimetype="text/html", headers={**STREAM_HEADERS, **begin.headers(start)}))
