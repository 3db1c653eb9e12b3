"""Several jobs over one connection: ``jobcast follow a b c``, and :func:`watch_many`.

One ``GET /events?job=a&job=b&job=c`` stream carries every job (see ``web/events.py``): each
event's data names its job and its seq, and each write ends with an id holding every job's
cursor. The client keeps that id as it is (opaque) and sends it back as ``Last-Event-ID`` when
it reconnects, so every job resumes exactly; an entry at or before its job's last seq is
dropped all the same (a write cut midway may come again). Before the first id, a
reconnection names each job's position inline (``job=<id>:<seq>~<epoch>``).

A ``reset`` (a failover lost entries of a job, or its log was re-created) moves that job's
position back to where its log goes on, in its new epoch; ``jobcast follow`` says so, and
exits 5 if such a job finished after values it had printed were replaced.

Reconnecting waits with full jitter above the server's ``retry`` (from ``hello``), as
jobcast.js does, so a restarted server is not met by every client at once; after
``reconnect_for`` seconds of one outage it gives up (exit 3).

For a script::

    from jobcast.cli.follow_many import watch_many

    for ev in watch_many(["3fa8…", "9c2e…"], "http://localhost:8000"):
        if ev.event == "value":
            print(ev.job[:8], ev.data["v"])

``jobcast follow a b c`` prints each value as ``<8-char id> <text>`` (``--output json``: every
entry as a JSON line, naming its ``job``), notes on stderr, and exits with the worst outcome:
a job that does not exist (2) > failed (1) > cancelled (4) > finished after a reset
replaced printed values (5) > finished (0).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import IO, Iterator, NamedTuple

import httpx

from jobcast.cli.display import Display, end_note, reset_note, trimmed_note
from jobcast.cli.follow import (EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_FINISHED,
                                EXIT_REPLACED, bad_input, run_reporting)
from jobcast.cli.sse import (RETRYABLE, TERMINAL_KINDS, BadInput, JitterBackoff, error_field,
                             get_status, http_client, opened, parse_blocks, refusal, sse_lines)
from jobcast.core.store import masked_url

MAX_JOBS = 100
"""The most jobs one stream carries (the server's cap)."""

NOTICES = ("tail", "trimmed", "missing", "ended")
"""Per-job events with no seq: where a job's stream starts, or that nothing will come."""

# How each job's end ranks, worst last, and the exit code it gives.
OUTCOMES = {"finished": (0, EXIT_FINISHED), "replaced": (1, EXIT_REPLACED),
            "cancelled": (2, EXIT_CANCELLED), "failed": (3, EXIT_FAILED),
            "missing": (4, EXIT_BAD_INPUT)}


class JobEvent(NamedTuple):
    """One event of a multi-job stream: its job, its type (an entry's kind, or a notice),
    its data decoded, and the data as sent."""

    job: str
    event: str
    data: dict
    raw: str


class MultiEventStream:
    """Several jobs' events over one ``/events`` connection, read again after a dropped one
    from the last cursor, so every job's entries come once and in order.

    Iterating yields :class:`JobEvent`s: entries (with a seq), ``reset`` (the job's position
    moved back to where its log goes on), and ``tail``, ``trimmed``, ``missing`` and ``ended``
    (a job that does not exist, or had ended where the stream resumed). It stops once every
    job has ended.
    """

    def __init__(self, client: httpx.Client, base_url: str, job_ids: list[str],
                 backoff: JitterBackoff, *, tail: int | None = None):
        """Configure; iterate to read."""
        if not 1 <= len(job_ids) <= MAX_JOBS:
            raise BadInput(f"name from 1 to {MAX_JOBS} jobs, not {len(job_ids)}")
        twice = [job_id for job_id, n in Counter(job_ids).items() if n > 1]
        if twice:
            named = f"job {twice[0]} is" if len(twice) == 1 else f"jobs {', '.join(twice)} are"
            raise BadInput(f"{named} named more than once: name each job once")
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.job_ids = list(job_ids)
        self.backoff = backoff
        self.tail = tail                # asked on the first connection only
        self.last_seq = {job_id: 0 for job_id in job_ids}
        self.epoch: dict[str, str | None] = {job_id: None for job_id in job_ids}
        self.cursor: str | None = None  # the stream's last id, sent back as Last-Event-ID
        self.past_cursor = False        # events came after that id (a write cut short)
        self.ended: dict[str, str] = {}  # job → how its stream ended (a terminal kind, ...)
        self.connections = 0
        self.retries = 0
        self.duplicates = 0

    def __iter__(self) -> Iterator[JobEvent]:
        """Events across connections, until every job has ended."""
        while len(self.ended) < len(self.job_ids):
            outcome = yield from self._connection()
            if outcome == "over":
                return
            if outcome != "retry" and len(self.ended) < len(self.job_ids):
                # Dropped, or closed by the server (a restart's goodbye): wait, then resume.
                self.retries += 1
                self.backoff.wait(self.base_url)

    def _request(self) -> tuple[list[tuple[str, str]], dict[str, str]]:
        """The query and headers of the next connection."""
        headers = {"Accept": "text/event-stream"}
        if self.cursor is not None and not self.past_cursor:
            # The cursor names every job in this order: it wins over inline positions. Not
            # when entries came after it (a connection cut within a write, before its id):
            # resumed from the cursor, the server would judge a position older than ours, and
            # entries a failover replaced since, at seqs we had, would be dropped here as ones
            # we had, in silence. Our own positions get the reset they call for.
            headers["Last-Event-ID"] = self.cursor
            return [("job", job_id) for job_id in self.job_ids], headers
        params = []
        for job_id in self.job_ids:
            seq, epoch = self.last_seq[job_id], self.epoch[job_id]
            if seq:
                params.append(("job", f"{job_id}:{seq}~{epoch}" if epoch else f"{job_id}:{seq}"))
            elif self.tail is not None and self.connections == 0:
                params.append(("job", f"{job_id}~{self.tail}"))
            else:
                params.append(("job", job_id))
        return params, headers

    def _connection(self) -> Iterator[JobEvent]:
        """Read one connection; return "over" (204: nothing more), "closed" (the server
        ended it), "retry" (at once: a cursor it refused) or "dropped"."""
        params, headers = self._request()
        try:
            with self.client.stream("GET", f"{self.base_url}/events", params=params,
                                    headers=headers) as r:
                if r.status_code == 204:
                    self.backoff.reset()
                    for job_id in self.job_ids:
                        self.ended.setdefault(job_id, "ended")
                    return "over"
                if r.status_code in (400, 401, 403, 404):
                    # Not something a retry mends: a bad id, a token needed or refused, or no
                    # Jobcast at that URL (a job of several that is unknown is no 404: it ends).
                    r.read()
                    if self.cursor is not None and error_field(r, "field") == "Last-Event-ID":
                        self.cursor = None  # a cursor this server does not read: go inline
                        return "retry"
                    if r.status_code == 404:
                        where = masked_url(str(r.request.url.copy_with(query=None)))
                        raise BadInput(f"{where} answered 404: is --url a Jobcast server?")
                    raise BadInput(error_field(r, "message") or refusal(r.status_code, ""))
                if not opened(r, self.backoff):
                    return "dropped"
                self.connections += 1
                for event_id, event, data in parse_blocks(sse_lines(r.iter_text())):
                    if data is not None:
                        for ev in self._events(event, data):
                            self.past_cursor = True
                            yield ev
                    if event_id is not None:  # (it counts the block's own event too)
                        self.cursor = event_id
                        self.past_cursor = False
                return "closed"
        except RETRYABLE:
            self.backoff.failed()
        return "dropped"

    def _events(self, event: str, raw: str) -> list[JobEvent]:
        """What one event gives: nothing for a duplicate, the stream's own, or a job's."""
        data = json.loads(raw)
        if event in ("hello", "bye"):
            self.backoff.retry(int(data.get("retry") or 0))
            return []
        job_id = data.get("job")
        if job_id not in self.last_seq:
            return []
        if event in NOTICES:
            if event == "tail" and data.get("after"):
                self.last_seq[job_id] = max(self.last_seq[job_id], int(data["after"]))
            elif event == "trimmed" and data.get("first_seq"):
                self.last_seq[job_id] = max(self.last_seq[job_id], int(data["first_seq"]) - 1)
            elif event in ("missing", "ended"):
                self.ended.setdefault(job_id, event)
            return [JobEvent(job_id, event, data, raw)]
        if event == "reset":
            # The log is not what we followed: go on after ``after``, in its new epoch.
            self.last_seq[job_id] = int(data.get("after") or 0)
            self.epoch[job_id] = data.get("epoch") or None
            return [JobEvent(job_id, event, data, raw)]
        seq = data.get("seq")
        if not isinstance(seq, int):
            return [JobEvent(job_id, event, data, raw)]  # a kind of event this client does not know
        if seq <= self.last_seq[job_id]:
            self.duplicates += 1
            return []
        self.last_seq[job_id] = seq
        self.epoch[job_id] = data.get("ep") or self.epoch[job_id]
        if event in TERMINAL_KINDS:
            self.ended[job_id] = event
        return [JobEvent(job_id, event, data, raw)]


def watch_many(job_ids: list[str], base_url: str, *, token: str = "", tail: int | None = None,
               reconnect_for: float = 120.0, read_timeout: float = 60.0,
               client: httpx.Client | None = None) -> Iterator[JobEvent]:
    """Every event of several jobs, over one connection to the Jobcast server at
    ``base_url``: each job's entries once and in seq order, across reconnections, until
    every job has ended.

    ``token``: JOBCAST_TOKEN, for a private server. ``tail``: begin each job with its last N
    values. Raises :class:`~jobcast.cli.sse.BadInput` (a malformed id, a refused
    request) or :class:`~jobcast.cli.sse.Unreachable` (no answer for ``reconnect_for`` s).
    """
    own = client is None
    http = client or http_client(token, read_timeout)
    try:
        yield from MultiEventStream(http, base_url, list(job_ids),
                                    JitterBackoff(reconnect_for), tail=tail)
    finally:
        if own:
            http.close()


class MultiFollower:
    """``jobcast follow a b c``: print several jobs' values and notes as they come."""

    def __init__(self, job_ids: list[str], base_url: str, display: Display, *,
                 reconnect_for: float = 120.0, tail: int | None = None, token: str = "",
                 client: httpx.Client | None = None):
        """Configure; :meth:`run` does the work and returns the exit code."""
        self.display = display
        self.base_url = base_url.rstrip("/")
        self.client = client or http_client(token, 60.0)
        self.backoff = JitterBackoff(reconnect_for, on_outage=self._outage)
        self.stream = MultiEventStream(self.client, base_url, job_ids, self.backoff, tail=tail)
        self.attempts: dict[str, int] = {}
        self.values: dict[str, int] = {}   # values seen per job
        self.shown = 0                     # values printed (plain), or entries (json)
        self.replaced: set[str] = set()    # jobs a reset replaced printed values of
        self.outcomes: dict[str, dict] = {}

    def _outage(self) -> None:
        """An outage begins: say so (a server down from the start too), and what the server
        answered, if anything (a 503 while its Redis is down is no fault of the server's)."""
        said = f" (it answers {self.backoff.problem})" if self.backoff.problem else ""
        if self.stream.connections:
            self.display.note(f"reconnecting…{said} (each job resumes after its last entry)")
        else:
            self.display.note(f"waiting for {masked_url(self.stream.base_url)}…{said}")

    def interrupted(self) -> str:
        """What a Ctrl-C leaves: how much was printed."""
        what = "entries" if self.display.output == "json" else "values"
        return f"interrupted after {self.shown:,} {what} printed"

    def run(self) -> int:
        """Follow until every job has ended; the worst outcome's exit code."""
        for ev in self.stream:
            self._show(ev)
        for job_id in self.stream.job_ids:
            if job_id not in self.outcomes:
                self._ended_without_entry(job_id)
        kinds = ["replaced" if o["kind"] == "finished" and job_id in self.replaced else o["kind"]
                 for job_id, o in self.outcomes.items()]
        return OUTCOMES[max(kinds, key=lambda kind: OUTCOMES[kind][0])][1]

    def _show(self, ev: JobEvent) -> None:
        """Print one event (plain: values on stdout, the rest on stderr; json: entries)."""
        short = ev.job[:8]
        plain = self.display.output == "plain"
        if ev.event in NOTICES:
            if ev.event == "missing":
                self.outcomes[ev.job] = {"kind": "missing"}
                self.display.note(f"{short} no job with id {ev.job}")
            elif ev.event == "trimmed":
                self._trimmed(ev)
            elif ev.event == "tail" and ev.data.get("skipped"):
                self.values[ev.job] = int(ev.data["skipped"])
                if plain:
                    self.display.note(f"{short} skipping {ev.data['skipped']:,} earlier values")
            return
        if ev.event == "reset":
            self._reset(ev)
            return
        if not plain:
            self.display.entry(ev.raw)
            self.shown += 1
        kind = ev.data.get("kind")
        if kind in TERMINAL_KINDS:
            self.outcomes[ev.job] = ev.data
            if plain:
                self.display.note(f"{short} {end_note(ev.data)}")
        elif kind == "value":
            self.values[ev.job] = ev.data["i"] + 1
            if plain:
                self.display.value(f"{short} {ev.data['v']}")
                self.shown += 1
        elif not plain:
            return
        elif kind == "log" and self.display.show_output:
            attempt = ev.data.get("attempt")
            if self.attempts.setdefault(ev.job, attempt) != attempt:
                self.attempts[ev.job] = attempt
                self.display.note(f"{short} (attempt {attempt})")
            # As one job's are (a record's own lines indented), each line after the job's id.
            self.display.printed(dict(ev.data, attempt=None), prefix=f"{short} ")
        elif kind == "retrying":
            self.display.note(f"{short} retrying: {ev.data.get('reason')}")

    def _trimmed(self, ev: JobEvent) -> None:
        """A job's ``trimmed``: what its capped log no longer has, on stderr in either output
        (and in JSON, as a line of its own): a gap is never passed over in silence."""
        self.display.event("trimmed", ev.data)
        note = trimmed_note(ev.data, self.values.get(ev.job, 0))
        if note:
            self.display.note(f"{ev.job[:8]} {note}")

    def _reset(self, ev: JobEvent) -> None:
        """A job's ``reset``: Redis lost entries of it we had (a failover), or its log was
        re-created. Say so; the stream goes on from the value the log goes on with."""
        note, replaced = reset_note(ev.data, self.values.get(ev.job, 0))
        if replaced:
            self.replaced.add(ev.job)
        self.values[ev.job] = int(ev.data.get("values") or 0)
        self.display.event("reset", ev.data)
        self.display.note(f"{ev.job[:8]} {note}")

    def _ended_without_entry(self, job_id: str) -> None:
        """A job whose stream ended before its terminal entry came (it had ended at the
        position resumed, or its log expired): its status says how."""
        info = self._status(job_id)
        if info is None:
            self.outcomes[job_id] = {"kind": "missing"}
            self.display.note(f"{job_id[:8]} no job with id {job_id} (any more)")
            return
        kind = info.get("status") if info.get("status") in TERMINAL_KINDS else "failed"
        self.outcomes[job_id] = {"kind": kind, "reason": info.get("reason")}
        if self.display.output == "plain":
            self.display.note(f"{job_id[:8]} {end_note(self.outcomes[job_id])}")

    def _status(self, job_id: str) -> dict | None:
        """``GET /api/jobs/<id>``, retried while the server is unreachable or busy (as one
        job's follow does: a passing error is no failure of the job); None for a job the
        server does not have (its log expired)."""
        r = get_status(self.client, self.base_url, job_id, self.backoff)
        if r.status_code == 404:
            return None
        if r.status_code in (400, 401, 403):
            raise BadInput(error_field(r, "message") or refusal(r.status_code, job_id))
        try:
            info = r.json()
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}


def follow_many(job_ids: list[str], base_url: str, *, output: str = "plain",
                reconnect_for: float = 120.0, out: IO[str] | None = None,
                err: IO[str] | None = None, tail: int | None = None, token: str = "",
                show_output: bool = True) -> int:
    """Follow several jobs over one connection; the exit code of the worst outcome."""
    out = out or sys.stdout
    err = err or sys.stderr
    problem = bad_input(job_ids, base_url, tail)
    if problem:
        err.write(f"jobcast: {problem}\n")
        return EXIT_BAD_INPUT
    display = Display(output, False, out, err, show_output)  # no bar: several jobs at once
    client = http_client(token, 60.0)
    started: list[MultiFollower] = []

    def run() -> int:
        """Follow (its arguments are checked here: a refusal is reported as bad input)."""
        started.append(MultiFollower(job_ids, base_url, display, client=client,
                                     reconnect_for=reconnect_for, tail=tail))
        return started[0].run()

    try:
        return run_reporting(run, err,
                             lambda: started[0].interrupted() if started else "interrupted")
    finally:
        client.close()
