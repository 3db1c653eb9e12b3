"""The log store: where job logs live, and the one place a :class:`JobLog` is configured.

Every service reaches a job's log through a :class:`LogStore`: it knows the stream store (the
Redis, or Redis Cluster, of ``JOBCAST_STREAM_URL``, by default ``REDIS_URL``), the settings
every log is written with (its cap, its expiry, the job list's length), and RQ's Redis, from
which it adopts the jobs Jobcast did not enqueue.
"""

from __future__ import annotations

import time

from redis import Redis
from rq.job import Job

from jobcast.core.joblog import JobInfo, JobLog
from jobcast.core.keys import JOBS_INDEX, OPEN_JOBS, job_keys
from jobcast.core.settings import Settings, get_settings
from jobcast.core.store import StreamRedis, queue_redis, stream_redis
from jobcast.core.wait import in_pages

PAGE = 200  # jobs read per round trip by the watchdog's reads (see LogStore._states)

# RQ states of a job that a Jobcast-aware worker has not finished with yet.
ADOPTABLE = frozenset({b"queued", b"deferred", b"scheduled", b"started"})


class LogStore:
    """Job logs on one stream store, written with one set of settings."""

    def __init__(self, redis: StreamRedis, settings: Settings, queue: Redis | None = None):
        """Logs on ``redis``; ``queue`` is RQ's Redis (by default the same one)."""
        self.redis = redis
        self.settings = settings
        self.queue = queue if queue is not None else redis
        self._open_seeded = False  # see open_jobs()

    @classmethod
    def connect(cls, settings: Settings | None = None, queue: Redis | None = None,
                streams: StreamRedis | None = None) -> "LogStore":
        """The log store of ``settings`` (default: the environment's), on ``streams`` when
        given, else on this process's shared client of the stream store."""
        cfg = settings or get_settings()
        if queue is None and streams is None:
            queue = queue_redis(cfg)
        return cls(streams if streams is not None else stream_redis(cfg, queue), cfg, queue)

    def log(self, job_id: str) -> JobLog:
        """The log of ``job_id`` (InvalidJobId for a malformed id)."""
        cfg = self.settings
        return JobLog(self.redis, job_id, maxlen=cfg.log_maxlen, ttl=cfg.log_ttl,
                      index_max=cfg.jobs_index_max, value_max=cfg.value_max_bytes,
                      terminal_replicas=cfg.terminal_replicas,
                      terminal_wait_ms=cfg.terminal_wait_ms)

    def adopt(self, job_id: str) -> bool:
        """Open the log of an RQ job that Jobcast did not enqueue, if RQ has it pending or
        running on one of Jobcast's queues (JOBCAST_QUEUES); True when the job has a log now.

        A page opened right after ``Queue.enqueue`` then follows the job from its ``queued``
        entry, before a worker takes it. Only RQ's status, description and queue are read (no
        unpickling); a job that has already ended without a log has nothing to show, and a
        job of any other queue (another application's) is none of Jobcast's business.
        """
        status, description, origin = self.queue.hmget(Job.key_for(job_id), "status",
                                                        "description", "origin")
        if status not in ADOPTABLE or not self.settings.is_jobcast_queue((origin or b"").decode()):
            return False
        self.log(job_id).ensure((description or b"").decode(errors="replace"),
                                (origin or b"").decode(errors="replace"))
        return True

    def on_our_queues(self, job_id: str) -> bool:
        """True unless ``job_id`` is a job of a queue other than Jobcast's (JOBCAST_QUEUES).

        RQ's own record says which queue the job is on; once RQ has forgotten it, the queue its
        log recorded (none for the jobs Jobcast enqueued itself, which are Jobcast's).
        """
        origin = self.queue.hget(Job.key_for(job_id), "origin")
        if origin is None:
            origin = self.redis.hget(job_keys(self.redis, job_id).meta, "origin")
            if not origin:
                return True
        return self.settings.is_jobcast_queue(origin.decode())

    def recent(self, limit: int = 50) -> list[JobInfo]:
        """The most recent jobs, newest first; expired ones are dropped from the index."""
        ids = [i.decode() for i in self.redis.zrevrange(JOBS_INDEX, 0, limit - 1)]
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(job_keys(self.redis, job_id).meta)
        jobs, gone = [], []
        for job_id, raw in zip(ids, pipe.execute()):
            if raw:
                jobs.append(JobInfo.from_hash(job_id, raw))
            else:
                gone.append(job_id)
        if gone:
            self.redis.zrem(JOBS_INDEX, *gone)
        return jobs

    def open_jobs(self) -> list[tuple[str, str]]:
        """(id, RQ queue) of every queued or running job (the open jobs,
        :data:`~jobcast.core.keys.OPEN_JOBS`); the queue is empty for the jobs Jobcast enqueued
        itself, and names it for plain RQ jobs.

        As :meth:`open_job_states`, without the status."""
        return [(job_id, origin) for job_id, origin, _ in self.open_job_states()]

    def open_job_states(self) -> list[tuple[str, str, str]]:
        """(id, RQ queue, status) of every queued or running job: the queue as
        :meth:`open_jobs` gives it, the status ``queued`` or ``running``.

        Only the open jobs (:data:`~jobcast.core.keys.OPEN_JOBS`) are read, and those found
        ended leave them: a round costs a command per job still open, not one per job the
        index remembers (1,000 by default, 18 ms of the web process's loop each round). The
        first call of a process reads the whole index once, and adds the open jobs it finds
        (those created by a version of Jobcast without the set). The status comes with the
        same reads (it decides whether a job is open): it costs no command."""
        if not self._open_seeded:
            self._seed_open()
        ids = [i.decode() for i in self.redis.zrange(OPEN_JOBS, 0, -1)]
        if not ids:
            return []
        found, ended = [], []
        for job_id, (status, origin) in zip(ids, self._states(ids)):
            if status in (b"queued", b"running"):
                found.append((job_id, (origin or b"").decode(), status.decode()))
            else:  # ended, or its metadata expired
                ended.append(job_id)
        if ended:
            self.redis.zrem(OPEN_JOBS, *ended)
            # A job reopened between the read and the removal (RQ's Repeat, a requeue) was
            # added again by its ``queued`` entry before the removal took it out: put it back.
            # One reopened after this read adds itself after the removal.
            back = {}
            for job_id, (status, origin) in zip(ended, self._states(ended)):
                if status in (b"queued", b"running"):
                    back[job_id] = time.time()
                    found.append((job_id, (origin or b"").decode(), status.decode()))
            if back:
                self.redis.zadd(OPEN_JOBS, back)
        return found

    def _seed_open(self) -> None:
        """Add every queued or running job of the index to the open jobs."""
        indexed = [(i.decode(), created) for i, created
                   in self.redis.zrange(JOBS_INDEX, 0, -1, withscores=True)]
        states = self._states([job_id for job_id, _ in indexed])
        open_now = {job_id: created for (job_id, created), (status, _) in zip(indexed, states)
                    if status in (b"queued", b"running")}
        if open_now:
            self.redis.zadd(OPEN_JOBS, open_now, nx=True)
        self._open_seeded = True

    def _states(self, ids: list[str]) -> list[tuple[bytes | None, bytes | None]]:
        """(status, origin) of each job of ``ids``: one round trip per ``PAGE`` jobs, with a
        pause between two, in which a caller on an event loop (the watchdog, a greenlet under
        gevent) lets the loop's other work run."""
        states = []
        for page in in_pages(ids, PAGE):
            pipe = self.redis.pipeline()
            for job_id in page:
                pipe.hmget(job_keys(self.redis, job_id).meta, "status", "origin")
            states += pipe.execute()
        return states
