"""Who is watching: each web process publishes its viewer counts per job to Redis.

A viewer is attached to one gunicorn worker, so no process knows the total by itself. Every
few seconds each process writes ``<process>: "<count> <time>"`` into the job's
``jobcast:job:<id>:viewers`` hash; readers add up the fresh fields. A process that dies stops
refreshing its fields, and they are ignored once stale.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

from jobcast.joblog import PREFIX, check_job_id

log = logging.getLogger(__name__)

STALE_AFTER = 30.0  # seconds without a refresh before a process's count is ignored


def viewers_key(job_id: str) -> str:
    """Hash of per-process viewer counts for one job."""
    return f"{PREFIX}:job:{check_job_id(job_id)}:viewers"


def total_viewers(redis: Redis, job_id: str, now: float | None = None) -> int:
    """Viewers of ``job_id`` across all web processes."""
    now = time.time() if now is None else now
    total = 0
    for value in redis.hgetall(viewers_key(job_id)).values():
        count, _, stamp = value.decode().partition(" ")
        if now - float(stamp or 0) < STALE_AFTER:
            total += int(count)
    return total


class Presence:
    """Publishes this process's per-job viewer counts, read from the hub every ``interval`` s."""

    def __init__(self, redis: Redis, hub, interval: float = 3.0):
        """Prepare; :meth:`start` runs it."""
        self.redis = redis
        self.hub = hub
        self.interval = interval
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.published: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Publish in the background (a greenlet under gevent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jobcast-presence", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current round (the process stops serving)."""
        self._stop.set()

    def _run(self) -> None:
        """Publish until stopped; a Redis outage only delays the next round."""
        while True:
            try:
                self.publish()
            except RedisError as exc:
                log.debug("presence: Redis unavailable (%s)", exc)
            if self._stop.wait(self.interval):
                return

    def publish(self, now: float | None = None) -> None:
        """Write the current counts, and remove the jobs nobody here watches any more."""
        now = time.time() if now is None else now
        counts = {job_id: self.hub.viewers(job_id) for job_id in self.hub.jobs()}
        pipe = self.redis.pipeline(transaction=False)
        for job_id, count in counts.items():
            key = viewers_key(job_id)
            pipe.hset(key, self.name, f"{count} {now:.0f}")
            pipe.expire(key, int(STALE_AFTER * 2))
        for job_id in self.published - set(counts):
            pipe.hdel(viewers_key(job_id), self.name)
        pipe.execute()
        self.published = set(counts)
