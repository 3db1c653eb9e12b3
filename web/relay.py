"""The relay: the one code that follows a job for its viewers, whatever the server.

Every stream is a :class:`~jobcast.web.viewer.Viewer` with a cursor, the seq of the last entry
written to it, and a sink: a socket taken over from gunicorn (Jobcast's worker class) or a
bounded queue drained by the request's WSGI generator (any other server). The relay is the
broker's handler (:class:`~jobcast.web.broker.BrokerHandler`):

- **Fast path.** :meth:`Relay.on_publications` gets each watched job's new entries, a batch at
  a time. Their bytes are framed once per transport (and once more as an HTTP/1.1 chunk), and
  written with one non-blocking ``send()`` per viewer, in the order the viewers arrived: no
  wake-up, no per-viewer framing.
- **Several jobs, one write.** A stream of several jobs (``/events``) gets its jobs' frames
  in one write, ended by its cursor. Jobs written one after the other are announced one by
  one: the relay gathers what comes within ``write_delay`` (a few ms) into that write, so a
  connection costs one ``send()`` per burst, not one per job. The write goes out before the
  window closes once every stream with a part has one from each of its jobs. A long gathered
  write gives the loop a turn every ``FLUSH_SLICE`` streams: a job announced while it is
  being made joins the writes not made yet, rather than waiting for all of it and then
  costing every stream a second write. Streams of the same jobs at the same cursors share
  the bytes of that write; once one has been written in full on its own, it joins a cohort
  of the streams in step with it (:class:`~jobcast.web.viewer.Cohort`), which gathers and
  frames a burst once for all of them and then costs each member one ``send()``, with no
  per-stream or per-job work. A member that falls out of step (a partial write, a gap,
  another epoch, a job's end, a catch-up) leaves, and is written on its own again.
- **Returning viewers from memory.** A viewer that resumes, whose missed entries are among
  the recent entries kept in memory (:meth:`Relay.hold_now`), gets them in one write with its
  response's head, and joins the fast path at once: no greenlet, no second ``send()``. A
  restarted replica's viewers come back this way, by the thousand.
- **Catch-up** (:mod:`jobcast.web.catchup`). A viewer whose cursor is not right before the
  batch (it just arrived, an announcement was lost, the subscription was renewed) or whose
  sink would block (a full socket or queue, or a partial write) leaves the fast path. A
  short-lived greenlet (a thread outside gevent) finishes its partial frame, reads the log
  from its cursor through the broker and writes what it finds, and puts the viewer back on the
  fast path once the log has nothing newer. While it catches up, the fast path only notes the
  highest seq it skipped for it, so nothing can slip between the log read and the rejoin.
  Memory per slow viewer stays bounded: one page of the log, however slow the client.
- **Quiet streams.** :meth:`Relay.tick` runs a few times per heartbeat interval: a job quiet
  for a heartbeat has its last seq read (an announcement may have been lost), its viewers get
  the transport's heartbeat, and clients that went away are freed.

The log stays the truth: every entry carries its seq, a viewer is written exactly the entries
after its cursor, in order, once. A newcomer is admitted only once its job's subscription is
confirmed (:meth:`Relay.leases`), so nothing falls between its history and the live entries.

- **Another incarnation.** A viewer also follows one epoch of the log (:mod:`jobcast.core.epoch`).
  A batch of another epoch sends it to the log; every catch-up read checks where the log
  stands: in an older epoch whose entries up to its cursor survived, it just goes on; else it
  gets one reset (``event: reset`` on SSE, a line on HTML; the text stream, which cannot say
  it, is cut and told when it resumes) and continues where the log does. A log found *behind*
  a viewer's cursor (a lossy failover, the writer silent) begins a new epoch first, so its seqs
  are never reused; a log that is gone ends the stream without an end, and the client's
  reconnect gets 404 or a reset. The relay mints only for viewers it holds: their cursors were
  in the log when they came. A client's own claim to be past the end only resets that client.

Under gevent everything here runs in one OS thread, and greenlets switch only where they block:
the lock is then a no-op. Under a threaded server (Flask's dev server) it is a real lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, TypeAlias

import gevent
from gevent.lock import Semaphore
from redis.exceptions import RedisError

from jobcast.core.epoch import Position, continues
from jobcast.core.joblog import Entry
from jobcast.web import metrics
from jobcast.web.broker import CONFIRM_TIMEOUT, Broker
from jobcast.web.catchup import CatchUp
from jobcast.web.frames import LAST_CHUNK, Transport
from jobcast.web.green import is_green
from jobcast.web.periodic import Periodic
from jobcast.web.recent import RecentEntries
from jobcast.web.viewer import Cohort, Connection, Lease, Viewer, ViewerState

log = logging.getLogger(__name__)

Writes: TypeAlias = "list[Connection | Cohort]"
"""The writes a burst gathered, made once it is delivered (:meth:`Relay._flush`): multi-job
streams on their own, and cohorts of streams in step, each written as one."""

FLUSH_SLICE = 64
"""Multi-job streams a gathered write makes between two turns of the event loop."""

TURN = 1e-6
"""The wait that gives the loop a turn: a timer, since gevent's ``sleep(0)`` switches to the
greenlets that are ready but polls no socket, so the broker would not hear a thing."""


class NotSubscribed(Exception):
    """Redis did not confirm the job's subscription in time: a viewer could miss entries."""


class _Flight:
    """One read that concurrent callers share."""

    __slots__ = ("done", "result", "error")

    def __init__(self):
        """Not done yet."""
        self.done = threading.Event()
        self.result: Position | None = None
        self.error: BaseException | None = None


class Heartbeat(Periodic):
    """Calls :meth:`Relay.tick` several times per heartbeat interval."""

    thread_name = "jobcast-beat"

    def __init__(self, relay: "Relay"):
        """Tick ``relay``."""
        super().__init__(min(1.0, relay.heartbeat / 3))
        self.relay = relay

    def round(self) -> None:
        """Look at the quiet streams, unless the process is stopping; publish the metrics
        tallied since the last round."""
        try:
            if not self.relay.closing:
                self.relay.tick()
        finally:
            metrics.publish()


def _begins_after(v: Viewer, entries: list[Entry], epoch: str) -> bool:
    """Whether ``entries``, of incarnation ``epoch`` at the last, follow on from ``v``'s
    position (:func:`continues`): nothing ``v`` had is lost, and it goes on in ``epoch`` with no
    read of the log (a cancel or a retry's start begins an epoch, and a job's thousand viewers
    would each read it). Moves ``v`` to ``epoch`` when so."""
    if v.epoch is None or entries[0].seq != v.cursor + 1 or not continues(v.epoch, entries):
        return False
    v.epoch = epoch
    return True


class Relay:
    """The viewers of one web process, by job, and everything written to them."""

    def __init__(self, broker: Broker, *, heartbeat: float = 15.0, write_timeout: float = 30.0,
                 write_delay: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 green: bool | None = None):
        """Relay the jobs ``broker`` hears of; quiet streams get a heartbeat this often, and a
        client that accepts no byte for ``write_timeout`` seconds is dropped.

        ``write_delay``: seconds a stream of several jobs gathers its jobs' new entries before
        they are written, in one write (under gevent; 0, or a threaded server: at once).
        ``clock`` is read for the relay's own schedule (tests pass a fake one): which jobs and
        streams are quiet (heartbeats), how long Redis has been unreachable. What bounds a
        real wait reads ``time.monotonic``, as the wait itself does: a subscription's
        confirmation, a client that takes no byte, the gathering window (gevent's timers).
        ``green``: run catch-ups in greenlets, lock-free (default: when gevent has patched
        threading).
        """
        self.broker = broker
        self.heartbeat = heartbeat
        self.write_timeout = write_timeout
        self.clock = clock
        self.green = is_green() if green is None else green
        self.write_delay = write_delay if self.green else 0.0
        # The multi-job streams whose write is being gathered (each holds its connection's
        # lock and its parts), and the greenlet that will write them.
        self._gathered: Writes = []
        self._gather_flush = None
        self._gather_began = self._gather_last = 0.0  # when the window opened, and its latest
        self._flushing: list[Writes] = []  # gathered writes being made, paused
        self._stop = threading.Event()
        # The one lock of the relay's state (its viewers, their cohorts, its catch-ups), and
        # a pause of its work (outside gevent, cut short once the relay stops).
        self.lock = contextlib.nullcontext() if self.green else threading.RLock()
        if self.green:
            self.sleep: Callable[[float], object] = gevent.sleep
            self._new_lock = Semaphore
        else:
            self.sleep = self._stop.wait
            self._new_lock = threading.Lock
        # Each job's viewers in the order they arrived (a dict used as an ordered set): the
        # fast path writes them first come, first served, the same order for every value.
        self._jobs: dict[str, dict[Viewer, None]] = {}
        self._last_delivery: dict[str, float] = {}
        # When a job's batch last had a value or its end: all that the text and HTML streams
        # show. A job that only prints leaves their viewers quiet while it delivers.
        self._last_shown: dict[str, float] = {}
        self._positions: dict[str, _Flight] = {}
        self._conns: dict[Connection, None] = {}  # the multi-job streams held here
        # Multi-job streams in step, written as one (see Cohort): by their jobs and framing,
        # and by each job they carry.
        self._cohorts: dict[tuple, Cohort] = {}
        self._cohorts_of: dict[str, dict[Cohort, None]] = {}
        # Entries kept in memory are current only while the job's subscription is confirmed
        # (the catch-up asks the broker); a lost one forgets its job's entries (on_lost).
        self.recent = RecentEntries()
        self.closing = False
        self.catchup = CatchUp(self)  # the viewers off the fast path, written from the log
        self._heartbeat = Heartbeat(self)
        self._started = False

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker (with this relay as its handler) and the heartbeat, once."""
        if not self._started:
            self._started = True
            self.broker.start(self)
            self._heartbeat.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the heartbeat and the broker's readers."""
        self._stop.set()
        self._heartbeat.stop()
        self.broker.stop(timeout)
        metrics.publish()  # what the last round did not

    @property
    def ready(self) -> bool:
        """True while the broker's connections are live."""
        return self.broker.ready

    def wait_ready(self, timeout: float) -> bool:
        """Block until the broker's connections are live, or ``timeout`` passes."""
        self.start()
        return self.broker.wait_ready(timeout)

    # -- admission -------------------------------------------------------------------------

    def lease(self, job_id: str, timeout: float = CONFIRM_TIMEOUT) -> Lease:
        """Subscribe to ``job_id`` for one viewer, once Redis confirms it; the viewer gives it
        back when it ends. NotSubscribed when Redis did not confirm within ``timeout`` s."""
        return self.leases([job_id], timeout)[0]

    def position(self, job_id: str) -> Position | None:
        """(ended, last seq, epoch) of ``job_id``, or None if there is no such job.

        Answered from the recent entries when this process keeps some, else read through the
        broker once for all the callers that ask at the same time (a burst of newcomers).
        """
        newest = self.recent.last(job_id)
        if newest is not None:
            return Position(newest.terminal, newest.seq, newest.ep)
        with self.lock:  # (threads: two callers must not both read, and both set it)
            flight = self._positions.get(job_id)
            waiting = flight is not None
            if not waiting:
                flight = self._positions[job_id] = _Flight()
        if waiting:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result
        try:
            flight.result = self.broker.position(job_id)
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._positions[job_id]
            flight.done.set()

    def positions(self, job_ids: list[str]) -> list[Position | None]:
        """:meth:`position` of several jobs: from memory where kept, the rest in one read."""
        known = {}
        for job_id in job_ids:
            newest = self.recent.last(job_id)
            if newest is not None:
                known[job_id] = Position(newest.terminal, newest.seq, newest.ep)
        rest = [j for j in job_ids if j not in known]
        if rest:
            known.update(zip(rest, self.broker.positions(rest)))
        return [known[j] for j in job_ids]

    def leases(self, job_ids: list[str], timeout: float = CONFIRM_TIMEOUT) -> list[Lease]:
        """:meth:`lease` of several jobs, subscribed together and waited for once."""
        self.start()
        for job_id in job_ids:
            self.broker.subscribe(job_id)
        leases = [Lease(lambda j=job_id: self.broker.unsubscribe(j)) for job_id in job_ids]
        deadline = time.monotonic() + timeout
        try:
            for job_id in job_ids:
                if not self.broker.wait_subscribed(job_id, max(0.0, deadline - time.monotonic())):
                    raise NotSubscribed(job_id)
        except BaseException:
            # Not confirmed in time, or the wait cut short (a GreenletExit as the process
            # stops): no viewer holds them, so nobody else would give them back.
            for lease in leases:
                lease.release()
            raise
        return leases

    def hold(self, viewer: Viewer, *, here: bool = False) -> None:
        """Take ``viewer``: it first catches up from the log, then joins the fast path.

        With ``here``, the catch-up runs in the calling greenlet (a request's, which would end
        anyway) rather than in a new one: one greenlet and one switch less per newcomer.
        """
        with self.lock:
            self._take(viewer)
        if self.closing:
            self.release(viewer, "server_shutdown")
            return
        self._catch_up(viewer, b"", "history", here=here)

    def hold_now(self, viewer: Viewer, head: bytes) -> bool:
        """Take ``viewer`` at once when memory holds everything it lacks: ``head`` (its
        response's first bytes, not sent yet) and its history go out in one write, and it
        joins the fast path with no catch-up. False, with nothing taken or sent, when the log
        must be read (or the process is stopping): the caller sends ``head``, then
        :meth:`hold`\\ s it.

        A restarted replica's viewers come back by the thousand, each a few entries behind:
        this spares each of them a greenlet and a second ``send()``. It is the catch-up's own
        memory step (:meth:`~jobcast.web.catchup.CatchUp._from_memory`), made with no
        wait between the check that memory is current and the viewer's joining the fast path,
        so nothing delivered can fall between the two.
        """
        job_id, recent = viewer.job_id, self.recent
        with self.lock:
            if self.closing or not self.broker.subscribed(job_id):
                return False
            newest = recent.last(job_id)
            if newest is None:
                return False
            epoch = newest.ep if viewer.epoch is None else viewer.epoch
            kept = recent.framed_after(job_id, viewer.cursor, viewer.transport, viewer.start,
                                       epoch)
            data, last = kept if kept is not None else (b"", newest)
            if kept is not None and last.ep is not None:
                epoch = last.ep  # what memory keeps may run on into an epoch begun after it
            if not recent.is_current(job_id, last.seq, epoch) or (
                    kept is None and last.seq != viewer.cursor):
                return False
            viewer.epoch = epoch
            self._take(viewer)
            metrics.caught_up("history")
            viewer.cursor = last.seq
            self._count_values(viewer)
            # Its job's end is what it lacks, or already its position (a text ``?tail=0`` of
            # an ended job): either way its stream ends now, body and all.
            end = viewer.done = last.terminal
            try:
                # Sent under the lock, as the fast path sends: under a threaded server no
                # delivery may reach the socket before the history it follows.
                data = head + viewer.wire(data, end) if data or end else head
                if self._send(viewer, data) and end:
                    self.release(viewer, "job_ended")
            except BaseException:
                self.release(viewer, "error")
                raise
        return True

    def _take(self, viewer: Viewer) -> None:
        """Count ``viewer`` among its job's, in the order it came (the caller holds the lock):
        the fast path writes it from now on, unless it is catching up."""
        viewer.state = ViewerState.HELD
        self._jobs.setdefault(viewer.job_id, {})[viewer] = None
        now = self.clock()
        self._last_delivery.setdefault(viewer.job_id, now)
        self._last_shown.setdefault(viewer.job_id, now)
        metrics.viewer_added()

    def hold_connection(self, conn: Connection, *, here: bool = False) -> None:
        """Take a stream of several jobs: each job's viewer catches up from the log on its
        own, then joins the fast path; they write through the connection one at a time."""
        conn.lock = self._new_lock()
        conn.last_write = self.clock()
        with self.lock:
            self._conns[conn] = None
        # Freed as soon as its client leaves (a page changing its jobs reconnects at once).
        conn.sink.on_peer_close(lambda: self._client_left(conn))
        # A job missing, or ended at the stream's position, is in the connection (for its
        # checkpoint) already closed: nothing to hold.
        live = [viewer for viewer in conn.viewers if not viewer.closed]
        for n, viewer in enumerate(live):
            self.hold(viewer, here=here and n == len(live) - 1)

    def _client_left(self, conn: Connection) -> None:
        """The client of a multi-job stream closed it: end its viewers (and so free its slot)."""
        for v in list(conn.viewers):
            if not v.closed:
                self.release(v, "client_gone")

    def viewers(self, job_id: str | None = None) -> int:
        """Viewers of one job, or of all jobs."""
        if job_id is not None:
            return len(self._jobs.get(job_id, ()))
        return sum(len(v) for v in self._jobs.values())

    def jobs(self) -> list[str]:
        """Jobs with at least one viewer."""
        return list(self._jobs)

    # -- the fast path ---------------------------------------------------------------------

    def on_publications(self, batches: dict[str, list[Entry]]) -> None:
        """The broker's handler: the new entries of each watched job, from one read of Redis.

        A stream of several jobs gets one write for all of them (its frames, then its cursor),
        not one per job: a burst of announcements costs a send per connection. With a
        ``write_delay``, the bursts that come within it are gathered into that one write:
        jobs written one after the other (each its own announcement) cost one send, not one
        per job. Once every stream gathering has a part from each of its jobs, there is
        nothing left to wait for, and the write is made at once (on the loop's next turn).
        """
        with self.lock:
            pending = self._gathered if self.write_delay else []
            for job_id, entries in batches.items():
                try:
                    written = self._deliver(job_id, entries, pending)
                except Exception:  # one job's trouble must not touch the others
                    log.exception("relay: delivering entries of job %s failed", job_id)
                    continue
                for entry in entries:
                    metrics.dispatched(entry, written)
            if not self.write_delay:
                self._flush(pending)
            elif pending:
                self._gather_last = time.monotonic()
                if all(item.complete() for item in pending):
                    # Every stream has a part from each of its jobs: nothing more is awaited.
                    if self._gather_flush is not None:
                        self._gather_flush.kill(block=False)
                    self._gather_flush = gevent.spawn(self.flush_gathered)
                elif self._gather_flush is None:
                    # The loop's clock stands where this turn of it began: the delay counts
                    # from now.
                    gevent.get_hub().loop.update_now()
                    self._gather_began = self._gather_last
                    self._gather_flush = gevent.spawn_later(self.write_delay, self._gather_due)

    def _gather_due(self) -> None:
        """The gathering window is due: write what it gathered, unless announcements are
        still coming in. A producer's jobs are announced a millisecond or two apart, and one
        that misses the write waits for all of it, then costs every stream a second one (a
        cohort's write takes no turn); so the window stays open until none has come for half
        the delay, and twice the delay at most."""
        now = time.monotonic()
        wait = min(self._gather_last + self.write_delay / 2,
                   self._gather_began + 2 * self.write_delay) - now
        if wait > 0 and not self.closing:
            self._gather_flush = gevent.spawn_later(wait, self._gather_due)
            return
        self.flush_gathered()

    def flush_gathered(self) -> None:
        """Write what the multi-job streams have gathered (see ``write_delay``).

        The loop gets a turn every ``FLUSH_SLICE`` streams (under gevent, unless stopping).
        1,000 sends take 10-20 ms, and a job written a little after the others would otherwise
        wait for all of them, then cost a second write to every stream. Its announcement now
        joins the writes not made yet (the gathered parts of a stream are read only when it
        is written), and only the streams already written are gathered anew.
        """
        with self.lock:
            pending, self._gathered = self._gathered, []
            self._gather_flush = None
            self._flush(pending, turns=self.green and not self.closing)

    def deliver(self, job_id: str, entries: list[Entry]) -> int:
        """Write ``entries`` (consecutive, in order) to every viewer of ``job_id``.

        Returns how many viewers were written on the fast path.
        """
        with self.lock:
            pending: Writes = []
            written = self._deliver(job_id, entries, pending)
            self._flush(pending)
            return written

    def _deliver(self, job_id: str, entries: list[Entry],
                 pending: Writes) -> int:
        """:meth:`deliver`, leaving the writes to multi-job streams in ``pending``."""
        viewers = self._jobs.get(job_id)
        if not viewers or not entries:
            return 0
        self.recent.add_live(job_id, entries)
        now = self._last_delivery[job_id] = self.clock()
        first, last = entries[0].seq, entries[-1].seq
        epoch = entries[-1].ep
        end = entries[-1].terminal
        first_index = next((e.i for e in entries if e.kind == "value"), None)
        if first_index is not None or end:
            self._last_shown[job_id] = now
        shared: dict[tuple[Transport, bool], bytes] = {}
        written = 0
        cohorts = self._cohorts_of.get(job_id)
        if cohorts:
            for cohort in tuple(cohorts):
                written += self._deliver_cohort(cohort, job_id, entries, pending, shared)
        # The hot loop: one iteration per viewer per batch, kept to a few attribute reads
        # and one non-blocking send().
        for v in tuple(viewers):
            conn = v.conn
            if conn is not None and conn.cohort is not None:
                continue  # its cohort has it, above
            if v.slow:
                if last > v.missed:
                    v.missed = last
                continue
            if v.epoch != epoch and epoch is not None and not _begins_after(v, entries, epoch):
                # Another incarnation of the log (its seqs may even be ones the viewer has
                # had): the log says whether the viewer just goes on or is reset. (Entries
                # without an epoch come from a writer older than epochs, during an upgrade:
                # their seq is trusted, as a numeric id is.)
                self._catch_up(v, b"", "epoch")
                continue
            cursor = v.cursor
            if last <= cursor:
                continue
            if cursor + 1 < first:
                self._catch_up(v, b"", "gap")
                continue
            if conn is not None:
                # One job of a multi-job stream: its frames are shared too, and join the
                # connection's one write for this burst (one writer at a time: the lock is
                # taken here, once the frames are made, and held until that write).
                if cursor + 1 == first:
                    frames = shared.get(v.transport)
                    if frames is None:
                        frames = shared[v.transport] = v.transport.frames(entries)
                else:  # rare: a catch-up that read past the batch rejoined before it came
                    frames = v.transport.frames(entries[cursor + 1 - first:])
                if not conn.parts:  # the first of its jobs in this write
                    if not conn.lock.acquire(blocking=False):
                        self._catch_up(v, b"", "busy")
                        continue
                    pending.append(conn)
                v.cursor = last
                v.done = end
                conn.gather(v, frames, end)
                written += 1
                continue
            if cursor + 1 == first and not (v.start and first_index is not None
                                            and v.start > first_index):
                data = shared.get(v.kind)
                if data is None:
                    data = shared[v.kind] = v.wire(v.transport.frames(entries), end)
            else:  # rare: a viewer with ?start=, or one that already has part of the batch
                data = v.wire(v.transport.frames(entries[cursor + 1 - first:], v.start), end)
            v.cursor = last
            if end:
                v.done = True
            if not data:  # e.g. the text stream's end on HTTP/1.0: nothing to write
                if end:
                    self.release(v, "job_ended")
                continue
            if self._send(v, data):
                written += 1
                if end:
                    self.release(v, "job_ended")
        return written

    def _deliver_cohort(self, cohort: Cohort, job_id: str, entries: list[Entry],
                        pending: Writes, shared: dict) -> int:
        """Gather ``entries`` into ``cohort``'s next write (it joins ``pending`` with its first
        part). A batch it cannot take in step (a gap, another epoch, the job's end) sends its
        members on alone: the caller's loop then writes each as it writes any stream. Returns
        how many streams will be written."""
        first, last = entries[0].seq, entries[-1].seq
        epoch = entries[-1].ep
        lead = cohort.lead().viewers[cohort.index[job_id]]
        if last <= lead.cursor and (epoch is None or lead.epoch == epoch):
            return 0
        if (lead.cursor + 1 != first or entries[-1].terminal
                or (epoch is not None and lead.epoch != epoch)):
            for conn in tuple(cohort.conns):
                self._leave(conn, pending)
            return 0
        frames = shared.get(lead.transport)
        if frames is None:
            frames = shared[lead.transport] = lead.transport.frames(entries)
        if not cohort.parts:
            pending.append(cohort)
        cohort.gather(job_id, frames, last)
        return len(cohort.conns)

    def _join(self, conn: Connection) -> None:
        """Put ``conn``, just written in full on its own, with the streams in step with it
        (a new cohort if none): from its next burst on it costs one ``send()`` and nothing
        else. It stays on its own while any of its jobs is catching up or ending, or while
        its cohort has a write gathered."""
        if conn.closed or conn.cohort is not None:
            return
        for v in conn.viewers:
            if (v.state is not ViewerState.HELD or v.slow or v.done
                    or v in self.catchup.catching):
                return
        key = (conn.digest, conn.chunked)
        cohort = self._cohorts.get(key)
        if cohort is None:
            job_ids = [v.job_id for v in conn.viewers]
            if len(set(job_ids)) < len(job_ids):
                return  # a job twice: a cohort sets each job's cursor once
            cohort = self._cohorts[key] = Cohort(key, job_ids)
            for job_id in cohort.index:
                self._cohorts_of.setdefault(job_id, {})[cohort] = None
        elif cohort.parts or not cohort.in_step(conn):
            return
        cohort.conns[conn] = None
        conn.cohort = cohort

    def _leave(self, conn: Connection, pending: Writes | None = None,
               holding: bool = False) -> bytes:
        """Take ``conn`` out of its cohort, to be written on its own. Its share of what the
        cohort gathered and has not written is its own gathered write now (its viewers'
        cursors already count it), which joins ``pending`` if given. With ``holding`` (the
        caller holds the lock and is writing) those bytes are returned instead."""
        cohort = conn.cohort
        conn.cohort = None
        cohort.conns.pop(conn, None)
        parts = list(cohort.parts)
        if not cohort.conns:
            cohort.clear()  # nobody left to write it to
            if self._cohorts.get(cohort.key) is cohort:
                del self._cohorts[cohort.key]
            for job_id in cohort.index:
                of = self._cohorts_of.get(job_id)
                if of is not None:
                    of.pop(cohort, None)
                    if not of:
                        del self._cohorts_of[job_id]
        if not parts:
            return b""
        if holding:
            return conn.wire(b"".join(parts), False)
        if not conn.lock.acquire(blocking=False):
            self._cut_taken(conn)
            return b""
        for part in parts:
            conn.gather(conn.viewers[0], part, False)
        if pending is not None:
            pending.append(conn)
        return b""

    def _cut_taken(self, conn: Connection) -> None:
        """Cut ``conn``, which left its cohort while its lock was taken. Nothing writes to a
        member but its cohort, so this is a bug; the stream is cut rather than sent an id past
        bytes it never got: its client resumes from its id."""
        log.error("relay: a stream left its cohort while its lock was taken; cutting it")
        v = conn.viewers[0]
        self.release(v, self.cut(v, "error"))

    def _write_cohort(self, cohort: Cohort, data: bytes, now: float,
                      members: tuple[Connection, ...]) -> None:
        """Send ``data``, ``cohort``'s gathered write, to each of the ``members`` it was
        gathered for, in the order they joined, with no turn of the loop in between (nothing
        can come between the cursors it names and the bytes). A member that cannot take it
        all leaves, and its catch-up writes the rest. A stream that joined since (written on
        its own in the same slice, in step once that write was out) already has these bytes."""
        size = len(data)
        for conn in members:
            if conn.cohort is not cohort:
                continue
            try:
                n = conn.sink.send(data)
            except OSError:
                n = -1
            if n == size:
                conn.last_write = now
                continue
            self._leave(conn)
            writer = conn.viewers[0]
            if n < 0:
                self.release(writer, "client_gone")
            elif not conn.lock.acquire(blocking=False):
                self._cut_taken(conn)
            else:
                self._catch_up(writer, data[n:], "slow", holding=True)

    def _flush(self, pending: Writes, turns: bool = False) -> None:
        """One write per multi-job stream for a burst: its jobs' frames, then its cursor. A
        partial write goes on in a catch-up that holds the connection (an ended job's, if
        any: it ends once the bytes are out; the others' ends are let go at once).

        ``turns``: give the loop a turn every ``FLUSH_SLICE`` streams (see
        :meth:`flush_gathered`); the streams not written yet keep their locks meanwhile.
        """
        if not pending:
            return
        now = self.clock()
        made: dict = {}  # the bytes of this burst's writes (see Connection.gathered)
        if turns:
            self._flushing.append(pending)
        try:
            for start in range(0, len(pending), FLUSH_SLICE):
                if start and turns:
                    self.sleep(TURN)
                # A slice's writes are framed first, then sent back to back (the streams
                # already written are skipped: see _catch_up, shutdown). Between two sends
                # there is then little else: a client that reads as fast as the sends come
                # stays awake for them, rather than being woken once per send (on a VM,
                # each wake-up costs the sender an interrupt to the other CPU).
                # (A cohort's write goes to the members it was gathered for: see _write_cohort.)
                writes = [(item, (item.gathered(), tuple(item.conns)) if type(item) is Cohort
                           else item.gathered(made))
                          for item in pending[start:start + FLUSH_SLICE] if item.parts]
                for item, write in writes:
                    if type(item) is Cohort:
                        self._write_cohort(item, write[0], now, write[1])
                    else:
                        self._write_gathered(item, write, now)
        finally:
            if turns:  # by identity: another write's list may hold the same streams
                self._flushing = [p for p in self._flushing if p is not pending]

    def _flush_one(self, conn: Connection, now: float) -> None:
        """Write what ``conn`` gathered, and give its lock back once it is all out (its
        caller is taking one of its jobs off the fast path, or ending it: no cohort for it)."""
        self._write_gathered(conn, conn.gathered(), now, join=False)

    def _write_gathered(self, conn: Connection, write: tuple[bytes, Viewer, list[Viewer]],
                        now: float, join: bool = True) -> None:
        """Send ``conn``'s gathered ``write`` (see :meth:`Connection.gathered`), and give its
        lock back once it is all out; with ``join``, it then joins the streams in step with
        it, if any (see :meth:`_join`)."""
        data, writer, ended = write
        if self._send(writer, data, holding=True):
            conn.lock.release()
            conn.last_write = now
            for v in ended:
                self.release(v, "job_ended")
            if join and not ended:
                self._join(conn)
        else:
            for v in ended:
                if v is not writer:
                    self.release(v, "job_ended")

    def _send(self, v: Viewer, data: bytes, holding: bool = False) -> bool:
        """Write ``data`` without blocking; a viewer that cannot take it all catches up.

        ``holding``: the caller holds the viewer's connection lock; it keeps it only when
        True is returned (else the catch-up that finishes the write, or the end, releases it).
        """
        if not data:
            return True
        try:
            n = v.sink.send(data)
        except OSError:
            if holding:
                v.conn.lock.release()
            self.release(v, "client_gone")
            return False
        if n < len(data):
            self._catch_up(v, data[n:], "slow", holding=holding)
            return False
        return True

    # -- leaving and rejoining the fast path (the catch-up itself: jobcast.web.catchup) ------

    def _catch_up(self, v: Viewer, pending: bytes, reason: str, here: bool = False,
                  holding: bool = False) -> None:
        """Take ``v`` off the fast path: its catch-up writes ``pending``, then reads the log
        from its cursor (in a new greenlet or thread, or with ``here`` in this one).
        ``holding``: the caller holds the connection lock, which passes to the catch-up with
        ``pending``."""
        catchup = self.catchup
        # (threads: under the lock, as the fast path's writes are; a catch-up thread then
        # finds itself in catching before it can end)
        with self.lock:
            if v.closed or v in catchup.catching:
                if holding:
                    v.conn.lock.release()
                return
            conn = v.conn
            if conn is not None and conn.cohort is not None:
                pending += self._leave(conn, holding=holding)
            if conn is not None and conn.parts and not holding:
                # Its connection's gathered write goes out first: the catch-up then writes
                # after it, and a gathered write never waits on a viewer that is catching up
                # (whose catch-up could not take the rest of a partial write).
                self._flush_one(conn, self.clock())
                if v.closed or v in catchup.catching:
                    return  # the write was partial, and this viewer's catch-up finishes it
            v.slow = True
            v.missed = 0
            self._count_values(v)  # the fast path does not count: memory does, while current
            metrics.caught_up(reason)
            if not here:
                catchup.start(v, pending, holding)
                return
            catchup.claim(v)
        catchup.run(v, pending, holding)

    def rejoin(self, v: Viewer) -> None:
        """``v``'s catch-up is done (the caller holds the lock): the fast path writes it from
        now on."""
        v.slow = False

    def _count_values(self, v: Viewer) -> None:
        """Set ``v``'s count of values up to its cursor from memory, when memory knows it
        (the caller holds the lock)."""
        values = self.recent.values_through(v.job_id, v.cursor, v.epoch)
        if values is not None:
            v.values = values

    def cut(self, v: Viewer, reason: str) -> str:
        """End ``v``'s stream (with a multi-job stream, the whole connection) without its end:
        no last chunk, no terminal entry. The client resumes from its position and is told
        then: 404, or one reset. Returns ``reason``."""
        v.done = True
        viewers = v.conn.viewers if v.conn is not None else [v]
        # (a queue: the request's generator raises, so the server cuts the body)
        v.sink.abort()
        for other in viewers:
            if other is not v:
                self.release(other, reason)
        return reason

    # -- quiet streams, reconnects, shutdown -----------------------------------------------

    def tick(self) -> None:
        """For each job quiet for a heartbeat interval: find lost announcements, free gone
        clients, and send the heartbeat of each transport."""
        now = self.clock()
        due = now - self.heartbeat * 0.9
        with self.lock:  # (under a threaded server, requests change these dicts meanwhile)
            quiet = [job for job, t in self._last_delivery.items()
                     if t <= due and job in self._jobs]
            # Jobs that deliver, but nothing their text and HTML streams show (what a job
            # prints): those viewers are quiet too.
            unseen = [job for job, t in self._last_shown.items()
                      if t <= due and job in self._jobs and self._last_delivery.get(job, 0) > due]
        if unseen:
            self._beat_values_only(unseen, now)
        if not quiet:
            return
        before = {job: self._last_delivery[job] for job in quiet}
        try:
            last_seqs: list[int | None] = self.broker.last_seqs(quiet)
        except RedisError:
            last_seqs = [None] * len(quiet)  # the broker's reconnect resyncs everyone anyway
        beats = 0
        with self.lock:
            for job, last_seq in zip(quiet, last_seqs):
                if job not in self._jobs:
                    continue  # its last viewer left while the log was read
                if last_seq is not None and self._last_delivery.get(job) != before[job]:
                    last_seq = None  # entries came while it was read: it is stale already
                self._last_delivery[job] = self._last_shown[job] = now
                gone = 0
                newest = self.recent.last(job)
                if last_seq is not None and newest is not None and last_seq != newest.seq:
                    # Memory is not the log: it has entries the log no longer has, or lacks
                    # one whose announcement was lost. The viewers' catch-ups read the log.
                    self.recent.lost([job])
                for v in tuple(self._jobs.get(job, ())):
                    if v.slow:
                        continue
                    if last_seq is not None and last_seq != v.cursor:
                        # Newer: an announcement was lost. Older: the log lost entries this
                        # viewer was sent (a failover; or it is gone), its writer silent.
                        self._catch_up(v, b"", "quiet")
                    elif v.conn is not None:
                        continue  # a multi-job stream beats once, below, not once per job
                    else:
                        gone += self._beat(v)
                    beats += 1
                if gone:
                    # One line per job, not per viewer: a NAT that drops thousands of viewers
                    # at once must not turn into thousands of log writes inside the loop.
                    log.info("freed %d viewer(s) of %s that went away", gone, job)
            beats += self._beat_connections(now)
        metrics.HEARTBEATS.inc(beats)

    def _beat_values_only(self, jobs: list[str], now: float) -> None:
        """Free the gone clients of the text and HTML streams of ``jobs`` (which deliver
        entries those streams do not show), and send the others the HTML heartbeat."""
        beats = 0
        with self.lock:
            for job in jobs:
                if job not in self._jobs:
                    continue
                self._last_shown[job] = now
                gone = 0
                for v in tuple(self._jobs[job]):
                    if v.slow or v.conn is not None or not v.transport.values_only:
                        continue
                    gone += self._beat(v)
                    beats += 1
                if gone:
                    log.info("freed %d viewer(s) of %s that went away", gone, job)
        metrics.HEARTBEATS.inc(beats)

    def _beat(self, v: Viewer) -> bool:
        """Free ``v`` if its client went away (True), else send it its transport's heartbeat
        (none on the text stream, which has no room for one)."""
        if not v.sink.alive():
            self.release(v, "client_gone")
            return True
        if v.transport.heartbeat:
            self._send(v, v.wire(v.transport.heartbeat))
        return False

    def _beat_connections(self, now: float) -> int:
        """Each multi-job stream quiet for a heartbeat interval: free it if its client went
        away, else send one heartbeat (whatever the number of its jobs). Returns how many."""
        beats = 0
        for conn in list(self._conns):
            if conn.closed or now - conn.last_write < self.heartbeat * 0.9:
                continue
            if conn.cohort is not None and conn.cohort.parts:
                continue  # a write is gathered for it, and its cursors already count it
            if not conn.lock.acquire(blocking=False):
                continue  # someone is writing to it: not quiet
            conn.last_write = now
            open_viewers = [v for v in conn.viewers if not v.closed]
            if not open_viewers:
                conn.lock.release()
                continue
            if not conn.sink.alive():
                conn.lock.release()
                for v in open_viewers:
                    self.release(v, "client_gone")
                continue
            # Through a job that is not catching up: the rest of a partial write goes to the
            # writer's catch-up, and one already running would not take it.
            catching = self.catchup.catching
            beat = next((v for v in open_viewers if v not in catching), None)
            if beat is None:  # every job is catching up: they are writing anyway
                conn.lock.release()
                continue
            data = conn.wire(beat.transport.heartbeat, False)
            if self._send(beat, data, holding=True):
                conn.lock.release()
            beats += 1
        return beats

    def on_resync(self, job_ids: list[str]) -> None:
        """The broker's handler: after (re)subscribing to these jobs in doubt, anything
        announced meanwhile is only in the log."""
        with self.lock:
            self.recent.lost(job_ids)
            for job_id in job_ids:
                for v in tuple(self._jobs.get(job_id, ())):
                    if not v.slow:
                        self._catch_up(v, b"", "resync")

    def on_lost(self, job_ids: list[str]) -> None:
        """The broker's handler: these jobs' subscriptions were lost; what is kept of them
        may be stale."""
        with self.lock:
            self.recent.lost(job_ids)

    def shutdown(self) -> None:
        """End every stream (the process is stopping); clients resume elsewhere."""
        self.closing = True
        if self._gather_flush is not None:
            self._gather_flush.kill(block=False)
        self.flush_gathered()  # what was gathered goes out before the goodbyes
        for pending in list(self._flushing):  # and the rest of a write paused for a turn
            self._flush(pending)
        runners = list(self.catchup.catching.values())
        with self.lock:
            for conn in list(self._conns):
                # One goodbye per multi-job stream, before any of its jobs ends.
                try:
                    if conn.lock.acquire(blocking=False):
                        goodbye = conn.viewers[0].transport.goodbye(conn.retry)
                        conn.sink.send(conn.wire(goodbye, False) + (LAST_CHUNK if conn.chunked
                                                                      else b""))
                except OSError:
                    pass
                for v in conn.viewers:
                    v.done = True
            for viewers in list(self._jobs.values()):
                for v in tuple(viewers):
                    if v.slow:
                        continue  # its catch-up, stopped below, closes it
                    if v.conn is None and v.transport.shutdown is None:
                        # No goodbye to say (text): cut, so that the stream does not end as
                        # the job's end does, and its reader resumes.
                        self.cut(v, "server_shutdown")
                    elif v.conn is None:
                        # Best effort: a sink that cannot take these few bytes is closed anyway.
                        try:
                            v.sink.send(v.wire(v.transport.goodbye(v.retry), end=True))
                        except OSError:
                            pass
                    self.release(v, "server_shutdown")
        self.catchup.shutdown(runners)

    def release(self, v: Viewer, reason: str) -> None:
        """End ``v``: forget it, close its sink, give back its lease and slot (idempotent)."""
        with self.lock:
            if v.closed:
                return
            conn = v.conn
            if conn is not None and conn.cohort is not None:
                self._leave(conn)
                if conn.parts:  # what its cohort gathered for it goes out first
                    self._flush_one(conn, self.clock())
                    if v.closed:
                        return
            viewers = self._jobs.get(v.job_id)
            held = viewers is not None and v in viewers
            if held:
                viewers.pop(v, None)
                if not viewers:
                    del self._jobs[v.job_id]
                    self._last_delivery.pop(v.job_id, None)
                    self._last_shown.pop(v.job_id, None)
                    self.catchup.forget(v.job_id)
                    self.recent.forget(v.job_id)
            v.release()
            if v.conn is not None and v.conn.closed:
                self._conns.pop(v.conn, None)
        if held:
            metrics.viewer_removed()
        metrics.disconnected(reason)
