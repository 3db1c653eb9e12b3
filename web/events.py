"""One stream, many jobs: ``GET /events?job=a&job=b`` (server-sent events).

A browser allows six HTTP/1.1 connections per host, so a page (or a set of tabs sharing one
connection, see ``static/jobcast.js``) watches all its jobs over one stream. Each job is a
viewer of the relay with its own cursor, lease and catch-up, exactly as on ``/jobs/<id>/events``;
they share one connection (:class:`~jobcast.web.viewer.Connection`), one stream slot and one
heartbeat.

- **Jobs.** ``job=<id>`` (repeated, in order, at most ``MAX_JOBS``): the whole log;
  ``job=<id>:<seq>~<epoch>`` (or ``job=<id>:<seq>``) resumes after that seq of that epoch;
  ``job=<id>~<n>`` begins with its last n values. A job twice, a bad id or spec is a 400
  naming ``job``.
- **Events.** Every entry is an event whose type is its kind and whose data is the entry with
  its job: ``{"job": "<id>", "seq": 17, "ep": "<epoch>", "kind": "value", ...}``. Before the
  first entry, per job and without an id: ``reset`` (below), ``tail``, ``trimmed``,
  ``missing`` (no such job: nothing will come) and ``ended`` (it had ended at the position
  asked: nothing will come); then ``hello``. A ``trimmed`` found only as the job's history is
  read (its catch-up) comes after ``hello``, still before the job's first entry.
- **Ids.** Each write ends with ``id: <digest>:<c0>.<c1>…``: the cursor of every job, in the
  order of the ``job`` parameters (``digest`` names that list, the job list's feed last when
  asked for). A cursor is ``<seq>~<epoch>``: the seq of the last entry sent of the job, and the
  epoch of the log's incarnation it follows (:mod:`jobcast.core.epoch`); ``<seq>`` alone for a
  log without one, and a cursor of only seqs, from before epochs, is still accepted (trusted
  unless past the log's end). So ``Last-Event-ID`` resumes every job exactly, and the set of
  jobs changes by reconnecting with each job's cursor inline (``job=<id>:<seq>~<epoch>``): a
  change is stateless, and a connection id would need the next request to reach the very
  process holding the stream.
- **Reset.** When a job's position is not in its log as it is (Redis lost entries in a
  failover, or the log was re-created), that job gets one ``reset`` event before anything else
  of it, at admission or mid-stream: ``{"job", "epoch", "after", "values", "reason", "was"}``:
  drop what you hold of the job after seq ``after`` (values from index ``values`` on); its
  entries go on from ``after + 1`` in ``epoch``, and the cursor that follows says so. If a
  job's log is gone mid-stream, or the job list's feed is reset, the stream is cut (no end) and
  the reconnect tells: ``missing``, a ``reset``, or a fresh ``snapshot``.
- **Access.** The token (or a browser's session) reads every job; otherwise each job needs a
  signed view link of its own (``sig=`` repeated): a link grants its own job only.
- **The job list.** ``list=<n>`` adds the job feed (:mod:`jobcast.core.feed`) as one more
  stream, after the jobs: first a ``snapshot`` event (the newest n jobs, as ``GET /api/jobs``
  lists them, and the feed's ``seq`` they are as of), then a ``job`` event for every creation,
  change of state and (throttled) progress of any job. Its cursor is the last one of the id,
  so a reconnection resumes it too (``list=<n>:<seq>~<epoch>`` inline); one that fell behind
  what the feed keeps, is past its end or in another of its epochs gets a new snapshot. In
  private mode it needs the token (a view link grants its job only).
- **End.** A job's terminal entry ends that job; the stream ends when all have (the job list
  never ends). A reconnection (``Last-Event-ID``) whose jobs have all ended at the positions
  it resumes gets 204, which stops EventSource.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

from flask import Blueprint, Response, g, request

from jobcast.core.epoch import Reset
from jobcast.core.feed import FEED
from jobcast.core.keys import InvalidJobId, check_job_id
from jobcast.web import metrics
from jobcast.web.admission import (STREAM_HEADERS, StreamRequest, bound_writes, client_alive,
                                   drain, hand_over, locate, reserve, retry_ms)
from jobcast.web.errors import BadParam
from jobcast.web.frames import SSE, Transport, event_data
from jobcast.web.handover import can_take
from jobcast.web.limits import StreamSlot, client_address
from jobcast.web.models import no_content, stream_head
from jobcast.web.params import MAX_SEQ
from jobcast.web.security import Forbidden, granted_jobs, unauthorized
from jobcast.web.services import State, state
from jobcast.web.surface import SEQ, Answer, jobs_scoped, long_query, stream
from jobcast.web.viewer import Connection, Lease, QueueSink, Viewer, ViewerState

bp = Blueprint("events", __name__)

MAX_JOBS = 100
"""Most jobs one stream carries."""

MAX_QUERY = 8000
"""The longest query string of the stream: 100 jobs with their cursors (gunicorn's request
line may be up to 8190 bytes: gunicorn.conf.py, and no more). A view link's ``sig=`` per job
makes a job cost about 170 bytes, so fewer jobs fit then (about 42): ``static/jobcast.js``
puts as many as fit on one stream and the others on more streams ("lanes", each within this
limit and MAX_JOBS), three in all at most; only jobs beyond those wait for one to end."""

_EPOCH = r"[A-Za-z0-9_-]{1,16}"
_SPEC = re.compile(r"(?P<id>[^:~]+)(?::(?P<after>[0-9]{1,16})(?:~(?P<epoch>%s))?"
                   r"|~(?P<tail>[0-9]{1,16}))?" % _EPOCH)
_ELEMENT = r"[0-9]{1,16}(?:~%s)?" % _EPOCH
_CURSOR = re.compile(r"(?P<digest>[0-9a-f]{8}):(?P<seqs>%s(?:\.%s)*)" % (_ELEMENT, _ELEMENT))


@lru_cache(maxsize=4096)
def job_sse(job_id: str) -> Transport:
    """SSE whose events name ``job_id`` in their data, and carry no id (the connection's
    cursor follows each write): one transport per job, so its frames are built once for every
    connection that carries the job."""
    head = b'data: {"job":"%s",' % job_id.encode()

    def encode(entry) -> bytes:
        """One entry as an event of a multi-job stream."""
        return b"event: %s\n%s%s\n\n" % (entry.kind.encode(), head, entry.raw[1:])

    def reset(reset: Reset) -> bytes:
        """The job's ``reset`` event (its new cursor follows, in the connection's id)."""
        return _event("reset", reset.data(job=job_id))

    def trimmed(trim: dict) -> bytes:
        """The job's ``trimmed`` event."""
        return _event("trimmed", {"job": job_id, **trim})

    return Transport(f"sse:{job_id}", SSE.mimetype, encode, SSE.heartbeat, SSE.shutdown, False,
                     reset, trimmed)


def _feed_frame(entry) -> bytes:
    """One feed item as an event (``job``: a job changed); its data names the job."""
    return b"event: %s\ndata: %s\n\n" % (entry.kind.encode(), entry.raw)


FEED_SSE = Transport("sse:feed", SSE.mimetype, _feed_frame, SSE.heartbeat, SSE.shutdown, False)
"""The job list's events in a multi-job stream (no id: the connection's cursor follows). No
reset event: a feed reset cuts the stream, and the page's reconnect gets a fresh snapshot."""

LIST_MAX = 500
"""The most jobs a snapshot of the job list holds."""


def digest(job_ids: list[str]) -> bytes:
    """8 hex characters naming the list of jobs a cursor is for."""
    return b"%08x" % zlib.crc32(",".join(job_ids).encode())


@dataclass(frozen=True)
class JobSpec:
    """One job of a multi-job request, and where to start it."""

    job_id: str
    after: int | None = None  # resume after this seq
    tail: int | None = None   # begin with the last N values
    epoch: str | None = None  # the epoch ``after`` was taken in


@dataclass(frozen=True)
class MultiRequest:
    """What one multi-job stream request asks for, read once."""

    jobs: tuple[JobSpec, ...]
    list: int | None = None         # list=<n>: the job list too, its snapshot the newest n
    list_after: int | None = None   # where the job list resumes (its feed's seq)
    list_epoch: str | None = None   # the feed's epoch list_after was taken in

    @classmethod
    def parse(cls) -> "MultiRequest":
        """Read the current request; a 400 naming the parameter for a bad one."""
        raw = request.args.getlist("job")
        # A single job's stream takes these; here each job's own goes in its `job=`. Refused,
        # not ignored: a stream that quietly began at the start would look like the tail.
        for name, form in (("tail", "<id>~<n>"), ("after", "<id>:<seq>[~<epoch>]")):
            if name in request.args:
                raise BadParam(name, f"on /events each job says where it begins: job={form}")
        listing, list_after, list_epoch = cls._list(request.args.get("list"))
        if not raw and listing is None:
            raise BadParam("job", "name at least one job (/events?job=<id>&job=<id>), or ask "
                                  "for the job list (/events?list=50)")
        if len(raw) > MAX_JOBS:
            raise BadParam("job", f"at most {MAX_JOBS} jobs per stream (got {len(raw)})")
        specs = []
        for item in raw:
            m = _SPEC.fullmatch(item)
            try:
                job_id = check_job_id(m.group("id")) if m else None
            except InvalidJobId:
                job_id = None
            if job_id is None:
                raise BadParam("job", f"{item[:140]!r} is not <id>, <id>:<seq>[~<epoch>] or "
                                      "<id>~<n>")
            after, tail = m.group("after"), m.group("tail")
            if max(int(after or 0), int(tail or 0)) > MAX_SEQ:
                raise BadParam("job", f"{item[:140]!r}: a seq or tail is over {MAX_SEQ}")
            specs.append(JobSpec(job_id, int(after) if after else None,
                                 int(tail) if tail else None, m.group("epoch")))
        ids = [s.job_id for s in specs]
        if len(set(ids)) != len(ids):
            raise BadParam("job", "each job may be named once")
        header = request.headers.get("Last-Event-ID")
        if header:
            cursors = cls._cursor(header, ids + [FEED] * (listing is not None))
            specs = [JobSpec(s.job_id, seq, epoch=epoch) for s, (seq, epoch) in zip(specs, cursors)]
            if listing is not None:
                list_after, list_epoch = cursors[-1]
        return cls(tuple(specs), listing, list_after, list_epoch)

    @staticmethod
    def _list(raw: str | None) -> tuple[int | None, int | None, str | None]:
        """``list=<n>`` or ``list=<n>:<feed seq>[~<epoch>]``, or a 400 naming ``list``."""
        if raw is None or raw == "":
            return None, None, None
        m = re.fullmatch(r"([0-9]{1,4})(?::([0-9]{1,16})(?:~(%s))?)?" % _EPOCH, raw)
        if not m or not 1 <= int(m.group(1)) <= LIST_MAX:
            raise BadParam("list", f"list must be <n> or <n>:<seq>[~<epoch>], n from 1 to "
                                   f"{LIST_MAX}")
        if m.group(2) and int(m.group(2)) > MAX_SEQ:
            raise BadParam("list", f"the feed seq is over {MAX_SEQ}")
        return int(m.group(1)), int(m.group(2)) if m.group(2) else None, m.group(3)

    @staticmethod
    def _cursor(header: str, ids: list[str]) -> list[tuple[int, str | None]]:
        """The (seq, epoch) of each job in a ``Last-Event-ID`` cursor for these jobs, or a 400
        naming it."""
        m = _CURSOR.fullmatch(header.strip())
        cursors = []
        for element in (m.group("seqs").split(".") if m else []):
            seq, _, epoch = element.partition("~")
            cursors.append((int(seq), epoch or None))
        if not m or m.group("digest").encode() != digest(ids) or len(cursors) != len(ids):
            raise BadParam("Last-Event-ID", "not a cursor of this stream's jobs "
                                            "(<digest>:<seq>~<epoch>.<seq>~<epoch>…, one per job)")
        if any(seq > MAX_SEQ for seq, _ in cursors):
            raise BadParam("Last-Event-ID", f"a seq is over {MAX_SEQ}")
        return cursors

    @property
    def ids(self) -> list[str]:
        """The jobs, in order."""
        return [s.job_id for s in self.jobs]

    @property
    def streams(self) -> list[str]:
        """What the cursor counts, in order: the jobs, then the job list when asked for."""
        return self.ids + [FEED] * (self.list is not None)


def _event(name: str, data: dict) -> bytes:
    """One SSE event with no id."""
    return b"event: %s\ndata: %s\n\n" % (name.encode(), event_data(data))


LIST_N = "(500|[1-4][0-9]{2}|[1-9][0-9]?)"
"""``list=<n>``: 1 to LIST_MAX (500), as a pattern (the document's, checked in tests)."""

JOB_ARG = {"name": "job", "in": "query", "required": False, "explode": True, "style": "form",
           "description": f"a job, repeated (1 to {MAX_JOBS}, in order): <id>, <id>:<seq> "
                          "or <id>:<seq>~<epoch> (resume after seq) or <id>~<n> (its last n "
                          "values)",
           "schema": {"type": "array", "maxItems": MAX_JOBS,
                      "items": {"type": "string",
                                "pattern": f"^[A-Za-z0-9_-]{{1,128}}(:{SEQ}(~[A-Za-z0-9_-]{{1,16}})?"
                                           f"|~{SEQ})?$"}}}
LIST_ARG = {"name": "list", "in": "query", "required": False,
            "description": f"also the job list: <n> (a snapshot of the newest n, 1 to {LIST_MAX}, "
                           "then every change), or <n>:<seq>[~<epoch>] to resume it",
            "schema": {"type": "string",
                       "pattern": f"^{LIST_N}(:{SEQ}(~[A-Za-z0-9_-]{{1,16}})?)?$"}}
CURSOR_ARG = {"name": "Last-Event-ID", "in": "header", "required": False,
              "description": "the last id received (<digest>:<seq>[~<epoch>].<seq>[~<epoch>]…): "
                             "resumes every job",
              "schema": {"type": "string"}}


@bp.route("/events", methods=["GET", "HEAD"])
@jobs_scoped
@long_query(MAX_QUERY)
@stream(SSE, JOB_ARG, LIST_ARG, CURSOR_ARG, more={
    204: Answer("Every job has ended where the Last-Event-ID resumes it", media=None)})
def multi_stream():
    """Server-sent events of several jobs over one connection (``?job=`` repeated).

    Each event's data names its job; each write ends with an id holding every job's cursor,
    so ``Last-Event-ID`` resumes all of them exactly. See the module's docstring.
    """
    req = MultiRequest.parse()
    sigs = g.get("view_sigs")
    if sigs is not None:  # private mode without the token: a link per job
        if req.list is not None:
            raise unauthorized("the job list needs the token: a view link grants its job only",
                               stream=True)
        granted = granted_jobs(state().config, sigs, req.ids)
        for job_id in req.ids:
            if job_id not in granted:
                raise _refused(job_id)
    st = state()
    relay = st.relay
    positions = relay.positions(req.ids)
    prelude = b""
    reset_any = False
    viewers: list[Viewer] = []
    for spec, position in zip(req.jobs, positions):
        # Where each job starts, as a single-job stream of it would.
        adm = locate(st, StreamRequest(spec.job_id, SSE, resume=spec.after, tail=spec.tail,
                                       epoch=spec.epoch), position, read=True)
        viewer = Viewer(spec.job_id, None, job_sse(spec.job_id), cursor=spec.after or 0)
        if adm is None:
            prelude += _event("missing", {"job": spec.job_id})
            viewer.state, viewer.done = ViewerState.CLOSED, True
        else:
            ended, last_seq, begin = adm.ended, adm.last_seq, adm.begin
            viewer.epoch, viewer.cursor = adm.epoch, begin.cursor
            if adm.reset is not None:
                prelude += _event("reset", adm.reset.data(job=spec.job_id))
                reset_any = True
            prelude += _with_job(begin.sse_prelude(), spec.job_id)
            if ended and begin.after >= last_seq:
                prelude += _event("ended", {"job": spec.job_id, "after": begin.after})
                viewer.state, viewer.done = ViewerState.CLOSED, True
        viewers.append(viewer)
    if req.list is not None:
        feed, snapshot = _feed_viewer(req, st)
        viewers.append(feed)
        prelude += snapshot
    live = [v for v in viewers if not v.closed]
    if not live and request.headers.get("Last-Event-ID") and not reset_any:
        return no_content()  # nothing more will come: EventSource stops reconnecting
    if request.method == "HEAD":
        return stream_head(SSE.mimetype, STREAM_HEADERS)
    leases, slot = reserve(st, [v.job_id for v in live], client_address(st.config))
    try:
        response = _respond(st, req, viewers, live, leases, slot, prelude)
    except BaseException:
        # No response carries the streams, so nothing else would give back their leases
        # and their slot among the client's streams (admission.admit guards the same).
        for lease in leases:
            lease.release()
        slot.release()
        raise
    if live:
        # Runs even if the body was never iterated (the client left at once); viewers the
        # relay took are ended by the relay instead.
        response.call_on_close(lambda: [v.abandon() for v in live])
    return response


def _respond(st: State, req: MultiRequest, viewers: list[Viewer], live: list[Viewer],
             leases: list[Lease], slot: StreamSlot, prelude: bytes) -> Response:
    """The stream's response, its viewers holding ``leases`` and their connection ``slot``:
    handed over to the relay or drained through the request."""
    relay = st.relay
    bound_writes(request.environ, st.config.write_timeout)
    retry = retry_ms()
    conn = Connection(None, digest(req.streams), retry=retry, resources=(slot,))
    for viewer in viewers:
        conn.add(viewer)
    for viewer, lease in zip(live, leases):
        viewer.resources = (lease,)
        viewer.retry = retry
    first = (b"retry: %d\n\n" % retry + prelude
             + _event("hello", {"jobs": req.ids, "list": req.list is not None, "retry": retry})
             + conn.checkpoint())
    if not live:
        conn.close()  # every job was missing or ended: the client sees why, and nothing else
        return Response(first, mimetype=SSE.mimetype, headers=STREAM_HEADERS)
    taken = can_take(request.environ)
    if taken is not None:
        taken.claim()
        body = hand_over(taken, lambda sink, chunked: conn.attach(sink, chunked=chunked),
                         lambda: relay.hold_connection(conn, here=True), relay.green, first)
    else:
        conn.attach(QueueSink(st.config.viewer_buffer, alive=client_alive(request.environ)))
        body = drain(relay, live[-1], first, hold=lambda: relay.hold_connection(conn),
                     release=lambda: [relay.release(v, "closed") for v in live])
    return Response(body, mimetype=SSE.mimetype, headers=STREAM_HEADERS)


def _feed_viewer(req: MultiRequest, st) -> tuple[Viewer, bytes]:
    """The job list's viewer, and the snapshot to send before it when the page has none (or
    one older than what the feed keeps)."""
    feed = st.relay.broker.feed
    after = req.list_after
    snapshot = b""
    position = feed.position()
    if (after is None or after > position.seq or after + 1 < (feed.first_kept() or 0)
            or (req.list_epoch is not None and req.list_epoch != position.epoch)):
        # The feed's seq first, then the jobs: an item between the two is sent as well, and a
        # page applies an item only if it is newer than the job's row (its jseq).
        after = position.seq
        jobs = [job.model_dump() for job in st.logs.recent(req.list)]
        snapshot = _event("snapshot", {"seq": after, "epoch": position.epoch, "jobs": jobs})
    return Viewer(FEED, None, FEED_SSE, cursor=after, epoch=position.epoch), snapshot


def _with_job(events: bytes, job_id: str) -> bytes:
    """``tail``/``trimmed`` events of one job, their data naming it."""
    return events.replace(b"data: {", b'data: {"job":"%s",' % job_id.encode())


def _refused(job_id: str) -> Forbidden:
    """403 for a job no link of the request grants (counted among the refused streams)."""
    metrics.stream_refused("forbidden")
    return Forbidden("other_job", f"no view link of this request grants job {job_id}", job_id)
