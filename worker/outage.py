"""RQ workers that ride out Redis outages and restarts (every Jobcast worker class).

RQ's own worker quits when a heartbeat cannot reach Redis while a job runs, registers only at
its birth (a Redis restarted empty lists no worker at all), and after a long outage takes every
job that ran through it for abandoned. :class:`OutageMixin` keeps a busy worker beating until
Redis answers, registers it again when RQ lost it, and holds RQ's maintenance for a while after
an outage, as the web's watchdog does.
"""

from __future__ import annotations

import os
import time

from redis import Redis
from redis.exceptions import RedisError
from redis.sentinel import SentinelConnectionPool
from rq import worker_registration
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.utils import now

from jobcast.core.store import answering_client
from jobcast.core.workers import UNREACHABLE, resume_grace


class OutageMixin:
    """Mix into an RQ worker class (before it): heartbeats and maintenance that outlive a Redis
    outage, and a pubsub thread that ends when told."""

    max_connection_wait_time = 4.0
    """Most seconds RQ's loop waits, between jobs, before trying an unreachable Redis again
    (RQ's own is 60): a worker idle through an outage must be listed again before the web's
    watchdog, which counts none alive meanwhile, fails the queued jobs (JOBCAST_ORPHAN_TIMEOUT
    after :data:`~jobcast.core.workers.HEARTBEAT_GRACE`)."""
    _redis_lost_at: float | None = None
    """When a heartbeat first failed to reach Redis, until one reaches it again."""
    _redis_back_at: float | None = None
    """When a heartbeat reached Redis again after failing to."""
    _horse_exit: tuple = (None, None, None)
    """The last work-horse's pid, wait status and resource usage, as ``wait_for_horse`` gave them."""
    clock = staticmethod(time.monotonic)
    """The clock of those two (a test's own, in the tests)."""
    _beats: Redis | None = None
    """The client of the heartbeats sent while a job runs (:meth:`maintain_heartbeats`)."""

    def unsubscribe(self) -> None:
        """Stop listening for RQ's commands, the pubsub thread told to end before it is woken
        (every Jobcast worker class: ``jobcast.Worker`` as ``jobcast worker``).

        RQ sends ``UNSUBSCRIBE``, then stops the thread. Since redis-py 8.2, that stop waits
        for the thread to end. But the reply wakes the thread, and if it comes before the
        stop, the thread goes back to a 60-second read. The warm shutdown then hung until
        compose's grace period killed the worker (exit 137). Here the thread is told first,
        so the reply ends it.
        """
        thread = self.pubsub_thread
        if thread is None:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name,
                      self.pubsub_channel_name)
        try:
            thread.stop(timeout=0)  # only clears its flag: the reply below wakes it
        except TypeError:  # redis-py before 8.2: stop() takes no timeout, and never waits
            thread.stop()
        try:
            self.pubsub.unsubscribe()
        except (RedisError, OSError) as exc:  # Redis is away: the thread ends after its wait
            self.log.warning("Worker %s: could not unsubscribe (%s)", self.name, exc)
        thread.join(timeout=2)
        self.pubsub.close()

    def heartbeat(self, timeout: int | None = None, pipeline=None) -> None:
        """RQ's heartbeat, in one round trip with the check of the worker's registration
        (:meth:`_keep_registered`); while a work-horse runs a job, a Redis out of reach is
        ridden out.

        Between jobs, RQ's loop catches the error and tries again with backoff. While a job
        runs, RQ's monitoring loop beats through :meth:`maintain_heartbeats`, and through this
        one when the job is past its timeout or the wait for the work-horse was interrupted;
        there RQ would quit on it, as below.
        """
        if pipeline is not None:  # sent by the caller, which sees any failure
            super().heartbeat(timeout, pipeline)
            return
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                super().heartbeat(timeout, pipeline=pipe)
                beat = len(pipe)
                self._ask_registered(pipe)
                replies = pipe.execute()[beat:]
            self._keep_registered(replies, timeout or self.worker_ttl + 60)
        except UNREACHABLE as exc:
            monitoring = bool(self.horse_pid) and not self.is_horse
            self._redis_unreachable(exc, warn=monitoring)
            if monitoring:
                return
            raise  # between jobs: RQ's loop waits and tries again
        self._redis_reached()

    def maintain_heartbeats(self, job: Job, execution) -> None:
        """RQ's heartbeats of the worker, the job and its execution, sent every monitoring
        interval while a work-horse runs the job, then the check of the worker's registration
        (:meth:`_keep_registered`); a Redis out of reach is ridden out.

        The work-horse goes on meanwhile: its writes to the job's log retry for about a minute
        (jobcast.core.store). The worker logs one warning per outage and tries again at the
        next interval, and a line when Redis answers again. RQ's own loop would quit on the
        error, orphaning the work-horse, and the job would be retried or failed.
        """
        # Sent on a client whose commands wait at most COMMAND_TIMEOUT s, not on RQ's (25 s, for
        # its blocking dequeue): held that long by a Sentinel primary that froze, a heartbeat
        # reached the promoted one after the job's execution had expired (three monitoring
        # intervals), and the web's watchdog retried the job beside itself. RQ's method sends
        # them all through self.connection, which is that client for the length of the call
        # (only this thread uses it meanwhile: the work-horse is a process of its own).
        rq_connection = self.connection
        if self._beats is None:
            self._beats = answering_client(rq_connection)
        self.connection = self._beats
        try:
            super().maintain_heartbeats(job, execution)
            with self.connection.pipeline(transaction=False) as pipe:
                self._ask_registered(pipe)
                replies = pipe.execute()
            self._keep_registered(replies, self.job_monitoring_interval + 60)
        except UNREACHABLE as exc:
            self._redis_unreachable(exc, warn=True, job=job)
            return
        finally:
            self.connection = rq_connection
        self._redis_reached()

    def monitor_work_horse(self, job: Job, queue, execution) -> None:
        """RQ's watch of the work-horse, and its reading of how the job ended; a Redis out of
        reach when the work-horse has ended is waited out, then the job is handled as RQ
        would have.

        A work-horse that could not record its job's end (Redis went away as the job ended,
        or the job failed on it) exits with an error, and RQ then reads the job's status
        from Redis here. On the error RQ's worker would quit, leaving the job "started" (and
        its viewers waiting) until a watchdog or RQ's cleanup found it.
        """
        try:
            super().monitor_work_horse(job, queue, execution)
            return
        except UNREACHABLE as exc:
            if self.horse_pid:  # (RQ clears it once the work-horse has ended)
                raise
            self._redis_unreachable(exc, warn=False)
            self.log.warning("Worker %s: the work-horse of job %s ended, and Redis cannot be "
                             "reached to learn how (%s); waiting for it", self.name, job.id, exc)
        if not self._wait_for_redis():
            return  # asked to stop meanwhile: RQ's cleanup of abandoned jobs will see to it
        try:
            status = job.get_status()
        except InvalidJobOperation:
            return  # it ended and its key has expired since
        if self._stopped_job_id == job.id:
            self._handle_stopped_job(job, queue, execution)
        elif status not in (JobStatus.FINISHED, JobStatus.FAILED):
            # As RQ handles a work-horse that ended without recording its job's end.
            job.ended_at = now()
            retpid, ret_val, rusage = self._horse_exit
            signal_msg = f" (signal {os.WTERMSIG(ret_val)})" if ret_val and os.WIFSIGNALED(ret_val) else ""
            reason = (f"Work-horse terminated unexpectedly; waitpid returned {ret_val}{signal_msg}; "
                      "Redis could not be reached as it ended")
            self.log.warning("Worker %s: job %s failed (%s)", self.name, job.id, reason)
            self.handle_work_horse_killed(job, retpid, ret_val, rusage)
            self.handle_job_failure(job, queue=queue, exc_string=reason, execution=execution)

    def wait_for_horse(self):
        """RQ's wait for the work-horse to end; what it returns is kept for
        :meth:`monitor_work_horse`."""
        self._horse_exit = super().wait_for_horse()
        return self._horse_exit

    def _wait_for_redis(self) -> bool:
        """Wait until Redis answers, trying again at growing intervals (up to
        :attr:`max_connection_wait_time`); False when the worker is asked to stop first."""
        delay = 0.25
        while not self._stop_requested:
            try:
                self.connection.ping()
            except UNREACHABLE:
                time.sleep(delay)
                delay = min(delay * 2, self.max_connection_wait_time)
                continue
            self._redis_reached()
            return True
        return False

    def _ask_registered(self, pipe) -> None:
        """Queue on ``pipe`` the reads that tell whether RQ still lists this worker: its key
        as its birth wrote it, and its place in RQ's sets of workers (all, and each queue's)."""
        pipe.hexists(self.key, "birth")
        pipe.sismember(self.redis_workers_keys, self.key)
        for name in self.queue_names():
            pipe.sismember(worker_registration.WORKERS_BY_QUEUE_KEY % name, self.key)

    def _keep_registered(self, replies: list, ttl: int) -> None:
        """Register the worker again if the replies of :meth:`_ask_registered` say RQ lost it.

        RQ registers a worker once, at its birth. Its heartbeat writes the worker's key again,
        but not its place in the sets that ``Worker.all`` reads (and, between jobs, not the
        key's other fields): after Redis restarted empty (or the key expired in a long outage)
        a live worker was listed nowhere, and the web's watchdog, which counts the workers of
        the queue there, failed every job ("no worker alive") while the worker ran it. RQ's
        ``register_birth`` refuses a key without ``death``, so the registration is written
        here as it writes it, birth date and all, with the worker's state.
        """
        if all(replies) or self.birth_date is None:  # (not born yet: nothing to restore)
            return
        self.log.warning("Worker %s: RQ's registry of workers had lost it (Redis restarted "
                         "empty, or its key expired); registered again", self.name)
        fields = self.serialize()
        fields["state"] = self.get_state()
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping=fields)
            worker_registration.register(self, pipe)
            pipe.expire(self.key, ttl)
            pipe.execute()

    def _redis_unreachable(self, exc: Exception, warn: bool, job: Job | None = None) -> None:
        """Note that Redis could not be reached; the first failure of an outage is logged
        (with ``warn``) as one line."""
        if self._redis_lost_at is not None:
            return
        self._redis_lost_at = self.clock()
        if warn:
            running = f" while job {job.id} runs" if job is not None else ""
            self.log.warning("Worker %s: cannot reach Redis%s (%s); its work-horse goes on, and "
                             "the heartbeat is tried again every %s s", self.name, running,
                             exc, self.job_monitoring_interval)

    def redis_back(self) -> None:
        """Redis answers again after an outage this worker did not see from its start (it
        began in it): its maintenance waits as after one it rode out (:meth:`clean_registries`)."""
        self._redis_back_at = self.clock()

    def _redis_reached(self) -> None:
        """Note that Redis answered; after an outage, say so once."""
        if self._redis_lost_at is None:
            return
        self._redis_back_at = self.clock()
        self.log.info("Worker %s: Redis answers again (after %.0f s)", self.name,
                      self._redis_back_at - self._redis_lost_at)
        self._redis_lost_at = None

    def clean_registries(self) -> None:
        """RQ's maintenance of its registries, but not just after an outage.

        Among them is RQ's cleanup of jobs abandoned by dead workers: a job whose execution's
        heartbeat has expired is retried or failed. An outage longer than that heartbeat's TTL
        (three monitoring intervals for `jobcast worker`) expires the execution of every job
        that ran through it, while their workers live on and beat again within an interval of
        Redis's return. So for three monitoring intervals after this worker reaches Redis again
        the maintenance waits (RQ runs it at its next chance), as the web's watchdog does.
        """
        back = self._redis_back_at
        if back is not None and self.clock() - back < resume_grace(self.job_monitoring_interval):
            return
        pool = self.connection.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            # On connections dialed now, to the primary the Sentinels name now. An idle one
            # may reach a primary that froze through a failover and woke still taking itself
            # for the primary (until the Sentinels make it a replica, ~10 s), whose registries
            # are stale: RQ's cleanup found the running job abandoned there and queued it
            # again, and this worker ran it beside itself. (A reconnect per maintenance.)
            pool.disconnect(inuse_connections=False)
        super().clean_registries()
