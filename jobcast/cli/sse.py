"""The HTTP side of ``jobcast follow``: server-sent events, read as EventSource reads them.

:func:`parse_sse` (over :func:`parse_blocks`) reads an event stream's lines. :class:`EventStream`
follows one job's ``/jobs/<id>/events`` and opens a dropped connection again after the last
seq received (``Last-Event-ID``), so no entry is lost; :func:`get_status` asks
``/api/jobs/<id>``. Both try an unreachable or busy server again after a :class:`Backoff`
(:class:`JitterBackoff`: full jitter above the server's ``retry:``, as jobcast.js and
EventSource do). What no retry mends is raised as :class:`BadInput`; an outage longer than the
backoff allows, as :class:`Unreachable`.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import httpx

from jobcast.core.entry import TERMINAL
from jobcast.core.store import masked_url

# Errors after which the stream is opened again from the last seq (RemoteProtocolError, a
# connection cut within a response, is a TransportError too).
RETRYABLE = (httpx.TransportError,)

# The kinds that end a job, as the log defines them. A tuple, as `in` then compares rather
# than hashes: a malformed entry's unhashable kind (a list) is no end, not a TypeError.
TERMINAL_KINDS = tuple(TERMINAL)


class BadInput(Exception):
    """The job id is malformed or unknown: exit 2."""


class Unreachable(Exception):
    """The server stayed unreachable for too long: exit 3."""


class Event(NamedTuple):
    """One server-sent event: ``id`` (None when it has none), its type, its data."""

    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        """The data, decoded from JSON."""
        return json.loads(self.data)

    def position(self) -> tuple[int, str | None]:
        """The (seq, epoch) the id names: ``<seq>:<epoch>``, or ``<seq>`` alone."""
        seq, _, epoch = (self.id or "").partition(":")
        return int(seq), epoch or None


def parse_blocks(lines: Iterable[str], on_retry: Callable[[int], None] | None = None
                 ) -> Iterator[tuple[str | None, str, str | None]]:
    """Server-sent event blocks as ``(id, event, data)``, comments (heartbeats) skipped.
    ``data`` is None for a block with no data line: EventSource does not dispatch it, but
    keeps its ``id`` (a multi-job stream's cursor comes in such blocks). A ``retry:`` field
    (the server's reconnection delay, in ms; digits only, as EventSource requires) is passed
    to ``on_retry`` as it is read."""
    event_id: str | None = None
    event = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data or event_id is not None:
                yield event_id, event, "\n".join(data) if data else None
            event_id, event, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "retry" and on_retry is not None and value.isascii() and value.isdigit():
            on_retry(int(value))


_EOL = re.compile(r"\r\n|\r|\n")


def sse_lines(chunks: Iterable[str]) -> Iterator[str]:
    """The lines of an event stream's text, ended as the SSE spec says: by CRLF, CR or LF, and
    nothing else (``str.splitlines``, and so httpx's ``iter_lines``, also ends a line at
    U+2028, U+0085 and others, which a value's text may hold: a ``data:`` line cut there is
    no longer JSON)."""
    pending = ""
    for chunk in chunks:
        # What is pending holds no line end but a last CR: scanned again from there only.
        scan = max(len(pending) - 1, 0)
        pending += chunk
        start = 0
        for end in _EOL.finditer(pending, scan):
            if end.group() == "\r" and end.end() == len(pending):
                break  # maybe the first half of a CRLF: wait for what follows
            yield pending[start:end.start()]
            start = end.end()
        pending = pending[start:]
    if pending:
        yield pending.removesuffix("\r")


def parse_sse(lines: Iterable[str], on_retry: Callable[[int], None] | None = None
              ) -> Iterator[Event]:
    """Parse server-sent events from text lines; comments (heartbeats) and events without
    data (a bare ``retry:``) are skipped, as EventSource does (``retry:`` goes to
    ``on_retry``, see :func:`parse_blocks`)."""
    for event_id, event, data in parse_blocks(lines, on_retry):
        if data is not None:
            yield Event(event_id, event, data)


class Backoff:
    """When to try an unreachable server again, and when to stop trying.

    The deadline is kept: the last wait is cut short so that the last try comes when
    ``give_up_after`` runs out, and a try that fails past it gives up at once. A try under way
    then is let finish: one that gets no answer at all takes up to its client's connect
    timeout (10 s for a follow, :func:`http_client`).
    """

    def __init__(self, give_up_after: float, *, first: float = 0.25, most: float = 2.0,
                 on_outage: Callable[[], None] | None = None,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], object] | None = None):
        """Wait ``first`` seconds, doubling up to ``most``; give up after ``give_up_after``
        seconds of one outage. ``on_outage`` is called when an outage begins. ``clock`` and
        ``sleep``: time.monotonic and time.sleep unless given."""
        self.give_up_after = give_up_after
        self.first = first
        self.most = most
        self.on_outage = on_outage
        self.clock = clock
        self.sleep = sleep
        self.problem: str | None = None  # what the server answered to the last try; None: nothing
        self._down_since: float | None = None
        self._delay = first

    def reset(self) -> None:
        """The server answered: the next outage starts its clock afresh."""
        self._down_since = None
        self._delay = self.first
        self.problem = None

    def retry(self, ms: int) -> None:
        """The server's ``retry`` (milliseconds): this fixed schedule does not follow it (see
        :class:`JitterBackoff`, which does)."""

    def failed(self, answer: httpx.Response | None = None) -> None:
        """A try failed: the server gave ``answer`` (an error a later try may mend, such as a
        503 while its Redis is down), or none at all."""
        self.problem = None if answer is None else answered(answer)

    def next_delay(self) -> float:
        """The wait before the next try, in seconds: doubling from ``first`` up to ``most``."""
        delay = self._delay
        self._delay = min(self.most, self._delay * 2)
        return delay

    def wait(self, where: str) -> None:
        """Sleep before the next try, or raise :class:`Unreachable` once the outage has lasted
        ``give_up_after`` seconds (the server at ``where`` is named)."""
        now = (self.clock or time.monotonic)()
        if self._down_since is None:
            self._down_since = now
            if self.on_outage is not None:
                self.on_outage()
        elif now - self._down_since >= self.give_up_after:
            raise Unreachable(self.gave_up(where))
        left = self._down_since + self.give_up_after - now
        (self.sleep or time.sleep)(max(0.0, min(self.next_delay(), left)))

    def gave_up(self, where: str) -> str:
        """Why the outage ended the follow: what the server said, or that it said nothing."""
        if self.problem is None:
            return f"gave up after {self.give_up_after:g} s: no answer from {masked_url(where)}"
        return f"gave up after {self.give_up_after:g} s: {masked_url(where)} answers {self.problem}"


def answered(r: httpx.Response) -> str:
    """An error answer in a few words: its status, and the message of its JSON body (which a
    Jobcast server gives: ``HTTP 503: Redis is unreachable; retry shortly``)."""
    message = error_field(r, "message")
    return f"HTTP {r.status_code}" + (f": {message}" if isinstance(message, str) and message
                                      else "")


class JitterBackoff(Backoff):
    """Full jitter above the server's retry: before the n-th try of an outage, wait
    ``floor + random(0, min(cap, floor·2^n))`` seconds (at most ``cap``); give up after
    ``give_up_after`` seconds of one outage."""

    def __init__(self, give_up_after: float, *, floor: float = 1.0, cap: float = 30.0,
                 on_outage: Callable[[], None] | None = None,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], object] | None = None):
        """``floor`` until the server says its own (:meth:`retry`); ``clock`` and ``sleep``
        as :class:`Backoff`'s."""
        super().__init__(give_up_after, on_outage=on_outage, clock=clock, sleep=sleep)
        self.floor = floor
        self.cap = cap
        self.attempt = 0

    def retry(self, ms: int) -> None:
        """The server's ``retry`` (milliseconds): the floor from now on."""
        if ms > 0:
            self.floor = ms / 1000

    def reset(self) -> None:
        """The server answered: the next outage starts afresh."""
        super().reset()
        self.attempt = 0

    def next_delay(self) -> float:
        """The wait before the next try, in seconds."""
        window = min(self.cap, self.floor * 2 ** self.attempt)
        self.attempt += 1
        return min(self.cap, self.floor + random.uniform(0, window))


class EventStream:
    """One job's server-sent events, read as EventSource reads them: a dropped connection is
    opened again after the last seq received (``Last-Event-ID``), so no entry is lost.

    Iterating yields the events the server sends (an entry's id is its seq and epoch;
    ``tail`` and ``trimmed`` have none and say where the stream starts; a ``reset`` moves the
    position back to where the log goes on) and stops after the terminal entry, or when the
    server answers 204: nothing after the last seq will come. With ``skip_seen`` an entry at or
    before the last seq is dropped; without it every event is yielded as sent, for a reader
    that checks the server.
    """

    def __init__(self, client: httpx.Client, base_url: str, job_id: str, backoff: Backoff, *,
                 tail: int | None = None, skip_seen: bool = True):
        """Configure; iterate to read."""
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.job_id = job_id
        self.backoff = backoff
        self.tail = tail        # asked only on the first connection; then resume by seq
        self.skip_seen = skip_seen
        self.last_seq = 0
        self.epoch: str | None = None  # the epoch of the log's incarnation followed
        self.connections = 0    # streams opened (1 + reconnections)
        self.retries = 0        # times the stream was opened again after a drop

    def __iter__(self) -> Iterator[Event]:
        """Events across connections, until the terminal entry or the server's 204."""
        while True:
            outcome = yield from self._connection()
            if outcome != "dropped":
                return
            self.retries += 1
            self.backoff.wait(self.base_url)

    def _connection(self) -> Iterator[Event]:
        """Read one connection's events; return "terminal", "ended" (204) or "dropped"."""
        if self.tail is not None and self.connections == 0 and self.last_seq == 0:
            # The first connection asks for the tail; any later one resumes by seq.
            params, headers = {"tail": self.tail}, {"Accept": "text/event-stream"}
        else:
            position = f"{self.last_seq}:{self.epoch}" if self.epoch else str(self.last_seq)
            params = {"after": position}
            headers = {"Accept": "text/event-stream", "Last-Event-ID": position}
        try:
            with self.client.stream("GET", f"{self.base_url}/jobs/{self.job_id}/events",
                                    params=params, headers=headers) as r:
                if r.status_code == 204:
                    self.backoff.reset()
                    return "ended"
                if r.status_code in (400, 401, 403, 404):
                    # Not something a retry mends: a bad id, or a token needed or refused.
                    r.read()
                    raise BadInput(error_field(r, "message") or refusal(r.status_code, self.job_id))
                if not opened(r, self.backoff):
                    return "dropped"
                self.connections += 1
                for event in parse_sse(sse_lines(r.iter_text()), self.backoff.retry):
                    if event.event == "reset":
                        # The log is not what we followed: go on from where it says.
                        self.last_seq, self.epoch = event.position()
                    elif event.id is not None:
                        # An entry, or a tail's start (the position it begins after, so a
                        # connection dropped before any entry resumes there): never skipped.
                        seq, epoch = event.position()
                        if (event.event != "tail" and self.skip_seen and seq <= self.last_seq
                                and epoch == self.epoch):
                            continue
                        self.last_seq, self.epoch = max(self.last_seq, seq), epoch or self.epoch
                    elif event.event == "tail":
                        # A server before ids on tail events: its data's ``after``.
                        self.last_seq = max(self.last_seq, int(event.json().get("after") or 0))
                    yield event
                    if event.event in TERMINAL_KINDS:
                        return "terminal"
        except RETRYABLE:
            self.backoff.failed()
        return "dropped"


def get_status(client: httpx.Client, base_url: str, job_id: str,
               backoff: Backoff) -> httpx.Response:
    """``GET /api/jobs/<id>``'s answer, asked again (after ``backoff``) while the server is
    unreachable or busy (5xx, 408, 429): a passing error says nothing of the job. Raises
    :class:`Unreachable` once the outage is longer than the backoff allows."""
    while True:
        try:
            r = client.get(f"{base_url}/api/jobs/{job_id}")
        except RETRYABLE:
            backoff.failed()
            backoff.wait(base_url)
            continue
        if r.status_code >= 500 or r.status_code in (408, 429):
            backoff.failed(r)  # (what it says is told: "Redis is unreachable", say)
            backoff.wait(base_url)
            continue
        backoff.reset()
        return r


def opened(r: httpx.Response, backoff: Backoff) -> bool:
    """Whether ``r`` is an event stream to read (the connection's backoff starts over): False
    for another status, which a later try may mend; raises for a 200 that is no event stream
    (:func:`not_an_event_stream`)."""
    if r.status_code != 200:
        r.read()  # (its error body says why: told if the outage lasts)
        backoff.failed(r)
        return False
    wrong = not_an_event_stream(r)
    if wrong is not None:
        raise wrong
    backoff.reset()
    return True


def not_an_event_stream(r: httpx.Response) -> BadInput | None:
    """A 200 that is not an event stream (a login page, a proxy's, another server): what to
    say, as no retry mends it; None for an event stream."""
    kind = r.headers.get("content-type", "").split(";")[0].strip()
    if kind == "text/event-stream":
        return None
    return BadInput(f"{masked_url(str(r.request.url))} answered with "
                    f"{kind or 'no Content-Type'}, not an event "
                    "stream: is --url a Jobcast server?")


def refusal(status: int, job_id: str) -> str:
    """What to say of a refusal whose body says nothing readable."""
    if status == 401:
        return "the server needs a token: set JOBCAST_TOKEN"
    if status == 403:
        return "the server refused the token (JOBCAST_TOKEN)"
    # Jobcast says which job it lacks in a JSON body: a 404 without one is another server's.
    return f"no job with id {job_id} there (a 404 without Jobcast's error body: is --url a " \
           "Jobcast server?)"


def error_field(r: httpx.Response, name: str) -> str | None:
    """The ``name`` field of an error answer's JSON body (``{"error", "message", "field"}``:
    what the server says, or which request field it refused); None when the body is not
    JSON."""
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get(name) if isinstance(body, dict) else None


def http_client(token: str, read_timeout: float, connect: float = 10.0) -> httpx.Client:
    """The HTTP client of a follow: ``connect`` seconds to connect, ``read_timeout`` between
    reads, and ``token`` sent as a bearer token when there is one."""
    headers = {"User-Agent": "jobcast-follow"}
    if token:
        # A private server (JOBCAST_READ) needs the token to read a job.
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(timeout=httpx.Timeout(connect, read=read_timeout), follow_redirects=True,
                        headers=headers)
