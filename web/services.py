"""The web process's resources and background services, in the style of flaskr's ``db.py``.

:func:`init_app` puts a :class:`State` on the app: the settings, a bounded Redis pool, the
log store, the stream limiter and the per-client rates. The background services (the relay
with its broker, the watchdog and presence) belong to a process, not to an app: they start
in one place, :func:`start`, once per worker process (after any fork, so each gunicorn
worker has its own), at the app's first request; and they stop in one place, :func:`stop`,
when the worker stops serving (gunicorn's SIGTERM, or the end of :meth:`jobcast.web.handover.StreamWorker.run`).
"""

from __future__ import annotations

import logging
import os
import threading

from flask import Flask, current_app
from redis import Redis

from jobcast.core.logstore import LogStore
from jobcast.core.settings import Settings
from jobcast.core.store import (COMMAND_TIMEOUT, StreamRedis, cluster_enabled, connect,
                                is_cluster, one_node, probe_client, redis_client, separate,
                                stream_url)
from jobcast.web.broker import HEALTH_CHECK_INTERVAL, Broker
from jobcast.web.handover import on_worker_exit
from jobcast.web.limits import (DOWNLOADS, DOWNLOADS_PER_CLIENT, ClientRate, DownloadLimiter,
                                StreamLimiter)
from jobcast.web.presence import Presence
from jobcast.web.relay import Relay
from jobcast.web.watchdog import Watchdog
from jobcast.web.gunicorn_check import check_worker_class
from jobcast.web import shutdown

log = logging.getLogger(__name__)

_guard = threading.Lock()
"""Held only to make a State's start lock (:meth:`State.start_lock`), never across a switch
of greenlets: made at import, it may be a real lock (gunicorn's master under --preload)."""


def pooled(url: str) -> Redis:
    """A client of one Redis (or Sentinel's primary) with a bounded pool: connections must
    not grow with viewers. A command Redis leaves unanswered for ``COMMAND_TIMEOUT`` s fails,
    and the request is answered 503."""
    return redis_client(url, pooled=True, socket_keepalive=True,
                        socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT,
                        health_check_interval=HEALTH_CHECK_INTERVAL)


class State:
    """One app's resources, and the background services of the process serving it.

    ``redis`` holds RQ's queue; ``streams`` the job logs and channels (the same client unless
    JOBCAST_STREAM_URL names another Redis or a Redis Cluster, see
    :mod:`jobcast.core.store`).
    """

    def __init__(self, config: Settings, redis: Redis | None = None,
                 streams: StreamRedis | None = None):
        """Create the Redis clients and the limiter; :func:`start` starts the services."""
        self.config = config
        for given in (redis, streams):
            if given is not None and given.get_connection_kwargs().get("decode_responses"):
                # Jobcast reads bytes (values are not always text, ids are compared as
                # bytes): refused here, with the app, not as a 500 on every request.
                raise ValueError("Jobcast needs Redis clients that return bytes: create them "
                                 "without decode_responses=True")
        self.redis = redis or pooled(config.redis_url)
        self.probe = probe_client(self.redis)  # /readyz's: one try, so it answers in time
        if streams is None and separate(config):
            url = stream_url(config)
            streams = connect(url, cluster=True) if cluster_enabled(url) else pooled(one_node(url))
        self.streams = streams if streams is not None else self.redis
        # /readyz's PING of a stream store of its own: one try too (a Cluster client's retries
        # are its own, bounded, and it has no single connection to copy).
        self.streams_probe: StreamRedis | None = (
            None if self.streams is self.redis
            else self.streams if is_cluster(self.streams) else probe_client(self.streams))
        self.logs = LogStore(self.streams, config, self.redis)
        self.limiter = StreamLimiter(config.streams_per_client, config.streams_per_process)
        self.downloads = DownloadLimiter(DOWNLOADS_PER_CLIENT, DOWNLOADS)
        self.auth_failures = ClientRate(config.auth_failures)
        self.creations = ClientRate(config.create_rate)
        self.relay: Relay | None = None
        self.watchdog: Watchdog | None = None
        self.presence: Presence | None = None
        self.pid: int | None = None  # the process the services run in
        self.warned = False  # the log was told if the server is open (warn_if_weak)
        self._lock: threading.Lock | None = None  # this process's (start_lock)
        self._lock_pid: int | None = None

    def start_lock(self) -> threading.Lock:
        """The lock :func:`start` holds, made in this process. One made with the app in
        gunicorn's master (``--preload``), before gevent patched ``threading``, is a real lock:
        the greenlet holding it switches as it starts threads, and the next request's greenlet,
        waiting on it, blocked the whole worker for good."""
        with _guard:
            if self._lock_pid != os.getpid():
                self._lock, self._lock_pid = threading.Lock(), os.getpid()
            return self._lock


def init_app(app: Flask, config: Settings, redis: Redis | None = None,
             streams: StreamRedis | None = None) -> State:
    """Attach a :class:`State` to ``app``, and start the services at its first request."""
    st = app.extensions["jobcast"] = State(config, redis, streams)

    @app.before_request
    def start_services() -> None:
        """Start this process's services before its first request (a no-op afterwards)."""
        start(st)

    return st


# Shorter tokens and secrets are warned about at start: a guess per request is cheap.
MIN_KEY_LENGTH = 16


def warn_if_weak(st: State) -> None:
    """Say in the log that the server is open to anyone, or that its keys are short, once for
    ``st`` (the app's :class:`~jobcast.web.services.State`). Said when a process begins
    serving: when the app is made inside a gunicorn worker (at its boot), else at the app's
    first request. A script or a job that imports a host app mounting Jobcast serves nothing,
    and is told nothing."""
    st.warned = True
    cfg: Settings = st.config
    if not cfg.token:
        log.warning("JOBCAST_TOKEN is not set: anyone who can reach this server can create, "
                    "cancel and read every job")
    for name, value in (("JOBCAST_TOKEN", cfg.token), ("JOBCAST_SECRET", cfg.secret)):
        if value and len(value) < MIN_KEY_LENGTH:
            log.warning("%s is %d characters long: use at least %d random ones "
                        "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                        name, len(value), MIN_KEY_LENGTH)


def state() -> State:
    """The current app's State."""
    return current_app.extensions["jobcast"]


def start(st: State) -> Relay:
    """Start the relay (and its broker), the watchdog and presence in this process, once;
    return the relay.

    A process forked after they started (gunicorn's workers under ``--preload``) starts its
    own: threads do not survive a fork.
    """
    if st.pid == os.getpid():
        return st.relay
    with st.start_lock():
        if st.pid != os.getpid():
            # With --preload the app was created in gunicorn's master: check the worker here.
            check_worker_class()
            cfg = st.config
            if not st.warned:  # (the app was not made in this serving process)
                warn_if_weak(st)
            st.relay = Relay(Broker(st.streams), heartbeat=cfg.heartbeat,
                             write_timeout=cfg.write_timeout,
                             write_delay=cfg.multi_write_delay)
            st.relay.start()
            st.watchdog = Watchdog(st.redis, st.logs)
            st.watchdog.start()
            st.presence = Presence(st.logs, st.relay)
            st.presence.start()
            st.pid = os.getpid()
            # Held streams are not requests gunicorn waits for: end them when it stops (the
            # worker's SIGTERM too, when the app was made in gunicorn's master: --preload).
            on_worker_exit(lambda: stop(st))
            shutdown.install(lambda: stop(st), st)
    return st.relay


def stop(st: State) -> None:
    """The process stops serving: end every stream (clients reconnect elsewhere), stop the
    watchdog and presence. Safe to call twice, and before :func:`start`."""
    if st.pid != os.getpid():
        return
    st.relay.shutdown()
    st.relay.stop()
    st.watchdog.stop()
    st.presence.stop()
