"""The stream store: the Redis that holds job logs, job metadata and their channels.

``JOBCAST_STREAM_URL`` names it; empty (the default) means ``REDIS_URL``, the Redis that
also holds RQ's queue, so a single Redis needs no new setting. RQ's queue always stays on
``REDIS_URL``: RQ does not support Redis Cluster, but job streams can live on one.

When the stream URL points at a node of a Redis Cluster (``INFO cluster`` says
``cluster_enabled:1``) the client is redis-py's :class:`~redis.cluster.RedisCluster`, and
:mod:`jobcast.core.keys` names a job's keys and channel with one hash tag (the job id in braces)
so the append script, which touches several of them, runs on one slot and stays atomic;
announcements then go out with ``SPUBLISH`` and the hub listens with ``SSUBSCRIBE``
(sharded pub/sub, so each announcement is handled by the one shard that owns the job).

Either URL may also be ``redis+sentinel://…`` (:mod:`jobcast.core.redisurl`): the client then
asks the Sentinels for the primary before each new connection and follows a failover.
:func:`redis_client` is the one place a client of a single Redis, or of a Sentinel-managed
primary, is built; every service (web, workers, producer, ``jobcast status``, RQ's queue)
gets its clients there.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref

from redis import BlockingConnectionPool, ConnectionPool, Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.exceptions import ClusterError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from jobcast.core.redisurl import is_sentinel_url, node_urls, parse_sentinel_url
from jobcast.core.settings import Settings

log = logging.getLogger(__name__)

StreamRedis = Redis | RedisCluster

REDIS_ERRORS = (RedisError, RedisClusterException)
"""What a command raises when Redis does not take it: a Cluster's "slot not covered" and the
like are no RedisError, and a write caught as failed must catch them too."""

_clients: dict[tuple[str, int], StreamRedis] = {}  # the stream stores' (stream_redis)
_queue_clients: dict[tuple[str, int], Redis] = {}  # RQ's Redis (queue_redis)
_lock = threading.Lock()

SENTINEL_RETRY_FOR = 15.0
"""Seconds a client of a Sentinel-managed primary rides out by default: a failover takes the
Sentinels' ``down-after-milliseconds`` plus about a second, and every call, RQ's included, must
outlive it (a longer ``retry_for`` wins)."""

COMMAND_TIMEOUT = 5.0
"""Seconds a web process's command, or a job writer's, waits for Redis to answer (or to accept
a connection). A Redis that is frozen, or cut off behind a live TCP connection, never answers:
the web would wait until it did (its ``/readyz`` and every read), and a job's writer as long
as RQ's connection it copies (25 s for `jobcast worker`), where a frozen Sentinel primary is
replaced in a few. Said here, not left to redis-py, whose default was no limit before its
version 8 (the project allows 5.3 on). The web's pub/sub reader keeps its own health check
(:mod:`jobcast.web.subscriber`)."""

POOL_SIZE = 64
"""Connections of a bounded pool (the web's): they must not grow with viewers."""


class FollowingConnection(SentinelManagedConnection):
    """A connection to the primary that asks the Sentinels where it is on *every* connect.

    redis-py's own asks only for a connection's first connect: a command's retries reconnect
    through ``_connect`` to the address it had, so after a failover they dial the dead primary
    until they give up (redis-py #3874; measured 37 s, then a failure). Asking again here makes
    the retries land on the promoted replica (measured 2.5–3 s after a SIGKILL). Drop it once
    redis-py's fix (#3875) ships.
    """

    def _connect(self):
        """Connect to wherever the primary is now."""
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        return super()._connect()


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection instead of opening one more (the
    web's bounded pool, over Sentinel)."""


def _retry(retry_for: float, cap: float, step: float) -> Retry:
    """Retries with backoff (up to ``cap`` s apart), ``step`` s each on average, for about
    ``retry_for`` seconds."""
    return Retry(ExponentialBackoff(cap=cap, base=0.05), max(3, int(retry_for / step)))


_one_connection_clients: weakref.WeakSet[Redis] = weakref.WeakSet()


def _on_one_connection(client: Redis) -> Redis:
    """``client``, which keeps one connection for its commands, noted for :func:`_forked`."""
    _one_connection_clients.add(client)
    return client


def _forked() -> None:
    """In a forked child (a job's own ``multiprocessing`` worker that logs values), a client
    that keeps one connection must not go on using its parent's socket: the two processes'
    replies would go to whichever reads first. It borrows from its pool instead, which
    redis-py resets in a new process, so the child dials connections of its own."""
    for client in list(_one_connection_clients):
        client.single_connection_lock = threading.RLock()  # a parent's thread may have held it
        client.connection = None


os.register_at_fork(after_in_child=_forked)


def redis_client(url: str, *, retry_for: float = 0.0, pooled: bool = False,
                 single: bool = False, **options) -> Redis:
    """A client of the Redis at ``url``: a ``redis://`` (``rediss://``, ``unix://``) server, or
    the primary a group of Sentinels names (``redis+sentinel://``).

    ``retry_for`` > 0 makes it ride out a restart or failover of about that long (a Sentinel
    client always rides out at least :data:`SENTINEL_RETRY_FOR`). ``pooled`` bounds its pool
    at :data:`POOL_SIZE` connections, callers waiting up to 10 s for one. ``single`` keeps
    one connection for its commands (a pipeline still takes its own from the pool): a job's
    writer sends each value without borrowing a connection from the pool, which costs a
    ``poll()`` of the socket and redis-py's bookkeeping every time. ``options`` go to
    redis-py's connections.
    """
    if not is_sentinel_url(url):
        if url.lower().startswith("unix://"):
            # TCP's keepalive has no meaning on a Unix socket, and redis-py's connection
            # class for one refuses the option (every command would raise TypeError).
            options.pop("socket_keepalive", None)
            options.pop("socket_keepalive_options", None)
        if retry_for:
            options.setdefault("retry", _retry(retry_for, 2.0, 1.5))
            options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
        if pooled:
            client = Redis(connection_pool=BlockingConnectionPool.from_url(
                url, max_connections=POOL_SIZE, timeout=10, **options),
                single_connection_client=single)
        else:
            client = Redis.from_url(url, single_connection_client=single, **options)
        return _on_one_connection(client) if single else client
    target = parse_sentinel_url(url)
    sentinels = Sentinel(list(target.sentinels), sentinel_kwargs={
        "socket_timeout": 1, "socket_connect_timeout": 1, "password": target.sentinel_password})
    options.setdefault("retry", _retry(max(retry_for, SENTINEL_RETRY_FOR), 1.0, 0.8))
    options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    options.setdefault("socket_connect_timeout", 2)
    options.setdefault("socket_keepalive", True)
    if pooled:
        options.update(connection_pool_class=BlockingSentinelPool, max_connections=POOL_SIZE,
                       timeout=10)
    client = sentinels.master_for(target.master, connection_class=FollowingConnection,
                                  db=target.db, username=target.username,
                                  password=target.password, **options)
    if single:  # (master_for passes its options to the connections: it cannot say this)
        # The client master_for made owns the pool: it would close it (and the connection
        # made next) once dropped. The one returned owns it instead.
        client.auto_close_connection_pool = False
        client = Redis(connection_pool=client.connection_pool, single_connection_client=True)
        client.auto_close_connection_pool = True
        _on_one_connection(client)
    return client


def reader_client(client: Redis, health_check_interval: float | None = None) -> Redis:
    """A client of ``client``'s server (or Sentinel-named primary), with its settings and a pool
    of its own: for pub/sub connections, which are held for as long as the process reads
    announcements, and must never wait for (or keep) one of a bounded pool's connections.
    ``health_check_interval``, if given, replaces ``client``'s (a Redis Cluster's node clients
    have none: redis-py passes no such setting to them)."""
    changes = {} if health_check_interval is None else {"health_check_interval": health_check_interval}
    return Redis(connection_pool=_own_pool(client, **changes))


def writer_client(client: Redis, retry_for: float) -> Redis:
    """A client of ``client``'s server (or Sentinel-named primary), with its settings, that
    rides out a restart or failover of about ``retry_for`` seconds, on one connection of its
    own (:func:`redis_client`'s ``single``): a job's writer, where ``client`` is RQ's, which
    does not wait. A command unanswered for :data:`COMMAND_TIMEOUT` s is sent again (once
    appended however often it is sent), to the primary the Sentinels name then. Closing it
    closes its pool."""
    pool = _own_pool(client, retry=_retry(retry_for, 2.0, 1.5),
                     retry_on_error=[RedisConnectionError, RedisTimeoutError],
                     socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT)
    writer = Redis(connection_pool=pool, single_connection_client=True)
    writer.auto_close_connection_pool = True
    return _on_one_connection(writer)


def answering_client(client: Redis) -> Redis:
    """A client of ``client``'s server (or Sentinel-named primary), with its settings (its
    retries too) and a pool of its own, whose commands wait at most :data:`COMMAND_TIMEOUT` s
    for an answer: for the commands of a client whose own timeout is long for another of its
    uses (RQ's, 25 s for its blocking dequeue), that must not wait that long on a Redis that
    froze."""
    return Redis(connection_pool=_own_pool(client, socket_timeout=COMMAND_TIMEOUT,
                                           socket_connect_timeout=COMMAND_TIMEOUT))


def probe_client(client: Redis) -> Redis:
    """A client of ``client``'s server (or Sentinel-named primary), with its settings and a pool
    of its own, but no retries: one try per command, for a readiness probe, which must answer
    within the command timeout whether or not a failover comes (a Sentinel client retries for
    :data:`SENTINEL_RETRY_FOR` s, so with no replica to promote a probe took 15–30 s)."""
    return Redis(connection_pool=_own_pool(client, retry=Retry(NoBackoff(), 0)))


def _own_pool(client: Redis, **changes) -> ConnectionPool:
    """A new pool of connections like ``client``'s, with ``changes`` to their settings."""
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs.update(connection_class=pool.connection_class, **changes)
    if isinstance(pool, SentinelConnectionPool):
        return SentinelConnectionPool(pool.service_name, pool.sentinel_manager,
                                      is_master=pool.is_master,
                                      check_connection=pool.check_connection, **kwargs)
    return ConnectionPool(**kwargs)


NO_PASSWORD = "Redis wants a password, and the URL gives none (redis://:PASSWORD@host:port/db)"
"""What a Redis that requires a password answers a client that sent none, in words (redis-py
passes on the server's "NOAUTH" or, with RESP3, "HELLO must be called with the client already
authenticated")."""


def error_text(exc: BaseException) -> str:
    """What went wrong with Redis, in one readable line: redis-py's "No master found" puts the
    repr of its whole Sentinel client (a thousand characters or two) before the cause."""
    text = str(exc)
    if text.startswith(("NOAUTH", "HELLO must be called with the client already authenticated")):
        return NO_PASSWORD
    return re.sub(r" : <redis\..*\)> - ", "; the last Sentinel asked: ", text, flags=re.S)


def masked_url(url: str) -> str:
    """``url`` as it may be printed or written down: its password (in the authority, or a
    ``password=`` or ``sentinel_password=`` query parameter), or a user part without one,
    shown as ``***``.

    Too much is masked rather than too little, however the URL is malformed.
    """
    # A parameter named for a password first, up to the next "&" (a "#" or "@" in it is the
    # password's: redis-py reads it so), so that its "@" is never taken for the authority's.
    url = re.sub(r"(?i)([?&][^&=#?]*password=)[^&]*", r"\1***", url)
    # Not urlsplit: a password with a "#" or "/" that was not percent-encoded would be read as
    # a fragment or a path, and printed. Everything up to the last "@" is the credentials
    # (too much is masked when another parameter holds an "@", never too little).
    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL as redis-py reads one (a typo): keep only what its host may be
        head, at, after = url.rpartition("@")
        if not at:
            return url
        return f"{head.partition(':')[0]}:***@{after}" if ":" in head else f"***@{after}"
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        url = f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{after}"
    elif at and userinfo and not any(c in userinfo for c in "/?#"):
        # A user part alone ("redis://s3cret@host") is most often a password put where
        # redis-py reads a user name (its password follows a colon): masked whole. (An "@"
        # after a "/", "?" or "#" is the path's or a parameter's, not the credentials'.)
        url = f"{scheme}{sep}***@{after}"
    return url


def is_masked(url: str) -> bool:
    """``url`` holds a password :func:`masked_url` replaced (a URL read back from where it was
    written down masked): it cannot be connected with."""
    return (re.match(r"\*\*\*@|[^@]*(://|:)\*\*\*@", url) is not None
            or re.search(r"(?i)[?&][^&=#?]*password=\*\*\*(&|$)", url) is not None)


def stream_url(config: Settings) -> str:
    """The URL of the stream store: JOBCAST_STREAM_URL, else REDIS_URL."""
    return config.stream_url or config.redis_url


def separate(config: Settings) -> bool:
    """True when the streams live on another Redis than RQ's queue."""
    return bool(config.stream_url) and config.stream_url != config.redis_url


def is_cluster(redis) -> bool:
    """True for a Redis Cluster client (its keys are hash-tagged, its channels sharded)."""
    return isinstance(redis, RedisCluster)


def cluster_enabled(url: str) -> bool:
    """Ask the Redis at ``url`` whether it is a Cluster node (``INFO cluster``); a primary that
    Sentinels manage never is. A URL naming several nodes asks each in turn until one answers
    (the last one's error when none does)."""
    if is_sentinel_url(url):
        return False
    *first, last = node_urls(url)
    for node in first:
        try:
            # A node that hangs rather than refuses costs each new client (every job's
            # work-horse) this long: short, as the next node may answer.
            return _is_cluster_node(node, NEXT_NODE_AFTER)
        except (RedisConnectionError, RedisTimeoutError):
            if node not in _silent_nodes:  # (once a process: each job's work-horse says it)
                _silent_nodes.add(node)
                log.warning("the stream store's node %s does not answer; asking the next one",
                            masked_url(node))
    return _is_cluster_node(last)


NEXT_NODE_AFTER = 2.0
"""Seconds a node named in a multi-node stream URL has to answer before the next is asked."""
_silent_nodes: set[str] = set()


def _is_cluster_node(url: str, timeout: float = 5.0) -> bool:
    """Whether the one Redis at ``url`` is a Cluster node (``INFO cluster``)."""
    probe = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
    finally:
        probe.close()


def connect(url: str, *, cluster: bool | None = None, retry_for: float = 0.0,
            **options) -> StreamRedis:
    """A client of the stream store at ``url``: RedisCluster for a Cluster node, else Redis
    (:func:`redis_client`: one server, or the primary of a Sentinel group).

    ``cluster`` says which, when known (None: ask the server). ``retry_for`` > 0 makes the
    client ride out a restart or failover of that long, retrying with backoff: appends are
    safe to retry (the script appends a write sent again once, append.lua). ``options`` go to the
    single-Redis client (a Cluster client gets its own timeouts).
    """
    if cluster is None:
        cluster = cluster_enabled(url)
    if cluster:
        # Each command retries on MOVED/ASK, connection errors and cluster-down replies,
        # re-reading the slot map: a failover or a restarted primary is waited out.
        attempts = max(3, int(retry_for / 0.5)) if retry_for else 3
        # Every node named is a place to start from: the client reads the slot map from the
        # first that answers, in the order they are named (the URL's own node, which redis-py
        # adds after them, is already the first).
        nodes, starts = node_urls(url), []
        for node in nodes:
            where = parse_url(node)
            starts.append(ClusterNode(where.get("host", "localhost"), where.get("port", 6379)))
        try:
            return RedisCluster.from_url(
                nodes[0], startup_nodes=starts,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), attempts),
                socket_connect_timeout=2, socket_timeout=10, socket_keepalive=True)
        except RedisClusterException as exc:
            # A cluster not formed yet ("All slots are not covered"), or no node answering:
            # redis-py's own class is no RedisError, so callers that handle an unreachable
            # Redis would let it through as a traceback.
            raise ClusterError(f"the Redis Cluster at {masked_url(url)} is not usable: "
                               f"{exc}") from exc
    return redis_client(one_node(url), retry_for=retry_for, **options)


class NotACluster(ClusterError):
    """A URL that names several hosts, of a Redis that is no Cluster node: a setting to fix,
    not a Redis out of reach."""


def one_node(url: str) -> str:
    """``url``, which names a Redis that is no Cluster node; NotACluster when it names
    several hosts, as only a Cluster's nodes may."""
    if len(node_urls(url)) > 1:
        raise NotACluster(f"{masked_url(url)} names several hosts, which only a Redis "
                          "Cluster's nodes may be: this Redis is not one (name its host alone)")
    return url


def queue_redis(config: Settings) -> Redis:
    """This process's shared client of RQ's Redis (``REDIS_URL``), for the calls given none: a
    producer's :func:`~jobcast.producer.enqueue.enqueue` called in a loop dialed Redis afresh
    each time. Kept per URL and process, as :func:`stream_redis`'s."""
    key = (config.redis_url, os.getpid())
    with _lock:
        client = _queue_clients.get(key)
        if client is None:
            client = _queue_clients[key] = redis_client(config.redis_url)
        return client


def stream_redis(config: Settings, queue: Redis | None = None) -> StreamRedis:
    """The stream store's client for this process, shared (``queue`` when it is the same Redis).

    Clients are kept per URL and process: redis-py's pools reconnect after a fork.
    """
    if not separate(config):
        return queue if queue is not None else queue_redis(config)
    url = stream_url(config)
    key = (url, os.getpid())
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = connect(url, retry_for=60.0)
            log.info("job streams on %s (%s)", masked_url(url),
                     "Redis Cluster" if is_cluster(client) else "single Redis")
        return client
