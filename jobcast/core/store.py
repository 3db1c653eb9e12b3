"""The stream store: the Redis that holds job logs, job metadata and their channels.

``JOBCAST_STREAM_URL`` names it; empty (the default) means ``REDIS_URL``, the Redis that
also holds RQ's queue, so a single Redis needs no new setting. RQ's queue always stays on
``REDIS_URL``: RQ does not support Redis Cluster, but job streams can live on one.

When the stream URL points at a node of a Redis Cluster (``INFO cluster`` says
``cluster_enabled:1``) the client is redis-py's :class:`~redis.cluster.RedisCluster`, and
:mod:`jobcast.core.joblog` names a job's keys and channel with one hash tag (the job id in braces)
so the append script, which touches several of them, runs on one slot and stays atomic;
announcements then go out with ``SPUBLISH`` and the hub listens with ``SSUBSCRIBE``
(sharded pub/sub, so each announcement is handled by the one shard that owns the job).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from jobcast.core.settings import Settings

log = logging.getLogger(__name__)

StreamRedis = Redis | RedisCluster

_clients: dict[tuple[str, int], StreamRedis] = {}
_lock = threading.Lock()


def masked_url(url: str) -> str:
    """``url`` as it may be printed or written down: its password (in the authority, or a
    ``password=`` query parameter) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


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
    """Ask the Redis at ``url`` whether it is a Cluster node (``INFO cluster``)."""
    probe = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
    finally:
        probe.close()


def connect(url: str, *, cluster: bool | None = None, retry_for: float = 0.0,
            **options) -> StreamRedis:
    """A client of the stream store at ``url``: RedisCluster for a Cluster node, else Redis.

    ``cluster`` says which, when known (None: ask the server). ``retry_for`` > 0 makes the
    client ride out a restart or failover of that long, retrying with backoff: appends are
    safe to retry (the script refuses a value it already has). ``options`` go to the
    single-Redis client (a Cluster client gets its own timeouts).
    """
    if cluster is None:
        cluster = cluster_enabled(url)
    if cluster:
        # Each command retries on MOVED/ASK, connection errors and cluster-down replies,
        # re-reading the slot map: a failover or a restarted primary is waited out.
        attempts = max(3, int(retry_for / 0.5)) if retry_for else 3
        return RedisCluster.from_url(
            url, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), attempts),
            socket_connect_timeout=2, socket_timeout=10, socket_keepalive=True)
    if retry_for:
        options.setdefault("retry", Retry(ExponentialBackoff(cap=2.0, base=0.05),
                                          max(3, int(retry_for / 1.5))))
        options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    return Redis.from_url(url, **options)


def stream_redis(config: Settings, queue: Redis | None = None) -> StreamRedis:
    """The stream store's client for this process, shared (``queue`` when it is the same Redis).

    Clients are kept per URL and process: redis-py's pools reconnect after a fork.
    """
    if not separate(config):
        return queue if queue is not None else Redis.from_url(config.redis_url)
    url = stream_url(config)
    key = (url, os.getpid())
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = connect(url, retry_for=60.0)
            log.info("job streams on %s (%s)", url,
                     "Redis Cluster" if is_cluster(client) else "single Redis")
        return client
