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
- and only a request gunicorn would give Flask as it is. httptools is laxer than gunicorn's
  parser in places, so the head is also held to what :mod:`gunicorn.http.message` refuses or
  reads for itself (:class:`HeadRules`, from the worker's settings): its limits on the request
  line, the number and size of header fields; a repeated single-value field (Host,
  Content-Type); contradictory scheme headers (``secure_scheme_headers``); a field name with
  an underscore (dropped, refused, or a trusted proxy's SCRIPT_NAME); Expect; any body
  framing but one ``Content-Length: 0``. A refusal of gunicorn's is a decline here, and
  gunicorn then answers it as it does with the path off;
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
from gunicorn.config import Config
from gunicorn.http import message as gunicorn_message
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
from jobcast.web.security import OTHER_CSP, REFERRER_POLICY, local_host
from jobcast.web.viewer import SocketSink

log = logging.getLogger(__name__)

FAST = {"stream.text_stream": TEXT, "stream.sse_stream": SSE}
"""The views the fast path serves, and their transports."""

ARGS = {TEXT: frozenset({"start", "epoch", "tail"}), SSE: frozenset({"after", "tail"})}
"""The query arguments each of them reads; any other argument goes through Flask."""

MAX_QUERY = 256
"""The longest query string the fast path reads (a stream's arguments are short)."""

SECURITY_HEADERS = (("Content-Security-Policy", OTHER_CSP), ("Referrer-Policy", REFERRER_POLICY))
"""What :func:`jobcast.web.security.security_headers` adds to a stream's response (its
``X-Content-Type-Options`` is already among the stream's own headers)."""


SINGLE = {name.lower().encode("latin-1"): 1 << i for i, name in enumerate(sorted(
    {"HOST", "CONTENT-TYPE", *getattr(gunicorn_message, "RFC9110_5_3_SINGLETON_FIELDS", ())}))}
"""The fields gunicorn refuses to see twice (RFC 9110 5.3), each with a bit of its own."""
HOST = SINGLE[b"host"]

# What :meth:`_Request.on_header` does with a field, by its name (:attr:`HeadRules.kinds`);
# a positive kind is a single-value field's SINGLE bit.
LAST_EVENT_ID, FORWARDED_FOR, BODY, SCHEME, DECLINE = -1, -2, -3, -4, -5
UNDERSCORE, LF = ord("_"), ord("\n")


class HeadRules:
    """What gunicorn's parser refuses in a request head under the worker's settings, read once:
    the fast path declines such a request, for gunicorn to answer (400, 414, 431).

    Limits as :class:`gunicorn.http.message.Request` takes them from the settings (out of range
    or 0 there means gunicorn's own maximum, or none for the request line).
    """

    __slots__ = ("line", "fields", "field", "buffer", "schemes", "kinds")

    def __init__(self, cfg: Config):
        """Read ``cfg``'s limits and secure scheme headers."""
        m = gunicorn_message
        line = cfg.limit_request_line
        self.line = m.MAX_REQUEST_LINE if line < 0 or line >= m.MAX_REQUEST_LINE else line
        fields = cfg.limit_request_fields
        self.fields = m.MAX_HEADERS if fields <= 0 or fields > m.MAX_HEADERS else fields
        field = cfg.limit_request_field_size
        self.field = field if field > 0 else m.DEFAULT_MAX_HEADERFIELD_SIZE
        self.buffer = self.fields * (self.field + 2) + 4  # the most head gunicorn buffers
        # Name -> the value that says https. Whether the peer is a trusted proxy does not
        # matter: a decline is always safe, and two that disagree are rare.
        self.schemes = {name.lower().encode("latin-1"): value.encode("latin-1")
                        for name, value in cfg.secure_scheme_headers.items()}
        # One lookup per field: most fields (User-Agent, Accept...) are none of these.
        kinds: dict[bytes, int] = {}
        for name, kind in [*SINGLE.items(), (b"last-event-id", LAST_EVENT_ID),
                           (b"x-forwarded-for", FORWARDED_FOR), (b"content-length", BODY),
                           (b"transfer-encoding", BODY), (b"expect", DECLINE),
                           *((name, SCHEME) for name in self.schemes)]:
            # A name with two parts to play (a strange setting), or with an underscore (see
            # on_header), is declined.
            kinds[name] = DECLINE if name in kinds or b"_" in name else kind
        self.kinds = kinds

    def refuse(self, data: bytes, target: int) -> bool:
        """Whether gunicorn refuses the head in ``data`` (a whole GET request that httptools
        took, its target ``target`` bytes long) for its size or its request line's form."""
        line_end = 4 + target + 9  # "GET " target " HTTP/1.1"
        if not data.startswith(b" HTTP/1.1\r\n", line_end - 9):
            return True  # httptools takes "GET /x  HTTP/1.1"; gunicorn's version check does not
        if (self.line and line_end > self.line) or not data.endswith(b"\r\n\r\n"):
            return True  # 414; or something after the head
        block = len(data) - line_end - 4  # the field lines' bytes, each line with its CRLF
        # httptools took only CRLF line ends and no folded line: a field is a line, of 4
        # bytes at least ("a:" CRLF), so only a long block needs its lines counted (by their
        # LFs, and the blank line's).
        if block > 4 * self.fields and data.count(LF, line_end + 2) - 1 > self.fields:
            return True  # 431
        if block + 2 > self.buffer:  # what gunicorn buffers after the request line
            return True  # 431
        if block <= self.field:
            return False  # no field line can be longer than them all (the common case)
        return any(len(line) + 2 > self.field  # 431, as gunicorn counts a line
                   for line in data[line_end + 2:-4].split(b"\r\n"))


class _Request:
    """httptools' callbacks: the URL and the few headers the fast path reads."""

    __slots__ = ("url", "last_event_id", "forwarded_for", "has_body", "complete", "messages",
                 "singles", "secure", "unusual", "rules", "host")

    def __init__(self, rules: HeadRules):
        """Nothing read yet."""
        self.url = b""
        self.last_event_id: str | None = None
        self.forwarded_for = ""
        self.has_body = False
        self.complete = False
        self.messages = 0  # more than one: requests pipelined behind the first, gunicorn's
        self.singles = 0  # the SINGLE bits of the fields seen
        self.secure: bool | None = None  # what the first secure scheme header said
        self.unusual = False  # a header gunicorn or Flask answers itself: theirs to answer
        self.rules = rules
        self.host = ""

    def on_message_begin(self) -> None:
        """A request begins."""
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        """The request target (possibly in pieces)."""
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep Last-Event-ID and X-Forwarded-For; note any header that announces a body, and
        any that gunicorn or Flask would answer (see the module's docstring)."""
        name = name.lower()
        kind = self.rules.kinds.get(name)
        if kind is None:
            if UNDERSCORE in name:  # (an int: memchr, where b"_" costs ten times as much)
                # gunicorn drops it, refuses it (header_map), or from a trusted proxy lets it
                # set SCRIPT_NAME, which moves the route.
                self.unusual = True
        elif kind > 0:
            self.unusual |= bool(self.singles & kind)  # a second one: gunicorn's 400
            self.singles |= kind
            if kind == HOST:
                self.host = value.decode("latin-1")
        elif kind == LAST_EVENT_ID:
            if self.last_event_id is None:
                self.last_event_id = value.decode("latin-1")
            else:  # gunicorn joins them with a comma: Flask's 400 names the header
                self.unusual = True
        elif kind == FORWARDED_FOR:
            # Several headers are one comma-separated list, as WSGI servers join them.
            text = value.decode("latin-1")
            self.forwarded_for = f"{self.forwarded_for},{text}" if self.forwarded_for else text
        elif kind == BODY:
            # A body, or a framing gunicorn refuses (501 for a coding it does not know):
            # only one Content-Length: 0 (a second one is httptools' error) is no body.
            self.has_body |= name == b"transfer-encoding" or value.strip(b" \t") != b"0"
        elif kind == SCHEME:
            secure = value.strip(b" \t") == self.rules.schemes[name]  # as gunicorn compares
            if self.secure is None:
                self.secure = secure
            elif secure is not self.secure:
                self.unusual = True  # gunicorn's 400: contradictory scheme headers
        else:  # DECLINE: Expect (gunicorn's 100 Continue, or its 417), or a strange setting
            self.unusual = True

    def on_message_complete(self) -> None:
        """The whole request was in the bytes read."""
        self.complete = True


class FastPath:
    """Admits the app's public text and SSE stream requests straight from their bytes."""

    def __init__(self, app: Flask, gunicorn: Config | None = None):
        """Serve ``app``'s streams (its routes, settings and relay), for a gunicorn worker with
        the settings ``gunicorn`` (gunicorn's defaults until :meth:`configure` says)."""
        self.st = app.extensions["jobcast"]
        self.rules = HeadRules(gunicorn or Config())
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
        rules = self.rules
        seen = _Request(rules)
        parser = httptools.HttpRequestParser(seen)
        parser.feed_data(data)
        if (not seen.complete or seen.messages != 1 or seen.has_body or seen.unusual
                or parser.get_http_version() != "1.1"
                or rules.refuse(data, len(seen.url))):
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
        if not local_host(seen.host.strip(" \t"), self.st.config):
            return None  # another site's name (reads are public here): Flask's 400
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

    def configure(self, gunicorn: Config) -> None:
        """Hold requests to the settings ``gunicorn`` of the worker that serves them (its
        worker class calls this once the app is loaded: with ``--preload`` the app is made
        before there is a worker)."""
        self.rules = HeadRules(gunicorn)

    __call__ = admit  # the worker calls the fast path itself (handover.FAST_PATH)

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
        app.extensions[FAST_PATH] = FastPath(app)
