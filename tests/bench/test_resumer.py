"""The load generator's EventSource (bench.loadgen.Resumer), fed bytes by hand: chunked
bodies split anywhere, the last event id and retry: it would resume with, and values counted
once, with duplicates and gaps apart."""

from __future__ import annotations

import re

from bench.loadgen import Resumer
from bench.run import PATTERNS


class Gen:
    """The little of a LoadGen a Resumer reads."""

    def __init__(self):
        self.spec = {"host": "127.0.0.1", "port": 8000, "retry": 3000}
        self.stopping = False
        self.connect_errors = 0


def event(seq: int, i: int) -> bytes:
    return b'id: %d\nevent: value\ndata: {"i":%d,"v":"i=%d t=1.5 xx"}\n\n' % (seq, i, i)


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in parts)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def viewer() -> Resumer:
    return Resumer(Gen(), "/jobs/x/events", re.compile(PATTERNS[("jobcast", "sse")].encode(), re.M))


def test_a_chunked_stream_split_anywhere_is_read_whole():
    body = HEAD + chunked(b"retry: 2000\n\n", event(1, 0) + event(2, 1), event(3, 2))
    for cut in range(1, len(body)):
        v = viewer()
        v.data_received(body[:cut])
        v.data_received(body[cut:])
        assert (v.count, v.last, v.dups, v.gaps) == (3, 2, 0, 0), cut
        assert v.last_id == b"3" and v.retry == 2.0 and v.status == 200


def test_the_last_event_id_moves_only_once_its_event_is_complete():
    v = viewer()
    v.data_received(HEAD + chunked(event(1, 0) + b"id: 2\nevent: value\n"))
    assert v.last_id == b"1" and v.count == 1
    assert b"Last-Event-ID: 1\r\n" in v.request()


def test_duplicates_and_gaps_are_counted_apart_and_values_once():
    v = viewer()
    v.data_received(HEAD + chunked(event(1, 0), event(2, 1), event(2, 1), event(5, 4)))
    assert (v.count, v.last, v.dups, v.gaps) == (3, 4, 1, 2)


def test_a_response_other_than_200_ends_the_viewer_for_good():
    v = viewer()
    v.data_received(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    assert v.failed == 503
