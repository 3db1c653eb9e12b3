"""Per-job subscriptions: a web process hears only the jobs its viewers watch.

A job's channel is subscribed while this process has viewers of the job, over one pub/sub
connection per shard (the single Redis, or each primary of a Redis Cluster, with
``SSUBSCRIBE``), whatever the number of jobs and viewers. Redis then sends each announcement
only to the processes that watch its job, instead of to every process.

Lifecycle of one job's subscription here:

- :meth:`Channels.acquire`: a viewer arrives. The first one queues ``SUBSCRIBE``; later ones
  only count. A control greenlet sends what is queued in batches: every job that asked while
  it wrote the previous command goes into the next one (on a Cluster, one command per slot,
  pipelined on the shard's connection), so a storm of newcomers costs a few commands.
- Redis confirms: :meth:`Channels.wait` returns. A viewer reads the job's log only then, so
  nothing announced can fall between its history and the live entries.
- :meth:`Channels.release`: a viewer leaves. After the last one the subscription lingers a
  few seconds (a reconnecting viewer finds it still live), then ``UNSUBSCRIBE`` is queued.

Any doubt makes the job's viewers re-read the log from their cursor (``on_resync``): the
connection was lost (its viewers wait for the new subscription's confirmation, then read),
a subscription was confirmed twice (redis-py reconnected and resubscribed by itself), a
viewer stopped waiting for a confirmation that came late, or Redis dropped a shard
subscription itself (a Cluster slot moved): the job is then routed to its new owner.

Each connection also subscribes to an anchor channel nobody publishes on: its confirmation
says the connection is live (the hub's readiness), and it keeps the connection in subscribed
mode, where redis-py reads it, while no job is watched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Callable, Iterable

from redis import ConnectionPool, Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from web import metrics
from jobcast.joblog import PREFIX, channel, job_id_from_channel
from jobcast.streams import is_cluster

log = logging.getLogger(__name__)

LINGER = 5.0
"""Seconds a job's subscription outlives its last viewer here."""

CONFIRM_TIMEOUT = 5.0
"""Seconds a viewer waits for Redis to confirm its job's subscription."""

ANCHOR = f"{PREFIX}:hub"
"""The anchor channel (on a Cluster, one per shard: ``jobcast:hub:{N}`` in one of its slots)."""

SUBSCRIBED = frozenset({"subscribe", "ssubscribe"})
UNSUBSCRIBED = frozenset({"unsubscribe", "sunsubscribe"})
MESSAGES = frozenset({"message", "smessage"})


class JobChannel:
    """This process's subscription to one job's channel."""

    __slots__ = ("job_id", "name", "refs", "confirmed", "doubt", "shard")

    def __init__(self, job_id: str, name: str):
        """Not yet subscribed, no viewer counted."""
        self.job_id = job_id
        self.name = name
        self.refs = 0
        self.confirmed = threading.Event()
        self.doubt = False  # its viewers must re-read the log once it is confirmed
        self.shard: Shard | None = None


class Shard:
    """One pub/sub connection (to the single Redis, or to one Cluster primary) and its jobs."""

    def __init__(self, name: str, client, sharded: bool):
        """Not connected yet; :class:`Channels` runs its reader."""
        self.name = name
        self.client = client
        self.sharded = sharded
        self.anchor = ANCHOR
        self.pubsub = None
        self.jobs: set[str] = set()     # job ids routed here
        self.sent: set[str] = set()     # whose SUBSCRIBE went out on the current connection
        self.leaving: set[str] = set()  # whose UNSUBSCRIBE went out, not yet confirmed
        self.live = threading.Event()   # the anchor is confirmed on the current connection
        self.retired = False
        self.backoff = 0.1
        self.thread: threading.Thread | None = None

    def subscribe(self, names: list[str]) -> None:
        """Send SUBSCRIBE for ``names`` (SSUBSCRIBE, one per slot, on a Cluster)."""
        if not names or self.pubsub is None:
            return
        if self.sharded:
            for group in _by_slot(names):
                self.pubsub.ssubscribe(*group)
        else:
            self.pubsub.subscribe(*names)

    def unsubscribe(self, names: list[str]) -> None:
        """Send UNSUBSCRIBE for ``names`` (SUNSUBSCRIBE, one per slot, on a Cluster)."""
        if not names or self.pubsub is None:
            return
        if self.sharded:
            for group in _by_slot(names):
                self.pubsub.sunsubscribe(*group)
        else:
            self.pubsub.unsubscribe(*names)


def _by_slot(names: list[str]) -> list[list[str]]:
    """``names`` grouped by hash slot: one shard command may not span slots."""
    groups: dict[int, list[str]] = defaultdict(list)
    for name in names:
        groups[key_slot(name.encode())].append(name)
    return list(groups.values())


class Channels:
    """The job channels one web process subscribes to, and their pub/sub connections."""

    def __init__(self, redis, *, on_messages: Callable[[list[tuple[bytes, bytes]]], None],
                 on_resync: Callable[[list[str]], None], on_lost: Callable[[list[str]], None],
                 poll: float = 1.0, max_backoff: float = 5.0, linger: float = LINGER,
                 burst: int = 512):
        """Subscribe on ``redis`` (a Redis or a RedisCluster); announcements go to
        ``on_messages`` in bursts, doubts about jobs to ``on_resync`` / ``on_lost``."""
        self.redis = redis
        self.cluster = is_cluster(redis)
        self.on_messages = on_messages
        self.on_resync = on_resync
        self.on_lost = on_lost
        self.poll = poll
        self.max_backoff = max_backoff
        self.linger = linger
        self.burst = burst
        self._jobs: dict[str, JobChannel] = {}
        self._idle: dict[str, float] = {}        # job id -> when its last viewer left
        self._to_subscribe: set[str] = set()
        self._shards: dict[str, Shard] = {}
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._refresh_needed = self.cluster
        self.started = False

    # -- viewers ---------------------------------------------------------------------------

    def acquire(self, job_id: str) -> None:
        """A viewer of ``job_id`` arrived: subscribe to the job's channel if not yet."""
        with self._lock:
            st = self._jobs.get(job_id)
            if st is None:
                st = self._jobs[job_id] = JobChannel(job_id, channel(job_id, self.cluster))
                self._to_subscribe.add(job_id)
                self._kick.set()
            st.refs += 1
            self._idle.pop(job_id, None)

    def release(self, job_id: str) -> None:
        """A viewer of ``job_id`` left: after the last one, unsubscribe once it lingered."""
        with self._lock:
            st = self._jobs.get(job_id)
            if st is None:
                return
            st.refs -= 1
            if st.refs <= 0:
                st.refs = 0
                self._idle[job_id] = time.monotonic()

    def confirmed(self, job_id: str) -> bool:
        """True while Redis has confirmed this process's subscription to the job's channel."""
        st = self._jobs.get(job_id)
        return st is not None and st.confirmed.is_set()

    def wait(self, job_id: str, timeout: float = CONFIRM_TIMEOUT) -> bool:
        """Wait until the job's subscription is confirmed; False after ``timeout`` s.

        A viewer that goes on without the confirmation is resynced once it comes.
        """
        st = self._jobs.get(job_id)
        if st is None or st.confirmed.is_set():
            return True
        if st.confirmed.wait(timeout):
            return True
        st.doubt = True
        log.warning("hub: Redis did not confirm the subscription to job %s within %.1fs",
                    job_id, timeout)
        return False

    def subscribed(self) -> list[str]:
        """The jobs whose channel this process subscribes to (or is about to)."""
        return list(self._jobs)

    # -- readiness -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while every shard's connection is live."""
        shards = list(self._shards.values())
        return bool(shards) and all(sh.live.is_set() for sh in shards)

    def wait_ready(self, timeout: float) -> bool:
        """Block until :attr:`ready`, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pending = [sh for sh in self._shards.values() if not sh.live.is_set()]
            if pending:
                pending[0].live.wait(min(remaining, 0.1))
            else:
                time.sleep(min(remaining, 0.05))
        return True

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the control loop (and through it the readers), once."""
        if self.started:
            return
        self.started = True
        if not self.cluster:
            self._add_shard("redis", self.redis)
        threading.Thread(target=self._control, name="jobcast-channels", daemon=True).start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the control loop and the readers at their next poll, waiting up to
        ``timeout`` s for the readers to exit."""
        self._stop.set()
        self._kick.set()
        if timeout is not None:
            deadline = time.monotonic() + timeout
            for sh in list(self._shards.values()):
                if sh.thread is not None:
                    sh.thread.join(max(0.0, deadline - time.monotonic()))

    def _add_shard(self, name: str, client) -> Shard:
        """A new shard, its reader started."""
        sh = self._shards[name] = Shard(name, client, self.cluster)
        sh.thread = threading.Thread(target=self._read, args=(sh,), name=f"jobcast-hub-{name}",
                                     daemon=True)
        sh.thread.start()
        return sh

    def _control(self) -> None:
        """Send queued subscriptions, expire lingering ones, follow the Cluster's topology."""
        while not self._stop.is_set():
            self._kick.wait(min(1.0, self.linger / 2) if self._idle else 1.0)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                if self._refresh_needed:
                    self._refresh()
                self._flush()
            except RedisError as exc:
                log.info("hub: cannot update subscriptions yet (%s)", exc)
                self._stop.wait(0.5)
            except Exception:  # the loop must outlive any one bad round
                log.exception("hub: subscription round failed")
                self._stop.wait(0.5)

    def _flush(self) -> None:
        """Send one batch of SUBSCRIBE and UNSUBSCRIBE commands."""
        now = time.monotonic()
        leave: dict[Shard, list[str]] = defaultdict(list)
        join: dict[Shard, list[str]] = defaultdict(list)
        with self._lock:
            for job_id in [j for j, since in self._idle.items() if now - since >= self.linger]:
                del self._idle[job_id]
                st = self._jobs.get(job_id)
                if st is None or st.refs:
                    continue
                del self._jobs[job_id]
                self._to_subscribe.discard(job_id)
                sh = st.shard
                if sh is not None:
                    sh.jobs.discard(job_id)
                    if job_id in sh.sent:
                        sh.sent.discard(job_id)
                        sh.leaving.add(job_id)
                        leave[sh].append(st.name)
            todo, self._to_subscribe = self._to_subscribe, set()
            for job_id in todo:
                st = self._jobs.get(job_id)
                if st is None:
                    continue
                sh = st.shard or self._route(st)
                if sh is None:
                    self._to_subscribe.add(job_id)  # no shard owns it yet: try again later
                    continue
                if sh.pubsub is not None and job_id not in sh.sent:
                    sh.sent.add(job_id)
                    join[sh].append(st.name)
            metrics.HUB_CHANNELS.set(len(self._jobs))
        for sh, names in leave.items():
            try:
                sh.unsubscribe(names)
            except Exception as exc:  # a broken connection: a new one will not resubscribe them
                log.info("hub: unsubscribe on %s failed (%s)", sh.name, exc)
        for sh, names in join.items():
            try:
                sh.subscribe(names)
            except Exception as exc:  # a broken connection: the next round tries again
                log.info("hub: subscribe on %s failed (%s); retrying", sh.name, exc)
                with self._lock:
                    for name in names:
                        job_id = job_id_from_channel(name)
                        sh.sent.discard(job_id)
                        self._to_subscribe.add(job_id)
                self._stop.wait(0.1)

    def _route(self, st: JobChannel) -> Shard | None:
        """Attach the job to the shard that owns its channel (caller holds the lock)."""
        if self.cluster:
            try:
                node = self.redis.nodes_manager.get_node_from_slot(key_slot(st.name.encode()))
            except Exception:  # slot not covered, cluster still unknown: retried later
                self._refresh_needed = True
                return None
            sh = self._shards.get(node.name)
        else:
            sh = self._shards.get("redis")
        if sh is not None:
            st.shard = sh
            sh.jobs.add(st.job_id)
        return sh

    def _refresh(self) -> None:
        """Re-read the Cluster's slot map: a shard per primary, each job on its owner's."""
        self.redis.nodes_manager.initialize()
        primaries = {node.name: node for node in self.redis.get_primaries()}
        moved: list[str] = []
        with self._lock:
            self._refresh_needed = False
            for name, node in primaries.items():
                if name not in self._shards:
                    self._add_shard(name, self._node_client(node))
            for name in [n for n in self._shards if n not in primaries]:
                sh = self._shards.pop(name)  # no longer a primary (failed over, or removed)
                sh.retired = True
                sh.live.clear()
            for st in self._jobs.values():
                old = st.shard
                st.shard = None
                new = self._route(st)
                if new is old and not (old is not None and old.retired):
                    continue
                if old is not None:
                    old.jobs.discard(st.job_id)
                    old.sent.discard(st.job_id)
                st.confirmed.clear()
                st.doubt = True
                self._to_subscribe.add(st.job_id)
                moved.append(st.job_id)
        if moved:
            log.info("hub: %d job channel(s) moved to another shard", len(moved))
            self.on_lost(moved)

    def _node_client(self, node) -> Redis:
        """A client of one Cluster node with a pool of its own (same settings as the
        cluster's): refreshing the slot map marks the cluster's pooled connections for
        reconnection, which must not pull a pub/sub connection from under its reader."""
        pool = self.redis.get_redis_connection(node).connection_pool
        return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class,
                                                    **pool.connection_kwargs))

    def _anchor(self, sh: Shard) -> str:
        """The anchor channel for ``sh``: on a Cluster, one whose slot the shard owns."""
        if not self.cluster:
            return ANCHOR
        cache = self.redis.nodes_manager.slots_cache
        for i in range(1 << 16):
            name = f"{ANCHOR}:{{{i}}}"
            nodes = cache.get(key_slot(name.encode()))
            if nodes and nodes[0].name == sh.name:
                return name
        return f"{ANCHOR}:{{0}}"

    # -- a shard's reader ------------------------------------------------------------------

    def _read(self, sh: Shard) -> None:
        """Subscribe the shard's jobs, read its announcements, reconnect on errors."""
        while not self._stop.is_set() and not sh.retired:
            pubsub = sh.client.pubsub()
            try:
                sh.anchor = self._anchor(sh)
                with self._lock:
                    sh.pubsub = pubsub
                    sh.sent = set(sh.jobs)
                    sh.leaving.clear()
                    names = [self._jobs[j].name for j in sh.sent if j in self._jobs]
                sh.subscribe([sh.anchor, *names])
                while not self._stop.is_set() and not sh.retired:
                    msg = pubsub.get_message(timeout=self.poll)
                    if msg is None:
                        continue
                    # Take every announcement already received: one batch per job, one write
                    # per viewer for all of them.
                    burst = []
                    while msg is not None:
                        kind = msg["type"]
                        if kind in MESSAGES:
                            burst.append((msg["channel"], msg["data"]))
                            if len(burst) >= self.burst:
                                break
                        else:
                            if burst:  # in order: what came before a (re)confirmation first
                                self.on_messages(burst)
                                burst = []
                            self._on_control(sh, kind, msg["channel"])
                        msg = pubsub.get_message(timeout=0)
                    if burst:
                        self.on_messages(burst)
            except Exception as exc:  # RedisError, OSError, or redis-py's own state torn by a
                # reconnect: whatever broke, the reader must outlive it and resubscribe.
                self._lost(sh, exc)
                self._stop.wait(sh.backoff)
                sh.backoff = min(sh.backoff * 2, self.max_backoff)
            finally:
                sh.live.clear()
                sh.pubsub = None
                try:
                    pubsub.close()
                except Exception:  # closing a dead connection may raise anything; it is gone anyway
                    log.debug("hub: error closing pubsub", exc_info=True)

    def _on_control(self, sh: Shard, kind: str, raw: bytes | str) -> None:
        """A subscribe or unsubscribe confirmation (or a server-side unsubscribe)."""
        name = raw.decode() if isinstance(raw, bytes) else raw
        if name == sh.anchor:
            if kind in SUBSCRIBED:
                sh.backoff = 0.1
                sh.live.set()
            return
        job_id = job_id_from_channel(name)
        st = self._jobs.get(job_id) if job_id else None
        if kind in SUBSCRIBED:
            if st is None or st.shard is not sh:
                # Not wanted here (any more): e.g. resubscribed by redis-py's reconnect.
                if job_id:
                    sh.leaving.add(job_id)
                try:
                    sh.unsubscribe([name])
                except RedisError:
                    pass
                return
            resync = st.confirmed.is_set() or st.doubt
            st.doubt = False
            st.confirmed.set()
            if resync:
                self.on_resync([st.job_id])
        elif kind in UNSUBSCRIBED:
            if job_id in sh.leaving:
                sh.leaving.discard(job_id)
                return
            if st is not None and st.shard is sh:
                # Redis dropped it (a Cluster slot moved away): subscribe on the new owner.
                log.info("hub: Redis ended the subscription to job %s; resubscribing", job_id)
                with self._lock:
                    st.confirmed.clear()
                    st.doubt = True
                    sh.jobs.discard(st.job_id)
                    sh.sent.discard(st.job_id)
                    st.shard = None
                    self._to_subscribe.add(st.job_id)
                    self._refresh_needed = self.cluster
                self.on_lost([st.job_id])
                self._kick.set()

    def _lost(self, sh: Shard, exc: BaseException) -> None:
        """The shard's connection broke: its jobs are in doubt until resubscribed."""
        sh.live.clear()
        with self._lock:
            jobs = list(sh.jobs)
            for job_id in jobs:
                st = self._jobs.get(job_id)
                if st is not None:
                    st.confirmed.clear()
                    st.doubt = True
            if self.cluster:
                self._refresh_needed = True
        metrics.HUB_RECONNECTS.inc()
        log.warning("hub: lost Redis subscription on %s (%s); retrying in %.1fs", sh.name, exc,
                    sh.backoff, exc_info=not isinstance(exc, (RedisError, OSError)))
        if jobs:
            self.on_lost(jobs)
        self._kick.set()

    def shards(self) -> Iterable[Shard]:
        """The current shards (one on a single Redis)."""
        return list(self._shards.values())
