"""Requests gunicorn cannot parse (jobcast.web.parse_errors): the worker class answers them in
the JSON error shape, not with gunicorn's HTML page. A real gunicorn, raw sockets."""

from __future__ import annotations

import json
import socket

import h11
import pytest
from gunicorn.http.errors import (InvalidHeader, InvalidRequestLine, InvalidResponseHeader,
                                   LimitRequestLine)

from jobcast.web.parse_errors import body
from tests.web.test_handover import read_all


def test_a_bad_header_is_named_as_the_field_in_its_usual_spelling():
    assert body(400, InvalidHeader("CONTENT-LENGTH")) == {
        "error": "bad_request", "message": "Invalid HTTP Header: 'CONTENT-LENGTH'",
        "field": "Content-Length"}


def test_an_error_of_the_request_line_names_no_field_and_keeps_gunicorns_message():
    assert body(414, LimitRequestLine(9000, 8190)) == {
        "error": "request_uri_too_long", "message": "Request Line is too large (9000 > 8190)"}
    assert "field" not in body(400, InvalidRequestLine("GARBAGE"))


def test_a_server_failure_is_not_detailed():
    assert body(500, RuntimeError("secret path /etc/x")) == {
        "error": "internal_server_error", "message": "internal server error"}
    # A header the app tried to send is the app's fault, not a request field's (a second
    # reading's finding: it was named as the field at fault, quotes and all).
    assert body(500, InvalidResponseHeader("X-Foo")) == {
        "error": "internal_server_error", "message": "internal server error"}


MALFORMED = [
    pytest.param(b"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
                 400, "Content-Length", id="content-length-not-a-number"),
    pytest.param(b"GET /jobs/x/stream HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n",
                 400, "Content-Length", id="stream-request-declined-by-the-fast-path"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
                 400, "Transfer-Encoding", id="unsupported-transfer-coding"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header: 1\r\n\r\n",
                 400, "Bad Header", id="header-name-with-a-space"),
    pytest.param(b"GARBAGE\r\n\r\n", 400, None, id="no-request-line"),
    pytest.param(b"GET /events?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
                 414, None, id="request-line-over-8190-bytes"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
                 431, None, id="too-many-headers"),
]


@pytest.mark.parametrize("raw, status, field", MALFORMED)
def test_a_request_gunicorn_cannot_parse_gets_a_json_error_and_a_closed_connection(
        web, raw, status, field):
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(raw)
        answer = read_all(sock)  # to the end: the server closed the connection
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.receive_data(answer)
    head = client.next_event()
    assert isinstance(head, h11.Response) and head.status_code == status
    headers = {k.decode().lower(): v.decode() for k, v in head.headers}
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    # A security review's finding: these answers lacked the headers every response has.
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert headers["referrer-policy"] == "same-origin"
    data = client.next_event()
    error = json.loads(data.data)
    assert error["error"] == {400: "bad_request", 414: "request_uri_too_long",
                              431: "request_header_fields_too_large"}[status]
    assert error["message"]
    assert error.get("field") == field
