"""The hub: one Redis pub/sub subscription per web process, fanned out to every viewer.

The hub pattern-subscribes once to every job channel. Each announcement is decoded once and
handed to the bounded buffer of each local viewer of that job; jobs nobody here watches cost
one dictionary lookup. A viewer whose buffer overflows is told so and re-reads the log, which
keeps the process's memory bounded however slowly a client reads.

The hub is written with ``threading`` primitives: under gunicorn's gevent worker these are
monkey-patched into greenlets and gevent events, and in plain Python they still work.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
import time
from collections import deque

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, TimeoutError as RedisTimeoutError

from web import metrics
from worker.joblog import CHANNEL_PATTERN, Entry, job_id_from_channel

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

    def __init__(self, hub: "Hub", job_id: str, maxlen: int):
        """Create an empty buffer; use :meth:`Hub.subscribe` rather than this."""
        self.hub = hub
        self.job_id = job_id
        self.maxlen = maxlen
        self._queue: deque[Entry] = deque()
        self._event = threading.Event()
        self._lock = threading.Lock()
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
        super().__init__(hub, job_id, maxlen)
        # put() and resync() are inherited: they need no lock here, as greenlets only switch
        # when they block.
        self._lock = nullcontext()
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

    def __init__(self, redis: Redis, *, buffer_size: int = 1024, poll: float = 1.0,
                 max_backoff: float = 5.0):
        """Prepare the hub; :meth:`start` launches its reader."""
        self.redis = redis
        self.buffer_size = buffer_size
        self.poll = poll
        self.max_backoff = max_backoff
        self._subs: dict[str, set[Subscription]] = {}
        self._ready = threading.Event()
        self.closing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.messages = 0
        self.reconnects = 0
        self.last_message_at = 0.0

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
        """The process is stopping: wake every viewer so its stream can end cleanly."""
        self.closing = True
        for subs in list(self._subs.values()):
            for sub in tuple(subs):
                sub.wake()

    def viewers(self, job_id: str | None = None) -> int:
        """Viewers attached here, of one job or in total."""
        if job_id is not None:
            return len(self._subs.get(job_id, ()))
        return sum(len(s) for s in self._subs.values())

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
        """Start the reader once per process."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jobcast-hub", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the reader at its next poll, waiting up to ``timeout`` s for it to exit."""
        self._stop.set()
        if self._thread is not None and timeout is not None:
            self._thread.join(timeout)

    def dispatch(self, channel: bytes | str, data: bytes) -> None:
        """Decode one announcement and hand it to each viewer of its job."""
        if isinstance(channel, bytes):
            channel = channel.decode()
        job_id = job_id_from_channel(channel)
        subs = self._subs.get(job_id) if job_id else None
        self.messages += 1
        self.last_message_at = time.time()
        if not subs:
            return
        try:
            entry = Entry.parse(data)
        except (ValueError, KeyError):
            log.warning("hub: dropping malformed announcement on %s", channel)
            return
        for sub in tuple(subs):
            sub.put(entry)
        metrics.dispatched(entry, len(subs))

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
                    kind = msg["type"]
                    if kind == "pmessage":
                        self.dispatch(msg["channel"], msg["data"])
                    elif kind == "psubscribe":
                        backoff = 0.1
                        self._ready.set()
                        # Anything published while we were not subscribed is only in the log.
                        for subs in list(self._subs.values()):
                            for sub in tuple(subs):
                                sub.resync()
            except (RedisConnectionError, RedisTimeoutError, OSError, RedisError) as exc:
                self._ready.clear()
                self.reconnects += 1
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
