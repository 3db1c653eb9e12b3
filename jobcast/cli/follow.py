"""`jobcast follow`: watch a job from a terminal, through the web server's server-sent events.

Values are printed as they arrive. Where the job's total is known, a progress bar (rich)
shows i of n, the rate and the time left, computed from the job's own timestamps so a
follower that joins late or reconnects still gets a true rate. A dropped connection is
resumed after the last seq printed (``Last-Event-ID``), so no value is lost or repeated. It
waits with full jitter above the server's ``retry:`` (:class:`~jobcast.cli.sse.JitterBackoff`,
as jobcast.js and EventSource do), so a restarted server is not met by every follower at the
same instant.

Output: ``plain`` writes each value's text on its own line to stdout, as
``/jobs/<id>/stream`` does, and notes (reconnecting, Done, Failed) to stderr; for a terminal,
control characters in what the job or the server wrote become U+FFFD
(:func:`~jobcast.cli.display.printable`). ``json`` writes every log entry as one JSON line to
stdout (the SSE ``data``), exact, for scripts.

What the job prints (``log`` entries) goes to stderr with ``plain``, dimmed on a terminal and
with the job's own escape sequences removed (output must not steer the terminal); logging
records read ``LEVEL logger: text``. ``show_output=False`` (``--no-output``) hides them.

With ``tail=N`` it begins with the job's last N values (then live). When the server's
capped log no longer has values this follower would have printed, it says so on stderr
("N earlier values are no longer kept") and goes on with the first value still kept.

An entry's id is ``<seq>:<epoch>`` (``<seq>`` from an older server); a reconnect resumes with
both. When Redis lost entries this follower had (a failover), the server sends one ``reset``
event first: the follower says so on stderr ("the job's log was reset …: values from #20 on
were replaced"), forgets what came after, and goes on with what the log has now.

Exit codes: 0 the job finished, 1 it failed, 2 bad input (malformed or unknown job id),
3 the server could not be reached for ``reconnect_for`` seconds (or answered an error a later
try may mend, such as a 503 while its Redis is down), 4 the job was cancelled, 5 the job
finished but a reset replaced values already printed, 130 interrupted. The command adds 1
(its output cannot be written) and 141 (its output's reader left).

The HTTP side is jobcast.cli.sse, what is shown jobcast.cli.display. The exit codes,
:func:`bad_input` and :func:`run_reporting` serve ``jobcast follow a b c`` too
(jobcast.cli.follow_many).
"""

from __future__ import annotations

import json
import ssl
import sys
import uuid
from typing import IO, Callable, Iterable, Iterator

import httpx

from jobcast.cli.display import Display, end_note, printable, reset_note, trimmed_note
from jobcast.cli.sse import (TERMINAL_KINDS, BadInput, EventStream, JitterBackoff, Unreachable,
                             error_field, get_status, http_client, refusal)
from jobcast.core.keys import InvalidJobId, check_job_id
from jobcast.core.store import masked_url

EXIT_FINISHED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CANCELLED = 4
EXIT_REPLACED = 5


class Follower:
    """Follow one job's events from ``base_url``, resuming by seq across dropped connections."""

    def __init__(self, job_id: str, base_url: str, display: Display, *, reconnect_for: float = 120.0,
                 read_timeout: float = 60.0, client: httpx.Client | None = None,
                 tail: int | None = None, token: str = ""):
        """Configure; :meth:`run` does the work and returns the exit code."""
        self.job_id = job_id
        self.base_url = base_url.rstrip("/")
        self.display = display
        self.client = client or http_client(token, read_timeout)
        self.backoff = JitterBackoff(reconnect_for, on_outage=self._outage)
        self.stream = EventStream(self.client, self.base_url, job_id, self.backoff, tail=tail)
        self.values = 0         # values seen (progress "i")
        self.shown = 0          # values printed (plain), or entries (json)
        self.replaced = False   # a reset replaced values already shown
        self.terminal: dict | None = None

    @property
    def last_seq(self) -> int:
        """The seq of the last entry received."""
        return self.stream.last_seq

    def _outage(self) -> None:
        """An outage begins: say so (a server down from the start, too: a mistyped port must
        not look like a hang for two minutes), and what the server answered, if anything (a
        503 while its Redis is down is no fault of the server's)."""
        said = f" (it answers {self.backoff.problem})" if self.backoff.problem else ""
        if self.stream.connections:
            self.display.note(f"reconnecting…{said} (resuming after {self.values:,} values)")
        else:
            self.display.note(f"waiting for {masked_url(self.base_url)}…{said}")

    def interrupted(self) -> str:
        """What a Ctrl-C leaves: how much was printed, and where the job's event stream would
        go on (the last entry's id, as ``Last-Event-ID`` or ``?after=`` take it)."""
        what = "entries" if self.display.output == "json" else "values"
        said = f"interrupted after {self.shown:,} {what} printed"
        if not self.last_seq:
            return said
        epoch = self.stream.epoch
        position = f"{self.last_seq}:{epoch}" if epoch else str(self.last_seq)
        return f"{said} (its event stream goes on after id {position})"

    def status(self) -> dict:
        """``GET /api/jobs/<id>``, retried while the server is unreachable."""
        r = get_status(self.client, self.base_url, self.job_id, self.backoff)
        if r.status_code in (400, 401, 403, 404):
            raise BadInput(error_field(r, "message") or refusal(r.status_code, self.job_id))
        r.raise_for_status()
        try:
            info = r.json()
            info["progress"]["n"]  # (what follow reads of it)
        except (ValueError, TypeError, KeyError):
            raise BadInput(f"{masked_url(str(r.request.url))} did not answer with a job's "
                           "status: is --url a Jobcast server?") from None
        return info

    # -- the stream --------------------------------------------------------------------------

    def run(self) -> int:
        """Follow until the terminal entry; return the exit code."""
        info = self.status()
        self.display.start(info.get("task") or "", info["progress"]["n"], 0)
        if info.get("status") == "queued" and self.display.output == "plain":
            # Else nothing shows until a worker takes it, which may be minutes on a busy queue.
            self.display.note("queued: waiting for a worker")
        try:
            for event in self.stream:
                if event.event in ("tail", "trimmed"):
                    self._position(event.event, event.json())
                elif event.event == "reset":
                    self._reset(event.json())
                else:
                    self._entry(event.data)
            if self.terminal is None:
                # 204: nothing after our seq will come, yet we saw no terminal entry
                # (its log expired or was trimmed). The status says how it ended.
                info = self.status()
                self.terminal = {"kind": info["status"], "reason": info.get("reason")}
            kind = self.terminal["kind"]
            self.display.stop({"finished": "done", "cancelled": "cancelled"}.get(kind, "failed"))
        except BaseException:
            self.display.stop()
            raise
        if self.display.output == "plain":
            self.display.note(end_note(self.terminal))
        if kind == "finished":
            return EXIT_REPLACED if self.replaced else EXIT_FINISHED
        if kind == "cancelled":
            return EXIT_CANCELLED
        return EXIT_FAILED

    def _position(self, event: str, data: dict) -> None:
        """A ``tail`` or ``trimmed`` event: where the stream starts, and what is gone."""
        if event == "tail":
            self.values = max(self.values, int(data.get("skipped") or 0))
            if data.get("skipped") and self.display.output == "plain":
                self.display.note(f"skipping {data['skipped']:,} earlier values (--tail {data['tail']})")
            return
        self.display.event("trimmed", data)
        note = trimmed_note(data, self.values)
        if note:
            self.display.note(note)

    def _reset(self, data: dict) -> None:
        """A ``reset`` event: Redis lost entries this follower had (a failover), or the log
        was re-created. Say so, and go on from the value the log goes on with."""
        note, replaced = reset_note(data, self.values)
        self.replaced = self.replaced or replaced
        self.display.event("reset", data)
        self.display.note(note)
        self.values = int(data.get("values") or 0)
        self.display.progress(self.values, None)

    def _entry(self, data: str) -> None:
        """Apply one new entry: print it, track the job's state."""
        entry = json.loads(data)
        kind = entry.get("kind")
        if self.display.output == "json":
            self.display.entry(data)
            self.shown += 1
        if kind == "value":
            self.values = entry["i"] + 1
            if self.display.output == "plain":
                self.display.value(entry["v"])
                self.shown += 1
            self.display.progress(self.values, entry.get("ts"))
        elif kind == "started":
            if self.display.output == "plain" and entry.get("attempt", 1) > 1:
                self.display.note(f"restarted on {entry.get('worker')} (attempt {entry.get('attempt')})")
            if entry.get("ts") is not None:
                self.display.rate.add(entry["ts"], self.values)
        elif kind == "log":
            if self.display.output == "plain" and self.display.show_output:
                self.display.printed(entry)
        elif kind == "retrying":
            if self.display.output == "plain":
                self.display.note(f"retrying: {entry.get('reason')}")
        elif kind in TERMINAL_KINDS:
            self.terminal = entry


def bad_input(job_ids: Iterable[str], base_url: str, tail: int | None) -> str | None:
    """What is wrong with what a follow was asked (a message for stderr), or None."""
    try:
        for job_id in job_ids:
            check_job_id(job_id)
    except InvalidJobId as exc:
        return str(exc)
    if not base_url.startswith(("http://", "https://")):
        return f"--url must start with http:// or https://, got {base_url!r}"
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        return f"--url is not a URL ({exc}): {base_url!r}"
    if not url.host:
        return f"--url names no host: {base_url!r}"
    if url.port is not None and not 0 < url.port < 65536:
        return f"--url's port must be 1 to 65535, got {url.port}"
    if tail is not None and tail < 0:
        return "--tail must be 0 or more"
    return None


PROBE_TIMEOUT = 3.0
"""Seconds :func:`read_refused` gives the server (to connect, and to answer)."""


def read_refused(base_url: str, token: str, client: httpx.Client | None = None) -> str | None:
    """Why a follow at ``base_url`` with ``token`` would be refused whatever the job (said),
    or None: it would not, or the server cannot be asked now (a follow waits for it).

    Asked before ``jobcast enqueue --follow`` queues its job, of a job id nobody has: a
    Jobcast server checks the credentials first, then answers 404 with its error body.
    """
    url = f"{base_url.rstrip('/')}/api/jobs/{uuid.uuid4().hex}"
    shown = masked_url(base_url)
    c = client or http_client(token, PROBE_TIMEOUT, connect=PROBE_TIMEOUT)
    try:
        r = c.get(url)
    except httpx.HTTPError as exc:
        # A certificate that cannot be verified will not mend while a follow retries.
        bad_cert = next((e for e in causes(exc) if isinstance(e, ssl.SSLCertVerificationError)),
                        None)
        return f"cannot verify the certificate of {shown}: {bad_cert}" if bad_cert else None
    finally:
        if client is None:  # (a caller's client is the caller's to close)
            c.close()
    status = r.status_code
    if status == 401 and token:
        return (f"{shown} asked for a token, though JOBCAST_TOKEN was sent (did a proxy or a "
                "redirect drop it?)")
    if status in (401, 403):
        # In the CLI's words: the server's would speak of the job it was asked for.
        return refusal(status, "")
    if status == 400:
        return error_field(r, "message") or f"{shown} refused the request (HTTP 400)"
    if (status == 404 and error_field(r, "error") is None) or 200 <= status < 300:
        return (f"{shown} did not answer as a Jobcast server (HTTP {status} for a job that "
                "does not exist): is --url right?")
    return None  # no such job, as expected; or a passing error (5xx, 429) a follow rides out


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def run_reporting(run: Callable[[], int], err: IO[str], interrupted: Callable[[], str]) -> int:
    """``run()``'s exit code, or the exit code of what stopped it (said on ``err``)."""
    # (A message may carry a server's words, which reach the terminal as any note does.)
    try:
        return run()
    except BadInput as exc:
        err.write(f"jobcast: {printable(str(exc))}\n")
        return EXIT_BAD_INPUT
    except Unreachable as exc:
        err.write(f"jobcast: {printable(str(exc))}\n")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        err.write(f"jobcast: {interrupted()}\n")
        return EXIT_INTERRUPTED
    except httpx.HTTPStatusError as exc:
        err.write(f"jobcast: {printable(str(exc))}\n")
        return EXIT_UNREACHABLE


def follow(job_id: str, base_url: str, *, output: str = "plain", progress: bool | None = None,
           reconnect_for: float = 120.0, out: IO[str] | None = None, err: IO[str] | None = None,
           tail: int | None = None, token: str = "", show_output: bool = True) -> int:
    """Follow ``job_id`` on the Jobcast server at ``base_url``; return the exit code.

    ``token`` (JOBCAST_TOKEN) is sent as a bearer token, for a server whose jobs are private.
    ``show_output`` False hides what the job prints.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    problem = bad_input([job_id], base_url, tail)
    if problem:
        err.write(f"jobcast: {problem}\n")
        return EXIT_BAD_INPUT
    display = Display(output, progress, out, err, show_output)
    follower = Follower(job_id, base_url, display, reconnect_for=reconnect_for, tail=tail,
                        token=token)
    try:
        return run_reporting(follower.run, err, follower.interrupted)
    finally:
        follower.client.close()
