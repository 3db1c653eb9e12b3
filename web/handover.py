"""A gunicorn gevent worker whose streams can take over their connection.

Under gunicorn's own gevent worker every open stream keeps a greenlet parked in the WSGI
generator chain, and every value wakes each of them to write through gunicorn's per-write
path: each value queues one wake-up per viewer. :class:`StreamWorker` lets a stream, once
gunicorn has sent the response headers, take the connection's OS socket and hand it to the
process's relay. The request then ends as far as gunicorn is concerned, its greenlet is
freed, and the relay frames each value once and writes it straight to every socket it holds.

It is still gunicorn's gevent worker (same loop, same accept path, same settings): it only
hands the app a socket it may take (``environ["gunicorn.socket"]`` becomes a
:class:`HandoverSocket`), and after a taken response it writes nothing more to the
connection, neither the end of the chunked body nor a keep-alive reply. Like
gevent-websocket's worker, it is set with ``worker_class`` in gunicorn.conf.py.
"""

from __future__ import annotations

import _socket
import gc
import logging
import socket
import ssl
from typing import Callable

from gevent import Timeout
from gevent.server import StreamServer
from gunicorn.workers.ggevent import GeventWorker

log = logging.getLogger(__name__)

_on_exit: list[Callable[[], None]] = []

FAST_PATH = "gunicorn_fast_path"
"""The key, in the Flask app's ``extensions``, of the fast path it offers this worker: a callable
``(first bytes, socket, address) -> bool``, True when it took the connection (see
:mod:`jobcast.web.fastpath`)."""

FIRST_READ = 8192
"""Bytes read for the fast path: a stream request's whole head, as gunicorn's first read."""


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
        """Announce, before the headers go out, that this response will take the connection.

        gunicorn then sends ``Connection: close``: the relay closes the connection when the
        stream ends, so no client may count on reusing it for another request.
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

        def wsgi(environ: dict, start_response):
            """The app, told which gunicorn Response a taken connection belongs to."""
            conn = environ.get("gunicorn.socket")
            if isinstance(conn, HandoverSocket):
                conn.response = getattr(start_response, "__self__", None)
            return app(environ, start_response)

        self.wsgi = wsgi

    def init_process(self) -> None:
        """Accept one connection per turn of the event loop.

        gunicorn already does so when it runs several workers (so they share the accepts);
        with one worker gevent's default takes up to 100 at once, and a burst of newcomers
        then runs before the relay can write the next value to those already watching.
        """
        StreamServer.max_accept = 1
        super().init_process()

    def handle(self, listener, client, addr) -> None:
        """Serve a new connection: its first request through the app's fast path when it
        takes it, else through gunicorn (from the same bytes)."""
        fast = getattr(self, "fast_path", None)
        if (fast is None or isinstance(client, ssl.SSLSocket)
                or getattr(self.cfg, "http_protocols", ["h1"]) != ["h1"]):
            return super().handle(listener, client, addr)
        data = b""
        # A client that connects and says nothing is dropped after keepalive seconds, as
        # gunicorn's own read of the first request would drop it.
        with Timeout(self.cfg.keepalive or None, False):
            try:
                data = client.recv(FIRST_READ)
            except OSError:
                pass
        if not data:
            client.close()
            return None
        try:
            if fast(data, client, addr):
                return None  # the relay holds the connection now
        except Exception:  # the fast path must never cost a request: Flask answers it
            log.exception("fast path failed; serving the request through Flask")
        return super().handle(listener, ReadSocket(client, data), addr)

    def handle_request(self, listener_name, req, sock, addr):
        """Serve one request; a taken connection then ends gunicorn's part in it."""
        if isinstance(sock, ssl.SSLSocket):
            # TLS state lives in this process's SSL object, not in the socket: no handover.
            return super().handle_request(listener_name, req, sock, addr)
        conn = HandoverSocket(sock)
        try:
            result = super().handle_request(listener_name, req, conn, addr)
        finally:
            # gunicorn's Response holds the socket, and the socket its Response: a cycle that
            # would keep both (and the request) for the garbage collector's full pass.
            conn.response = None
        if conn.taken:
            # Ends the keep-alive loop; closing gunicorn's detached socket is then a no-op.
            raise StopIteration()
        return result

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
