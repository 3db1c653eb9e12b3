"""Request bodies: read whole before the app sees them, by a deadline, never past the limit.

Two holes at the WSGI level, closed here for any server Jobcast runs under (its own gunicorn
worker class, gunicorn's gevent worker under ``init_app``, Flask's development server):

- **A slow body.** gunicorn puts no time limit on reading a request's body, so a client that
  declares 10,000 bytes and sends one every 2 s holds a connection and a greenlet as long as
  it likes, on ``POST /login`` too, which is open in private mode. Here the body must arrive
  within ``JOBCAST_BODY_TIMEOUT`` seconds of the request; past that the request answers 408
  and the connection is closed. (The deadline needs gevent's sockets, as under gunicorn; a
  threaded server's blocking reads are not cut.)
- **A chunked body over the limit.** A chunked body has no Content-Length, and werkzeug's
  ``MAX_CONTENT_LENGTH`` then stops reading at the limit without a word: a 2 MB body was cut
  at 16 KiB and the job created from its start. Here a chunked body is read to one byte past
  ``JOBCAST_MAX_BODY``; over it, the request answers 413. A declared length over the limit
  answers 413 too, unread, on every route (werkzeug's own check runs only when a view reads
  the body: a cancel with a 20 kB body went through).

:class:`BodyLimits` wraps the app's ``wsgi_app`` and reads a body (at most the limit, which is
small) into memory before the app runs; the app then reads it from there, as a body of known
length. A refusal is kept in the environ and raised by :func:`refuse`, the app's first
``before_request``, so it is answered as every error is (JSON, security headers).
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any, Callable, Iterable

from flask import Flask, request
from gevent import Timeout
from gevent.monkey import is_module_patched
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from jobcast.web.handover import can_take

REFUSAL = "jobcast.body_refusal"
"""The environ key of a body's refusal (an HTTPException), raised by :func:`refuse`."""

CHUNK = 65536


class BodyLimits:
    """WSGI middleware: the request's body, read by a deadline and up to the size limit."""

    def __init__(self, app: Callable[..., Iterable[bytes]], timeout: float, max_body: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 cooperative: Callable[[], bool] = lambda: is_module_patched("socket")):
        """Wrap ``app``: bodies must arrive within ``timeout`` seconds and hold at most
        ``max_body`` bytes. ``cooperative`` says whether reads wait on gevent's loop, where a
        timer can cut them (asked per request: with ``--preload`` the app is built before
        gunicorn's worker patches the sockets)."""
        self.app = app
        self.timeout = timeout
        self.max_body = max_body
        self.clock = clock
        self.cooperative = cooperative

    def __call__(self, environ: dict[str, Any], start_response) -> Iterable[bytes]:
        """Read the body, if any, then run the app."""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        length = declared_length(environ)
        if length and length > self.max_body and not chunked:
            # Refused without reading it, whether the view would read a body or not (a cancel
            # reads none: werkzeug refuses a body only when the view reads it).
            environ[REFUSAL] = RequestEntityTooLarge(
                f"the body is over {self.max_body} bytes (JOBCAST_MAX_BODY)")
        elif chunked or length:
            try:
                body = self.read(environ, chunked, length or 0)
            except HTTPException as exc:
                environ[REFUSAL] = exc
            else:
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
                # Now a body of known length: werkzeug reads it as one.
                environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def read(self, environ: dict[str, Any], chunked: bool, length: int) -> bytes:
        """The whole body: ``length`` bytes, or a chunked body of at most the limit.

        RequestTimeout when it does not arrive in time, RequestEntityTooLarge for a chunked
        body over the limit (read to its end first, in time, so the connection stays usable).
        """
        deadline = self.clock() + self.timeout
        stream = environ["wsgi.input"]
        want = self.max_body + 1 if chunked else length
        parts, got = [], 0
        while got < want:
            part = self.timed(environ, deadline, stream.read, min(CHUNK, want - got))
            if not part:
                break  # the end of a chunked body, or a client that stopped short
            parts.append(part)
            got += len(part)
        if chunked and got > self.max_body:
            while self.timed(environ, deadline, stream.read, CHUNK):
                pass
            raise RequestEntityTooLarge(f"the body is over {self.max_body} bytes "
                                        "(JOBCAST_MAX_BODY)")
        return b"".join(parts)

    def timed(self, environ: dict[str, Any], deadline: float, read: Callable[[int], bytes],
              size: int) -> bytes:
        """``read(size)``, cut at ``deadline`` (under gevent): RequestTimeout past it."""
        remaining = deadline - self.clock()
        if remaining <= 0:
            self.expired(environ)
        if not self.cooperative():
            return read(size)  # a blocking read that no timer can cut
        timer = Timeout(remaining)
        timer.start()
        try:
            return read(size)
        except Timeout as exc:
            if exc is not timer:
                raise
            self.expired(environ)
        finally:
            timer.close()

    def expired(self, environ: dict[str, Any]) -> None:
        """The body is late: close the connection's reading side (so gunicorn, looking for the
        rest or a next request, finds its end at once), and raise RequestTimeout."""
        conn = environ.get("gunicorn.socket")
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # the client has gone already
        taker = can_take(environ)
        if taker is not None:
            taker.claim()  # the 408 says Connection: close, as the connection is closed
        raise RequestTimeout(f"the request body did not arrive within {self.timeout:g} s "
                             "(JOBCAST_BODY_TIMEOUT)")


def declared_length(environ: dict[str, Any]) -> int | None:
    """The request's Content-Length, or None (none, or not a number: werkzeug's to judge)."""
    raw = environ.get("CONTENT_LENGTH", "").strip()
    return int(raw) if raw.isdigit() else None


def refuse() -> None:
    """Before every request: answer the body's refusal (408, 413), if it had one."""
    refusal = request.environ.get(REFUSAL)
    if refusal is not None:
        raise refusal


def install(app: Flask, timeout: float, max_body: int) -> None:
    """Read ``app``'s request bodies through :class:`BodyLimits`; answer their refusals first."""
    app.wsgi_app = BodyLimits(app.wsgi_app, timeout, max_body)
    app.before_request_funcs.setdefault(None, []).insert(0, refuse)
