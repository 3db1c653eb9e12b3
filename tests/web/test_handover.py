"""The socket hand-over (jobcast.web.handover.HandoverSocket): gunicorn's Response writes the
headers through it, the stream takes the OS socket, and gunicorn's later writes are dropped.
Real sockets and gunicorn's own Response class on a stand-in request; no gunicorn process."""

from __future__ import annotations

import _socket
import contextlib
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Iterator

import h11
import httpx
import pytest
from gunicorn.config import Config
from gunicorn.http.wsgi import Response
from redis import Redis

from jobcast.launcher.redisserver import RedisServer
from jobcast.web.frames import LAST_CHUNK, chunk
from jobcast.web.handover import AdmittingServer, HandoverSocket, can_take
from tests.support.jobs import running_job
from tests.support.services import WebServer
from tests.support.wait import wait_for
from tests.support.fastpath import finished_job, request, settled_admissions


class Request:
    """What gunicorn's Response asks of its request."""

    def __init__(self, version=(1, 1), method="GET"):
        self.version, self.method = version, method

    def should_close(self) -> bool:
        """A keep-alive client."""
        return False


@pytest.fixture
def tcp() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on the loopback: (the server's side, the client's side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()  # blocking: take() must make it non-blocking
    yield server, client
    server.close()
    client.close()


def respond(conn: HandoverSocket, request: Request, status: str = "200 OK",
            headers: list | None = None) -> Response:
    """gunicorn's Response for ``conn``, as StreamWorker ties them; headers set, not sent."""
    response = Response(request, conn, Config())
    conn.response = response
    response.start_response(status, headers or [("Content-Type", "text/event-stream")])
    return response


def read_all(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes."""
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def http_response(raw: bytes, method: str = "GET") -> tuple[h11.Response, bytes, bool]:
    """``raw`` read by an HTTP/1.1 client (h11): the response, its body, whether it ended."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")  # the server closed the connection
    events = [client.next_event()]
    while events[-1] not in (h11.NEED_DATA, h11.PAUSED) and not isinstance(
            events[-1], (h11.EndOfMessage, h11.ConnectionClosed)):
        events.append(client.next_event())
    (head,) = [e for e in events if isinstance(e, h11.Response)]
    body = b"".join(e.data for e in events if isinstance(e, h11.Data))
    return head, body, isinstance(events[-1], h11.EndOfMessage)


def test_every_other_attribute_is_the_real_sockets(tcp):
    server, _ = tcp
    conn = HandoverSocket(server)
    assert conn.fileno() == server.fileno() and conn.family == socket.AF_INET
    assert not conn.headers_sent and not conn.taken


def test_the_first_write_is_remembered_as_the_header_block_and_every_write_goes_through(tcp):
    server, client = tcp
    conn = HandoverSocket(server)
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.sendall(b"3\r\nabc\r\n")
    assert conn.headers_sent and conn.chunked
    assert conn.send(b"0\r\n\r\n") == 5
    server.close()
    assert read_all(client) == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"


@pytest.mark.parametrize("request_, headers, chunked", [
    (Request(), [("Content-Type", "text/event-stream")], True),
    (Request(), [("Content-Type", "text/plain"), ("Content-Length", "3")], False),
    (Request(version=(1, 0)), [("Content-Type", "text/plain")], False),  # HTTP/1.0: no chunks
], ids=["streamed", "content-length", "http-1.0"])
def test_chunked_is_read_off_the_headers_gunicorn_sent(tcp, request_, headers, chunked):
    server, _ = tcp
    conn = HandoverSocket(server)
    respond(conn, request_, headers=headers).send_headers()
    assert conn.headers_sent and conn.chunked is chunked


def test_claim_before_the_headers_makes_gunicorn_say_connection_close(tcp):
    server, client = tcp
    conn = HandoverSocket(server)
    response = respond(conn, Request())
    conn.claim()
    response.write(b"data: 1\n\n")
    response.close()  # gunicorn ends the chunked body
    server.close()
    head, body, ended = http_response(read_all(client))
    assert (b"connection", b"close") in head.headers and ended and body == b"data: 1\n\n"


def test_without_a_claim_gunicorn_would_keep_the_connection_alive(tcp):
    server, client = tcp
    conn = HandoverSocket(server)
    response = respond(conn, Request())
    response.write(b"data: 1\n\n")
    response.close()
    server.close()
    head, _, _ = http_response(read_all(client))
    assert (b"connection", b"keep-alive") in head.headers


def test_claim_after_the_headers_or_without_a_response_changes_nothing(tcp):
    server, _ = tcp
    conn = HandoverSocket(server)
    conn.claim()  # no gunicorn Response (another worker class): nothing to tell
    response = respond(conn, Request())
    response.send_headers()
    conn.claim()
    assert not response.must_close


def test_take_before_the_headers_were_sent_is_refused(tcp):
    server, _ = tcp
    conn = HandoverSocket(server)
    respond(conn, Request())
    with pytest.raises(RuntimeError, match="before the response headers"):
        conn.take()
    assert not conn.taken and server.fileno() != -1


def test_take_detaches_a_plain_non_blocking_socket_with_nodelay(tcp):
    server, _ = tcp
    conn = HandoverSocket(server)
    respond(conn, Request()).write(b"retry: 2000\n\n")
    fd = server.fileno()
    raw = conn.take()
    try:
        assert conn.taken and server.fileno() == -1  # gunicorn's socket object let it go
        assert type(raw) is _socket.socket and raw.fileno() == fd
        assert raw.getblocking() is False and raw.gettimeout() == 0.0
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        raw.close()


def test_take_of_a_unix_socket_skips_nodelay():
    a, b = socket.socketpair()
    conn = HandoverSocket(a)
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    raw = conn.take()
    assert raw.family == socket.AF_UNIX and raw.getblocking() is False
    raw.close()
    b.close()


def test_after_take_gunicorn_writes_nothing_and_the_client_reads_the_new_owners_bytes(tcp):
    server, client = tcp
    conn = HandoverSocket(server)
    response = respond(conn, Request())
    conn.claim()
    response.write(b"retry: 2000\n\n")  # the view's first bytes: gunicorn sends the headers
    raw = conn.take()
    assert conn.chunked
    # gunicorn ends its part: the last chunk and any other write are dropped.
    response.close()
    conn.sendall(b"garbage")
    assert conn.send(b"more garbage") == len(b"more garbage")
    # The new owner (the relay) writes frames as chunks, then ends the body and closes.
    raw.setblocking(True)
    raw.sendall(chunk(b"id: 3\nevent: value\ndata: {}\n\n") + LAST_CHUNK)
    raw.close()
    head, body, ended = http_response(read_all(client))
    assert head.status_code == 200 and (b"connection", b"close") in head.headers
    assert ended and body == b"retry: 2000\n\nid: 3\nevent: value\ndata: {}\n\n"


def test_can_take_only_a_handover_socket():
    a, b = socket.socketpair()
    conn = HandoverSocket(a)
    assert can_take({"gunicorn.socket": conn}) is conn
    assert can_take({"gunicorn.socket": a}) is None and can_take({}) is None
    a.close()
    b.close()


def test_a_served_request_leaves_its_response_to_reference_counting_not_to_the_collector(
        tcp, monkeypatch):
    # The socket names its Response (to claim the connection) and the Response its socket: left
    # tied, every stream served through Flask would wait, with its request, for a full
    # collection, whose pause grows with the viewers held.
    import gc
    import weakref

    from gunicorn.workers.ggevent import GeventWorker

    from jobcast.web.handover import StreamWorker

    served = []

    def handle_request(self, listener_name, req, sock, addr):
        """gunicorn's part, played: a Response tied to the socket, its headers written."""
        served.append(weakref.ref(respond(sock, Request())))
        return True

    monkeypatch.setattr(GeventWorker, "handle_request", handle_request)
    worker = object.__new__(StreamWorker)  # its request path only: no gunicorn process
    gc.disable()
    try:
        assert worker.handle_request("l", Request(), tcp[0], ("127.0.0.1", 1)) is True
        assert served and served[0]() is None
    finally:
        gc.enable()


# -- AdmittingServer: a new connection's first bytes, read before it costs a greenlet --------


@pytest.fixture(scope="module")
def stoppable(tmp_path_factory, logs_dir) -> Iterator[tuple[RedisServer, WebServer]]:
    """A redis-server of its own (a test pauses it) and a one-worker gunicorn on it."""
    redis_server = RedisServer(data_dir=tmp_path_factory.mktemp("redis-stoppable")).start()
    web = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-stoppable.log").start()
    yield redis_server, web
    web.stop()
    redis_server.stop()


def read_by_server(sock: socket.socket) -> None:
    """Wait until the server has read all that ``sock`` sent: the kernel's receive queue of
    the server's end of the connection (``/proc/net/tcp``) is empty."""
    ours, theirs = sock.getsockname()[1], sock.getpeername()[1]

    def queue() -> int | None:
        """The server end's receive queue, in bytes (None until it is listed)."""
        with open("/proc/net/tcp") as table:
            for row in list(table)[1:]:
                fields = row.split()
                if (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)) \
                        == (theirs, ours):
                    return int(fields[4].split(":")[1], 16)
        return None

    wait_for(lambda: queue() == 0, 10, what="the server to read what was sent")


def response_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The status line and headers the server sends on ``sock``, and what came after them."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            break
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    return head, rest


def test_a_client_that_says_nothing_is_dropped_after_keepalive_seconds(web):
    # gunicorn's keepalive is 5 s: its own first read would drop the client then too.
    with socket.create_connection(("127.0.0.1", web.port), timeout=15) as sock:
        began = time.monotonic()
        assert sock.recv(1) == b""  # closed, nothing written
        assert 4 <= time.monotonic() - began < 12


def test_a_request_that_arrives_in_two_parts_is_served_by_flask_from_both(http, web, workers):
    job_id = finished_job(http, n=3)
    before = settled_admissions(web.url).get("flask", 0)
    raw = request(f"/jobs/{job_id}/stream")
    with socket.create_connection(("127.0.0.1", web.port), timeout=15) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(raw[:20])
        read_by_server(sock)  # the server's first read has only this part
        sock.sendall(raw[20:])
        head, body = response_head(sock)
        while data := sock.recv(65536):
            body += data
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"1.4142135623730951" in body
    # The fast path read only a part: Flask admitted it.
    assert settled_admissions(web.url).get("flask", 0) == before + 1


def test_an_admission_waiting_on_redis_holds_up_no_other_newcomer(stoppable):
    redis_server, web = stoppable
    with Redis.from_url(redis_server.url) as redis:
        logs = running_job(redis), running_job(redis)
        logs[0].value(0, 1.0)
    watched, new = (log.job_id for log in logs)
    with socket.create_connection(("127.0.0.1", web.port), timeout=15) as first:
        first.sendall(request(f"/jobs/{watched}/stream"))
        head, body = response_head(first)
        assert head.startswith(b"HTTP/1.1 200 OK")
        while b"1.0" not in body:  # (the socket's timeout is the deadline)
            body += first.recv(65536)
        # The server now follows `watched` (subscribed, its recent entries kept); it has never
        # seen `new`, whose admission must ask Redis.
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            with socket.create_connection(("127.0.0.1", web.port), timeout=15) as stuck, \
                    socket.create_connection(("127.0.0.1", web.port), timeout=1.5) as other:
                stuck.sendall(request(f"/jobs/{new}/stream"))
                read_by_server(stuck)  # its admission has begun, and waits on Redis
                other.sendall(request(f"/jobs/{watched}/stream"))
                # Redis is paused: only another admitter can answer this one, at once (a
                # socket timeout of 1.5 s is the deadline; `stuck` waits longer on Redis).
                assert response_head(other)[0].startswith(b"HTTP/1.1 200 OK")
                redis_server.proc.send_signal(signal.SIGCONT)
                assert response_head(stuck)[0].startswith(b"HTTP/1.1 200 OK")
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def admitting_server(fast, size: int = 10, handle=None) -> Iterator[tuple]:
    """An :class:`AdmittingServer` in this process (gevent, without its monkey-patching) on a
    loopback port, with ``fast`` as its fast path, a pool of ``size`` and ``handle`` as
    gunicorn's handler: (the server, a function that connects a gevent client socket)."""
    from gevent import socket as gsocket
    from gevent.pool import Pool

    worker = SimpleNamespace(fast_path=fast, handle=handle or (lambda *args: None),
                             cfg=SimpleNamespace(keepalive=5, http_protocols=["h1"]))
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = AdmittingServer(listener, worker=worker, spawn=Pool(size))
    server.start()
    clients = []

    def connect():
        clients.append(gsocket.create_connection(listener.getsockname()))
        return clients[-1]

    try:
        yield server, connect
    finally:
        server.close()
        for sock in clients:
            sock.close()


def until(condition, what: str) -> None:
    """Let gevent's loop run until ``condition()``; fail after 5 s."""
    import gevent

    with gevent.Timeout(5, AssertionError(f"timed out waiting for {what}")):
        while not condition():
            gevent.sleep(0.01)


def test_requests_that_arrive_together_are_not_held_up_by_one_admission_that_waits():
    # A fake fast path whose first admission waits (as on Redis, for a job never seen), and
    # the others go at once.
    from gevent.event import Event

    release, admitted, held, waited = Event(), [], [], []

    def fast(data: bytes, sock, addr) -> bool:
        if not waited:
            waited.append(data.split()[1])
            release.wait()
        sock.send(b"HTTP/1.1 200 OK\r\n\r\n")
        admitted.append(data.split()[1])
        held.append(sock)
        return True

    with admitting_server(fast) as (server, connect):
        clients = [connect() for _ in range(3)]
        until(lambda: len(server._waiting) == 3, "the three connections accepted")
        # Sent before the server's loop runs again: the three arrive in one turn, queued
        # together for one admitter.
        for client, path in zip(clients, ["/a", "/b", "/c"]):
            client.sendall(request(path))
        until(lambda: len(admitted) == 2, "the two requests behind the waiting one")
        assert waited[0] not in admitted
        release.set()
        until(lambda: len(admitted) == 3, "the waiting request")
        assert sorted(admitted) == [b"/a", b"/b", b"/c"]
        assert all(c.recv(100).startswith(b"HTTP/1.1 200 OK") for c in clients)
    for sock in held:
        sock.close()


def test_a_request_declined_while_the_server_closes_still_reaches_gunicorns_handler():
    # gunicorn closes its servers on SIGTERM, then waits while its pool is busy: a request
    # being admitted then must keep the pool busy, and reach gunicorn's handler if declined.
    from gevent.event import Event

    release, entered = Event(), Event()

    def fast(data: bytes, sock, addr) -> bool:
        entered.set()
        release.wait()
        return False  # declined: Flask's to answer

    def handle(listener, client, addr) -> None:
        assert client.recv(100).startswith(b"GET /x ")  # the bytes already read come first
        client.sendall(b"HTTP/1.1 404 NOT FOUND\r\nContent-Length: 0\r\n\r\n")

    with admitting_server(fast, handle=handle) as (server, connect):
        client = connect()
        client.sendall(request("/x"))
        until(entered.is_set, "the admission to begin")
        server.close()
        assert len(server.pool) == 1  # what gunicorn's graceful shutdown waits for
        release.set()
        assert client.recv(100).startswith(b"HTTP/1.1 404 NOT FOUND")
        until(lambda: len(server.pool) == 0, "the pool to empty")


def test_connections_waiting_for_their_first_bytes_count_against_worker_connections():
    admitted = []

    def fast(data: bytes, sock, addr) -> bool:
        admitted.append(sock)
        return True

    with admitting_server(fast, size=2) as (server, connect):
        clients = [connect() for _ in range(3)]  # the third waits in the kernel's backlog
        until(lambda: server._paused, "accepting to stop at the pool's size")
        assert len(server._waiting) == 2
        clients[0].sendall(request("/a"))
        until(lambda: len(admitted) == 1 and len(server._waiting) == 2,
              "the third connection accepted once the first was admitted")
    for sock in admitted:
        sock.close()


@pytest.mark.slow
def test_stream_requests_while_redis_is_away_are_answered_503_without_a_traceback_each(
        tmp_path, logs_dir):
    """An operator review's finding: during a Redis outage each stream request logged the fast
    path's failure with a 60-line traceback (678 lines for 10 requests), while Flask answered
    it 503 anyway."""
    redis_server = RedisServer(data_dir=tmp_path / "redis").start()
    log_path = logs_dir / "web-redis-away.log"
    web = WebServer(redis_server.url, workers=1, log_path=log_path).start()
    try:
        redis_server.stop()
        for _ in range(10):
            r = httpx.get(f"{web.url}/jobs/{'ab' * 16}/events", timeout=15)
            assert r.status_code == 503 and r.json()["error"] == "service_unavailable"
        text = log_path.read_text()
        assert "Traceback" not in text and "fast path failed" not in text
        assert text.count("redis error") == 10, "one line per request, from Flask's handler"
    finally:
        web.stop()
        redis_server.stop()


def test_importing_the_worker_class_loads_neither_flask_nor_redis_py():
    """gunicorn's arbiter imports the worker class before its workers apply gevent's patches
    (web/__init__.py): a second reading found this stop's error handling had made it load
    redis-py and werkzeug there."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, jobcast.web.handover; print(sorted(m for m in "
         "('flask', 'werkzeug', 'redis', 'pydantic') if m in sys.modules))"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
