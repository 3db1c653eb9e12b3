"""The relay: the connections a web process holds, and how each live value reaches them.

A stream whose connection was taken over (see :mod:`web.handover`) becomes a
:class:`HeldViewer`: an OS socket, a transport (text, SSE, HTML), and a cursor, the seq of the
last entry written to it. It has no greenlet of its own while it keeps up.

- **Fast path.** The hub hands :meth:`Relay.deliver` each job's new entries, a batch at a
  time. Their bytes are framed once per transport (and once more as an HTTP/1.1 chunk), and
  written with one non-blocking ``send()`` per viewer, straight from the hub's greenlet: no
  wake-up, no WSGI generator, no per-viewer framing.
- **Catch-up.** A viewer whose cursor is not right before the batch (it just arrived, an
  announcement was lost, the hub reconnected) or whose socket would block (EAGAIN, or a
  partial write) leaves the fast path. A short-lived greenlet finishes its partial frame,
  reads the log from its cursor and writes what it finds, and puts the viewer back on the fast
  path once the log has nothing newer. While it catches up, the hub only notes the highest seq
  it skipped for it, so nothing can slip between the log read and the rejoin. Memory per slow
  viewer stays bounded: one page of the log, however slow the client.

The log stays the truth: every entry carries its seq, a viewer is written exactly the entries
after its cursor, in order, once. A viewer's first log read waits for Redis to confirm this
process's subscription to its job (:mod:`web.channels`), so nothing falls between the two.

This module needs gevent: held sockets are plain non-blocking sockets, and a viewer that
catches up waits for writability with gevent's ``wait_write``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable

import gevent
from gevent.event import Event
from gevent.socket import wait_write
from redis import Redis
from redis.exceptions import RedisError

from jobcast.joblog import Entry, JobLog
from web import metrics
from web.frames import LAST_CHUNK, Transport, chunk

log = logging.getLogger(__name__)

PAGE = 500
"""Most log entries a catching-up viewer reads (and writes) at once."""

RECENT = 512
"""Newest entries of each watched job kept in memory, so newcomers need not read Redis."""

MAX_OUTAGE = 120.0
"""Seconds a viewer waits for an unreachable Redis before its stream ends."""

CONFIRM_TIMEOUT = 5.0
"""Seconds a catching-up viewer waits for its job's subscription before reading anyway (the
confirmation, when it comes, makes it read again)."""


class HeldViewer:
    """One stream whose connection the relay holds."""

    __slots__ = ("job_id", "sock", "transport", "chunked", "kind", "start", "cursor", "slow",
                 "missed", "done", "closed", "on_close")

    def __init__(self, job_id: str, sock: socket.socket, transport: Transport, *, chunked: bool,
                 cursor: int, start: int = 0, on_close: Callable[[], None] | None = None):
        """A viewer of ``job_id`` that has been sent every entry up to seq ``cursor``."""
        self.job_id = job_id
        self.sock = sock
        self.transport = transport
        self.chunked = chunked
        self.kind = (transport, chunked)  # viewers of one kind are sent the same bytes
        self.start = start
        self.cursor = cursor
        self.slow = False
        self.missed = 0
        self.done = False
        self.closed = False
        self.on_close = on_close

    def wire(self, payload: bytes, end: bool = False) -> bytes:
        """``payload`` framed for this connection, plus the end of the body if ``end``."""
        if self.chunked:
            return chunk(payload) + LAST_CHUNK if end else chunk(payload)
        return payload

    def alive(self) -> bool:
        """False once the client has closed or reset the connection (peeks, reads nothing)."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False


class RecentEntries:
    """The newest entries of each watched job this process has seen, contiguous by seq.

    Filled from live batches and from the log reads of catching-up viewers, so a burst of
    newcomers to a busy job reads its recent history here rather than each from Redis. It is
    exact by construction (every entry is a log entry, and a batch that does not follow on
    is not appended). It is *current* for a viewer at seq ``cursor`` when it ends at that
    cursor and the hub has dispatched nothing newer: the viewer can then rejoin the fast path
    without asking Redis. That holds only within one unbroken subscription, so a lost or
    renewed subscription clears it, and a log read that spans a change (``epoch``) adds nothing.
    """

    def __init__(self, maxlen: int = RECENT):
        """Keep up to ``maxlen`` entries per job."""
        self.maxlen = maxlen
        self._tails: dict[str, list[Entry]] = {}
        self._dispatched: dict[str, int] = {}
        # The frames of "everything kept after seq c" per (job, transport, c), valid while the
        # kept entries end with the same entry: a burst of newcomers is framed once.
        self._framed: dict[tuple[str, Transport, int], tuple[Entry, bytes]] = {}
        self.subscribed = False
        self.epoch = 0

    def after(self, job_id: str, cursor: int) -> list[Entry]:
        """The kept entries after ``cursor``, if they follow on from it, else []."""
        tail = self._tails.get(job_id)
        if not tail or not tail[0].seq <= cursor + 1 <= tail[-1].seq:
            return []
        return tail[cursor + 1 - tail[0].seq:]

    def framed_after(self, job_id: str, cursor: int, transport: Transport,
                     start: int = 0) -> tuple[bytes, Entry] | None:
        """The frames of the kept entries after ``cursor`` and the last of them, or None."""
        kept = self.after(job_id, cursor)
        if not kept:
            return None
        last = kept[-1]
        if start:
            return transport.frames(kept, start), last
        key = (job_id, transport, cursor)
        hit = self._framed.get(key)
        if hit is not None and hit[0] is last:
            return hit[1], last
        if len(self._framed) >= 4 * self.maxlen:
            self._framed.clear()
        data = transport.frames(kept)
        self._framed[key] = (last, data)
        return data, last

    def is_current(self, job_id: str, cursor: int) -> bool:
        """True if nothing newer than ``cursor`` has been logged that the hub has not yet
        dispatched to the fast path."""
        tail = self._tails.get(job_id)
        return (self.subscribed and bool(tail) and tail[-1].seq == cursor
                and cursor >= self._dispatched.get(job_id, 0))

    def add_live(self, job_id: str, entries: list[Entry]) -> None:
        """The hub dispatched ``entries``."""
        self._dispatched[job_id] = entries[-1].seq
        tail = self._tails.get(job_id)
        if tail is None:
            self._keep(job_id, list(entries))
        elif tail[-1].seq + 1 == entries[0].seq:
            tail.extend(entries)
            self._trim(tail)
        elif entries[-1].seq > tail[-1].seq:
            self._keep(job_id, list(entries))  # a gap: start again from what is known

    def add_read(self, job_id: str, entries: list[Entry], epoch: int) -> None:
        """A viewer read ``entries`` from the log, having started the read at ``epoch``."""
        if not entries or not self.subscribed or epoch != self.epoch:
            return
        tail = self._tails.get(job_id)
        if tail is None:
            self._keep(job_id, list(entries))
            return
        first, last = tail[0].seq, tail[-1].seq
        if entries[-1].seq + 1 < first or entries[0].seq > last + 1:
            return  # not adjacent: nothing is known between the two, keep what we have
        # Both are exact runs of the log that touch: their union is one.
        before = entries[:max(0, first - entries[0].seq)]
        after = entries[max(0, last + 1 - entries[0].seq):]
        tail[:0] = before
        tail.extend(after)
        self._trim(tail)

    def last(self, job_id: str) -> Entry | None:
        """The newest kept entry of ``job_id``, if this process keeps any."""
        tail = self._tails.get(job_id)
        return tail[-1] if tail else None

    def forget(self, job_id: str) -> None:
        """Nobody here watches ``job_id`` any more."""
        self._tails.pop(job_id, None)
        self._dispatched.pop(job_id, None)
        for key in [k for k in self._framed if k[0] == job_id]:
            del self._framed[key]

    def subscription(self, live: bool) -> None:
        """The hub's subscription was (re)confirmed (True) or lost (False): start afresh."""
        self.subscribed = live
        self.epoch += 1
        self._tails.clear()
        self._dispatched.clear()
        self._framed.clear()

    def lost(self, job_ids) -> None:
        """The subscriptions of these jobs were lost or renewed: forget what is kept of them,
        and let no read that spans the change add to it."""
        self.epoch += 1
        for job_id in job_ids:
            self.forget(job_id)

    def _keep(self, job_id: str, tail: list[Entry]) -> None:
        """Make ``tail`` the job's kept entries."""
        self._trim(tail)
        self._tails[job_id] = tail

    def _trim(self, tail: list[Entry]) -> None:
        """Drop the oldest entries beyond ``maxlen``."""
        if len(tail) > self.maxlen:
            del tail[:len(tail) - self.maxlen]


class _Flight:
    """One read that concurrent callers share."""

    __slots__ = ("done", "result", "error")

    def __init__(self):
        """Not done yet."""
        self.done = threading.Event()
        self.result: tuple[bool, int] | None = None
        self.error: BaseException | None = None


class Relay:
    """The held viewers of one web process, by job."""

    def __init__(self, redis: Redis, *, heartbeat: float = 15.0, channels=None):
        """Relay with ``redis`` for catch-up reads; quiet streams get a heartbeat this often.

        ``channels`` (:class:`web.channels.Channels`) holds the job subscriptions its viewers
        need; without it (tests that play the hub) every job counts as subscribed.
        """
        self.redis = redis
        self.heartbeat = heartbeat
        self.channels = channels
        # Each job's viewers in the order they arrived (a dict used as an ordered set): the
        # fast path writes them first come, first served, the same order for every value.
        self._jobs: dict[str, dict[HeldViewer, None]] = {}
        self._last_delivery: dict[str, float] = {}
        self._catching: dict[HeldViewer, gevent.Greenlet] = {}
        self._reading: dict[str, Event] = {}
        self._positions: dict[str, _Flight] = {}
        self.recent = RecentEntries()
        self.closing = False

    # -- viewers ---------------------------------------------------------------------------

    def hold(self, viewer: HeldViewer, *, here: bool = False) -> None:
        """Take ``viewer``: it first catches up from the log, then joins the fast path.

        With ``here``, the catch-up runs in the calling greenlet (a request's, which would end
        anyway) rather than in a new one: one greenlet and one switch less per newcomer.
        """
        self._jobs.setdefault(viewer.job_id, {})[viewer] = None
        self._last_delivery.setdefault(viewer.job_id, time.monotonic())
        metrics.viewer_added(viewer.job_id)
        if self.channels is not None:
            self.channels.acquire(viewer.job_id)
        if self.closing:
            self._close(viewer, "server_shutdown")
            return
        self._catch_up(viewer, b"", "history", here=here)

    def viewers(self, job_id: str | None = None) -> int:
        """Held viewers of one job, or of all jobs."""
        if job_id is not None:
            return len(self._jobs.get(job_id, ()))
        return sum(len(v) for v in self._jobs.values())

    def jobs(self) -> list[str]:
        """Jobs with at least one held viewer."""
        return list(self._jobs)

    def position(self, job_id: str) -> tuple[bool, int] | None:
        """(ended, last seq) of ``job_id``, or None if there is no such job.

        Answered from the recent entries when this process keeps some, else read from Redis
        once for all the callers that ask at the same time (a burst of newcomers).
        """
        newest = self.recent.last(job_id)
        if newest is not None:
            return newest.terminal, newest.seq
        flight = self._positions.get(job_id)
        if flight is not None:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result
        flight = self._positions[job_id] = _Flight()
        try:
            flight.result = JobLog(self.redis, job_id).position()
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._positions[job_id]
            flight.done.set()

    # -- the fast path ---------------------------------------------------------------------

    def deliver(self, job_id: str, entries: list[Entry]) -> int:
        """Write ``entries`` (consecutive, in order) to every held viewer of ``job_id``.

        Returns how many viewers were written on the fast path.
        """
        viewers = self._jobs.get(job_id)
        if not viewers or not entries:
            return 0
        self.recent.add_live(job_id, entries)
        self._last_delivery[job_id] = time.monotonic()
        first, last = entries[0].seq, entries[-1].seq
        end = entries[-1].terminal
        first_index = next((e.i for e in entries if e.kind == "value"), None)
        shared: dict[tuple[Transport, bool], bytes] = {}
        written = 0
        # The hot loop: one iteration per viewer per batch, kept to a few attribute reads and
        # one non-blocking send().
        for v in tuple(viewers):
            if v.slow:
                if last > v.missed:
                    v.missed = last
                continue
            cursor = v.cursor
            if last <= cursor:
                continue
            if cursor + 1 < first:
                self._catch_up(v, b"", "gap")
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
                    self._close(v, "job_ended")
                continue
            if self._send(v, data):
                written += 1
                if end:
                    self._close(v, "job_ended")
        return written

    def _send(self, v: HeldViewer, data: bytes) -> bool:
        """Write ``data`` without blocking; a viewer that cannot take it all catches up."""
        if not data:
            return True
        try:
            n = v.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._close(v, "client_gone")
            return False
        if n < len(data):
            self._catch_up(v, data[n:], "slow")
            return False
        return True

    # -- catching up -----------------------------------------------------------------------

    def _catch_up(self, v: HeldViewer, pending: bytes, reason: str, here: bool = False) -> None:
        """Take ``v`` off the fast path: write ``pending``, then read the log from its cursor
        (in a new greenlet, or with ``here`` in this one)."""
        if v.closed or v in self._catching:
            return
        v.slow = True
        v.missed = 0
        metrics.CATCHUPS.labels(reason).inc()
        if here:
            self._catching[v] = gevent.getcurrent()
            self._catch_up_run(v, pending)
        else:
            self._catching[v] = gevent.spawn(self._catch_up_run, v, pending)

    def _catch_up_run(self, v: HeldViewer, pending: bytes) -> None:
        """The catch-up greenlet of one viewer."""
        reason = "error"
        try:
            if pending:
                self._write(v, pending)
            if v.done:
                reason = "job_ended"
                return
            reason = self._read_until_current(v)
        except OSError:
            reason = "client_gone"
        except gevent.GreenletExit:
            reason = "server_shutdown"
        finally:
            self._catching.pop(v, None)
            if reason:
                self._close(v, reason)

    def _read_until_current(self, v: HeldViewer) -> str | None:
        """Write the log after ``v.cursor`` until nothing is newer; None once back on the fast
        path, else why the stream ended."""
        joblog = JobLog(self.redis, v.job_id)
        recent = self.recent
        outage_since: float | None = None
        channels = self.channels
        if channels is not None and not channels.wait(v.job_id, CONFIRM_TIMEOUT):
            log.warning("viewer of %s reads the log before its subscription is confirmed; it "
                        "reads again once it is", v.job_id)
        while True:
            kept = recent.framed_after(v.job_id, v.cursor, v.transport, v.start)
            if kept is not None:
                # Recent history from memory: one write, no Redis round trip.
                data, newest = kept
                end = newest.terminal
                v.cursor = newest.seq
                self._write(v, v.wire(data, end))
                if end:
                    v.done = True
                    return "job_ended"
                continue
            if (v.missed <= v.cursor and recent.is_current(v.job_id, v.cursor)
                    and (channels is None or channels.confirmed(v.job_id))):
                v.slow = False  # nothing newer has been announced: back to the fast path
                return None
            reading = self._reading.get(v.job_id)
            if reading is not None:
                # Another viewer of this job is reading its log (a burst of newcomers): wait
                # for that read to land in the recent entries rather than repeat it.
                reading.wait()
                continue
            epoch = recent.epoch
            reading = self._reading[v.job_id] = Event()
            try:
                entries, ended = joblog.page(v.cursor, PAGE)
            except RedisError as exc:
                # Redis is unreachable (a restart?): keep the viewer and read again soon.
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > MAX_OUTAGE:
                    log.warning("giving up on a viewer of %s: Redis down for %ss", v.job_id,
                                MAX_OUTAGE)
                    return "redis_down"
                log.info("viewer of %s waits for Redis: %s", v.job_id, exc)
                self._write(v, v.wire(v.transport.heartbeat))
                gevent.sleep(1.0)
                continue
            finally:
                del self._reading[v.job_id]
                reading.set()
            outage_since = None
            if len(entries) < PAGE or entries[-1].terminal:
                # Only a read that reached the log's end may become the recent entries: their
                # newest is taken for the job's newest (position, is_current), and a full page
                # can stop short of it (a late viewer would then wait for nothing).
                recent.add_read(v.job_id, entries, epoch)
            entries = [e for e in entries if e.seq > v.cursor]
            if entries:
                end = entries[-1].terminal
                v.cursor = entries[-1].seq
                self._write(v, v.wire(v.transport.frames(entries, v.start), end))
                if end:
                    v.done = True
                    return "job_ended"
                continue
            if ended:
                # The terminal entry is at or before the cursor (or the log has expired).
                v.done = True
                if v.chunked:
                    self._write(v, LAST_CHUNK)
                return "job_ended"
            if v.missed > v.cursor:
                continue  # the hub skipped entries for us while we read: read them
            if recent.epoch != epoch:
                continue  # a subscription was lost or renewed during the read: read again
            # Back to the fast path. Greenlets switch only when they block, so no entry can be
            # delivered between the read above and this line without setting v.missed.
            v.slow = False
            return None

    @staticmethod
    def _write(v: HeldViewer, data: bytes) -> None:
        """Write all of ``data``, waiting for the socket as long as the client needs."""
        view = memoryview(data)
        while view:
            try:
                n = v.sock.send(view)
            except BlockingIOError:
                n = 0
            if n:
                view = view[n:]
            else:
                wait_write(v.sock.fileno())

    # -- quiet streams, reconnects, shutdown -----------------------------------------------

    def tick(self) -> None:
        """For each job quiet for a heartbeat interval: find lost announcements, free gone
        clients, and send the heartbeat of each transport."""
        now = time.monotonic()
        quiet = [job for job, t in self._last_delivery.items()
                 if now - t >= self.heartbeat * 0.9 and job in self._jobs]
        if not quiet:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for job in quiet:
                JobLog(self.redis, job).queue_last_seq(pipe)
            last_seqs = [int(s or 0) for s in pipe.execute()]
        except RedisError:
            last_seqs = [0] * len(quiet)  # the hub's reconnect resyncs everyone anyway
        beats = 0
        for job, last_seq in zip(quiet, last_seqs):
            self._last_delivery[job] = now
            gone = 0
            for v in tuple(self._jobs.get(job, ())):
                if v.slow:
                    continue
                if last_seq > v.cursor:
                    self._catch_up(v, b"", "quiet")  # an announcement was lost
                elif not v.alive():
                    self._close(v, "client_gone")
                    gone += 1
                elif v.transport.heartbeat:
                    self._send(v, v.wire(v.transport.heartbeat))
                beats += 1
            if gone:
                # One line per job, not per viewer: a NAT that drops thousands of viewers at
                # once must not turn into thousands of log writes inside the hub's loop.
                log.info("freed %d viewer(s) of %s that went away", gone, job)
        metrics.HEARTBEATS.inc(beats)

    def resync(self, jobs=None) -> None:
        """After the hub (re)subscribed to ``jobs`` (default: all): anything announced
        meanwhile is only in the log."""
        if jobs is None:
            self.recent.subscription(True)
            jobs = list(self._jobs)
        else:
            self.recent.lost(jobs)
        for job_id in jobs:
            for v in tuple(self._jobs.get(job_id, ())):
                if not v.slow:
                    self._catch_up(v, b"", "resync")

    def lost(self, jobs) -> None:
        """The hub lost the subscriptions of ``jobs``: what is kept of them may be stale."""
        self.recent.lost(jobs)

    def shutdown(self) -> None:
        """End every held stream (the process is stopping); clients resume elsewhere."""
        self.closing = True
        catching = list(self._catching.values())
        for viewers in list(self._jobs.values()):
            for v in tuple(viewers):
                if v.slow:
                    continue  # its greenlet, killed below, closes it once it stops waiting
                # Best effort: a socket that cannot take these few bytes is closed anyway.
                try:
                    v.sock.send(v.wire(v.transport.shutdown, end=True))
                except OSError:
                    pass
                self._close(v, "server_shutdown")
        gevent.killall(catching, block=False)

    def _close(self, v: HeldViewer, reason: str) -> None:
        """Forget ``v``, close its connection and release its stream slot (idempotent)."""
        if v.closed:
            return
        v.closed = True
        viewers = self._jobs.get(v.job_id)
        if viewers is not None:
            viewers.pop(v, None)
            if not viewers:
                del self._jobs[v.job_id]
                self._last_delivery.pop(v.job_id, None)
                self.recent.forget(v.job_id)
        try:
            v.sock.close()
        except OSError:
            pass
        if self.channels is not None:
            self.channels.release(v.job_id)
        metrics.viewer_removed(v.job_id)
        metrics.DISCONNECTS.labels(reason).inc()
        if v.on_close is not None:
            v.on_close()
