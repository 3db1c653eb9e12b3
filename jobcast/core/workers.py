"""What Jobcast's web processes and its RQ workers agree on: the job class a worker runs, how
often an idle worker shows it is alive, and what a Redis out of reach raises.

Both services import it and neither imports the other: the web's watchdog judges the workers'
heartbeats by these figures (``jobcast.web.watchdog``), the workers keep them
(``jobcast.worker.main``, ``jobcast.worker.hook``).
"""

from __future__ import annotations

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Worker
from rq.job import Job
from rq.utils import import_attribute

from jobcast.core.registry import LEGACY_PATHS

UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
"""What a call to a Redis that is down, restarting or out of reach raises."""

WORKER_TTL = 30
"""Seconds RQ keeps an idle ``jobcast worker`` listed without a heartbeat, so a killed idle
worker leaves RQ's list this soon."""

IDLE_HEARTBEAT = max(1, WORKER_TTL - 15)
"""Seconds between an idle worker's heartbeats: RQ waits on its queues this long at a time
(its dequeue timeout), beating between waits."""

HEARTBEAT_GRACE = 2.0 * IDLE_HEARTBEAT + 5.0
"""Seconds since its last heartbeat that the watchdog counts a worker alive: over two idle
periods, so one heartbeat lost or late is forgiven. A plain ``rq worker`` (RQ's default TTL, 420
s) beats far less often when idle; it counts while its key lives (``BUSY_KEY_LEFT``) only when
busy."""


RQ_SOCKET_TIMEOUT = IDLE_HEARTBEAT + 10
"""Seconds a ``jobcast worker``'s RQ connection waits for an answer (RQ sets it to its dequeue
timeout plus 10 s): how long RQ's own commands (a job's end, say) can hang on a primary that
froze before the worker gives up on it and finds the one promoted meanwhile. A running job's
heartbeats wait less (``COMMAND_TIMEOUT``, jobcast.worker.outage)."""


def resume_grace(monitor_interval: float) -> float:
    """Seconds after Redis answers again during which jobs are not taken for abandoned: three
    monitoring intervals, in which a live worker's heartbeat (tried once an interval while
    Redis is away) gets through; and no less than a command of RQ's held by a frozen primary
    takes to reach the promoted one (:data:`RQ_SOCKET_TIMEOUT` and an interval), since the web
    may read the new primary while a worker still waits on the old."""
    return max(3 * monitor_interval, RQ_SOCKET_TIMEOUT + monitor_interval)


class WorkerRecord(Worker):
    """RQ's Worker as read from Redis by a process that does not work (the web's watchdog and
    metrics): RQ's constructor raises the connection pool's socket timeout to its dequeue
    timeout plus 10 s (415 s by default) for a worker's blocking waits, which a reader never
    makes; on a client shared with requests, every request would then wait that long on a
    Redis that does not answer. This one leaves the connection as it was given."""

    def _set_connection(self, connection: Redis) -> Redis:
        """The connection, unchanged."""
        return connection


class JobcastJob(Job):
    """RQ's Job, which also runs the jobs an earlier Jobcast enqueued.

    RQ stores the dotted path of the function a job runs, and of its failure callback. Before
    Jobcast lived under one ``jobcast`` namespace those paths were ``worker.runner.…``: such jobs
    may still wait on a queue after an upgrade, and are run by the functions' new paths
    (:data:`jobcast.core.registry.LEGACY_PATHS`). Nothing else about the job changes.
    """

    @property
    def func(self):
        """The function to run, found by its current path when the job carries an old one."""
        name = self.func_name
        if name in LEGACY_PATHS and self.instance is None:
            return import_attribute(LEGACY_PATHS[name])
        return super().func

    @property
    def failure_callback(self):
        """The failure callback, likewise found by its current path."""
        name = self._failure_callback_name
        if name in LEGACY_PATHS:
            self._failure_callback_name = LEGACY_PATHS[name]
        return super().failure_callback
