"""The tests' SSE oracle (tests/support/sse.py) reads streams as EventSource does."""

from __future__ import annotations

import httpx
import pytest
from httpx_sse import SSEError

from tests.support.sse import Event, Resuming, parse_events

STREAM = (b"retry: 2000\n\n"
          b"event: tail\ndata: {\"tail\":2}\n\n"
          b"id: 7\nevent: value\ndata: {\"seq\":7}\n\n"
          b": heartbeat\n\n"
          b"event: trimmed\ndata: x\n\n"
          b"id: 8\nevent: finished\ndata: a\ndata: b\n\n")


def test_an_event_without_an_id_line_has_no_id_though_the_last_event_id_persists():
    assert list(parse_events(STREAM)) == [
        Event("tail", '{"tail":2}', None, None, ""),
        Event("value", '{"seq":7}', "7", None, "7"),
        Event("trimmed", "x", None, None, "7"),
        Event("finished", "a\nb", "8", None, "8"),
    ]


def test_blocks_without_data_are_not_events_unless_all_blocks_are_asked_for():
    assert [e.event for e in parse_events(b"retry: 2000\n\nid: 3\n\n: hb\n\n")] == []
    blocks = list(parse_events(b"retry: 2000\n\nid: 3\n\n: hb\n\n", all_blocks=True))
    assert blocks == [Event("message", "", None, 2000, ""), Event("message", "", "3", None, "3")]


def test_line_ends_chunk_boundaries_and_a_split_utf8_character_do_not_matter():
    body = "id: 1\r\nevent: value\rdata: é\n\n".encode()
    cut = body.index("é".encode()) + 1  # inside the two bytes of é
    chunks = [body[:3], body[3:cut], body[cut:]]
    assert list(parse_events(chunks)) == [Event("value", "é", "1", None, "1")]


def test_an_empty_id_line_resets_the_last_event_id_and_an_id_with_nul_is_ignored():
    events = list(parse_events("id: 4\ndata: a\n\nid\ndata: b\n\nid: 5\0\ndata: c\n\n"))
    assert [(e.id, e.last_id) for e in events] == [("4", "4"), ("", ""), (None, "")]


def test_a_block_cut_before_its_blank_line_is_not_dispatched():
    assert list(parse_events(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")) == [
        Event("message", "a", "1", None, "1")]


def test_a_response_must_be_an_event_stream():
    ok = httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8"},
                        content=b"data: 1\n\n")
    assert [e.json() for e in parse_events(ok)] == [1]
    with pytest.raises(SSEError):
        list(parse_events(httpx.Response(200, headers={"content-type": "text/plain"},
                                         content=b"data: 1\n\n")))


def test_resuming_comes_back_with_the_last_id_it_saw_even_across_a_connection_without_one():
    """The tests' EventSource: an event without an id on a resumed connection (a ``trimmed``)
    keeps the last id, as EventSource does, so the next reconnect does not replay the stream."""
    bodies = [b"id: 1:E\nevent: value\ndata: a\n\n",
              b"event: trimmed\ndata: {}\n\n",
              b"id: 2:E\nevent: finished\ndata: b\n\n"]
    asked: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        """Each connection: the next body, then the connection ends (a drop)."""
        asked.append(request.headers.get("Last-Event-ID"))
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"},
                              content=bodies[len(asked) - 1])

    with httpx.Client(transport=httpx.MockTransport(server), base_url="http://t") as client:
        stream = Resuming(client, "/jobs/j/events", pause=0)
        events = [(e.event, e.id) for e in stream]
    assert events == [("value", "1:E"), ("trimmed", None), ("finished", "2:E")]
    assert asked == [None, "1:E", "1:E"] and stream.connections == 3 and stream.reconnects == 2
