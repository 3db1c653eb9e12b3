"""The streams: one job's log as plain text lines, as SSE, and as streamed HTML."""

from __future__ import annotations

import errno
import socket
from typing import Callable, Iterator

from flask import Blueprint, Response, request, stream_template

from web import state
from web.follow import HEARTBEAT, follow
from web.lookup import int_param, load_job, resume_position
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

    def alive() -> bool:
        """False once the peer has closed or reset the connection."""
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)

    return alive


def _follow(job_id: str, after: int) -> Iterator[Entry | None]:
    """Follow ``job_id`` from ``after`` with this process's hub and settings."""
    st = state()
    joblog = JobLog(st.redis, job_id)
    return follow(st.hub, joblog, after, heartbeat=st.config.heartbeat,
                  alive=client_alive(request.environ))


@bp.get("/jobs/<job_id>/stream")
def text_stream(job_id: str):
    """``text/plain``: one ``"{}\\n".format(value)`` line per value; ends with the job.

    ``?start=K`` skips the first K values, so a reader that counted lines can resume.
    """
    load_job(job_id)
    start = int_param("start", request.args.get("start"))
    entries = _follow(job_id, resume_position())

    def generate() -> Iterator[bytes]:
        """Encode value entries as lines; lifecycle entries and heartbeats send nothing."""
        try:
            for entry in entries:
                if entry is not HEARTBEAT and entry.kind == "value" and entry.i >= start:
                    yield f"{entry.text}\n".encode()
        finally:
            entries.close()

    return Response(generate(), mimetype="text/plain", headers=STREAM_HEADERS)


@bp.get("/jobs/<job_id>/events")
def sse_stream(job_id: str):
    """Server-sent events: ``id:`` is the entry's seq, the event type is its kind.

    Resumes after ``Last-Event-ID`` (or ``?after=N``) with no gap and no duplicate.
    """
    job = load_job(job_id)
    after = resume_position()
    if job["status"] in TERMINAL and after >= job["last_seq"]:
        # Nothing more will come: 204 tells EventSource to stop reconnecting.
        return Response(status=204)
    entries = _follow(job_id, after)

    def generate() -> Iterator[bytes]:
        """Encode entries as SSE frames; heartbeats are comments."""
        try:
            yield b"retry: 2000\n\n"
            for entry in entries:
                if entry is HEARTBEAT:
                    yield b": heartbeat\n\n"
                else:
                    yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                        entry.seq, entry.kind.encode(), entry.raw)
        finally:
            entries.close()

    headers = dict(STREAM_HEADERS)
    return Response(generate(), mimetype="text/event-stream", headers=headers)


@bp.get("/jobs/<job_id>/frame")
def html_stream(job_id: str):
    """Streamed HTML for an ``<iframe>``: a stylesheet first, then ``<p>i: value</p>`` each.

    Jinja escapes every value, so a value cannot inject markup.
    """
    load_job(job_id)
    start = int_param("start", request.args.get("start"))
    entries = _follow(job_id, resume_position())

    def items() -> Iterator[Entry | None]:
        """Values from ``start`` on, the terminal entry, and heartbeats."""
        try:
            for entry in entries:
                if entry is HEARTBEAT or entry.terminal or (entry.kind == "value" and entry.i >= start):
                    yield entry
        finally:
            entries.close()

    return Response(stream_template("frame.html", entries=items()), mimetype="text/html",
                    headers=STREAM_HEADERS)
