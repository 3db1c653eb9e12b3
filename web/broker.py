"""The broker: the web process's one seam to the stream store (Redis, or a Redis Cluster).

Like Centrifuge's ``Broker``, it does three things, and the relay talks to nothing else:

- :meth:`Broker.subscribe` / :meth:`Broker.unsubscribe`: this process hears a job's
  announcements while it has viewers of the job, and only then;
- :meth:`Broker.history`, :meth:`Broker.position`, :meth:`Broker.last_seqs`: what the job's log
  holds, and where it stands (its seq and epoch; the log is the truth, announcements only wake
  readers); :meth:`Broker.rebase` begins a new epoch of a log found behind what it served;
- one handler (:class:`BrokerHandler`, the relay) receives every publication, decoded once,
  batched per job, and is told when a job's subscription may have missed some.

Subscriptions go over one pub/sub connection per shard (the single Redis, or each primary of a
Redis Cluster, with ``SSUBSCRIBE``), whatever the number of jobs and viewers. Each job's
subscription is a small state machine (:class:`SubState`):

- ``NEW``: a first viewer asked; ``SUBSCRIBE`` is queued or sent, not yet confirmed. A control
  loop sends what is queued in batches: every job that asked while it wrote the previous
  command goes into the next one, so a storm of newcomers costs a few commands.
- ``LIVE``: Redis confirmed it. A viewer reads the job's log only then, so nothing announced
  can fall between its history and the live entries.
- ``RECOVERING``: announcements may have been missed (the connection was lost, a Cluster slot
  moved, a viewer stopped waiting for a late confirmation). Once confirmed again the handler's
  ``on_resync`` makes the job's viewers re-read the log from their cursors. A second
  confirmation of a ``LIVE`` job does the same.
- ``LEAVING``: the last viewer left, the subscription lingered a few seconds (a reconnecting
  viewer finds it still live), and ``UNSUBSCRIBE`` went out.

Each connection also subscribes to an anchor channel nobody publishes on: its confirmation says
the connection is live (the process's readiness), and it keeps the connection in subscribed
mode while no job is watched. The connections come from a client of their own
(:func:`~jobcast.core.store.reader_client`: they are held for good, never borrowed), and each is
read by a :class:`~jobcast.web.subscriber.Subscriber`: redis-py dials it and sends the
commands, hiredis parses what comes. Under gevent an announcement reaches the relay in one turn
of the loop, and the announcements that came with it in none.

Behind Sentinel (``redis+sentinel://``) the connection is the primary's, wherever it is: when a
failover breaks it, the reader connects again, to the primary the Sentinels name then, and
subscribes its jobs again. They were ``RECOVERING`` meanwhile, and their confirmations'
``on_resync`` makes the viewers re-read the log, where a lossy failover shows as a log behind
their cursors or in a new epoch (:mod:`jobcast.core.epoch`).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import defaultdict
from typing import Callable, Iterable, Protocol

from redis import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError, SlotNotCoveredError

from jobcast.core.epoch import Head, Position
from jobcast.core.feed import FEED, Feed
from jobcast.core.joblog import Entry, JobLog
from jobcast.core.keys import PREFIX, channel, job_id_from_channel
from jobcast.core.store import is_cluster, reader_client
from jobcast.web import metrics
from jobcast.web.subscriber import Subscriber

log = logging.getLogger(__name__)

LINGER = 5.0
"""Seconds a job's subscription outlives its last viewer here."""

CONFIRM_TIMEOUT = 5.0
"""Seconds a newcomer waits for Redis to confirm its job's subscription."""

ANCHOR = f"{PREFIX}:hub"
"""The anchor channel (on a Cluster, one per shard: ``jobcast:hub:{N}`` in one of its slots)."""

BURST = 512
"""Most announcements read and handed over as one batch."""

HEALTH_CHECK_INTERVAL = 30.0
"""Seconds a pooled connection of the web's may sit idle before redis-py PINGs it on its next
use (web.services.pooled)."""

READER_CHECK_INTERVAL = 5.0
"""Seconds between the PINGs of each pub/sub reader, which is taken for lost when one goes
unanswered that long: a primary that froze (or whose host vanished without a FIN) is then
left within 5–10 s, as the web's commands leave it (``COMMAND_TIMEOUT``), and the process is
not ready meanwhile. At 30 s, a frozen Sentinel primary long replaced kept it "ready" for up
to a minute while every newcomer was refused."""

SUBSCRIBED = frozenset({"subscribe", "ssubscribe"})
UNSUBSCRIBED = frozenset({"unsubscribe", "sunsubscribe"})
MESSAGES = frozenset({"message", "smessage"})


class BrokerHandler(Protocol):
    """What the broker tells the relay."""

    def on_publications(self, batches: dict[str, list[Entry]]) -> None:
        """The new entries of each job watched here, from one read: per job consecutive as
        announced, oldest first."""

    def on_resync(self, job_ids: list[str]) -> None:
        """These jobs' subscriptions are confirmed again after a doubt: what was announced
        meanwhile is only in the log."""

    def on_lost(self, job_ids: list[str]) -> None:
        """These jobs' subscriptions are gone until confirmed again."""


class SubState(enum.Enum):
    """Where one job's subscription stands (see the module's docstring)."""

    NEW = "new"
    LIVE = "live"
    RECOVERING = "recovering"
    LEAVING = "leaving"


# The moves a subscription may make; anything else is a bug, and raises.
_MOVES = {
    SubState.NEW: {SubState.LIVE, SubState.RECOVERING, SubState.LEAVING},
    SubState.LIVE: {SubState.LIVE, SubState.RECOVERING, SubState.LEAVING},
    SubState.RECOVERING: {SubState.LIVE, SubState.RECOVERING, SubState.LEAVING},
    SubState.LEAVING: set(),
}


class JobSubscription:
    """This process's subscription to one job's channel."""

    __slots__ = ("job_id", "name", "refs", "state", "shard", "idle_since", "live")

    def __init__(self, job_id: str, name: str):
        """Wanted by nobody yet; :meth:`Broker.subscribe` counts its viewers."""
        self.job_id = job_id
        self.name = name
        self.refs = 0
        self.state = SubState.NEW
        self.shard: Shard | None = None
        self.idle_since: float | None = None  # when its last viewer left
        self.live = threading.Event()  # set exactly while LIVE: what newcomers wait on

    def move(self, state: SubState) -> bool:
        """Move to ``state``; True when that confirmation must make its viewers re-read the
        log (it ends a doubt, or repeats one)."""
        if state not in _MOVES[self.state]:
            raise RuntimeError(f"subscription to {self.job_id}: {self.state.name} -> {state.name}")
        resync = state is SubState.LIVE and self.state in (SubState.LIVE, SubState.RECOVERING)
        self.state = state
        if state is SubState.LIVE:
            self.live.set()
        else:
            self.live.clear()
        return resync


class Shard:
    """One pub/sub connection (to the single Redis, or to one Cluster primary) and its jobs."""

    def __init__(self, name: str, client, sharded: bool):
        """Not connected yet; the broker runs its reader."""
        self.name = name
        self.client = client
        self.sharded = sharded
        self.anchor = ANCHOR
        self.pubsub = None
        self.jobs: set[str] = set()     # job ids routed here
        self.sent: set[str] = set()     # whose SUBSCRIBE went out on the current connection
        self.leaving: set[str] = set()  # whose UNSUBSCRIBE went out, not yet confirmed
        self.unwanted: list[str] = []   # channels confirmed here but not wanted: to unsubscribe
        self.live = threading.Event()   # the anchor is confirmed on the current connection
        self.retired = False
        self.backoff = 0.1
        self.lost_at: float | None = None  # when its live subscription was lost (until back)
        self.thread: threading.Thread | None = None

    def subscribe(self, names: list[str]) -> None:
        """Send SUBSCRIBE for ``names`` (SSUBSCRIBE, one per slot, on a Cluster)."""
        pubsub = self.pubsub  # read once: the reading thread may drop it meanwhile
        if not names or pubsub is None:
            return
        if self.sharded:
            for group in _by_slot(names):
                pubsub.ssubscribe(*group)
        else:
            pubsub.subscribe(*names)

    def unsubscribe(self, names: list[str]) -> None:
        """Send UNSUBSCRIBE for ``names`` (SUNSUBSCRIBE, one per slot, on a Cluster)."""
        pubsub = self.pubsub  # read once: the reading thread may drop it meanwhile
        if not names or pubsub is None:
            return
        if self.sharded:
            for group in _by_slot(names):
                pubsub.sunsubscribe(*group)
        else:
            pubsub.unsubscribe(*names)


def _by_slot(names: list[str]) -> list[list[str]]:
    """``names`` grouped by hash slot: one shard command may not span slots."""
    groups: dict[int, list[str]] = defaultdict(list)
    for name in names:
        groups[key_slot(name.encode())].append(name)
    return list(groups.values())


class _NoHandler:
    """Drops everything: the handler before :meth:`Broker.start`."""

    def on_publications(self, batches: dict[str, list[Entry]]) -> None:
        """Nobody listens yet."""

    def on_resync(self, job_ids: list[str]) -> None:
        """Nobody listens yet."""

    def on_lost(self, job_ids: list[str]) -> None:
        """Nobody listens yet."""


class Broker:
    """Subscriptions to job channels, reads of job logs, and the readers of one web process."""

    def __init__(self, redis, *, poll: float = 1.0, max_backoff: float = 5.0,
                 linger: float = LINGER, burst: int = BURST,
                 clock: Callable[[], float] = time.monotonic):
        """Work on the stream store ``redis`` (a Redis or a RedisCluster); :meth:`start` runs it."""
        self.redis = redis
        self.cluster = is_cluster(redis)
        self.feed = Feed(redis)
        self.handler: BrokerHandler = _NoHandler()
        self.poll = poll
        self.max_backoff = max_backoff
        self.linger = linger
        self.burst = burst
        self.clock = clock
        self.messages = 0  # announcements read
        self._subs: dict[str, JobSubscription] = {}
        self._to_subscribe: set[str] = set()
        self._shards: dict[str, Shard] = {}
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._refresh_needed = self.cluster
        self._bugs: set[tuple[str, type]] = set()  # (shard, error) logged in full (_failed)
        self.started = False

    # -- history ----------------------------------------------------------------------------

    def _log_of(self, job_id: str) -> JobLog | Feed:
        """The log a name stands for: a job's, or the job feed's (:data:`FEED`)."""
        return self.feed if job_id == FEED else JobLog(self.redis, job_id)

    def history(self, job_id: str, after: int, count: int) -> tuple[list[Entry], Head]:
        """Up to ``count`` entries of the job's log (or the feed) with ``seq > after``, and
        where it stands: ended or not, its seq and epoch (one round trip)."""
        return self._log_of(job_id).read(after, count)

    def head(self, job_id: str) -> Head:
        """Where the job's log (or the feed) stands."""
        return self._log_of(job_id).head()

    def rebase(self, job_id: str, seen: Head) -> Head:
        """Begin a new epoch of the log (or the feed) if it still stands as ``seen`` (it was
        found behind what was served from it); where it stands now."""
        return self._log_of(job_id).rebase(seen)

    def position(self, job_id: str) -> Position | None:
        """(ended, last seq, epoch) of the job, or None when it does not exist."""
        return self._log_of(job_id).position()

    def positions(self, job_ids: list[str]) -> list[Position | None]:
        """:meth:`position` of several jobs, in one pipelined round trip."""
        pipe = self.redis.pipeline(transaction=False)
        logs = [self._log_of(job_id) for job_id in job_ids]
        for job_log in logs:
            job_log.queue_position(pipe)
        return [job_log.read_position(reply) for job_log, reply in zip(logs, pipe.execute())]

    def last_seqs(self, job_ids: list[str]) -> list[int]:
        """The last seq of each job, in one pipelined round trip (0 for a job that is gone)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._log_of(job_id).queue_last_seq(pipe)
        return [int(s or 0) for s in pipe.execute()]

    def _name(self, job_id: str) -> str:
        """The channel a job (or the feed) is announced on."""
        return self.feed.channel if job_id == FEED else channel(job_id, self.cluster)

    def _job_of(self, name: str) -> str | None:
        """The job (or :data:`FEED`) a channel announces; None for any other channel."""
        return FEED if name == self.feed.channel else job_id_from_channel(name)

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, job_id: str) -> None:
        """A viewer of ``job_id`` arrived: subscribe to the job's channel unless already."""
        with self._lock:
            sub = self._subs.get(job_id)
            if sub is None or sub.state is SubState.LEAVING:
                sub = self._subs[job_id] = JobSubscription(job_id, self._name(job_id))
                self._to_subscribe.add(job_id)
                self._kick.set()
            sub.refs += 1
            sub.idle_since = None

    def unsubscribe(self, job_id: str) -> None:
        """A viewer of ``job_id`` left: after the last one, unsubscribe once it lingered."""
        with self._lock:
            sub = self._subs.get(job_id)
            if sub is None or sub.refs <= 0:
                return
            sub.refs -= 1
            if sub.refs == 0:
                sub.idle_since = self.clock()

    def subscribed(self, job_id: str) -> bool:
        """True while Redis has confirmed this process's subscription to the job's channel."""
        sub = self._subs.get(job_id)
        return sub is not None and sub.state is SubState.LIVE

    def wait_subscribed(self, job_id: str, timeout: float = CONFIRM_TIMEOUT) -> bool:
        """Wait until the job's subscription is confirmed; False after ``timeout`` s (the
        caller then holds no viewer: :meth:`Relay.leases` answers 503, and the subscription
        stays asked for until its last lease is released)."""
        sub = self._subs.get(job_id)
        if sub is None or sub.live.is_set():
            return True
        if sub.live.wait(timeout):
            return True
        log.warning("broker: Redis did not confirm the subscription to job %s within %.1fs",
                    job_id, timeout)
        return False

    def state(self, job_id: str) -> SubState | None:
        """Where the job's subscription stands, or None when there is none."""
        sub = self._subs.get(job_id)
        return sub.state if sub is not None else None

    # -- readiness --------------------------------------------------------------------------

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

    def shards(self) -> Iterable[Shard]:
        """The current shards (one on a single Redis)."""
        return list(self._shards.values())

    # -- running ----------------------------------------------------------------------------

    def start(self, handler: BrokerHandler | None = None) -> None:
        """Hand publications to ``handler`` from now on, and start the control loop (and
        through it the readers) once."""
        if handler is not None:
            self.handler = handler
        if self.started:
            return
        self.started = True
        if not self.cluster:
            self._add_shard("redis", reader_client(self.redis,
                                                   health_check_interval=READER_CHECK_INTERVAL))
        threading.Thread(target=self._control, name="jobcast-broker", daemon=True).start()

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
        """Send queued subscriptions, end lingering ones, follow the Cluster's topology."""
        while not self._stop.is_set():
            with self._lock:  # a request's subscribe() may add one meanwhile (real threads)
                lingering = any(s.idle_since is not None for s in self._subs.values())
            self._kick.wait(min(1.0, self.linger / 2) if lingering else 1.0)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                if self._refresh_needed:
                    self._refresh()
                self._flush()
            except RedisError as exc:
                log.info("broker: cannot update subscriptions yet (%s)", exc)
                self._stop.wait(0.5)
            except Exception:  # the loop must outlive any one bad round
                log.exception("broker: subscription round failed")
                self._stop.wait(0.5)

    def _flush(self) -> None:
        """Send one batch of SUBSCRIBE and UNSUBSCRIBE commands."""
        now = self.clock()
        leave: dict[Shard, list[str]] = defaultdict(list)
        join: dict[Shard, list[str]] = defaultdict(list)
        with self._lock:
            for sh in self._shards.values():
                # Before any SUBSCRIBE of this round: a job wanted again since its unwanted
                # confirmation is then subscribed after, not before, that UNSUBSCRIBE.
                if sh.unwanted:
                    leave[sh].extend(sh.unwanted)
                    sh.unwanted.clear()
            for sub in list(self._subs.values()):
                if sub.refs or sub.idle_since is None or now - sub.idle_since < self.linger:
                    continue
                sub.move(SubState.LEAVING)
                del self._subs[sub.job_id]
                self._to_subscribe.discard(sub.job_id)
                sh = sub.shard
                if sh is not None:
                    sh.jobs.discard(sub.job_id)
                    if sub.job_id in sh.sent:
                        sh.sent.discard(sub.job_id)
                        sh.leaving.add(sub.job_id)
                        leave[sh].append(sub.name)
            todo, self._to_subscribe = self._to_subscribe, set()
            for job_id in todo:
                sub = self._subs.get(job_id)
                if sub is None:
                    continue
                sh = sub.shard or self._route(sub)
                if sh is None:
                    self._to_subscribe.add(job_id)  # no shard owns it yet: try again later
                    continue
                if sh.pubsub is not None and job_id not in sh.sent:
                    sh.sent.add(job_id)
                    join[sh].append(sub.name)
            metrics.HUB_CHANNELS.set(len(self._subs))
        for sh, names in leave.items():
            try:
                sh.unsubscribe(names)
            except Exception as exc:  # whatever it was, the state below must be undone
                # (a broken connection, most likely: a new one will not resubscribe them)
                self._failed("unsubscribe", sh, exc)
                with self._lock:  # no confirmation is coming: none may be awaited
                    for name in names:
                        sh.leaving.discard(self._job_of(name))
        for sh, names in join.items():
            try:
                sh.subscribe(names)
            except Exception as exc:  # as above; the next round tries again
                self._failed("subscribe", sh, exc, "; retrying")
                with self._lock:
                    for name in names:
                        job_id = self._job_of(name)
                        sh.sent.discard(job_id)
                        self._to_subscribe.add(job_id)
                self._stop.wait(0.1)

    def _failed(self, command: str, shard: Shard, exc: Exception, then: str = "") -> None:
        """Log a failed (UN)SUBSCRIBE batch: a line for a lost connection, which is expected;
        anything else is a bug, logged with its traceback once per shard and kind of error
        (a round every 0.1 s would repeat it), then as a line."""
        bug = (shard.name, type(exc))
        if isinstance(exc, (RedisError, OSError)) or bug in self._bugs:
            log.info("broker: %s on %s failed (%s)%s", command, shard.name, exc, then)
        else:
            self._bugs.add(bug)
            log.error("broker: %s on %s failed%s", command, shard.name, then, exc_info=exc)

    def _route(self, sub: JobSubscription) -> Shard | None:
        """Attach the job to the shard that owns its channel (caller holds the lock)."""
        if self.cluster:
            try:
                node = self.redis.nodes_manager.get_node_from_slot(key_slot(sub.name.encode()))
            except SlotNotCoveredError:  # the cluster's slot map is not known yet: later
                self._refresh_needed = True
                return None
            sh = self._shards.get(node.name)
            if sh is None:
                # A primary this broker has no shard for (slots moved to a new node, or a
                # failed primary back as another's replica, with no watched channel among
                # them, so no server-side unsubscribe said so): re-read the slot map.
                self._refresh_needed = True
        else:
            sh = self._shards.get("redis")
        if sh is not None:
            sub.shard = sh
            sh.jobs.add(sub.job_id)
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
            for sub in self._subs.values():
                old = sub.shard
                sub.shard = None
                new = self._route(sub)
                if new is old and not (old is not None and old.retired):
                    continue
                if old is not None:
                    old.jobs.discard(sub.job_id)
                    old.sent.discard(sub.job_id)
                sub.move(SubState.RECOVERING)
                self._to_subscribe.add(sub.job_id)
                moved.append(sub.job_id)
        if moved:
            log.info("broker: %d job channel(s) moved to another shard", len(moved))
            self._tell(self.handler.on_lost, moved)

    def _node_client(self, node) -> Redis:
        """A pub/sub client of one Cluster node with a pool of its own (same settings as the
        cluster's): refreshing the slot map marks the cluster's pooled connections for
        reconnection, which must not pull a pub/sub connection from under its reader. It
        pings its node as a single Redis's reader does (a primary gone without a FIN, its host
        crashed, would otherwise leave the reader waiting, its shard taken for live)."""
        return reader_client(self.redis.get_redis_connection(node),
                             health_check_interval=READER_CHECK_INTERVAL)

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

    # -- a shard's reader -------------------------------------------------------------------

    def _read(self, sh: Shard) -> None:
        """Subscribe the shard's jobs, read its announcements, reconnect on errors."""
        while not self._stop.is_set() and not sh.retired:
            pubsub = Subscriber(sh.client)
            try:
                sh.anchor = self._anchor(sh)
                with self._lock:
                    sh.pubsub = pubsub
                    sh.sent = set(sh.jobs)
                    sh.leaving.clear()
                    sh.unwanted.clear()
                    names = [self._subs[j].name for j in sh.sent if j in self._subs]
                sh.subscribe([sh.anchor, *names])
                while not self._stop.is_set() and not sh.retired:
                    msg = pubsub.get_message(timeout=self.poll)
                    if msg is None:
                        continue
                    # Take every announcement already received: one batch per job, one write
                    # per viewer for all of them.
                    burst = []
                    while msg is not None:
                        kind, name, data = msg
                        if kind in MESSAGES:
                            burst.append((name, data))
                            if len(burst) >= self.burst:
                                break
                        else:
                            if burst:  # in order: what came before a (re)confirmation first
                                self._publish(burst)
                                burst = []
                            self._on_control(sh, kind, name)
                        msg = pubsub.get_message(timeout=0)
                    if burst:
                        self._publish(burst)
            except Exception as exc:  # RedisError, OSError, or redis-py's own state torn by a
                # reconnect: whatever broke, the reader must outlive it and resubscribe.
                self._lost(sh, exc)
                lost = True
            else:
                lost = False
            finally:
                sh.live.clear()
                sh.pubsub = None
                try:
                    pubsub.close()
                except Exception:  # closing a dead connection may raise anything; it is gone anyway
                    log.debug("broker: error closing pubsub", exc_info=True)
            if lost:
                # Only once the dead connection is dropped: meanwhile a job subscribed waits
                # for the next one (which subscribes every job of the shard), rather than
                # going out on the dead one, which redis-py could dial again with no reader.
                self._stop.wait(sh.backoff)
                sh.backoff = min(sh.backoff * 2, self.max_backoff)

    def _publish(self, messages: list[tuple[bytes | str, bytes]]) -> None:
        """Decode a burst of announcements once, and hand each watched job's entries to the
        handler in one batch. An announcement that cannot be decoded is dropped with a
        warning: the log still has the entry, and the next gap or quiet spell reads it."""
        self.messages += len(messages)
        metrics.announced(len(messages))
        by_job: dict[str, list[Entry]] = {}
        for name, data in messages:
            if isinstance(name, bytes):
                name = name.decode()
            job_id = self._job_of(name)
            sub = self._subs.get(job_id) if job_id is not None else None
            if sub is None or not sub.refs:
                continue  # lingering, or not ours: nobody here to tell
            try:
                entry = Entry.parse(data)
            except (ValueError, KeyError, TypeError):
                log.warning("broker: dropping a malformed announcement on %s", name)
                continue
            by_job.setdefault(job_id, []).append(entry)
        if not by_job:
            return
        try:
            self.handler.on_publications(by_job)
        except Exception:  # the handler's trouble must not touch the reader
            log.exception("broker: delivering %d job(s)' entries failed", len(by_job))

    def _on_control(self, sh: Shard, kind: str, raw: bytes | str) -> None:
        """A subscribe or unsubscribe confirmation (or a server-side unsubscribe)."""
        name = raw.decode() if isinstance(raw, bytes) else raw
        if name == sh.anchor:
            if kind in SUBSCRIBED:
                sh.backoff = 0.1
                sh.live.set()
                if sh.lost_at is not None:
                    log.warning("broker: Redis subscription on %s is live again, %.1f s after "
                                "it was lost", sh.name, time.monotonic() - sh.lost_at)
                    sh.lost_at = None
            return
        job_id = self._job_of(name)
        # Looked up and decided under the lock: with real threads a request may subscribe the
        # job meanwhile (see subscribe), and must then find what this decided.
        resync = lost = False
        with self._lock:
            sub = self._subs.get(job_id) if job_id else None
            if kind in SUBSCRIBED:
                if sub is None or sub.shard is not sh:
                    # Not wanted here (any more): e.g. a SUBSCRIBE whose job's last viewer left
                    # before its confirmation came.
                    # The control loop sends the UNSUBSCRIBE, as it sends every command: a
                    # viewer arriving now is subscribed after it, never before it (which would
                    # leave its subscription confirmed but gone).
                    if (job_id and job_id in sh.leaving) or name in sh.unwanted:
                        return  # its UNSUBSCRIBE is on its way: a second would read as a drop
                    if job_id:
                        sh.leaving.add(job_id)
                    sh.unwanted.append(name)
                    self._kick.set()
                    return
                resync = sub.move(SubState.LIVE)
            elif kind in UNSUBSCRIBED:
                if job_id in sh.leaving:
                    sh.leaving.discard(job_id)
                    return
                if sub is not None and sub.shard is sh:
                    # Redis dropped it (a Cluster slot moved away): subscribe on the new owner.
                    log.info("broker: Redis ended the subscription to job %s; resubscribing",
                             job_id)
                    sub.move(SubState.RECOVERING)
                    sh.jobs.discard(sub.job_id)
                    sh.sent.discard(sub.job_id)
                    sub.shard = None
                    self._to_subscribe.add(sub.job_id)
                    self._refresh_needed = self.cluster
                    lost = True
        if resync:
            self._tell(self.handler.on_resync, [sub.job_id])
        if lost:
            self._tell(self.handler.on_lost, [sub.job_id])
            self._kick.set()

    def _tell(self, callback: Callable[[list[str]], None], job_ids: list[str]) -> None:
        """Call the handler's ``on_resync`` or ``on_lost`` for ``job_ids``. Its trouble is
        logged, not raised: raised in the reader, it would read as a lost connection (and a
        failing ``on_resync`` would then lose it again at each confirmation), or end the
        reader for good from its error path."""
        try:
            callback(job_ids)
        except Exception:
            log.exception("broker: telling the relay %s of %d job(s) failed",
                          callback.__name__, len(job_ids))

    def _lost(self, sh: Shard, exc: BaseException) -> None:
        """The shard's connection broke (or a try to make it again failed): its jobs are in
        doubt until resubscribed."""
        if sh.live.is_set():  # a live subscription lost, not one more failed try
            sh.live.clear()
            sh.lost_at = time.monotonic()
            metrics.HUB_RECONNECTS.inc()
        with self._lock:
            jobs = list(sh.jobs)
            for job_id in jobs:
                sub = self._subs.get(job_id)
                if sub is not None:
                    sub.move(SubState.RECOVERING)
            if self.cluster:
                self._refresh_needed = True
        log.warning("broker: lost Redis subscription on %s (%s); retrying in %.1fs", sh.name, exc,
                    sh.backoff, exc_info=not isinstance(exc, (RedisError, OSError)))
        if jobs:
            self._tell(self.handler.on_lost, jobs)
        self._kick.set()
