"""The catch-up: a viewer off the relay's fast path, written from the log until it is current.

The relay takes a viewer off its fast path (``Relay._catch_up``: it arrived, a batch did not
follow on from its cursor, its sink would block) and hands it here. Its catch-up, a short-lived
greenlet (a thread outside gevent) or the caller's own, writes what was left of a partial
write, then what is kept in memory or read from the log after the viewer's cursor, and puts it
back on the fast path (:meth:`Relay.rejoin`) once nothing is newer. Meanwhile the fast path
only notes the newest seq it skipped for it (``Viewer.missed``), so nothing slips between a
read and the rejoin.

- One viewer of a job reads its log at a time; the others wait for that read to land in the
  relay's memory (:class:`~jobcast.web.recent.RecentEntries`) rather than repeat it.
- A read brings about ``PAGE_BYTES`` into memory, sized by the job's largest entry seen.
- While Redis is unreachable the viewer gets heartbeats, for ``MAX_OUTAGE`` seconds at most.
- A log of another incarnation, gone, behind the cursor or trimmed past it: the viewer goes
  on, gets a reset or a trim notice, or its stream is cut (:meth:`CatchUp._place`,
  :meth:`CatchUp._trimmed`).

It owns its state (the viewers catching up, the reads under way, the jobs' entry sizes) and
reaches the relay only through ``lock``, ``green``, ``broker``, ``recent``, ``clock``,
``sleep``, ``heartbeat``, ``write_timeout``, :meth:`Relay.rejoin`, :meth:`Relay.cut`,
:meth:`Relay.release` and :meth:`Relay.viewers`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import gevent
from gevent import GreenletExit
from gevent.event import Event as GreenEvent
from redis.exceptions import RedisError

from jobcast.core.epoch import PAST_END, Head, Reset, resolve
from jobcast.core.joblog import Entry
from jobcast.web import metrics
from jobcast.web.green import spawn
from jobcast.web.viewer import Connection, Viewer

if TYPE_CHECKING:
    from jobcast.web.relay import Relay

log = logging.getLogger(__name__)

PAGE = 500
"""Most log entries a catching-up viewer reads (and writes) at once."""

PAGE_BYTES = 1 << 20
"""About the most bytes of log one catch-up read brings into memory: a job of large entries is
read in fewer entries at a time (the first read of a job not seen yet takes FIRST_PAGE)."""

FIRST_PAGE = 64
"""Entries of a catch-up read while the size of the job's entries is not known yet."""

MAX_OUTAGE = 120.0
"""Seconds a viewer waits for an unreachable Redis before its stream ends."""

CUT = frozenset({"write_timeout", "redis_down", "error"})
"""Why a catch-up may give up on a stream it has not finished: the stream is then cut, not
ended (see :meth:`Relay.cut`)."""


class _Step(Enum):
    """What a turn of a catch-up leaves to the next (its other outcomes end the catch-up)."""

    AGAIN = "again"
    """Something was written, waited for or placed: take another turn."""
    NOT_KEPT = "not kept"
    """Memory does not reach back to the viewer's position: read the log."""


@dataclass
class _Outage:
    """Since when a catch-up has found Redis out of reach (None while it answers)."""

    since: float | None = None


class WriteTimeout(Exception):
    """A client accepted no byte for the relay's write timeout: it is not reading."""


class CatchUp:
    """The catch-ups of one relay's viewers (see the module's docstring)."""

    def __init__(self, relay: Relay):
        """Catch up the viewers ``relay`` takes off its fast path."""
        self.relay = relay
        # The greenlet (or thread) catching up each viewer. The relay reads it (a stream
        # joins a cohort, or gets a heartbeat through a job, only while none of it is here);
        # only the catch-up changes it.
        self.catching: dict[Viewer, object] = {}
        self._reading: dict[str, object] = {}  # job id -> an Event set when its read lands
        self._entry_size: dict[str, int] = {}  # job id -> the largest entry seen, bytes
        if relay.green:
            self._event, self._current = GreenEvent, gevent.getcurrent
        else:
            self._event, self._current = threading.Event, threading.current_thread

    def start(self, v: Viewer, pending: bytes, holding: bool) -> None:
        """Catch ``v`` up in a new greenlet (a thread outside gevent): :meth:`run`. The caller
        holds the relay's lock (threads: the new thread finds itself in ``catching``)."""
        self.catching[v] = spawn(self.run, v, pending, holding, green=self.relay.green)

    def claim(self, v: Viewer) -> None:
        """``v``'s catch-up is the calling greenlet's (or thread's), which calls :meth:`run`
        next, once out of the relay's lock (the caller holds it now)."""
        self.catching[v] = self._current()

    def forget(self, job_id: str) -> None:
        """The last viewer of ``job_id`` left (the caller holds the relay's lock)."""
        self._entry_size.pop(job_id, None)

    def shutdown(self, runners: list[object]) -> None:
        """The process is stopping: kill ``runners`` (the greenlets of the catch-ups that ran
        when the relay began its goodbyes), and end the viewers still catching up."""
        relay = self.relay
        if relay.green:
            gevent.killall([g for g in runners if isinstance(g, gevent.Greenlet)], block=False)
        for v in list(self.catching):
            # A thread's catch-up then fails its next write, and ends. A text stream is cut
            # (a queue aborted): with no goodbye to say, its end would read as the job's.
            if v.transport.shutdown is None:
                v.sink.abort()
            else:
                v.sink.close()
            if relay.green:
                # A greenlet killed before it ran never runs its cleanup; one that was running
                # ends at its next switch, and finds this done (release is idempotent).
                self.catching.pop(v, None)
                relay.release(v, "server_shutdown")

    def run(self, v: Viewer, pending: bytes, holding: bool = False) -> None:
        """The catch-up of one viewer."""
        relay = self.relay
        reason = "error"
        try:
            if pending:
                held, holding = holding, False  # _write gives the lock back, whatever happens
                self._write(v, pending, holding=held, framed=True)
            if v.done:
                reason = "job_ended"
                return
            reason = self._read_until_current(v)
        except OSError:
            reason = "client_gone"
        except WriteTimeout:
            reason = "write_timeout"
            log.info("dropped a viewer of %s whose stream took nothing for %ss", v.job_id,
                     relay.write_timeout)
        except GreenletExit:  # the process is stopping: shutdown() killed this catch-up
            reason = "server_shutdown"
        except BaseException:  # a bug: this viewer ends ("error"), and nobody else is touched
            log.exception("relay: catch-up of a viewer of %s failed", v.job_id)
        finally:
            if holding:  # it never got to write what it was handed
                v.conn.lock.release()
            with relay.lock:  # (threads: a catch-up begun since, once this one was done)
                self._done(v)
            if reason in CUT:
                # Its stream is not whole any more: cut it (all of a multi-job stream, whose
                # other jobs would otherwise go on without this one, and say nothing), so that
                # the client sees a broken body, not an end, and resumes from its position.
                relay.cut(v, reason)
            if reason:
                relay.release(v, reason)

    def _rejoin(self, v: Viewer) -> None:
        """``v``'s catch-up is done (the caller holds the relay's lock): back to the fast path
        (:meth:`Relay.rejoin`), and out of ``catching`` at once, so that a partial write there
        starts a new catch-up (threads: were it still in ``catching`` until this one ended,
        that write's rest would be dropped)."""
        self.relay.rejoin(v)
        self._done(v)

    def _done(self, v: Viewer) -> None:
        """Forget ``v``'s catch-up if it is this greenlet's (or thread's), not a newer one."""
        if self.catching.get(v) is self._current():
            del self.catching[v]

    def _read_until_current(self, v: Viewer) -> str | None:
        """Write the log after ``v.cursor`` until nothing is newer; None once back on the fast
        path, else why the stream ended.

        Each turn writes what the relay keeps in memory (:meth:`_from_memory`) or, when it does
        not reach back to the viewer's position, what a read of the log brings
        (:meth:`_from_log`); either may put the viewer back on the fast path or end its stream.
        """
        outage = _Outage()
        while True:
            if v.closed:
                return "closed"
            step = self._from_memory(v)
            if step is _Step.NOT_KEPT:
                step = self._from_log(v, outage)
            if step is not _Step.AGAIN:
                return step

    def _from_memory(self, v: Viewer) -> str | None | _Step:
        """One turn from the recent entries: ``v`` rejoins the fast path (None) when nothing
        newer was announced, its stream ends (why) at its job's end, or what memory keeps past
        its cursor is written (AGAIN); NOT_KEPT when memory does not reach back that far."""
        relay = self.relay
        recent = relay.recent
        if v.epoch is None and recent.last(v.job_id) is not None:
            # A position without an epoch is trusted by its seq (unless past the end): it
            # follows the incarnation this process knows, as a read of the log would say.
            v.epoch = recent.last(v.job_id).ep
        with relay.lock:  # (memory changes under threads)
            kept = recent.framed_after(v.job_id, v.cursor, v.transport, v.start, v.epoch)
            if kept is None:
                if not (v.missed <= v.cursor and recent.is_current(v.job_id, v.cursor, v.epoch)
                        and relay.broker.subscribed(v.job_id)):
                    return _Step.NOT_KEPT
                # Nothing newer has been announced: back to the fast path, unless what the
                # viewer has ends with the job's end (no entry will ever come).
                if not recent.last(v.job_id).terminal:
                    self._rejoin(v)
                    return None
            else:
                # What is kept may run on into an epoch begun after the viewer's position.
                data, newest = kept
                epoch = newest.ep if newest.ep is not None else v.epoch
                values = recent.values_through(v.job_id, newest.seq, epoch)
        if kept is None:
            return self._end_at_cursor(v)
        # Recent history from memory: one write, no Redis round trip (its epoch with its
        # cursor: a multi-job stream's id names both).
        self._write(v, data, newest.terminal, cursor=newest.seq, epoch=epoch)
        if values is not None:
            v.values = values
        return "job_ended" if newest.terminal else _Step.AGAIN

    def _from_log(self, v: Viewer, outage: _Outage) -> str | None | _Step:
        """One turn from a read of the log after ``v.cursor`` (or from another viewer's read of
        it, waited for): as :meth:`_from_memory`, and a Redis out of reach is waited out for up
        to ``MAX_OUTAGE`` seconds (since ``outage.since``), with heartbeats meanwhile."""
        relay = self.relay
        recent = relay.recent
        with relay.lock:  # (threads: one reader of a job at a time, as under gevent)
            reading = self._reading.get(v.job_id)
            if reading is None:
                mark = recent.reading(v.job_id)
                count = self._page(v.job_id)
                mine = self._reading[v.job_id] = self._event()
        if reading is not None:
            # Another viewer of this job is reading its log (a burst of newcomers): wait for
            # that read to land in the recent entries rather than repeat it. That read may be a
            # Redis outage's retries, for minutes: this viewer's client gets its heartbeat
            # meanwhile, as the reader's does.
            if not reading.wait(relay.heartbeat):
                self._write(v, v.transport.heartbeat)
            return _Step.AGAIN
        failure: RedisError | None = None
        try:
            entries, head = relay.broker.history(v.job_id, v.cursor, count)
        except RedisError as exc:
            failure = exc
        finally:
            with relay.lock:
                del self._reading[v.job_id]
            mine.set()
        if failure is not None:
            # Redis is unreachable (a restart?): keep the viewer and read again soon. The read
            # is given back first: a stalled client's heartbeat, or this wait, must not hold
            # the job's other viewers once Redis is back.
            outage.since = outage.since or relay.clock()
            if relay.clock() - outage.since > MAX_OUTAGE:
                log.warning("giving up on a viewer of %s: Redis down for %ss", v.job_id,
                            MAX_OUTAGE)
                return "redis_down"
            # Each waiting viewer, each second: the broker says once that Redis is away.
            log.debug("viewer of %s waits for Redis: %s", v.job_id, failure)
            self._write(v, v.transport.heartbeat)
            relay.sleep(1.0)
            return _Step.AGAIN
        outage.since = None
        if not head.exists or v.epoch != head.epoch or v.cursor > head.seq:
            # Placed after the read is given back: a reset written to a slow client must not
            # hold this job's other newcomers (they read for themselves meanwhile). Then read
            # again from where the viewer now stands.
            return self._place(v, head) or _Step.AGAIN
        if entries and entries[0].seq > v.cursor + 1:
            ending = self._trimmed(v, entries, head)
            if ending:
                return ending
        if entries:
            self._note_size(v.job_id, entries)
        with relay.lock:
            if len(entries) < count or entries[-1].terminal:
                # Only a read that reached the log's end may become the recent entries: their
                # newest is taken for the job's newest (position, is_current), and a full page
                # can stop short of it (a late viewer would then wait for nothing).
                recent.add_read(v.job_id, entries, mark)
            entries = [e for e in entries if e.seq > v.cursor]
            if (not entries and not head.ended and v.missed <= v.cursor
                    and recent.generation == mark.generation):
                # Back to the fast path: whatever is delivered from now on sees it, and
                # whatever was delivered during the read set v.missed (or a new generation).
                self._rejoin(v)
                return None
        if entries:
            end = entries[-1].terminal
            self._write(v, v.transport.frames(entries, v.start), end, cursor=entries[-1].seq)
            newest_value = next((e.i for e in reversed(entries) if e.kind == "value"), None)
            if newest_value is not None:
                v.values = newest_value + 1
            return "job_ended" if end else _Step.AGAIN
        if head.ended:
            # The terminal entry is at or before the cursor (or the log has expired).
            return self._end_at_cursor(v)
        # The fast path skipped entries for us, or a subscription changed, during the read:
        # read again.
        return _Step.AGAIN

    def _end_at_cursor(self, v: Viewer) -> str:
        """``v`` already has its job's end: write just the end of its body (when the body is
        ours to end), and say why its stream ends."""
        if v.chunked:
            self._write(v, b"", True)
        v.done = True
        return "job_ended"

    def _place(self, v: Viewer, head: Head) -> str | None:
        """``v``'s position is not plainly in the log ``head`` describes: go on (an older epoch
        whose entries up to the cursor survived), reset it, or end its stream (the log is
        gone, or the transport cannot say a reset). Returns why the stream ended, or None."""
        relay = self.relay
        if not head.exists:
            log.info("the log of job %s is gone under a viewer; its stream is cut", v.job_id)
            return relay.cut(v, "log_gone")
        reset = resolve(head, v.epoch, seq=v.cursor)
        if reset is None:
            v.epoch = head.epoch  # an older incarnation whose entries up to the cursor survived
            return None
        if reset.reason == PAST_END and not head.ended:
            # Entries this viewer was sent are gone, and nobody wrote since: begin a new epoch
            # (once, whoever finds it first) so their seqs are never reused, then go on after
            # the log's end as it was read. (An ended log gets no more entries: no seq to
            # protect.)
            now = relay.broker.rebase(v.job_id, head)
            reset = Reset(now.epoch, head.seq, head.values, PAST_END, was_seq=v.cursor,
                          was_epoch=v.epoch)
        log.warning("job %s: a viewer at seq %s (epoch %s) is reset to seq %s (epoch %s): %s",
                    v.job_id, v.cursor, v.epoch, reset.after, reset.epoch, reset.reason)
        metrics.caught_up("reset")
        with relay.lock:
            relay.recent.lost([v.job_id])  # what is kept of the job may be the dead incarnation
            # What was announced to it while it caught up was of the lost entries: waiting
            # for those seqs would read the log again and again, finding nothing newer.
            v.missed = min(v.missed, reset.after)
        v.values = None  # counted in an incarnation that is gone
        if v.transport.reset is None:
            v.cursor, v.epoch = reset.after, reset.epoch
            return relay.cut(v, "log_reset")
        # Values from reset.values on were replaced: a stream from ?start= shows those below
        # its start too (the reset line says they were replaced).
        v.start = min(v.start, reset.values)
        self._write(v, v.transport.reset(reset), cursor=reset.after, epoch=reset.epoch)
        return None

    def _trimmed(self, v: Viewer, entries: list[Entry], head: Head) -> str | None:
        """``entries``, read after ``v``'s position, begin past it: a capped log was trimmed
        beyond it while it caught up (a slow client), and the entries between are gone. Say
        so, as a stream that begins in a trimmed log does, and go on; or, where the transport
        cannot say it, cut the stream (its client is told when it resumes). Returns why the
        stream ended, or None.

        The text and HTML streams show only values (at or past ``?start=``): when the viewer's
        count of values says none of those was among the entries lost (a job that printed a
        lot), nothing is lost to them, and they just go on.
        """
        relay = self.relay
        first = entries[0].seq
        # The first entry read says which values came before it (an entry of an older log may
        # not: then the first value read does).
        first_value = entries[0].values_before
        if first_value is None:
            first_value = next((e.i for e in entries if e.kind == "value"), None)
        if v.transport.filters_values and v.values is not None:
            # The values between: up to the first one read, or (none said) all logged since.
            upto = first_value if first_value is not None else head.values
            if upto is not None and upto <= max(v.values, v.start):
                return None
        trim = {"after": v.cursor, "first_seq": first, "lost": first - v.cursor - 1,
                "first_value": first_value}
        log.info("job %s: a viewer at seq %s lost %s entries trimmed from the log",
                 v.job_id, v.cursor, trim["lost"])
        metrics.caught_up("trimmed")
        if v.transport.trimmed is None:
            return relay.cut(v, "log_trimmed")
        self._write(v, v.transport.trimmed(trim))
        return None

    def _page(self, job_id: str) -> int:
        """How many entries of ``job_id`` one catch-up read asks for (about PAGE_BYTES)."""
        size = self._entry_size.get(job_id)
        if size is None:
            return FIRST_PAGE
        return max(1, min(PAGE, PAGE_BYTES // max(size, 1)))

    def _note_size(self, job_id: str, entries: list[Entry]) -> None:
        """Remember the largest entry of ``job_id`` seen (reads are sized by it)."""
        size = max(len(e.raw) for e in entries)
        if self.relay.viewers(job_id) and size > self._entry_size.get(job_id, 0):
            # (Only while it has viewers: the last one's release forgets the job.)
            self._entry_size[job_id] = size

    def _write(self, v: Viewer, frames: bytes, end: bool = False, *, holding: bool = False,
               framed: bool = False, cursor: int | None = None,
               epoch: str | None = None) -> None:
        """Write ``frames`` (framed for ``v``'s connection, with the end of the body if ``end``;
        as they are with ``framed``), waiting for the sink as long as the client reads;
        WriteTimeout once it has accepted no byte for ``write_timeout`` seconds. ``cursor``
        and ``epoch``: where ``v`` stands once they are out (``end``: done).

        A job of a multi-job stream writes while holding its connection's lock (``holding``:
        the caller already does; the lock is given back here, whatever happens), and frames
        its bytes only then, so two jobs' bytes never interleave and the cursor each write
        ends with is the connection's latest. Its new position is set only then too: every
        write to the connection names every job's cursor (and ends the body once all are
        done), and must never name entries that are not out yet.
        """
        relay = self.relay
        conn = v.conn
        if conn is not None and not holding:
            self._take_lock(v, conn)
        try:
            if cursor is not None:
                v.cursor = cursor
            if epoch is not None:
                v.epoch = epoch
            if end:
                v.done = True
            data = frames if framed else v.wire(frames, end)
            view = memoryview(data)
            while view:
                n = v.sink.send(view)
                if n:
                    view = view[n:]
                    if conn is not None:
                        conn.took = time.monotonic()  # (real time, as the waits are)
                elif not v.sink.wait_writable(relay.write_timeout):
                    raise WriteTimeout(v.job_id)
        finally:
            if conn is not None:
                conn.last_write = relay.clock()
                conn.lock.release()

    def _take_lock(self, v: Viewer, conn: Connection) -> None:
        """Take ``conn``'s lock for ``v``'s write; WriteTimeout once its client has taken no
        byte for the write timeout. Another job's write may hold it for long (a page of large
        entries to a client that reads slowly): while its client takes bytes, it is reading."""
        relay = self.relay
        while not conn.lock.acquire(timeout=relay.write_timeout):
            if conn.closed or time.monotonic() - conn.took >= relay.write_timeout:
                raise WriteTimeout(v.job_id)
