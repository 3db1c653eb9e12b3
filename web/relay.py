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
after its cursor, in order, once.

This module needs gevent: held sockets are plain non-blocking sockets, and a viewer that
catches up waits for writability with gevent's ``wait_write``.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable

import gevent
from gevent.socket import wait_write
from redis import Redis
from redis.exceptions import RedisError

from web import metrics
from web.frames import LAST_CHUNK, Transport, chunk
from worker.joblog import Entry, JobLog

log = logging.getLogger(__name__)

PAGE = 500
"""Most log entries a catching-up viewer reads (and writes) at once."""

MAX_OUTAGE = 120.0
"""Seconds a viewer waits for an unreachable Redis before its stream ends."""


class HeldViewer:
    """One stream whose connection the relay holds."""

    __slots__ = ("job_id", "sock", "transport", "chunked", "start", "cursor", "slow", "missed",
                 "done", "closed", "on_close")

    def __init__(self, job_id: str, sock: socket.socket, transport: Transport, *, chunked: bool,
                 cursor: int, start: int = 0, on_close: Callable[[], None] | None = None):
        """A viewer of ``job_id`` that has been sent every entry up to seq ``cursor``."""
        self.job_id = job_id
        self.sock = sock
        self.transport = transport
        self.chunked = chunked
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


class Relay:
    """The held viewers of one web process, by job."""

    def __init__(self, redis: Redis, *, heartbeat: float = 15.0):
        """Relay with ``redis`` for catch-up reads; quiet streams get a heartbeat this often."""
        self.redis = redis
        self.heartbeat = heartbeat
        self._jobs: dict[str, set[HeldViewer]] = {}
        self._last_delivery: dict[str, float] = {}
        self._catching: dict[HeldViewer, gevent.Greenlet] = {}
        self.closing = False

    # -- viewers ---------------------------------------------------------------------------

    def hold(self, viewer: HeldViewer) -> None:
        """Take ``viewer``: it first catches up from the log, then joins the fast path."""
        self._jobs.setdefault(viewer.job_id, set()).add(viewer)
        self._last_delivery.setdefault(viewer.job_id, time.monotonic())
        metrics.viewer_added(viewer.job_id)
        if self.closing:
            self._close(viewer, "server_shutdown")
            return
        self._catch_up(viewer, b"", "history")

    def viewers(self, job_id: str | None = None) -> int:
        """Held viewers of one job, or of all jobs."""
        if job_id is not None:
            return len(self._jobs.get(job_id, ()))
        return sum(len(v) for v in self._jobs.values())

    def jobs(self) -> list[str]:
        """Jobs with at least one held viewer."""
        return list(self._jobs)

    # -- the fast path ---------------------------------------------------------------------

    def deliver(self, job_id: str, entries: list[Entry]) -> int:
        """Write ``entries`` (consecutive, in order) to every held viewer of ``job_id``.

        Returns how many viewers were written on the fast path.
        """
        viewers = self._jobs.get(job_id)
        if not viewers or not entries:
            return 0
        self._last_delivery[job_id] = time.monotonic()
        first, last = entries[0].seq, entries[-1].seq
        end = entries[-1].terminal
        first_index = next((e.i for e in entries if e.kind == "value"), None)
        shared: dict[tuple[Transport, bool], bytes] = {}
        written = 0
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
                key = (v.transport, v.chunked)
                data = shared.get(key)
                if data is None:
                    data = shared[key] = v.wire(v.transport.frames(entries), end)
            else:  # rare: a viewer with ?start=, or one that already has part of the batch
                data = v.wire(v.transport.frames(entries[cursor + 1 - first:], v.start), end)
            v.cursor = last
            if end:
                v.done = True
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

    def _catch_up(self, v: HeldViewer, pending: bytes, reason: str) -> None:
        """Take ``v`` off the fast path: write ``pending``, then read the log from its cursor."""
        if v.closed or v in self._catching:
            return
        v.slow = True
        v.missed = 0
        metrics.CATCHUPS.labels(reason).inc()
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
        outage_since: float | None = None
        while True:
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
            outage_since = None
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
            for v in tuple(self._jobs.get(job, ())):
                if v.slow:
                    continue
                if last_seq > v.cursor:
                    self._catch_up(v, b"", "quiet")  # an announcement was lost
                elif not v.alive():
                    log.info("viewer of %s went away; freeing it", job)
                    self._close(v, "client_gone")
                elif v.transport.heartbeat:
                    self._send(v, v.wire(v.transport.heartbeat))
                beats += 1
        metrics.HEARTBEATS.inc(beats)

    def resync(self) -> None:
        """After the hub re-subscribed: anything announced meanwhile is only in the log."""
        for viewers in list(self._jobs.values()):
            for v in tuple(viewers):
                if not v.slow:
                    self._catch_up(v, b"", "resync")

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
            viewers.discard(v)
            if not viewers:
                del self._jobs[v.job_id]
                self._last_delivery.pop(v.job_id, None)
        try:
            v.sock.close()
        except OSError:
            pass
        metrics.viewer_removed(v.job_id)
        metrics.DISCONNECTS.labels(reason).inc()
        if v.on_close is not None:
            v.on_close()
