"""Many viewers from one address, with default settings: every one served, every value once.

A thousand raw connections from 127.0.0.1 to the real gunicorn (Jobcast's own worker class,
which hands each stream's connection to the relay). Half read the text stream over HTTP/1.0
(a raw, close-delimited body), half read SSE over HTTP/1.1 (chunked). Responses are parsed by
h11, the HTTP/1.1 state machine httpx is built on.
"""

from __future__ import annotations

import re
import resource
import selectors
import socket

import h11

from tests.support.jobs import running_job
from tests.support.wait import wait_for

VIEWERS = 1000


def raise_fd_limit(need: int) -> None:
    """Let this process hold ``need`` more sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need + 1024), hard))


class Viewer:
    """One raw streaming connection and the response h11 reads from it."""

    def __init__(self, port: int, path: str, http10: bool):
        """Connect and send the request."""
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=path, headers=[("Host", "127.0.0.1")])
        data = self.conn.send(request) + self.conn.send(h11.EndOfMessage())
        if http10:
            # h11 writes only HTTP/1.1 requests; it reads an HTTP/1.0 response all the same.
            data = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
        self.sock.sendall(data)
        self.status = 0
        self.chunked = False
        self.body = bytearray()
        self.done = False

    def feed(self, data: bytes) -> None:
        """Parse what arrived (b"" at the end of the connection)."""
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.chunked = (b"transfer-encoding", b"chunked") in [
                    (k.lower(), v.lower()) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                self.done = True
                return


def test_a_thousand_viewers_from_one_address_are_all_served_with_default_settings(web, redis):
    raise_fd_limit(VIEWERS)
    log = running_job(redis)
    log.value(0, "history")
    viewers = []
    for k in range(VIEWERS):
        http10 = k % 2 == 0
        path = f"/jobs/{log.job_id}/stream" if http10 else f"/jobs/{log.job_id}/events"
        viewers.append(Viewer(web.port, path, http10))
    sel = selectors.DefaultSelector()
    for v in viewers:
        v.sock.setblocking(False)
        sel.register(v.sock, selectors.EVENT_READ, v)

    def pump() -> None:
        """Read whatever the server has sent."""
        for key, _ in sel.select(timeout=0.1):
            v = key.data
            try:
                data = v.sock.recv(65536)
            except BlockingIOError:
                continue
            v.feed(data)
            if not data or v.done:
                sel.unregister(v.sock)
                v.sock.close()

    def everyone_has(text: bytes) -> bool:
        """True once every viewer has received ``text``."""
        pump()
        return all(text in v.body for v in viewers)

    # Every viewer is served (no 429) and gets the history before any live value.
    wait_for(lambda: everyone_has(b"history"), 60, what="history at every viewer")
    for i in range(1, 6):
        log.value(i, f"live{i}")
    log.finished()
    wait_for(lambda: (pump(), all(v.done for v in viewers))[1], 60, what="every stream to end")
    sel.close()

    assert [v.status for v in viewers] == [200] * VIEWERS
    lines = b"history\n" + b"".join(b"live%d\n" % i for i in range(1, 6))
    for k, v in enumerate(viewers):
        if k % 2 == 0:  # text over HTTP/1.0: a raw body, ended by closing the connection
            assert not v.chunked and bytes(v.body) == lines
        else:  # SSE over HTTP/1.1: chunked, ended by the last chunk; ids are the log's seqs
            assert v.chunked
            assert re.findall(rb"^id: (\d+):[\w-]+$", bytes(v.body), re.M) == [
                b"%d" % s for s in range(1, 10)]
