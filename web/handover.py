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

from gevent.server import StreamServer
from gunicorn.workers.ggevent import GeventWorker

log = logging.getLogger(__name__)

_on_exit: list[Callable[[], None]] = []


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
        """Detach the OS socket for the caller, who must close it; gunicorn lets it go.

        The returned socket is a plain (not gevent) non-blocking socket with ``TCP_NODELAY``:
        its owner writes with ``send`` and waits for writability itself.
        """
        if not self.headers_sent:
            raise RuntimeError("take() before the response headers were sent")
        self.taken = True
        fd = self._sock.detach()
        raw = _socket.socket(fileno=fd)
        raw.setblocking(False)
        if raw.family in (socket.AF_INET, socket.AF_INET6):
            # Each write is a whole frame meant to leave at once: no Nagle delay (and a
            # cheaper send()).
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return raw


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

    def handle_request(self, listener_name, req, sock, addr):
        """Serve one request; a taken connection then ends gunicorn's part in it."""
        if isinstance(sock, ssl.SSLSocket):
            # TLS state lives in this process's SSL object, not in the socket: no handover.
            return super().handle_request(listener_name, req, sock, addr)
        conn = HandoverSocket(sock)
        result = super().handle_request(listener_name, req, conn, addr)
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
