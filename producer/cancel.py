"""Cancel a job: end its log with ``cancelled``, then take it off the queue or stop it.

The log decides. Its Lua script writes ``cancelled`` only if the job has not ended, so when
a cancel races the job's own last value, a second cancel, or the watchdog, exactly one of
them gets the terminal entry and the others are told the job had already ended. Only then
is RQ told: a queued job is cancelled (it leaves the queue and never runs), a running one
gets RQ's stop-job command, which kills its work-horse at once, whether it sleeps or
computes; the worker then files the job as canceled (worker/hook.py: every Jobcast worker
class). A work-horse that misses the command still stops at its next value, which the log
refuses.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from jobcast.core.joblog import Refused, UnknownJob
from jobcast.core.logstore import LogStore
from jobcast.core.settings import Settings, get_settings
from jobcast.core.store import StreamRedis, queue_redis

log = logging.getLogger(__name__)


class AlreadyEnded(RuntimeError):
    """The job had already ended; ``status`` says how. Nothing was written."""

    def __init__(self, job_id: str, status: str | None):
        """Remember the job's final status."""
        super().__init__(f"job {job_id} has already ended ({status})")
        self.status = status


def cancel(job_id: str, by: str, *, redis: Redis | None = None, config: Settings | None = None,
           streams: StreamRedis | None = None) -> int:
    """Cancel ``job_id`` on behalf of ``by`` ("api" or "cli"; every viewer of the job reads it).

    ``redis`` holds RQ's queue, ``streams`` the job's log (by default the same Redis).

    Returns the seq of the ``cancelled`` entry. Raises UnknownJob (also for a job of a queue
    other than Jobcast's, JOBCAST_QUEUE and JOBCAST_QUEUES: another application's jobs are
    not Jobcast's to stop), or AlreadyEnded when the job had finished, failed or been cancelled before, with no
    next run waiting in RQ (a Repeat's, a requeue's: that run is cancelled instead).
    """
    cfg = config or get_settings()
    redis = redis or queue_redis(cfg)
    store = LogStore.connect(cfg, redis, streams)
    jlog = store.log(job_id)
    if not store.on_our_queues(job_id):
        raise UnknownJob(job_id)
    seq = jlog.cancelled(by)
    if seq == Refused.UNKNOWN:
        raise UnknownJob(job_id)
    if seq == Refused.ENDED and next_run_waits(redis, job_id) and jlog.reopen_as_before():
        # The log is an earlier run's (RQ's Repeat, a requeue): the run that waits is the one
        # cancelled, in its own log, as its worker would have opened it.
        seq = jlog.cancelled(by)
    if seq < 0:
        raise AlreadyEnded(job_id, jlog.status())
    log.info("job %s cancelled by %s (entry %s)", job_id, by, seq)
    try:
        stop_rq_job(redis, job_id)
    except RedisError as exc:
        # The cancel stands (it is in the log, which refuses the job's values from now on):
        # only RQ's side of it failed, with RQ's Redis. The job stops at its next value, and
        # a caller told "unreachable" would try again and hear "already ended".
        log.warning("job %s: cancelled, but RQ could not be told (%s); it stops at its next "
                    "value", job_id, exc)
    return seq


def next_run_waits(redis: Redis, job_id: str) -> bool:
    """True when RQ holds a run of ``job_id`` that no worker has taken yet (queued, scheduled
    or deferred), while its log has ended: the next run of a repeated or requeued job."""
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) in (JobStatus.QUEUED, JobStatus.SCHEDULED,
                                             JobStatus.DEFERRED)


def stop_rq_job(redis: Redis, job_id: str) -> None:
    """Take a cancelled job off the queue, or kill the work-horse running it."""
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return  # RQ has forgotten it (an expired result): nothing left to stop
    status = job.get_status(refresh=False)
    try:
        if status == JobStatus.STARTED:
            send_stop_job_command(redis, job_id)
        elif status not in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED,
                            JobStatus.CANCELED):
            job.cancel()
    except (InvalidJobOperation, NoSuchJobError) as exc:
        # It moved on meanwhile (started, or ended); the log already refuses its values.
        log.info("job %s: RQ could not stop it (%s); it stops at its next value", job_id, exc)
