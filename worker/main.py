"""`jobcast worker`: an RQ worker on the Jobcast queue."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

from redis import Redis
from redis.exceptions import AuthenticationError
from rq import Queue, Worker

from jobcast.core.registry import load_user_tasks
from jobcast.core.settings import Settings, get_settings
from jobcast.core.store import error_text, masked_url, redis_client
from jobcast.core.workers import UNREACHABLE, WORKER_TTL, JobcastJob
from jobcast.worker.hook import LifecycleMixin

log = logging.getLogger(__name__)

REDIS_WAIT = 60.0
"""Seconds `jobcast worker` waits for a Redis it cannot reach as it starts, then gives up (exit
3). A running worker rides out an outage (RQ's loop between jobs, the hook during one): one
that starts in it waits too, so a supervisor (`jobcast up`, compose) does not count each
start as a crash; but a wrong REDIS_URL still ends it, after about a minute."""


def worker_name() -> str:
    """A readable, unique worker name: host (the container id under Docker) and pid."""
    return f"{socket.gethostname()}.{os.getpid()}"


class JobcastWorker(LifecycleMixin, Worker):
    """RQ's forking worker, tuned so a dead worker's job is retried within seconds.

    It also logs the lifecycle of plain RQ jobs put on its queue (see :mod:`jobcast.worker.hook`).

    RQ finds a job abandoned by a killed worker when the job's execution heartbeat expires
    and a live worker runs its maintenance. RQ keeps that heartbeat for the monitoring
    interval plus a fixed 60 s; here it is three monitoring intervals, so with the defaults
    (5 s monitoring, 10 s maintenance) a job is back on the queue within about 25 s.
    """

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        """Seconds the execution stays alive without a heartbeat from this worker: three
        monitoring intervals, less near the job's timeout (it is over then), but never under
        two, so that one late heartbeat (RQ counts whole seconds) never makes a live job look
        abandoned, to be run a second time."""
        interval = self.job_monitoring_interval
        ttl = interval * 3
        if job.timeout and job.timeout > 0:
            ttl = min(ttl, int(job.timeout - working_time) + interval)
        return max(ttl, 2 * interval)


def wait_for_redis(redis: Redis, url: str, limit: float = REDIS_WAIT,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], object] = time.sleep) -> bool:
    """Return once the Redis at ``url`` answers (True if it did not at once); while it cannot
    be reached, try again after 1, 2, 4... seconds (as RQ's loop does between jobs), each
    failure one line of the log, for ``limit`` seconds at most: then raise the last error. A
    refused password raises at once."""
    deadline = clock() + limit
    pause = 1.0
    waited = False
    while True:
        try:
            redis.ping()
            return waited
        except AuthenticationError:
            raise
        except UNREACHABLE as exc:
            left = deadline - clock()
            if left <= 0:
                raise
            pause = min(pause, left)
            log.warning("jobcast: cannot reach Redis at %s (%s); trying again in %.0f s, for "
                        "%.0f s more", masked_url(url), error_text(exc), pause, left)
            sleep(pause)
            waited = True
            pause *= 2


def run_worker(config: Settings | None = None, *, burst: bool = False,
               queues: list[str] | None = None) -> bool:
    """Work the queues (by default JOBCAST_QUEUE's; several: in the order given, as RQ takes
    them) until stopped (or, with ``burst``, until they are empty)."""
    cfg = config or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Import tasks before forking work-horses, so each job does not import them again.
    load_user_tasks()
    redis = redis_client(cfg.redis_url)
    waited = wait_for_redis(redis, cfg.redis_url)
    worked = [Queue(name, connection=redis, job_class=JobcastJob)
              for name in (queues or [cfg.queue_name])]
    worker = JobcastWorker(worked, connection=redis, name=worker_name(), job_class=JobcastJob,
                           job_monitoring_interval=cfg.monitor_interval,
                           maintenance_interval=cfg.maintenance_interval,
                           worker_ttl=WORKER_TTL)
    if waited:
        # Started in an outage (a supervisor's restart, say): the jobs of live workers that ran
        # through it are not abandoned, as for a worker that rode it out.
        worker.redis_back()
    return worker.work(burst=burst, with_scheduler=True)
