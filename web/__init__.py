"""Jobcast's web side: a Flask app that relays job logs to any number of viewers."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from redis import BlockingConnectionPool, Redis

from worker.config import Config
from worker.registry import load_builtin_and_user_tasks
from worker.streams import StreamRedis, cluster_enabled, connect, separate, stream_url


def pooled(url: str) -> Redis:
    """A client of one Redis with a bounded pool: connections must not grow with viewers."""
    return Redis(connection_pool=BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=10, socket_keepalive=True, health_check_interval=30))


class State:
    """Per-process resources: the Redis clients and, once needed, the hub.

    ``redis`` holds RQ's queue; ``streams`` the job logs and channels (the same client unless
    JOBCAST_STREAM_URL names another Redis or a Redis Cluster, see worker/streams.py).
    """

    def __init__(self, config: Config, redis: Redis | None = None,
                 streams: StreamRedis | None = None):
        """Create the Redis clients; the hub starts lazily in the serving process."""
        self.config = config
        self.redis = redis or pooled(config.redis_url)
        if streams is None and separate(config):
            url = stream_url(config)
            streams = connect(url, cluster=True) if cluster_enabled(url) else pooled(url)
        self.streams = streams if streams is not None else self.redis
        self._hub = None
        self._hub_pid = None
        from web.limits import StreamLimiter

        self.limiter = StreamLimiter(config.streams_per_client, config.streams_per_process)

    @property
    def hub(self):
        """The process's hub, created after any fork so each worker has its own."""
        if self._hub is None or self._hub_pid != os.getpid():
            from web.workerclass import check_worker_class

            # With --preload the app was created in gunicorn's master: check the worker here.
            check_worker_class()
            from web.hub import Hub

            self._hub = Hub(self.streams, buffer_size=self.config.viewer_buffer,
                            heartbeat=self.config.heartbeat)
            self._hub_pid = os.getpid()
            self._hub.start()
            from web.handover import on_worker_exit

            # Held streams are not requests gunicorn waits for: end them when it stops.
            on_worker_exit(self._hub.shutdown)
            from web.watchdog import Watchdog

            Watchdog(self.redis, self.config, streams=self.streams).start()
            from web.presence import Presence

            Presence(self.streams, self._hub).start()
        return self._hub


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the Jobcast Flask app. ``test_config`` may set JOBCAST (a Config), REDIS and
    STREAMS (clients)."""
    app = Flask(__name__)
    test_config = dict(test_config or {})
    config = test_config.pop("JOBCAST", None) or Config.from_env()
    redis = test_config.pop("REDIS", None)
    streams = test_config.pop("STREAMS", None)
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=config.max_body,
    )
    app.config.update(test_config)
    load_builtin_and_user_tasks()
    app.extensions["jobcast"] = State(config, redis, streams)

    from web import api, errors, health, metrics, pages, stream

    from web import openapi, security, shutdown
    from web.workerclass import check_worker_class

    # Before shutdown.install, which replaces the SIGTERM handler the check looks at.
    check_worker_class()
    shutdown.install(lambda: app.extensions["jobcast"].hub)
    errors.register(app)
    # Read access, security headers and the login form (JOBCAST_READ; see web/security.py).
    security.install(app)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(stream.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(metrics.bp)
    return app


def state() -> State:
    """The current app's State."""
    from flask import current_app

    return current_app.extensions["jobcast"]
