"""The watchdog: no viewer waits forever on a job whose workers are gone.

Workers find jobs abandoned by a dead peer themselves (RQ's maintenance retries them or marks
them failed, and the job's failure callback logs ``failed``). What they cannot see needs
help from outside them, so one web process at a time (a Redis lock elects it) checks every
few seconds:

- RQ's cleanup of abandoned jobs runs here too, so it does not wait for a worker's next
  maintenance round (but not in the three monitoring intervals after Redis is back from an
  outage, in which live workers send the heartbeats it missed);
- when no worker at all has been alive for ``orphan_timeout`` seconds, every queued or
  running job is failed with that reason, and its viewers get their terminal event;
- jobs that Jobcast did not enqueue (plain RQ jobs, see :mod:`jobcast.worker.emit`) get their terminal
  entry from RQ's own status once RQ has ended them, in case no Jobcast-aware worker did;
- jobs that Jobcast did enqueue, whose log says ``queued`` but which RQ does not have (RQ's
  Redis failed between the log's creation and the job's, or the producer died there), fail:
  no worker will ever take them. So do those RQ has ended while their log still says
  ``queued``: their work-horse failed before it could write to the log (the stream store out
  of reach, a task that cannot be imported), and so did their failure callback.
"""

from __future__ import annotations

import logging
import time
from datetime import timezone

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.worker import WorkerStatus

from jobcast.core.logstore import PAGE, LogStore
from jobcast.core.reasons import reason_from_traceback
from jobcast.core.wait import in_pages
from jobcast.web.periodic import Periodic
from jobcast.core.workers import (HEARTBEAT_GRACE, UNREACHABLE, JobcastJob, WorkerRecord,
                                   resume_grace)

log = logging.getLogger(__name__)

LOCK = "jobcast:watchdog"
# Since when no worker has been alive, as the rounds found it (the round that holds the lock
# may be another process's each time: kept in Redis, so a process that has not run a round for
# hours does not count from a gap long over).
NO_WORKER_SINCE = "jobcast:watchdog:no-worker-since"
# RQ's states of a job that has ended other than by finishing.
RQ_ENDED = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})
# Seconds a busy worker's key must have left to count it alive when its heartbeat is older than
# the grace: RQ gives the key, at each heartbeat of a busy worker, the monitoring interval plus
# 60 s, so a key with more left belongs to a worker less than 30 s late, whatever its interval.
BUSY_KEY_LEFT = 30
UNQUEUED = "RQ has no such job"  # the reason a queued job of Jobcast's that RQ lacks fails with
# Seconds a queued Jobcast job may be missing from RQ before it fails: longer than a producer's
# enqueue can take between opening the log and RQ having the job, riding out a failover (a
# Sentinel client retries for 15 s).
UNQUEUED_GRACE = 30.0


class Watchdog(Periodic):
    """Periodic checks, run in a daemon thread (a greenlet under gevent)."""

    thread_name = "jobcast-watchdog"

    def __init__(self, redis: Redis, logs: LogStore, interval: float = 5.0):
        """Prepare; :meth:`start` runs it. ``redis`` holds RQ's queue, ``logs`` the job logs."""
        super().__init__(interval)
        self.redis = redis
        self.logs = logs
        self.config = logs.settings
        self.missing: set[str] = set()  # plain RQ jobs found gone from RQ in the last round
        # Jobcast's queued jobs RQ lacked in the last round: when each was first found missing
        self.unqueued: dict[str, float] = {}
        # Jobcast's queued jobs RQ had ended in the last round (their callback may be writing)
        self.rq_ended: set[str] = set()
        self.lost_redis = False  # the last round could not reach Redis
        self.back_at: float | None = None  # when a round reached it again after one could not

    def round(self) -> None:
        """Check, if this process holds the lock (one web process at a time does)."""
        now = time.time()
        try:
            held = self.redis.set(LOCK, "1", nx=True, ex=max(1, int(self.interval) - 1))
        except UNREACHABLE:
            self.lost_redis = True
            raise
        if self.lost_redis:
            self.lost_redis, self.back_at = False, now
        if held:
            self.check(now)

    def check(self, now: float | None = None) -> list[str]:
        """One round; returns the ids of jobs it failed for lack of workers."""
        now = time.time() if now is None else now
        queue = Queue(self.config.queue_name, connection=self.redis, job_class=JobcastJob)
        # RQ's own abandoned-job handling: retry if retries are left, else fail (+ callback).
        # Held for three monitoring intervals after an outage: it expired the executions of the
        # jobs that ran through it, whose workers beat again within an interval of its end.
        if self.back_at is None or now - self.back_at >= resume_grace(self.config.monitor_interval):
            queue.started_job_registry.cleanup(exception_handlers=[])
        self.reconcile(now)
        if self.live_workers(queue, now):
            self.redis.delete(NO_WORKER_SINCE)
            return []
        if now - self.no_worker_since(now) < self.config.orphan_timeout:
            return []
        return self.fail_orphans(f"no worker alive for {self.config.orphan_timeout} s")

    def no_worker_since(self, now: float) -> float:
        """When the rounds began to find no live worker: ``now`` for the first such round.

        Shared by every web process (whichever holds the lock runs the round), and forgotten
        when no round has run for a while (every web process was down): the grace then starts
        again, rather than fail every job at once on a gap long over.
        """
        forget = int(self.config.orphan_timeout + 4 * self.interval) + 1
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(NO_WORKER_SINCE, repr(now), nx=True, ex=forget)
        pipe.get(NO_WORKER_SINCE)
        pipe.expire(NO_WORKER_SINCE, forget)
        _, since, _ = pipe.execute()
        return float(since) if since is not None else now

    def live_workers(self, queue: Queue, now: float) -> int:
        """Workers that sent a heartbeat recently, or that are busy and not late with the next.

        A killed worker's registration lingers until its key expires (over a minute while it
        had a job), so liveness is judged by the heartbeat itself: idle workers send one every
        :data:`~jobcast.core.workers.IDLE_HEARTBEAT` s (`jobcast worker`), and count for
        :data:`~jobcast.core.workers.HEARTBEAT_GRACE`. Busy ones send one every
        monitoring interval, which each worker sets (``JOBCAST_MONITOR_INTERVAL``, ``rq worker
        --job-monitoring-interval``; a non-forking worker sends none until the job ends): one
        whose heartbeat is older than the grace counts while its key has more than
        :data:`BUSY_KEY_LEFT` seconds left, as RQ sets it by the worker's own interval (a fixed
        grace failed every job over about 50 s of a worker beating every 60 s). Those keys
        cost one round trip; there are none while every worker beats within the grace.
        """
        fresh, late = 0, []
        for w in WorkerRecord.all(queue=queue):
            beat = 0.0
            if w.last_heartbeat is not None:
                hb = w.last_heartbeat  # RQ stores UTC; older releases return naive datetimes
                beat = (hb if hb.tzinfo else hb.replace(tzinfo=timezone.utc)).timestamp()
            if now - beat < HEARTBEAT_GRACE:
                fresh += 1
            elif w.get_state() == WorkerStatus.BUSY:
                late.append(w.key)
        if late:
            pipe = self.redis.pipeline(transaction=False)
            for key in late:
                pipe.ttl(key)
            fresh += sum(1 for left in pipe.execute() if left > BUSY_KEY_LEFT)
        return fresh

    def reconcile(self, now: float | None = None) -> list[str]:
        """End the logs of open jobs that RQ has ended, or does not have, at ``now`` (the
        round's time, by default :func:`time.time`); returns their ids.

        One read of the open jobs serves both checks: plain RQ jobs
        (:meth:`end_as_rq_reports`) and Jobcast's own queued ones (:meth:`fail_unqueued`).
        """
        now = time.time() if now is None else now
        jobs = self.logs.open_job_states()
        ended = self.end_as_rq_reports([job_id for job_id, origin, _ in jobs if origin])
        return ended + self.fail_unqueued(
            [job_id for job_id, origin, status in jobs if not origin and status == "queued"], now)

    def end_as_rq_reports(self, pending: list[str]) -> list[str]:
        """End the logs of the plain RQ jobs of ``pending`` that RQ has ended; their ids.

        A Jobcast-aware worker writes these entries itself (first, or at the same moment as
        RQ), and the log keeps only the first terminal entry, so this one is a safety net for
        workers without the hook and for jobs RQ gave up on after their worker died.
        """
        if not pending:
            self.missing = set()
            return []
        ended, missing = [], set()
        for job_id, job in zip(pending, Job.fetch_many(pending, connection=self.redis)):
            rq_status = job.get_status(refresh=False) if job is not None else None
            jlog = self.logs.log(job_id)
            if rq_status is None and job_id not in self.missing:
                # RQ deletes a job with result_ttl=0 as it finishes, just before the worker's
                # hook logs "finished": only a job still gone a round later is failed.
                missing.add(job_id)
                continue
            if rq_status == JobStatus.FINISHED:
                seq = jlog.finished()
            elif rq_status in RQ_ENDED or rq_status is None:
                seq = jlog.failed(f"RQ reports the job {rq_status.value if rq_status else 'gone'}")
            else:
                continue
            if seq > 0:
                log.info("watchdog: job %s ended as RQ reports (%s)", job_id, rq_status)
                ended.append(job_id)
        self.missing = missing
        return ended

    def fail_unqueued(self, queued: list[str], now: float) -> list[str]:
        """Fail the jobs of ``queued`` (Jobcast's own, their logs ``queued``) that RQ has not
        had in any round of the last :data:`UNQUEUED_GRACE` seconds, or has ended in two
        rounds running; returns their ids.

        The producer opens a job's log before it queues the job on RQ, so rounds may fall
        between the two, for as long as its enqueue rides out a failover: only a job still
        missing once the grace is over is failed (a round that finds it begins the grace
        again). A job RQ has ended (its work-horse failed before it wrote to the log) is
        failed a round later, with RQ's reason: its failure callback, if it can, writes the
        end first. Running jobs are not asked about (their worker, and RQ's handling of
        abandoned jobs, end them), so they cost no command; a queued one costs a read of RQ's
        status, a page of them one round trip.
        """
        statuses: list[bytes | None] = []
        for page in in_pages(queued, PAGE):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in page:
                pipe.hget(Job.key_for(job_id), "status")
            statuses += pipe.execute()
        failed, gone, rq_ended = [], {}, set()
        for job_id, status in zip(queued, statuses):
            if status is None:
                since = gone[job_id] = self.unqueued.get(job_id, now)
                if now - since < UNQUEUED_GRACE:
                    continue
                reason = UNQUEUED
            elif status.decode() in RQ_ENDED:
                rq_ended.add(job_id)
                if job_id not in self.rq_ended:
                    continue
                reason = self.rq_reason(job_id, status.decode())
            else:
                continue
            if self.logs.log(job_id).failed(reason) > 0:
                log.warning("watchdog: job %s failed: %s", job_id, reason)
                failed.append(job_id)
        self.unqueued, self.rq_ended = gone, rq_ended
        return failed

    def rq_reason(self, job_id: str, status: str) -> str:
        """Why RQ ended the job: its status, and the exception of its last run as much as
        JOBCAST_FAILURE_REASON shows (``RQ reports the job failed: ConnectionError: ...``)."""
        reason = f"RQ reports the job {status}"
        if self.config.failure_reason == "none":
            return reason
        try:
            result = Job.fetch(job_id, connection=self.redis).latest_result()
        except NoSuchJobError:
            return reason
        if result is None or not result.exc_string:
            return reason
        return f"{reason}: {reason_from_traceback(result.exc_string, self.config.failure_reason)}"

    def fail_orphans(self, reason: str) -> list[str]:
        """Write ``failed`` for every queued or running job in the job index."""
        failed = []
        for job_id, origin in self.logs.open_jobs():
            # Jobs on other RQ queues have their own workers, which this check does not watch.
            if origin in ("", self.config.queue_name):
                if self.logs.log(job_id).failed(reason) > 0:
                    log.warning("watchdog: job %s failed: %s", job_id, reason)
                    failed.append(job_id)
                try:
                    # Take it off the queue too, so a worker that comes back does not run it.
                    Job.fetch(job_id, connection=self.redis).cancel()
                except (NoSuchJobError, InvalidJobOperation):
                    pass
        return failed
