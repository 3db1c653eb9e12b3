"""The hub: one Redis pub/sub subscription per web process, fanned out to every viewer.

The hub pattern-subscribes once to every job channel. It reads announcements in bursts (all
those already received), decodes each once and groups them by job; jobs nobody here watches
cost one dictionary lookup. Each job's new entries then go

- to the :class:`~web.relay.Relay`, which writes them straight to the connections it holds
  (the streams served by :class:`web.handover.StreamWorker`), framed once for all of them;
- to the bounded buffer of each viewer that follows in its own greenlet (the generator path,
  used where the connection cannot be taken over). A viewer whose buffer overflows is told so
  and re-reads the log, which keeps the process's memory bounded however slowly it reads.

The hub is written with ``threading`` primitives: under gunicorn's gevent worker these are
monkey-patched into greenlets and gevent events, and in plain Python they still work.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from collections import deque

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, TimeoutError as RedisTimeoutError

from web import metrics
from web.relay import Relay
from jobcast.joblog import CHANNEL_PATTERN, Entry, job_id_from_channel

log = logging.getLogger(__name__)

OVERFLOW = object()
"""Returned by :meth:`Subscription.get` when entries were dropped: read the log instead."""

RESYNC = object()
"""Returned by :meth:`Subscription.get` after the hub reconnected: check the log for gaps."""


SHUTDOWN = object()
"""Returned by :meth:`Subscription.get` when the process is shutting down."""


class Subscription:
    """One viewer's bounded buffer of live entries for one job."""

    __slots__ = ("hub", "job_id", "maxlen", "_queue", "_event", "_lock", "_overflow", "_resync")

    def __init__(self, hub: "Hub", job_id: str, maxlen: int, lock=None):
        """Create an empty buffer; use :meth:`Hub.subscribe` rather than this.

        ``lock`` guards the buffer (a ``threading.Lock`` unless given).
        """
        self.hub = hub
        self.job_id = job_id
        self.maxlen = maxlen
        self._queue: deque[Entry] = deque()
        self._event = threading.Event()
        self._lock = lock if lock is not None else threading.Lock()
        self._overflow = False
        self._resync = False

    def put(self, entry: Entry) -> None:
        """Add a live entry; on overflow drop the buffer and flag the viewer to catch up."""
        with self._lock:
            if self._overflow:
                return
            if len(self._queue) >= self.maxlen:
                self._queue.clear()
                self._overflow = True
            else:
                self._queue.append(entry)
            self.wake()

    def resync(self) -> None:
        """Ask the viewer to compare its position with the log (after a reconnect)."""
        with self._lock:
            self._resync = True
            self.wake()

    def wake(self) -> None:
        """Wake the viewer if it is waiting in :meth:`get`."""
        self._event.set()

    def get(self, timeout: float) -> list[Entry] | object:
        """Wait up to ``timeout`` s; return entries, OVERFLOW, RESYNC, SHUTDOWN or ``[]``."""
        self._event.wait(timeout)
        with self._lock:
            self._event.clear()
            return self._take()

    def _take(self) -> list[Entry] | object:
        """What :meth:`get` returns once woken (or timed out)."""
        if self.hub.closing:
            return SHUTDOWN
        if self._overflow:
            self._overflow = False
            self._resync = False
            return OVERFLOW
        if self._resync:
            self._resync = False
            self._queue.clear()
            return RESYNC
        items = list(self._queue)
        self._queue.clear()
        return items

    def close(self) -> None:
        """Detach from the hub and free the buffer."""
        self.hub.unsubscribe(self)
        self._queue.clear()

    def __enter__(self) -> "Subscription":
        """Use as a context manager so the buffer is always released."""
        return self

    def __exit__(self, *exc) -> None:
        """Release the buffer."""
        self.close()


class GreenSubscription(Subscription):
    """The same buffer for gevent, where the hub and every viewer share one OS thread.

    No lock is needed (greenlets switch only when they block), and a waiting viewer is woken
    with a gevent Waiter and a libev timer instead of an Event with a Timeout: about a third
    of the CPU per wake-up, which is most of the cost of relaying one value to one viewer.
    """

    __slots__ = ("_loop", "_waiter")

    def __init__(self, hub: "Hub", job_id: str, maxlen: int, loop):
        """Create an empty buffer woken through gevent's ``loop``."""
        # put() and resync() are inherited: they need no lock here, as greenlets only switch
        # when they block.
        super().__init__(hub, job_id, maxlen, lock=nullcontext())
        self._loop = loop
        self._waiter = None

    def wake(self) -> None:
        """Wake the viewer (from the hub greenlet, on the loop's next turn) if it waits."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._loop.run_callback(waiter.switch, None)

    def get(self, timeout: float) -> list[Entry] | object:
        """Wait up to ``timeout`` s; return entries, OVERFLOW, RESYNC, SHUTDOWN or ``[]``."""
        if not (self._queue or self._overflow or self._resync or self.hub.closing):
            from gevent.hub import Waiter

            waiter = self._waiter = Waiter()
            timer = self._loop.timer(timeout)
            timer.start(waiter.switch, None)
            try:
                waiter.get()
            finally:
                timer.close()
                self._waiter = None
        return self._take()


_GREEN: bool | None = None


def _green_loop():
    """gevent's loop when threading is monkey-patched (gunicorn's gevent worker), else None."""
    global _GREEN
    if _GREEN is None:
        try:
            from gevent import monkey
            _GREEN = bool(monkey.is_module_patched("threading"))
        except ImportError:
            _GREEN = False
    if not _GREEN:
        return None
    from gevent import get_hub
    return get_hub().loop


class Hub:
    """Reads the process's single pub/sub connection and dispatches to subscriptions."""

    BURST = 512
    """Most announcements read and dispatched as one batch."""

    def __init__(self, redis: Redis, *, buffer_size: int = 1024, poll: float = 1.0,
                 max_backoff: float = 5.0, heartbeat: float = 15.0):
        """Prepare the hub; :meth:`start` launches its reader."""
        self.redis = redis
        self.buffer_size = buffer_size
        self.poll = poll
        self.max_backoff = max_backoff
        self.heartbeat = heartbeat
        self._subs: dict[str, set[Subscription]] = {}
        self.relay = Relay(redis, heartbeat=heartbeat)
        self._ready = threading.Event()
        self.closing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self.messages = 0

    # -- viewers ---------------------------------------------------------------------------

    def subscribe(self, job_id: str) -> Subscription:
        """Register a viewer of ``job_id``; live entries go to the returned buffer."""
        self.start()
        loop = _green_loop()
        if loop is not None:
            sub: Subscription = GreenSubscription(self, job_id, self.buffer_size, loop)
        else:
            sub = Subscription(self, job_id, self.buffer_size)
        self._subs.setdefault(job_id, set()).add(sub)
        metrics.viewer_added(job_id)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a viewer (idempotent)."""
        subs = self._subs.get(sub.job_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            metrics.viewer_removed(sub.job_id)
            if not subs:
                del self._subs[sub.job_id]

    def shutdown(self) -> None:
        """The process is stopping: end every held stream and wake every other viewer."""
        self.closing = True
        if not self.relay.closing:
            self.relay.shutdown()
        for subs in list(self._subs.values()):
            for sub in tuple(subs):
                sub.wake()

    def viewers(self, job_id: str | None = None) -> int:
        """Viewers attached here, of one job or in total."""
        if job_id is not None:
            return len(self._subs.get(job_id, ())) + self.relay.viewers(job_id)
        return sum(len(s) for s in self._subs.values()) + self.relay.viewers()

    def jobs(self) -> list[str]:
        """Jobs with at least one viewer here."""
        return list(set(self._subs) | set(self.relay.jobs()))

    @property
    def ready(self) -> bool:
        """True while the subscription is confirmed by Redis."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the subscription is live, or ``timeout`` passes."""
        self.start()
        return self._ready.wait(timeout)

    # -- the reader ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader, and the heartbeat of held streams, once per process."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jobcast-hub", daemon=True)
            self._thread.start()
            self._ticker = threading.Thread(target=self._tick, name="jobcast-beat", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        """Let the relay look at its quiet streams, several times per heartbeat interval."""
        interval = min(1.0, self.heartbeat / 3)
        while not self._stop.wait(interval):
            if not self.closing:
                try:
                    self.relay.tick()
                except Exception:  # the heartbeat must outlive any one bad round
                    log.exception("hub: relay tick failed")

    def stop(self, timeout: float | None = None) -> None:
        """Stop the reader at its next poll, waiting up to ``timeout`` s for it to exit."""
        self._stop.set()
        if self._thread is not None and timeout is not None:
            self._thread.join(timeout)

    def dispatch(self, channel: bytes | str, data: bytes) -> None:
        """Decode one announcement and hand it to each viewer of its job."""
        self.dispatch_batch([(channel, data)])

    def dispatch_batch(self, messages: list[tuple[bytes | str, bytes]]) -> None:
        """Decode a burst of announcements, and hand each job's entries to its viewers."""
        self.messages += len(messages)
        by_job: dict[str, list[Entry]] = {}
        for channel, data in messages:
            if isinstance(channel, bytes):
                channel = channel.decode()
            job_id = job_id_from_channel(channel)
            if job_id is None or (job_id not in self._subs and not self.relay.viewers(job_id)):
                continue
            try:
                entry = Entry.parse(data)
            except (ValueError, KeyError):
                log.warning("hub: dropping malformed announcement on %s", channel)
                continue
            by_job.setdefault(job_id, []).append(entry)
        for job_id, entries in by_job.items():
            held = self.relay.deliver(job_id, entries)
            subs = self._subs.get(job_id)
            if subs:
                for sub in tuple(subs):
                    for entry in entries:
                        sub.put(entry)
            for entry in entries:
                metrics.dispatched(entry, held + len(subs or ()))

    def _run(self) -> None:
        """Subscribe, dispatch until stopped, and reconnect with backoff on errors."""
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                pubsub.psubscribe(CHANNEL_PATTERN)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=self.poll)
                    if msg is None:
                        continue
                    # Take every announcement already received: one batch per job, one write
                    # per viewer for all of them.
                    burst = []
                    while msg is not None:
                        kind = msg["type"]
                        if kind == "pmessage":
                            burst.append((msg["channel"], msg["data"]))
                        elif kind == "psubscribe":
                            backoff = 0.1
                            self._ready.set()
                            self._resync()
                        if len(burst) >= self.BURST:
                            break
                        msg = pubsub.get_message(timeout=0)
                    if burst:
                        self.dispatch_batch(burst)
            except (RedisConnectionError, RedisTimeoutError, OSError, RedisError) as exc:
                self._ready.clear()
                self.relay.recent.subscription(False)
                metrics.HUB_RECONNECTS.inc()
                log.warning("hub: lost Redis subscription (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self._ready.clear()
                try:
                    pubsub.close()
                except Exception:  # closing a dead connection may raise anything; it is gone anyway
                    log.debug("hub: error closing pubsub", exc_info=True)

    def _resync(self) -> None:
        """After (re)subscribing: anything published while we were not is only in the log."""
        for subs in list(self._subs.values()):
            for sub in tuple(subs):
                sub.resync()
        self.relay.resync()
