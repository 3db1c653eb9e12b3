"""Request bodies (issue 23, findings 3 and 21): a body must arrive by a deadline, and a
chunked one is held to the size limit. Flask's test client and the middleware on its own,
with gevent's timers for a slow client; tests/web/test_security.py checks both through a
real gunicorn."""

from __future__ import annotations

import io
import json
import socket
import time

import gevent
from werkzeug.exceptions import RequestTimeout

from jobcast.web.bodies import REFUSAL, BodyLimits

BODY = json.dumps({"task": "sqrt", "params": {"n": 3, "interval": 0}}).encode()


def post_chunked(client, body: bytes):
    """POST ``body`` to /api/jobs as a chunked body (no Content-Length), as a server passes it."""
    return client.post("/api/jobs", input_stream=io.BytesIO(body),
                       headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
                       environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True})


def test_a_chunked_body_over_the_limit_answers_413_instead_of_being_cut(client):
    """Finding 21: a 2 MB chunked POST /api/jobs was cut at 16 KiB and answered 201."""
    r = post_chunked(client, BODY + b" " * 2_000_000)
    assert r.status_code == 413 and r.json["error"] == "request_entity_too_large"
    assert "JOBCAST_MAX_BODY" in r.json["message"]


def test_a_chunked_body_within_the_limit_is_read_whole(client):
    r = post_chunked(client, BODY + b" " * 16_000)
    assert r.status_code == 201, r.json
    assert client.get(r.json["urls"]["status"]).json["params"] == {"n": 3, "interval": 0}


def test_a_declared_body_over_the_limit_answers_413_even_where_no_view_reads_it(client):
    """A review's finding: werkzeug refuses a body over the limit only when the view reads it.
    A cancel reads none: one with a 20 kB body went through (200), while the same body sent
    chunked answered 413."""
    job = client.post("/api/jobs", json={"task": "sqrt", "params": {"n": 3, "interval": 1}})
    cancel = f"/api/jobs/{job.json['id']}/cancel"
    r = client.post(cancel, data=b" " * 20_000,
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json["error"] == "request_entity_too_large"
    assert "JOBCAST_MAX_BODY" in r.json["message"]
    assert client.get(job.json["urls"]["status"]).json["status"] == "queued"
    assert client.post(cancel).status_code == 200  # without a body


class Trickle(io.BytesIO):
    """A request body that arrives one byte every ``pause`` seconds (gevent's sleep)."""

    def __init__(self, data: bytes, pause: float):
        """``data``, to come one byte at a time; ``tell()`` is how many bytes came."""
        super().__init__(data)
        self.pause = pause

    def read(self, size: int | None = -1) -> bytes:
        """The next byte, after a pause (however many were asked for)."""
        gevent.sleep(self.pause)
        return super().read(1)


class Conn:
    """The connection's socket as gunicorn hands it to the app: records a shutdown."""

    def __init__(self):
        """Not shut yet."""
        self.shut = []

    def shutdown(self, how: int) -> None:
        """Record which side was shut."""
        self.shut.append(how)


def test_a_body_that_trickles_in_is_cut_at_the_deadline_and_its_connection_closed():
    """Finding 3: POST /login declaring 10,000 bytes and sending one every 2 s stayed open.
    The deadline is on the whole body, so a client that sends a byte now and then gains
    nothing."""
    seen = {}

    def app(environ, start_response):
        """Keep what the middleware passed on."""
        seen.update(environ)
        return []

    limits = BodyLimits(app, timeout=0.3, max_body=16384, cooperative=lambda: True)
    conn = Conn()
    trickle = Trickle(b"t" * 10000, 0.02)
    environ = {"CONTENT_LENGTH": "10000", "wsgi.input": trickle, "gunicorn.socket": conn}
    started = time.monotonic()
    limits(environ, lambda *a: None)
    took = time.monotonic() - started
    print(f"cut after {took:.2f} s, {trickle.tell()} bytes read")
    assert isinstance(seen[REFUSAL], RequestTimeout)
    # Not before the deadline (a lower bound: a slow machine only makes it later)...
    assert took >= 0.3
    # ...and no read begun after it: a byte takes at least 0.02 s to come, so within 0.3 s at
    # most 15 (16 with the clocks' rounding) came, of the 10,000 declared.
    assert trickle.tell() <= 16
    assert conn.shut == [socket.SHUT_RD], "gunicorn finds the connection's end at once"


def test_a_body_that_arrives_in_time_is_passed_on_whole():
    seen = {}

    def app(environ, start_response):
        """Read the body as an app does."""
        seen["body"] = environ["wsgi.input"].read()
        return []

    limits = BodyLimits(app, timeout=5, max_body=16384, cooperative=lambda: True)
    limits({"CONTENT_LENGTH": "5", "wsgi.input": Trickle(b"hello", 0.01)}, lambda *a: None)
    assert seen["body"] == b"hello"


def test_a_late_body_answers_408_through_the_app(config, make_app, monkeypatch):
    from jobcast.web import bodies

    app = make_app({"JOBCAST": config, "TESTING": True})
    monkeypatch.setattr(app.wsgi_app, "cooperative", lambda: True)
    monkeypatch.setattr(app.wsgi_app, "timeout", 0.2)
    r = app.test_client().post("/login", input_stream=Trickle(b"token=x&next=/" * 50, 0.05),
                               content_type="application/x-www-form-urlencoded")
    assert r.status_code == 408 and r.json["error"] == "request_timeout"
    assert "JOBCAST_BODY_TIMEOUT" in r.json["message"] and isinstance(app.wsgi_app, bodies.BodyLimits)
