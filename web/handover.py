"""A gunicorn gevent worker whose streams can take over their connection.

Under gunicorn's own gevent worker every open stream keeps a greenlet parked in the WSGI
generator chain, and every value wakes each of them to write through gunicorn's per-write
path: each value queues one wake-up per viewer. :class:`StreamWorker` lets a stream, once
gunicorn has sent the response headers, take the connection's OS socket and hand it to the
process's relay. The request then ends as far as gunicorn is concerned, its greenlet is
freed, and the relay frames each value once and writes it straight to every socket it holds.

It is still gunicorn's gevent worker (same loop, same settings, gunicorn's handler and
parser for every request gunicorn serves), with two changes. Gunicorn hands the app a socket
it may take (``environ["gunicorn.socket"]`` becomes a :class:`HandoverSocket`), and after a
taken response writes nothing more to the connection, neither the end of the chunked body nor
a keep-alive reply. And each listener is served by an :class:`AdmittingServer`: it accepts
one connection per turn of the loop, and, on a plain HTTP/1.1 listener when the app offers a
fast path (:mod:`jobcast.web.fastpath`), has its own accept path, which offers a new
connection's first request to the fast path before gunicorn gets what it declines. Like
gevent-websocket's worker, it is set with ``worker_class`` in gunicorn.conf.py.
"""

from __future__ import annotations

import _socket
import gc
import logging
import socket
import ssl
import time
from collections import deque
from functools import partial
from typing import Callable

import gevent
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket
from greenlet import getcurrent
from gunicorn.workers.ggevent import GeventWorker

log = logging.getLogger(__name__)

_on_exit: list[Callable[[], None]] = []

FAST_PATH = "gunicorn_fast_path"
"""The key, in the Flask app's ``extensions``, of the fast path it offers this worker: a callable
``(first bytes, socket, address) -> bool``, True when it took the connection (see
:mod:`jobcast.web.fastpath`)."""

FIRST_READ = 8192
"""Bytes read for the fast path: a stream request's whole head, as gunicorn's first read."""

IDLE_ADMITTERS = 4
"""Admitter greenlets kept waiting for requests (see :class:`AdmittingServer`); more start
only while those wait on Redis, and end once the queue is empty."""


def on_worker_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` when this worker process stops serving (after SIGTERM or SIGQUIT).

    The web's services register their shutdown here: the streams it holds are not requests gunicorn
    knows about, so gunicorn's graceful shutdown would not wait for them.
    """
    _on_exit.append(callback)


class HandoverSocket:
    """The connection's socket as the app sees it: gunicorn's, plus :meth:`take`.

    Every attribute is the real socket's. Writes go through until :meth:`take` hands the
    connection to someone else; after that gunicorn's own writes (the chunked body's end)
    are dropped, and the connection is not reused for another request.
    """

    __slots__ = ("_sock", "_headers", "taken", "response")

    def __init__(self, sock: socket.socket):
        """Wrap gunicorn's client socket."""
        self._sock = sock
        self._headers = b""
        self.taken = False
        self.response = None  # gunicorn's Response for the current request (StreamWorker)

    def __getattr__(self, name: str):
        """Everything else is the real socket's."""
        return getattr(self._sock, name)

    def sendall(self, data: bytes, *args) -> None:
        """Write unless the connection was taken; remember the header block."""
        if self.taken:
            return None
        if not self._headers:
            # gunicorn sends the status line and headers in one write before the body.
            self._headers = bytes(data[:4096])
        return self._sock.sendall(data, *args)

    def send(self, data: bytes, *args) -> int:
        """Like :meth:`sendall` for gunicorn's single writes (100-continue)."""
        if self.taken:
            return len(data)
        return self._sock.send(data, *args)

    @property
    def headers_sent(self) -> bool:
        """True once gunicorn has written the response headers."""
        return bool(self._headers)

    @property
    def chunked(self) -> bool:
        """Whether gunicorn framed the body as HTTP/1.1 chunks (read off its headers)."""
        return b"\r\ntransfer-encoding: chunked\r\n" in self._headers.lower()

    def claim(self) -> None:
        """Announce, before the headers go out, that this response ends the connection.

        gunicorn then sends ``Connection: close``: the relay closes the connection when the
        stream ends (and a 408 closes it at once), so no client may count on reusing it for
        another request.
        """
        if self.response is not None and not self.headers_sent:
            self.response.force_close()

    def take(self) -> _socket.socket:
        """Detach the OS socket for the caller, who must close it; gunicorn lets it go
        (see :func:`detach`)."""
        if not self.headers_sent:
            raise RuntimeError("take() before the response headers were sent")
        self.taken = True
        return detach(self._sock)


def detach(sock) -> _socket.socket:
    """``sock``'s OS socket, detached from gevent's socket object (which closes nothing now).

    The returned socket is a plain (not gevent) non-blocking socket with ``TCP_NODELAY``: its
    owner writes with ``send`` and waits for writability itself.
    """
    if type(sock) is _socket.socket:  # already one (:class:`AdmittingServer`'s connections)
        raw = sock
    else:
        raw = _socket.socket(fileno=sock.detach())
    raw.setblocking(False)
    if raw.family in (socket.AF_INET, socket.AF_INET6):
        # Each write is a whole frame meant to leave at once: no Nagle delay (and a cheaper
        # send()).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return raw


class ReadSocket:
    """A client socket whose first bytes were already read: ``recv`` returns them first.

    When the app's fast path declines a request, gunicorn parses it from here as if nothing
    had been read.
    """

    __slots__ = ("_sock", "_pending")

    def __init__(self, sock: socket.socket, pending: bytes):
        """Wrap ``sock``, with ``pending`` read from it."""
        self._sock = sock
        self._pending = pending

    def __getattr__(self, name: str):
        """Everything else is the real socket's."""
        return getattr(self._sock, name)

    def recv(self, size: int, *args) -> bytes:
        """The pending bytes first (at most ``size``), then the socket's."""
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        return self._sock.recv(size, *args)

    def recv_into(self, buffer, nbytes: int = 0, *args) -> int:
        """:meth:`recv` into ``buffer``."""
        if self._pending:
            data = self.recv(nbytes or len(buffer))
            buffer[:len(data)] = data
            return len(data)
        return self._sock.recv_into(buffer, nbytes, *args)


def can_take(environ: dict) -> HandoverSocket | None:
    """The request's :class:`HandoverSocket`, if its worker supports taking the connection."""
    sock = environ.get("gunicorn.socket")
    return sock if isinstance(sock, HandoverSocket) else None


class StreamWorker(GeventWorker):
    """gunicorn's gevent worker, with connections a stream may take over."""

    _quitting = False
    """A quick stop is under way (:meth:`handle_quit`)."""

    def load_wsgi(self) -> None:
        """Load the app, then move what it allocated out of the garbage collector's sight.

        With thousands of connections, a full collection walks every object the app and its
        imports made; none of them are garbage, so freezing them keeps the pauses short.
        """
        super().load_wsgi()
        gc.collect()
        gc.freeze()
        app = self.wsgi
        self.fast_path = getattr(app, "extensions", {}).get(FAST_PATH)
        configure = getattr(self.fast_path, "configure", None)
        if configure is not None:
            configure(self.cfg)  # the fast path holds requests to this worker's limits

        def wsgi(environ: dict, start_response):
            """The app, told which gunicorn Response a taken connection belongs to."""
            conn = environ.get("gunicorn.socket")
            if isinstance(conn, HandoverSocket):
                conn.response = getattr(start_response, "__self__", None)
            return app(environ, start_response)

        self.wsgi = wsgi

    def init_process(self) -> None:
        """Serve each listener with an :class:`AdmittingServer` (gunicorn's ``server_class``
        seam), which reads a new connection's first request before it costs a greenlet."""
        self.share_log()
        self.server_class = partial(AdmittingServer, worker=self)
        super().init_process()

    def handle_quit(self, sig, frame) -> None:
        """A quick stop (SIGINT, SIGQUIT: Ctrl-C on `jobcast web`), as gunicorn's, outside the
        signal handler; ended in the main greenlet (:meth:`_quit`), once however many signals
        come (the terminal's SIGINT, then the arbiter's SIGQUIT)."""
        if not self._quitting:
            self._quitting = True
            gevent.spawn(self._quit)

    def _quit(self) -> None:
        """gunicorn's quick stop, but the SystemExit that ends the process is raised in the
        main greenlet: gunicorn raises it in this one, which gevent reports as a failure, with
        a traceback, on every Ctrl-C."""
        self.alive = False
        self.cfg.worker_int(self)
        gevent.sleep(0.1)
        gevent.get_hub().parent.throw(SystemExit(0))

    def share_log(self) -> None:
        """Jobcast's log lines (a cancel and who asked, Redis lost and found again) go where
        gunicorn's own go, at its level: ``--log-level``, ``--error-logfile``, syslog.

        Else only warnings would show, bare (Python's last resort). Not when the user's own
        logging configuration (``--log-config`` and its kin) or code has set them already."""
        cfg = self.cfg
        ours = logging.getLogger("jobcast")
        if cfg.logconfig or cfg.logconfig_dict or cfg.logconfig_json or ours.handlers:
            return
        for handler in self.log.error_log.handlers:
            ours.addHandler(handler)
        ours.setLevel(self.log.error_log.level)
        ours.propagate = False

    def handle_request(self, listener_name, req, sock, addr):
        """Serve one request; a taken connection then ends gunicorn's part in it."""
        if isinstance(sock, ssl.SSLSocket):
            # TLS state lives in this process's SSL object, not in the socket: no handover.
            return super().handle_request(listener_name, req, sock, addr)
        conn = HandoverSocket(sock)
        try:
            result = super().handle_request(listener_name, req, conn, addr)
        except TimeoutError:
            # A write to a client that stopped reading passed its deadline (bound_writes):
            # not a server error, and the connection is done with.
            log.info("closed a connection whose client read nothing for %s s", sock.gettimeout())
            raise StopIteration() from None
        finally:
            # gunicorn's Response holds the socket, and the socket its Response: a cycle that
            # would keep both (and the request) for the garbage collector's full pass.
            conn.response = None
        if conn.taken:
            # Ends the keep-alive loop; closing gunicorn's detached socket is then a no-op.
            raise StopIteration()
        return result

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's answer to a request it could not parse (or to its own failure), with a
        JSON body like every other error's rather than its HTML page."""
        # (imported here: the arbiter, which imports this module, loads no Flask; see web/__init__)
        from jobcast.web.parse_errors import JsonErrorSocket

        super().handle_error(req, JsonErrorSocket(client, exc), addr, exc)

    def run(self) -> None:
        """Serve until told to stop, then end the streams this process holds."""
        try:
            super().run()
        finally:
            for callback in _on_exit:
                try:
                    callback()
                except Exception:  # one failing callback must not keep the others from running
                    log.exception("worker exit callback failed")


class AdmittingServer(StreamServer):
    """gevent's StreamServer for :class:`StreamWorker`: the fast path's requests are admitted
    without a greenlet, a gevent socket or a timer of their own.

    A newcomer costs a web process more in gevent's accept path (a gevent socket, a greenlet
    from the pool, a keep-alive timer, a read that waits and switches) than in Jobcast's own
    admission: on this project's bench machine, 120-260 µs of CPU per connection in gevent's
    path against 65-100 µs in this one's (docs/benchmarks.md, "gevent's accept path").

    On every listener it accepts one connection per turn of the event loop (``max_accept``;
    gunicorn does so with several workers; with one, gevent's default of 100 at once would
    let a burst of newcomers run before the relay writes the next value to those already
    watching). And for a plain HTTP/1.1 listener, when the app offers a fast path, it:

    - waits for the first bytes with a bare libev watcher, and drops a client that says
      nothing within gunicorn's ``keepalive`` seconds (as gunicorn's own first read would);
    - hands what arrived to an admitter greenlet, which runs the fast path on every request
      that is in, one after another. An admission that waits (on Redis, for a job this process
      has not seen yet) lets another admitter take the rest, so no newcomer waits behind
      another's wait; a client's own reads are never waited on here (the relay's catch-up of
      a new viewer runs in a greenlet of its own);
    - gives anything the fast path declines to gunicorn's handler, in a greenlet of gunicorn's
      pool, with a gevent socket that returns the bytes already read first.

    With TLS, HTTP/2 or no fast path it is otherwise gevent's StreamServer: gevent's accept
    path, gunicorn's handler.
    """

    max_accept = 1

    def __init__(self, listener, *, worker: StreamWorker, spawn, application=None, log=None,
                 handler_class=None, environ=None, **ssl_args):
        """Serve ``listener`` for ``worker`` (gunicorn passes a pywsgi server's arguments to
        its ``server_class``; the ones only pywsgi reads are ignored)."""
        self.fast_path = getattr(worker, "fast_path", None)
        # gunicorn's first read waits this long too (none with keepalive = 0).
        self.keepalive = worker.cfg.keepalive or float("inf")
        self.direct = (self.fast_path is not None and not ssl_args
                       and getattr(worker.cfg, "http_protocols", ["h1"]) == ["h1"])
        self._waiting: dict[int, tuple[_socket.socket, object, float]] = {}
        self._arrived: deque[tuple[_socket.socket, bytes, object]] = deque()
        self._idle: list = []  # admitter greenlets waiting for requests
        self._admitters = 0
        self._busy = 0  # requests an admitter is serving now
        self._waking = False  # an admitter was told to run, and has not yet
        self._watching = False  # a check that the running admitter did not stop to wait
        self._paused = False  # accepting stopped: worker_connections reached
        self._sweeper = None
        # gevent's close() forgets the handler: a request declined while the worker stops
        # still goes to gunicorn's.
        self._gunicorn = partial(worker.handle, listener)
        super().__init__(listener, handle=self._gunicorn, spawn=spawn, **ssl_args)
        self._size = getattr(spawn, "size", None) or 10_000  # gunicorn's worker_connections
        if self.direct:
            self.full = self._full

    # -- gevent's seams -------------------------------------------------------------------

    def start_accepting(self) -> None:
        """Accept, and look for silent clients once a second."""
        super().start_accepting()
        if self.direct and self._sweeper is None:
            self._sweeper = self.loop.timer(1.0, 1.0)
            self._sweeper.start(self._sweep)

    def close(self) -> None:
        """Stop accepting. The connections accepted so far are still served: gunicorn waits
        for its pool's greenlets (up to ``graceful_timeout``), so one of them waits for those."""
        super().close()
        if self.direct and (self._waiting or self._arrived or self._busy):
            self.pool.spawn(self._drain)

    def _drain(self) -> None:
        """Wait until every accepted connection was admitted, handed over or dropped."""
        while self._waiting or self._arrived or self._busy:
            gevent.sleep(0.05)

    def _full(self) -> bool:
        """Whether worker_connections are taken: the pool's greenlets, and the connections
        waiting for their first bytes, queued or being admitted."""
        used = len(self.pool) + len(self._waiting) + len(self._arrived) + self._busy
        self._paused = used >= self._size
        return self._paused

    def _room(self) -> None:
        """Accept again, once below worker_connections (after :meth:`_full` stopped it)."""
        if self._paused and not self._full():
            self._start_accepting_if_started()

    def do_read(self):
        """Accept one connection: its bare OS socket (non-blocking) and address."""
        if not self.direct:
            return super().do_read()
        listener = self.socket
        try:
            fd, address = listener._accept()
        except BlockingIOError:
            return None
        sock = _socket.socket(listener.family, listener.type, listener.proto, fd)
        sock.setblocking(False)
        return sock, address

    def do_handle(self, sock, address) -> None:
        """Read the new connection's first bytes: now if they are in, else once they are."""
        if not self.direct:
            return super().do_handle(sock, address)
        watcher = self.loop.io(sock.fileno(), 1)
        self._waiting[sock.fileno()] = (sock, watcher, time.monotonic() + self.keepalive)
        if not self._read_first(sock.fileno(), address):
            watcher.start(self._read_first, sock.fileno(), address)
        return None

    # -- first bytes ----------------------------------------------------------------------

    def _read_first(self, fd: int, address) -> bool:
        """The client's first bytes (libev's callback): queue them for an admitter. False
        while there are none yet."""
        sock, watcher, _ = self._waiting[fd]
        try:
            data = sock.recv(FIRST_READ)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        watcher.stop()
        del self._waiting[fd]
        if not data:
            sock.close()  # it left, or failed, before saying anything
            self._room()
            return True
        self._arrived.append((sock, data, address))
        self._wake()
        return True

    def _sweep(self) -> None:
        """Drop the clients that said nothing for ``keepalive`` seconds."""
        now = time.monotonic()
        for fd in [fd for fd, (_, _, deadline) in self._waiting.items() if deadline <= now]:
            self._drop(fd)
        self._room()

    def _drop(self, fd: int) -> None:
        """Close a connection that has not sent a request."""
        sock, watcher, _ = self._waiting.pop(fd)
        watcher.stop()
        sock.close()

    # -- admitters ------------------------------------------------------------------------

    def _wake(self) -> None:
        """Have an admitter run: an idle one, else a new one (at most one per connection
        gunicorn's pool could hold)."""
        if self._waking:
            return
        if self._idle:
            self._waking = True
            self.loop.run_callback(self._idle.pop().switch)
        elif self._admitters < self._size:
            self._waking = True
            self._admitters += 1
            gevent.spawn_raw(self._admit_arrived)

    def _admit_arrived(self) -> None:
        """An admitter: serve the requests that arrived, then wait for more (or end, when
        enough others wait)."""
        me = getcurrent()
        hub = gevent.get_hub()
        try:
            while True:
                self._waking = False
                while self._arrived:
                    sock, data, address = self._arrived.popleft()
                    if self._arrived and not self._watching:
                        # Runs once the hub has the loop back: at once if this admission
                        # waits, and then the requests behind it go to another admitter.
                        self._watching = True
                        self.loop.run_callback(self._blocked)
                    self._busy += 1
                    try:
                        self._serve(sock, data, address)
                    except Exception:  # one request's failure must not stop the admitter
                        log.exception("admission of a new connection failed")
                        sock.close()
                    finally:
                        self._busy -= 1
                    self._room()
                if len(self._idle) >= IDLE_ADMITTERS:
                    return
                self._idle.append(me)
                hub.switch()
        finally:  # ended, or killed
            self._admitters -= 1
            if self._arrived:  # (killed while requests wait)
                self._wake()

    def _blocked(self) -> None:
        """The loop is back while requests still wait: their admitter is waiting."""
        self._watching = False
        if self._arrived:
            self._wake()

    def _serve(self, sock: _socket.socket, data: bytes, address) -> None:
        """The fast path's, or else gunicorn's (in a greenlet of its pool)."""
        try:
            if self.fast_path(data, sock, address):
                return  # the relay holds the connection now
        except Exception as exc:  # the fast path must never cost a request: Flask answers it
            from redis.exceptions import RedisError  # (the arbiter loads no redis-py)

            if isinstance(exc, RedisError):
                # Redis is away: Flask answers 503 and logs it, in one line. A traceback here
                # for each of the viewers retrying would bury the log when it is read most.
                log.debug("fast path: %s; serving the request through Flask", exc)
            else:
                log.exception("fast path failed; serving the request through Flask")
        try:
            client = GeventSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        except OSError:
            sock.close()
            return
        reader = ReadSocket(client, data)
        # Waits for room in the pool (worker_connections), as gevent's accept loop would.
        self.pool.spawn(self._handle_declined, reader, address)

    def _handle_declined(self, client: ReadSocket, address) -> None:
        """gunicorn's handler for a request the fast path declined; then close it."""
        try:
            self._gunicorn(client, address)
        finally:
            client.close()
