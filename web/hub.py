"""The hub: one Redis pub/sub connection per web process, fanned out to every viewer.

The hub subscribes to the channel of each job watched here, and only those (per-job
subscriptions with a short linger, over one connection per shard: :mod:`web.channels`). A
viewer reads the job's history only once Redis has confirmed that subscription. The hub reads
announcements in bursts (all those already received), decodes each once and groups them by
job. Each job's new entries then go

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

from web import metrics
from web.channels import CONFIRM_TIMEOUT, LINGER, Channels
from web.relay import Relay
from jobcast.joblog import Entry, job_id_from_channel

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
    """Reads the process's pub/sub connection(s) and dispatches to subscriptions."""

    BURST = 512
    """Most announcements read and dispatched as one batch."""

    def __init__(self, redis: Redis, *, buffer_size: int = 1024, poll: float = 1.0,
                 max_backoff: float = 5.0, heartbeat: float = 15.0, linger: float = LINGER,
                 confirm_timeout: float = CONFIRM_TIMEOUT):
        """Prepare the hub on the stream store ``redis``; :meth:`start` launches its reader."""
        self.redis = redis
        self.buffer_size = buffer_size
        self.poll = poll
        self.max_backoff = max_backoff
        self.heartbeat = heartbeat
        self.confirm_timeout = confirm_timeout
        self._subs: dict[str, set[Subscription]] = {}
        self.channels = Channels(redis, on_messages=self.dispatch_batch,
                                 on_resync=self._resync_jobs, on_lost=self._lost_jobs,
                                 poll=poll, max_backoff=max_backoff, linger=linger,
                                 burst=self.BURST)
        self.relay = Relay(redis, heartbeat=heartbeat, channels=self.channels)
        # Entries kept in memory are current only for jobs whose subscription is confirmed
        # (the relay asks the channels); a lost one forgets its job's entries.
        self.relay.recent.subscription(True)
        self.closing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self.messages = 0

    # -- viewers ---------------------------------------------------------------------------

    def subscribe(self, job_id: str) -> Subscription:
        """Register a viewer of ``job_id``; live entries go to the returned buffer.

        Returns once Redis has confirmed the job's subscription (or after the confirmation
        timeout, with the buffer resynced when it comes): the caller may read the history.
        """
        self.start()
        loop = _green_loop()
        if loop is not None:
            sub: Subscription = GreenSubscription(self, job_id, self.buffer_size, loop)
        else:
            sub = Subscription(self, job_id, self.buffer_size)
        self._subs.setdefault(job_id, set()).add(sub)
        metrics.viewer_added(job_id)
        self.channels.acquire(job_id)
        if self.channels.started:
            self.channels.wait(job_id, self.confirm_timeout)
        return sub

    def watch(self, job_id: str, timeout: float | None = None) -> bool:
        """Make sure this process subscribes to ``job_id``'s channel; False if Redis did not
        confirm it within ``timeout`` s. Streams ask before they send their headers, so they
        can still answer 503; the subscription then lingers for the stream itself."""
        self.start()
        self.channels.acquire(job_id)
        try:
            return self.channels.wait(job_id, self.confirm_timeout if timeout is None else timeout)
        finally:
            self.channels.release(job_id)

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a viewer (idempotent)."""
        subs = self._subs.get(sub.job_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            metrics.viewer_removed(sub.job_id)
            self.channels.release(sub.job_id)
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
        """True while every pub/sub connection is confirmed by Redis."""
        return self.channels.ready

    def wait_ready(self, timeout: float) -> bool:
        """Block until the pub/sub connections are live, or ``timeout`` passes."""
        self.start()
        return self.channels.wait_ready(timeout)

    # -- the reader ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader, and the heartbeat of held streams, once per process."""
        if self._thread is None:
            self.channels.start()
            self._thread = self._ticker = threading.Thread(target=self._tick, name="jobcast-beat",
                                                           daemon=True)
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
        """Stop the readers at their next poll, waiting up to ``timeout`` s for them to exit."""
        self._stop.set()
        self.channels.stop(timeout)
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

    def _resync_jobs(self, jobs: list[str]) -> None:
        """After (re)subscribing to these jobs in doubt: what was announced meanwhile is only
        in the log, so their viewers compare their position with it."""
        for job_id in jobs:
            for sub in tuple(self._subs.get(job_id, ())):
                sub.resync()
        self.relay.resync(jobs)

    def _lost_jobs(self, jobs: list[str]) -> None:
        """These jobs' subscriptions are gone until confirmed again."""
        self.relay.lost(jobs)
