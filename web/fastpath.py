"""The fast path: a public text or SSE stream request admitted without a full Flask request.

A newcomer's stream request is the one request a busy web process serves by the thousand
while it writes to those already watching (a restarted replica's viewers coming back, a
shared link). Through gunicorn's Python parser, its WSGI environ and Flask's request
dispatch, the request costs more than the admission itself. Jobcast's gunicorn worker
(:class:`~jobcast.web.handover.StreamWorker`, through its
:class:`~jobcast.web.handover.AdmittingServer`) first offers each new connection's request
to :meth:`FastPath.admit`, which:

- parses it with httptools (the C parser uvicorn uses);
- routes it with the app's own URL map, so Flask still owns the routes;
- takes only what it can answer exactly as Flask would: a ``GET`` over HTTP/1.1 of a text or
  SSE stream, with no body, in the public read mode, with known, single query arguments,
  that is admitted (no 400, 404, 204, 429 or 503);
- admits it with the same code as the Flask view (:func:`~jobcast.web.admission.locate`,
  :func:`~jobcast.web.admission.reserve`), writes the same status line and headers (a test
  compares them with Flask's), and hands the socket to the relay.

Anything else (HEAD, a page, the HTML stream, a private server, a view link, an error) is
declined before anything is held: the worker then serves the request through gunicorn and
Flask as usual, from the same bytes. ``JOBCAST_FAST_ADMISSION=false`` turns the path off.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from urllib.parse import parse_qsl

import httptools
from flask import Flask
from gunicorn import SERVER
from gunicorn.util import http_date
from werkzeug.exceptions import HTTPException
from werkzeug.utils import get_content_type

from jobcast.web import services
from jobcast.web.admission import StreamRequest, locate, reserve
from jobcast.web.errors import BadParam
from jobcast.web.frames import SSE, TEXT, Transport, chunk
from jobcast.web.handover import FAST_PATH, detach
from jobcast.web.limits import client_address_of
from jobcast.web.metrics import admitted
from jobcast.web.security import OTHER_CSP
from jobcast.web.viewer import SocketSink

log = logging.getLogger(__name__)

FAST = {"stream.text_stream": TEXT, "stream.sse_stream": SSE}
"""The views the fast path serves, and their transports."""

ARGS = {TEXT: frozenset({"start", "epoch", "tail"}), SSE: frozenset({"after", "tail"})}
"""The query arguments each of them reads; any other argument goes through Flask."""

MAX_QUERY = 256
"""The longest query string the fast path reads (a stream's arguments are short)."""

SECURITY_HEADERS = (("Content-Security-Policy", OTHER_CSP), ("Referrer-Policy", "no-referrer"))
"""What :func:`jobcast.web.security.security_headers` adds to a stream's response (its
``X-Content-Type-Options`` is already among the stream's own headers)."""


class _Request:
    """httptools' callbacks: the URL and the few headers the fast path reads."""

    __slots__ = ("url", "last_event_id", "forwarded_for", "has_body", "complete", "messages",
                 "hosts", "unusual")

    def __init__(self):
        """Nothing read yet."""
        self.url = b""
        self.last_event_id: str | None = None
        self.forwarded_for = ""
        self.has_body = False
        self.complete = False
        self.messages = 0  # more than one: requests pipelined behind the first, gunicorn's
        self.hosts = 0
        self.unusual = False  # a header gunicorn or Flask answers itself: theirs to answer

    def on_message_begin(self) -> None:
        """A request begins."""
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        """The request target (possibly in pieces)."""
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep Last-Event-ID and X-Forwarded-For; note any header that announces a body, and
        any that gunicorn or Flask would answer (Expect, a second Host or Last-Event-ID)."""
        name = name.lower()
        if name == b"last-event-id":
            if self.last_event_id is None:
                self.last_event_id = value.decode("latin-1")
            else:  # gunicorn joins them with a comma: Flask's 400 names the header
                self.unusual = True
        elif name == b"host":
            self.hosts += 1
            self.unusual |= self.hosts > 1  # gunicorn's 400
        elif name == b"expect":
            self.unusual = True  # gunicorn's 100 Continue, or its 417
        elif name == b"x-forwarded-for":
            # Several headers are one comma-separated list, as WSGI servers join them.
            text = value.decode("latin-1")
            self.forwarded_for = f"{self.forwarded_for},{text}" if self.forwarded_for else text
        elif name in (b"content-length", b"transfer-encoding") and value.strip() not in (b"0", b""):
            self.has_body = True

    def on_message_complete(self) -> None:
        """The whole request was in the bytes read."""
        self.complete = True


class FastPath:
    """Admits the app's public text and SSE stream requests straight from their bytes."""

    def __init__(self, app: Flask):
        """Serve ``app``'s streams (its routes, settings and relay)."""
        self.st = app.extensions["jobcast"]
        self.urls = app.url_map.bind("localhost")
        # Many viewers of a job ask for the same few paths: route each once.
        self._route = lru_cache(maxsize=4096)(self._match)
        self._tail = {t: self._head_tail(t) for t in FAST.values()}
        self._date = (0, b"")

    def admit(self, data: bytes, sock, addr) -> bool:
        """Admit the request in ``data`` (the first bytes read from ``sock``) and give the
        connection to the relay: True. False, with nothing held or written, when Flask must
        answer it."""
        try:
            parsed = self._parse(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, ValueError):
            return False  # gunicorn's parser says what is wrong with it
        if parsed is None:
            return False
        transport, req, forwarded = parsed
        if not isinstance(addr, tuple):
            return False  # a Unix socket: Flask reads the address as gunicorn gives it
        st = self.st
        relay = services.start(st)  # as Flask's before_request does for a first request
        try:
            adm = locate(st, req)
        except HTTPException:
            return False
        if adm is None or adm.nothing_more:
            return False  # 404, 204: Flask answers
        client = client_address_of(st.config, addr[0], forwarded)
        if not st.limiter.room(client):
            return False  # 429 or 503, counted and answered once, by Flask
        try:
            (lease,), slot = reserve(st, [req.job_id], client)
        except HTTPException:
            return False  # Redis did not confirm in time: Flask tries again, then answers 503
        viewer = adm.viewer((lease, slot))
        sink = None
        try:
            first = adm.preamble(viewer.retry)
            out = self._head(transport, adm.headers()) + chunk(first)  # none when empty
            # The OS socket, written directly: a new connection's buffer takes the head at once.
            sink = SocketSink(detach(sock), green=relay.green)
            viewer.attach(sink, chunked=True)
            # A resume (a restarted replica's viewers coming back by the thousand) is a few
            # entries behind: from memory, they go out with the head, and the viewer is on
            # the fast path at once. A first visit takes the job's whole history, which its
            # own catch-up writes: written in the admitter, it slowed storm100 in 6 of 9
            # alternated pairs (docs/benchmarks.md, "Returning viewers in one write").
            if req.resume is not None and relay.hold_now(viewer, out):
                admitted("fast")
                return True
            if not sink.send_all(out, st.config.write_timeout):
                raise TimeoutError("the client accepted none of the response headers")
            admitted("fast")
        except Exception as exc:
            # Past this point the request is answered here or not at all: free what it holds.
            if not isinstance(exc, OSError):  # OSError (and TimeoutError): the client left
                log.exception("fast path failed after admitting a stream of job %s", req.job_id)
            viewer.abandon()
            (sink or sock).close()
            return True
        try:
            # The catch-up from the log in a greenlet of its own: it waits as long as the
            # client reads, and the admitter that runs this serves other newcomers meanwhile.
            relay.hold(viewer)
        except Exception:
            log.exception("relay failed to take a stream of job %s", req.job_id)
            relay.release(viewer, "error")  # frees the viewer's lease and slot, closes it
        return True

    def _parse(self, data: bytes) -> tuple[Transport, StreamRequest, str] | None:
        """The request's transport, stream request and X-Forwarded-For, if the fast path may
        serve it; None otherwise."""
        if not data.startswith(b"GET /"):
            return None
        seen = _Request()
        parser = httptools.HttpRequestParser(seen)
        parser.feed_data(data)
        if (not seen.complete or seen.messages != 1 or seen.has_body or seen.unusual
                or parser.get_http_version() != "1.1"):
            return None
        url = httptools.parse_url(seen.url)
        if url.schema or url.fragment or b"%" in url.path:
            return None
        query = (url.query or b"").decode("latin-1")
        if len(query) > MAX_QUERY:
            return None
        route = self._route(url.path)
        if route is None:
            return None
        transport, job_id = route
        pairs = parse_qsl(query, keep_blank_values=True)
        args = dict(pairs)
        if len(args) != len(pairs) or not args.keys() <= ARGS[transport]:
            return None
        try:
            req = StreamRequest.of(job_id, transport, seen.last_event_id, args)
        except BadParam:
            return None
        return transport, req, seen.forwarded_for

    def _match(self, path: bytes) -> tuple[Transport, str] | None:
        """The transport and job id of a stream view at ``path``, routed by the app's URL map;
        None for any other route, or none."""
        try:
            endpoint, view_args = self.urls.match(path.decode("ascii"), method="GET")
        except (HTTPException, UnicodeDecodeError):
            return None  # not found, not allowed, a redirect: Flask answers
        transport = FAST.get(endpoint)
        return None if transport is None else (transport, view_args["job_id"])

    def _head(self, transport: Transport, headers: dict[str, str]) -> bytes:
        """The status line and headers, as gunicorn writes Flask's response to a stream that
        takes its connection."""
        now = int(time.time())
        if self._date[0] != now:  # gunicorn's Date, formatted once a second
            self._date = (now, b"HTTP/1.1 200 OK\r\nServer: %s\r\nDate: %s\r\nConnection: close"
                               b"\r\nTransfer-Encoding: chunked\r\n" % (SERVER.encode(),
                                                                       http_date(now).encode()))
        own = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        return self._date[1] + own.encode("latin-1") + self._tail[transport]

    @staticmethod
    def _head_tail(transport: Transport) -> bytes:
        """The headers after a stream's own: Content-Type (werkzeug's Response puts it after
        the headers it is given) and the security headers; then the blank line."""
        lines = [("Content-Type", get_content_type(transport.mimetype, "utf-8")), *SECURITY_HEADERS]
        return "".join([f"{name}: {value}\r\n" for name, value in lines]).encode("latin-1") + b"\r\n"


def init_app(app: Flask) -> None:
    """Offer the fast path to Jobcast's gunicorn worker (:data:`~jobcast.web.handover.FAST_PATH`),
    unless it is turned off or the server is private (tokens, sessions and view links are
    Flask's, web/security.py)."""
    cfg = app.extensions["jobcast"].config
    if cfg.fast_admission and cfg.read_mode == "public":
        app.extensions[FAST_PATH] = FastPath(app).admit
