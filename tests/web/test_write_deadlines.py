"""What the server writes for the app has a deadline too: a client that stops reading is let
go after ``JOBCAST_WRITE_TIMEOUT`` seconds, with its stream slot, under a real gunicorn.

The relay's own writes always had one. These are the bytes gunicorn writes: the first part of
a multi-job stream (the job list's snapshot) before the relay holds it.
"""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from jobcast.core.joblog import JobLog
from tests.support.services import WebServer, own_database
from tests.support.wait import wait_for

DB = 11  # this module's own database: the job list is global to one
JOBS = 500  # the most a page may list (events.LIST_MAX)
PARAMS = {"note": "x" * 12_000}  # so the snapshot (~6 MB) is more than the socket buffers hold


@pytest.fixture(scope="module")
def server(redis_server, logs_dir):
    """A gunicorn whose writes give up after 1 s, one stream per client, behind a trusted
    proxy (each test's client is its own X-Forwarded-For), with a long job list."""
    with own_database(redis_server, DB) as (url, redis):
        for _ in range(JOBS):
            JobLog(redis, uuid.uuid4().hex).create("sqrt", PARAMS, None)
        s = WebServer(url, workers=1, log_path=logs_dir / "web-write-deadlines.log",
                      JOBCAST_WRITE_TIMEOUT="1", JOBCAST_STREAMS_PER_CLIENT="1",
                      JOBCAST_TRUST_PROXY="1").start()
        try:
            yield s
        finally:
            s.stop()


def stalled_request(server: WebServer, path: str, client: str) -> socket.socket:
    """Send a GET for ``path`` as ``client`` from a socket that never reads its answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: jobcast\r\nX-Forwarded-For: {client}\r\n\r\n"
                 .encode())
    return sock


def stream_status(server: WebServer, client: str) -> int:
    """The status of a new job list stream opened as ``client`` (closed at once)."""
    with httpx.stream("GET", f"{server.url}/events?list=1",
                      headers={"X-Forwarded-For": client}, timeout=10) as r:
        return r.status_code


def test_a_client_that_never_reads_its_job_list_snapshot_is_let_go_with_its_slot(server):
    """A review's finding: the snapshot went out through gunicorn's blocking write before the
    relay held the stream, with no deadline. A client that never read kept the request, its
    stream slot and megabytes of snapshot for good; with no cap per client, enough of them
    filled the worker's connections."""
    client = "10.11.0.1"
    sock = stalled_request(server, f"/events?list={JOBS}", client)
    try:
        # Its one stream is held: the client's next one is refused, until the write gives up.
        wait_for(lambda: stream_status(server, client) == 429, 10, 0.2, what="the slot held")
        wait_for(lambda: stream_status(server, client) == 200, 15, 0.2,
                 what="the stalled stream let go after its write deadline")
    finally:
        sock.close()
