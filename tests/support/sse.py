"""The tests' SSE oracle: server-sent events as a browser's EventSource reads them.

It is not the product's parser (``jobcast.cli.sse.parse_sse``, which ``jobcast follow``
uses and tests/cli/test_follow.py tests): a test that checks the server's SSE with the
client's own parser would pass with both wrong the same way. Lines and fields are read by
httpx-sse's decoders (WHATWG rules: ``\\r\\n``, ``\\r`` or ``\\n`` end a line, one leading
space is dropped from a value, an ``id`` with a NUL is ignored, ``retry`` is read as an
integer).

httpx-sse keeps the spec's *last event ID*, which persists from event to event: an event
without an ``id`` line reports the previous event's id. Tests ask a different question,
"did this event carry an id?" (``tail`` and ``trimmed`` events must not), so each
:class:`Event` has both: ``id`` as the event sent it (None without an id line) and
``last_id``, what EventSource would send as ``Last-Event-ID`` after it.

httpx-sse also yields blocks that EventSource does not dispatch (no ``data`` line: a bare
``retry:``, or only a comment after an id was seen). :func:`parse_events` drops them, as
EventSource does, unless ``all_blocks`` asks for every block that had a field (to see the
stream's ``retry:`` blocks).
"""

from __future__ import annotations

import codecs
import json
import time
from typing import Any, Iterable, Iterator, NamedTuple

import httpx
from httpx_sse import SSEError
# httpx-sse's decoders: pyproject.toml pins httpx-sse below 0.5 since they are not public.
from httpx_sse._decoders import SSEDecoder, SSELineDecoder


class Event(NamedTuple):
    """One block of an event stream: type, data, the id it carried (None without an id
    line), its ``retry`` (None without one), and the stream's last event ID after it."""

    event: str
    data: str
    id: str | None
    retry: int | None = None
    last_id: str = ""

    def json(self) -> Any:
        """The data, decoded from JSON."""
        return json.loads(self.data)

    @property
    def seq(self) -> int:
        """The seq the event's id names (``<seq>:<epoch>``, or ``<seq>`` alone)."""
        return id_seq(self.id)

    @property
    def epoch(self) -> str | None:
        """The epoch the event's id names (None for an id of only a seq)."""
        return self.id.partition(":")[2] or None


def id_seq(event_id: str) -> int:
    """The seq of an entry's SSE id: ``<seq>:<epoch>``, or ``<seq>`` alone."""
    return int(event_id.partition(":")[0])


_UNSET = object()


class _Decoder(SSEDecoder):
    """httpx-sse's decoder, noting per block whether an ``id`` line set the last event ID
    (the library's own field handling decides), whether a ``data`` line came, and whether
    any field did."""

    def __init__(self) -> None:
        super().__init__()
        self._own_id: str | None = None
        self._fields = False

    def block(self, line: str) -> tuple[Any, str | None, bool, bool] | None:
        """Feed one line; at a block's end: (httpx-sse's event or None, the id the block
        carried, whether it had data, whether it had any field)."""
        if not line:
            own, data, fields = self._own_id, bool(self._data), self._fields
            self._own_id, self._fields = None, False
            return self.decode(line), own, data, fields
        if not line.startswith(":"):
            self._fields = True
        before = self._last_event_id
        self._last_event_id = _UNSET  # type: ignore[assignment]
        try:
            self.decode(line)
        finally:
            if self._last_event_id is _UNSET:
                self._last_event_id = before  # not an id line (or one the spec ignores)
            else:
                self._own_id = self._last_event_id
        return None


def _text(source: httpx.Response | bytes | str | Iterable[bytes]) -> Iterator[str]:
    """The stream as text: UTF-8 whatever the headers say (as the spec has it), strictly,
    so bytes that are not UTF-8 fail the test; a leading BOM is dropped."""
    if isinstance(source, httpx.Response):
        content_type = source.headers.get("content-type", "").partition(";")[0].strip()
        if content_type != "text/event-stream":
            raise SSEError(f"expected Content-Type text/event-stream, got {content_type!r}")
        chunks: Iterable[bytes] = source.iter_bytes()
    elif isinstance(source, str):
        chunks = [source.encode()]
    elif isinstance(source, (bytes, bytearray, memoryview)):
        chunks = [bytes(source)]
    else:
        chunks = source
    decoder = codecs.getincrementaldecoder("utf-8")()
    first = True
    for chunk in chunks:
        text = decoder.decode(chunk)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def parse_events(source: httpx.Response | bytes | str | Iterable[bytes], *,
                 all_blocks: bool = False) -> Iterator[Event]:
    """The events of ``source``: a streamed httpx response (its Content-Type must be
    ``text/event-stream``), the stream's bytes or text, or its chunks.

    Only dispatched events, as EventSource has them: a block without a ``data`` line is no
    event, and a stream cut inside a block does not dispatch it. ``all_blocks`` also yields
    blocks with fields but no data (their ``data`` is "").
    """
    lines = SSELineDecoder()
    decoder = _Decoder()
    for text in _text(source):
        for line in lines.decode(text):
            done = decoder.block(line)
            if done is None:
                continue
            sse, own_id, has_data, has_fields = done
            if sse is None or not (has_data or (all_blocks and has_fields)):
                continue
            yield Event(sse.event, sse.data, own_id, sse.retry, sse.id)
    # A last line without its end of line is still a line; a block without its blank line
    # is never dispatched.
    for line in lines.flush():
        decoder.block(line)


TERMINAL = frozenset({"finished", "failed", "cancelled"})
"""The events that end a job's stream."""


class Refused(Exception):
    """The server refused the stream (400, 401, 403, 404): its status and body."""


class Resuming:
    """An EventSource of the tests' own over one job's events, read with :func:`parse_events`:
    it comes back with ``Last-Event-ID`` whenever a connection drops (after ``pause`` s, as
    EventSource does), and stops after the terminal event or a 204. Every event is yielded as
    sent, duplicates too: the tests assert the server sends none.

    A refusal raises :class:`Refused`; ``deadline`` seconds without an answer (a 200, or an
    event) raise TimeoutError.
    ``connections`` counts the 200s, ``reconnects`` the times it came back.
    """

    def __init__(self, client: httpx.Client, url: str, *, deadline: float = 120,
                 pause: float = 0.25):
        """Read ``url`` with ``client`` (its own timeouts apply to each connection)."""
        self.client, self.url = client, url
        self.deadline, self.pause = deadline, pause
        self.connections = 0
        self.reconnects = 0

    def __iter__(self) -> Iterator[Event]:
        """The events, across connections, up to the job's end."""
        last_id = ""
        answered = time.monotonic()
        while time.monotonic() - answered < self.deadline:
            try:
                headers = {"Last-Event-ID": last_id} if last_id else {}
                with self.client.stream("GET", self.url, headers=headers) as r:
                    if r.status_code == 204:
                        return
                    if r.status_code in (400, 401, 403, 404):
                        raise Refused(f"{r.status_code}: {r.read().decode()}")
                    if r.status_code == 200:
                        answered = time.monotonic()
                        self.connections += 1
                        for event in parse_events(r):
                            answered = time.monotonic()
                            if event.id is not None:
                                # (each connection's parser starts without the last id, as
                                # EventSource's does not: an event without one keeps it)
                                last_id = event.last_id
                            yield event
                            if event.event in TERMINAL:
                                return
            except (httpx.HTTPError, OSError):
                pass  # a dropped connection, or a server away for a moment
            self.reconnects += 1
            time.sleep(self.pause)  # EventSource's pause before it reconnects
        raise TimeoutError(f"no answer from {self.url} for {self.deadline} s")
