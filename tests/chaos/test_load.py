"""Slow and churning viewers: memory, connections and file descriptors stay bounded."""

from __future__ import annotations

import random
import socket
import threading
import time

import httpx
import pytest
from redis import Redis

from tests.support.chaos import SSEViewer, Stack
from tests.support.jobs import create_job, running_job
from tests.support.wait import wait_for

pytestmark = pytest.mark.chaos

MB = 1024 * 1024


def dechunk(raw: bytes) -> bytes:
    """Decode an HTTP/1.1 chunked body (after the headers)."""
    body, rest = b"", raw
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2:]
    return body


def open_raw(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


def read_all(sock: socket.socket, timeout: float = 120) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while data := sock.recv(1 << 20):
        chunks.append(data)
        if data.endswith(b"0\r\n\r\n"):
            break
    return b"".join(chunks)


FROZEN_VALUES = 16_000
FROZEN_VALUE_CHARS = 2_000


def test_a_frozen_viewer_keeps_server_memory_bounded_and_then_catches_up(tmp_path):
    # The frozen viewer reads nothing until the job has ended. Its backlog (16,000 values of
    # 2,000 characters, about 32 MB of stream) is three times the growth the web process is
    # allowed, so a relay that kept it in memory fails here, and one that catches the viewer
    # up from the log does not. A socket full for JOBCAST_WRITE_TIMEOUT (30 s) drops its client
    # (tests/web/test_relay.py tests that rule): here it must not, since catching up is what
    # this test is about. The values are written to the job's log as a worker writes them
    # (JobLog.value), with no worker: the watchdog is told not to fail the job as an orphan.
    stack = Stack(tmp_path, workers=0, JOBCAST_WRITE_TIMEOUT="600",
                  JOBCAST_ORPHAN_TIMEOUT="3600")
    try:
        http = httpx.Client(base_url=stack.url)
        log = running_job(Redis.from_url(stack.redis.url))
        [web_proc] = stack.web_worker_processes()
        frozen = open_raw(stack.web.port, f"/jobs/{log.job_id}/stream", rcvbuf=4096)
        live = SSEViewer(stack.url, log.job_id, deadline=150)
        live.start()
        wait_for(lambda: http.get(f"/api/jobs/{log.job_id}").json()["viewers_here"] == 2, 30,
                 what="both viewers to be held")
        base = peak = web_proc.memory_info().rss
        for i in range(FROZEN_VALUES):
            log.value(i, f"{i:06d} " + "x" * (FROZEN_VALUE_CHARS - 7))
            if i % 500 == 499:
                peak = max(peak, web_proc.memory_info().rss)
        log.finished()
        live.join(120)
        peak = max(peak, web_proc.memory_info().rss)
        growth = (peak - base) / MB
        body = dechunk(read_all(frozen).partition(b"\r\n\r\n")[2]).decode()
        frozen.close()
        live_values = live.texts()
        assert len(live_values) == FROZEN_VALUES
        assert live_values == [f"{i:06d} " + "x" * (FROZEN_VALUE_CHARS - 7)
                               for i in range(FROZEN_VALUES)]
        assert body.splitlines() == live_values, "the frozen viewer missed or repeated values"
        backlog = FROZEN_VALUES * FROZEN_VALUE_CHARS / MB
        print(f"\nfrozen viewer, {backlog:.0f} MB behind: web RSS growth {growth:.1f} MB")
        assert growth < 10
    finally:
        stack.close()


def test_churn_leaks_no_connections_descriptors_or_memory(tmp_path):
    stack = Stack(tmp_path, workers=1)
    try:
        http = httpx.Client(base_url=stack.url)
        done = create_job(http, "sqrt", n=100, interval=0)
        wait_for(lambda: http.get(f"/api/jobs/{done}").json()["status"] == "finished", 30,
                 what="history job")
        running = create_job(http, "sqrt", n=100000, interval=0.05)
        [web_proc] = stack.web_worker_processes()
        redis = __import__("redis").Redis.from_url(stack.redis.url)
        paths = [f"/jobs/{done}/stream", f"/jobs/{done}/events", f"/jobs/{running}/events",
                 f"/jobs/{running}/stream", f"/jobs/{done}/frame"]
        rng = random.Random(7)

        def cycles(n: int):
            for _ in range(n):
                sock = open_raw(stack.web.port, rng.choice(paths))
                sock.settimeout(10)
                try:
                    if rng.random() < 0.5:
                        sock.recv(256)  # disconnect mid-history
                    else:
                        sock.recv(65536)
                except OSError:
                    pass
                finally:
                    sock.close()

        def run(total: int, threads: int = 8):
            ts = [threading.Thread(target=cycles, args=(total // threads,)) for _ in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(600)

        def settled():
            return http.get(f"/api/jobs/{running}").json()["viewers_here"] == 0

        run(400)  # warm up caches and pools
        wait_for(settled, 30, what="warm-up viewers to be freed")
        port = stack.redis.port

        def descriptors():
            """(file descriptors other than Redis connections, Redis connections) of the worker."""
            to_redis = sum(1 for c in web_proc.net_connections("tcp") if c.raddr and c.raddr.port == port)
            return web_proc.num_fds() - to_redis, to_redis

        (fds0, redis0), rss0 = descriptors(), web_proc.memory_info().rss
        clients0 = len(redis.client_list())
        started = time.monotonic()
        run(5000)
        took = time.monotonic() - started
        wait_for(settled, 30, what="all churned viewers to be freed")
        (fds1, redis1), rss1 = descriptors(), web_proc.memory_info().rss
        clients1 = len(redis.client_list())
        print(f"\nchurn 5000 cycles in {took:.1f}s: fds besides Redis {fds0}->{fds1}, "
              f"Redis connections of the web worker {redis0}->{redis1}, RSS {rss0 / MB:.1f}->"
              f"{rss1 / MB:.1f} MB, Redis clients in all {clients0}->{clients1}")
        assert fds1 <= fds0 + 1, "file descriptors leaked"
        # The web process's Redis connections come from a pool bounded at 64 (+1 subscription).
        assert redis1 <= 65
        assert (rss1 - rss0) / MB < 10
    finally:
        stack.close()
