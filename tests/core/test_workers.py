"""What the web's watchdog and the workers agree on (jobcast.core.workers)."""

from __future__ import annotations

from fakeredis import FakeRedis
from rq import Worker

from jobcast.core import workers


def test_the_watchdogs_grace_forgives_one_lost_heartbeat_of_an_idle_jobcast_worker():
    # RQ beats between its waits on the queues (its dequeue timeout): the grace is derived
    # from the TTL `jobcast worker` passes, so changing one changes the other.
    worker = Worker([], connection=FakeRedis(), worker_ttl=workers.WORKER_TTL)
    assert worker.dequeue_timeout == workers.IDLE_HEARTBEAT
    assert 2 * workers.IDLE_HEARTBEAT < workers.HEARTBEAT_GRACE < 3 * workers.IDLE_HEARTBEAT
