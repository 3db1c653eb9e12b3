"""The worker's fast path (jobcast.web.fastpath): public text and SSE streams admitted without a
Flask request answer exactly as Flask does, and everything else still goes through Flask, from
the same bytes. Real gunicorn processes: the session's (fast path on) and one with it off."""

from __future__ import annotations

import re
import socket
import threading
import uuid
from typing import Iterator

import h11
import httpx
import pytest
from gunicorn.config import Config
from gunicorn.http import RequestParser
from gunicorn.http.errors import ParseException

from jobcast.core.joblog import JobLog
from jobcast.web.fastpath import FastPath
from jobcast.web.frames import TEXT
from jobcast.web.handover import FAST_PATH, ReadSocket
from tests.support.jobs import running_job
from tests.support.services import WebServer
from tests.support.wait import wait_for
from tests.support.fastpath import admissions, finished_job, request, settled_admissions
from tests.support.sse import parse_events


@pytest.fixture(scope="module")
def flask_only(redis_server, logs_dir) -> Iterator[WebServer]:
    """A gunicorn like the session's, with the fast path turned off."""
    server = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-flask-only.log",
                       JOBCAST_HEARTBEAT="1", JOBCAST_QUEUES="*",
                       JOBCAST_FAST_ADMISSION="false").start()
    yield server
    server.stop()


def exchange(port: int, raw: bytes) -> tuple[h11.Response, bytes]:
    """Send ``raw`` on a new connection and read the response to its end with an independent
    HTTP/1.1 parser."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))  # client state
        response, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return response, body


def headers_of(response: h11.Response) -> list[tuple[str, str]]:
    """The response's headers in order, but Date (which moves)."""
    return [(k.decode(), v.decode()) for k, v in response.headers if k.lower() != b"date"]


@pytest.mark.parametrize("path, extra", [
    ("/jobs/{id}/stream", ()),
    ("/jobs/{id}/stream?start=2", ()),
    ("/jobs/{id}/stream?tail=2", ()),
    ("/jobs/{id}/events", ()),
    ("/jobs/{id}/events", ("Last-Event-ID: 3",)),
    ("/jobs/{id}/events?tail=1", ()),
])
def test_a_stream_admitted_by_the_fast_path_answers_with_flasks_status_headers_and_body(
        http, web, workers, flask_only, path, extra):
    job_id = finished_job(http)
    raw = request(path.format(id=job_id), *extra)
    before = settled_admissions(web.url).get("fast", 0)
    fast, fast_body = exchange(web.port, raw)
    slow, slow_body = exchange(flask_only.port, raw)
    # Each admission counts once, and on the path that made it (the session's server has two
    # workers, each counting its own).
    wait_for(lambda: admissions(web.url).get("fast", 0) == before + 1, 10,
             what="the fast path to count the stream")
    assert admissions(flask_only.url).get("fast", 0) == 0
    assert fast.status_code == slow.status_code == 200
    assert headers_of(fast) == headers_of(slow)
    # Each SSE connection draws its own retry: the rest is the same bytes.
    retry = re.compile(rb"^retry: \d+$", re.M)
    assert retry.sub(b"retry: N", fast_body) == retry.sub(b"retry: N", slow_body)
    assert fast_body  # values, or the ended event


@pytest.mark.parametrize("bad", ["no.pe", "a%3Ab", "x" * 129, "%0A" + "0" * 32])
def test_the_served_app_refuses_a_malformed_job_id_400_and_an_unknown_rq_id_404(http, bad):
    # Through gunicorn, where the worker class's fast path parses stream requests first
    # (tests/web/test_api.py checks the same through Flask alone).
    for path in ("/jobs/{}", "/jobs/{}/stream", "/jobs/{}/events", "/api/jobs/{}"):
        r = http.get(path.format(bad))
        assert r.status_code == 400 and r.json()["field"] == "job_id", path
    for path in ("/jobs/{}/stream", "/jobs/{}/events"):
        r = http.get(path.format(uuid.uuid4()))
        assert r.status_code == 404 and r.json()["error"] == "not_found", path


def test_what_the_fast_path_leaves_to_flask_is_answered_as_before(http, web, workers):
    job_id = finished_job(http)
    last_id = [e.id for e in parse_events(
        httpx.get(f"{web.url}/jobs/{job_id}/events", timeout=30).content) if e.id][-1]
    before = settled_admissions(web.url)
    cases = {
        # an unknown job: 404 JSON
        request("/jobs/nosuchjob0/stream"): 404,
        # a bad parameter: 400 naming it
        request(f"/jobs/{job_id}/stream?start=-1"): 400,
        # an ended SSE stream resumed at its end: 204, EventSource stops
        request(f"/jobs/{job_id}/events", f"Last-Event-ID: {last_id}"): 204,
        # the HTML stream, HEAD, HTTP/1.0 and unknown arguments: Flask's
        request(f"/jobs/{job_id}/frame"): 200,
        request(f"/jobs/{job_id}/stream?start=1&start=2"): 200,
        request(f"/jobs/{job_id}/stream?unknown=1"): 200,
        f"GET /jobs/{job_id}/stream HTTP/1.0\r\n\r\n".encode(): 200,
        # another request pipelined behind the stream's
        request(f"/jobs/{job_id}/stream") + request(f"/api/jobs/{job_id}"): 200,
    }
    for raw, status in cases.items():
        response, body = exchange(web.port, raw)
        assert response.status_code == status, (raw, response, body)
        if status == 400:
            assert b'"start"' in body
    head = httpx.head(f"{web.url}/jobs/{job_id}/stream", timeout=10)
    assert head.status_code == 200 and head.content == b""
    after = settled_admissions(web.url)
    assert after.get("fast", 0) == before.get("fast", 0)
    # frame, duplicate and unknown arguments, HTTP/1.0, pipelined: five streams Flask admitted
    assert after.get("flask", 0) >= before.get("flask", 0) + 5


def test_head_of_each_stream_answers_its_gets_headers_and_never_says_it_is_empty(
        http, web, workers):
    """A review's finding: ``HEAD`` of a stream said ``Content-Length: 0``, where its GET has a
    body of a length known only at its end (chunked)."""
    job_id = finished_job(http)
    for path in (f"/jobs/{job_id}/stream", f"/jobs/{job_id}/events", f"/jobs/{job_id}/frame",
                 f"/events?job={job_id}"):
        head = httpx.head(f"{web.url}{path}", timeout=10)
        with httpx.stream("GET", f"{web.url}{path}", timeout=10) as got:
            assert head.status_code == got.status_code == 200, path
            assert head.headers["content-type"] == got.headers["content-type"], path
            assert head.headers.get("cache-control") == got.headers.get("cache-control"), path
        assert "content-length" not in head.headers and head.content == b"", path


@pytest.mark.parametrize("extra", [
    ("Last-Event-ID: 1", "Last-Event-ID: 2"),  # Flask: 400 naming Last-Event-ID
    ("Host: other.test",),                      # a second Host: gunicorn's 400
    ("Expect: bogus",),                         # gunicorn's 417
    ("Content-Type: a", "Content-Type: b"),     # another single-value field: gunicorn's 400
    tuple(f"X-A{i}: 1" for i in range(101)),    # over limit_request_fields (100): its 431
    # From a trusted proxy (127.0.0.1, in forwarded_allow_ips), scheme headers that disagree
    # are gunicorn's 400; its SCRIPT_NAME moves the route (Flask's 404).
    ("X-Forwarded-Proto: https", "X-Forwarded-Ssl: off"),
    ("SCRIPT_NAME: /jobs",),
])
def test_headers_gunicorn_or_flask_refuse_are_refused_with_the_fast_path_on_too(
        http, web, workers, flask_only, extra):
    job_id = finished_job(http)
    raw = request(f"/jobs/{job_id}/events", *extra)
    fast, fast_body = exchange(web.port, raw)
    slow, slow_body = exchange(flask_only.port, raw)
    assert fast.status_code == slow.status_code >= 400
    assert fast_body == slow_body


LOWERED = "--limit-request-line 60 --limit-request-fields 10 --limit-request-field_size 100"
"""gunicorn limits an operator lowered (GUNICORN_CMD_ARGS): a stream request with a query is
over the line's, and a head of a few fields is not over the others'."""


@pytest.fixture(scope="module")
def lowered(redis_server, logs_dir) -> Iterator[tuple[WebServer, WebServer]]:
    """Two gunicorns with the LOWERED limits: the fast path on, and off."""
    servers = [WebServer(redis_server.url, workers=1, log_path=logs_dir / f"web-lowered-{on}.log",
                         JOBCAST_HEARTBEAT="1", JOBCAST_QUEUES="*", JOBCAST_FAST_ADMISSION=on,
                         GUNICORN_CMD_ARGS=LOWERED).start() for on in ("true", "false")]
    yield servers[0], servers[1]
    for server in servers:
        server.stop()


def test_requests_over_limits_an_operator_lowered_are_refused_with_the_fast_path_on_too(
        http, workers, lowered):
    on, off = lowered
    job_id = finished_job(http)
    for raw, status in (
            (request(f"/jobs/{job_id}/events?tail=1"), 414),  # a 65-byte request line
            (request(f"/jobs/{job_id}/events", *[f"X-A{i}: 1" for i in range(10)]), 431),
            (request(f"/jobs/{job_id}/events", "X-A: " + "a" * 100), 431)):
        fast, fast_body = exchange(on.port, raw)
        slow, slow_body = exchange(off.port, raw)
        assert fast.status_code == slow.status_code == status, raw
        assert fast_body == slow_body
    # Within them, the fast path still admits the stream.
    before = settled_admissions(on.url).get("fast", 0)
    fast, _ = exchange(on.port, request(f"/jobs/{job_id}/events"))
    assert fast.status_code == 200
    wait_for(lambda: admissions(on.url).get("fast", 0) == before + 1, 10,
             what="the fast path to count the stream")


def test_gunicorn_parses_a_declined_request_from_the_bytes_read_then_the_socket():
    # The fast path read the head's first part; gunicorn's own parser gets it back, then the rest.
    raw = request("/jobs/abc123/stream?start=2", "Last-Event-ID: 7")
    server, client = socket.socketpair()
    with server, client:
        client.sendall(raw[20:])
        parser = RequestParser(Config(), ReadSocket(server, raw[:20]), ("127.0.0.1", 1))
        req = next(parser)
    assert (req.method, req.path, req.query) == ("GET", "/jobs/abc123/stream", "start=2")
    assert ("LAST-EVENT-ID", "7") in req.headers


def gunicorn_parses(cfg: Config, raw: bytes) -> bool:
    """Whether gunicorn's own parser, under ``cfg``, takes the request ``raw``."""
    server, client = socket.socketpair()
    with server, client:
        client.sendall(raw)
        client.shutdown(socket.SHUT_WR)
        try:
            next(RequestParser(cfg, server, ("127.0.0.1", 1)))
        except ParseException:
            return False
    return True


LIMITED = request("/jobs/abc123/stream?start=2", "Accept: text/plain", "X-Long: " + "v" * 40)


@pytest.mark.parametrize("setting, at", [
    ("limit_request_line", len("GET /jobs/abc123/stream?start=2 HTTP/1.1")),
    ("limit_request_fields", 3),
    ("limit_request_field_size", len("X-Long: " + "v" * 40 + "\r\n")),
])
def test_the_fast_path_takes_a_head_at_a_gunicorn_limit_and_declines_one_over_it(
        make_app, config, setting, at):
    app = make_app({"JOBCAST": config})
    for limit, taken in ((at, True), (at - 1, False)):
        cfg = Config()
        cfg.set(setting, limit)
        assert gunicorn_parses(cfg, LIMITED) is taken, (setting, limit)
        assert (FastPath(app, cfg)._parse(LIMITED) is not None) is taken, (setting, limit)


def test_the_fast_path_declines_a_head_that_has_not_all_arrived_and_private_servers(
        make_app, config):
    raw = request("/jobs/abc123/stream?start=2")
    fast = FastPath(make_app({"JOBCAST": config}))
    assert fast._parse(raw[:-2]) is None
    transport, req, _ = fast._parse(raw)
    assert (transport, req.job_id, req.start) == (TEXT, "abc123", 2)
    assert FAST_PATH in make_app({"JOBCAST": config}).extensions
    for off in ({"fast_admission": False}, {"read": "private", "token": "t" * 32}):
        assert FAST_PATH not in make_app({"JOBCAST": config.model_copy(update=off)}).extensions


def test_a_keep_alive_connection_goes_on_after_a_first_request_flask_answered(http, web, workers):
    job_id = finished_job(http, n=3)
    with httpx.Client(base_url=web.url, timeout=10) as client:
        first = client.get(f"/api/jobs/{job_id}")
        second = client.get(f"/jobs/{job_id}/stream")
        assert first.status_code == 200 and first.json()["id"] == job_id
        assert second.text.splitlines() == ["0.0", "1.0", "1.4142135623730951"]
        assert client.get(f"/api/jobs/{job_id}").status_code == 200


def test_sse_through_the_fast_path_resumes_exactly(http, web, workers):
    job_id = finished_job(http, n=6)
    first = parse_events(httpx.get(f"{web.url}/jobs/{job_id}/events", timeout=30).content)
    ids = [e.id for e in first if e.id]
    resumed = parse_events(httpx.get(f"{web.url}/jobs/{job_id}/events", timeout=30,
                                     headers={"Last-Event-ID": ids[3]}).content)
    assert [e.id for e in resumed if e.id] == ids[4:]


def test_a_stream_the_relay_fails_to_take_is_freed_and_answered_once(make_app, config, redis,
                                                                     monkeypatch):
    # After its headers are out the stream is the fast path's: a failure then frees it, and
    # the request is not given to Flask too (which would answer it a second time).
    from jobcast.core.joblog import JobLog
    from jobcast.web.relay import Relay

    job_id = "f" * 32
    log = JobLog(redis, job_id)
    log.create("clock", {"rate": 1, "duration": 60}, None)
    log.started("test", 1)
    app = make_app({"JOBCAST": config})
    st = app.extensions["jobcast"]

    def fail(self, viewer, **kwargs):
        raise RuntimeError("a bug in the relay")

    monkeypatch.setattr(Relay, "hold", fail)
    server, client = socket.socketpair()
    with server, client:
        assert FastPath(app).admit(request(f"/jobs/{job_id}/stream"), server,
                                   ("127.0.0.1", 1)) is True
        client.settimeout(10)
        answer = b""
        while data := client.recv(65536):  # until the fast path closes the stream
            answer += data
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.count(b"HTTP/1.1") == 1
    assert st.limiter.total == 0  # its stream slot was given back


def test_a_resume_of_a_watched_job_answers_as_flask_does_and_then_goes_on_live(
        web, flask_only, redis):
    # A running job watched on every worker process (a connection lands on either), so its
    # recent entries are in memory there: a resume is then answered from memory, its head
    # and missed entries in one write (Relay.hold_now), and joins the live writes.
    before = settled_admissions(web.url).get("fast", 0)
    log = JobLog(redis, running_job(redis).job_id)
    log.begin()  # the attempt's own writer: its end begins no epoch (the answers compare epochs)
    for i in range(5):
        log.value(i, i)
    url = f"{web.url}/jobs/{log.job_id}/events"
    bodies: list[bytearray] = [bytearray() for _ in range(6)]

    def watch(body: bytearray) -> None:
        """Read one SSE stream to its end."""
        with httpx.stream("GET", url, timeout=30) as response:
            for data in response.iter_bytes():
                body.extend(data)

    readers = [threading.Thread(target=watch, args=(b,), daemon=True) for b in bodies]
    for reader in readers:
        reader.start()
    wait_for(lambda: all(b.count(b"event: value") == 5 for b in bodies), 15,
             what="every watcher to have the values so far")
    ids = [e.id for e in parse_events(bytes(bodies[0])) if e.id]
    raw = request(f"/jobs/{log.job_id}/events", f"Last-Event-ID: {ids[3]}")
    resumed: list[tuple[h11.Response, bytes]] = []
    resumer = threading.Thread(target=lambda: resumed.append(exchange(web.port, raw)), daemon=True)
    resumer.start()
    wait_for(lambda: settled_admissions(web.url).get("fast", 0) == before + 7, 15,
             what="the resume to be admitted")
    for i in range(5, 8):  # live, after the resume
        log.value(i, i)
    log.finished()
    resumer.join(30)
    for reader in readers:
        reader.join(30)
    (fast, fast_body), = resumed
    slow, slow_body = exchange(flask_only.port, raw)
    assert fast.status_code == slow.status_code == 200
    assert headers_of(fast) == headers_of(slow)
    # The same events (it followed the job live, so it also had heartbeat comments).
    assert [e[:3] for e in parse_events(fast_body, all_blocks=True)] == \
        [e[:3] for e in parse_events(slow_body, all_blocks=True)]
    every = [e.id for e in parse_events(bytes(bodies[0])) if e.id]  # to the end, live
    assert len(every) == 11 and every[:len(ids)] == ids  # queued, started, 8 values, finished
    assert [e.id for e in parse_events(fast_body) if e.id] == every[4:]
