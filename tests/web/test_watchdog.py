"""The watchdog's rounds against a real Redis (a database of its own, so its job index holds only
this module's jobs): orphans fail after the timeout, plain RQ jobs end as RQ reports them, and
Jobcast's queued jobs that RQ never got, or ended before they could log, fail."""

from __future__ import annotations

import contextlib
import time
import uuid

import psutil
import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus

from jobcast.core.joblog import JobLog
from jobcast.core.logstore import LogStore
from jobcast.core.settings import Settings
from jobcast.core.workers import RQ_SOCKET_TIMEOUT, resume_grace
from tests.support.commands import count_commands
from tests.support.services import own_database
from tests.support.wait import wait_for
from jobcast.web.watchdog import UNQUEUED, UNQUEUED_GRACE, Watchdog

DB = 7


@pytest.fixture
def wd(redis_server):
    """A watchdog on a fresh database and queue, orphan timeout 15 s."""
    with own_database(redis_server, DB) as (url, redis):
        queue = f"wd-{uuid.uuid4().hex[:8]}"
        config = Settings(redis_url=url, queue_name=queue, orphan_timeout=15)
        yield Watchdog(redis, LogStore(redis, config), interval=0.1)


def new_job(redis: Redis, origin: str = "") -> JobLog:
    """A queued job in the index: Jobcast's own (no origin) or a plain RQ job's (its queue)."""
    jlog = JobLog(redis, uuid.uuid4().hex)
    jlog.create("sqrt", {}, None, extra={"origin": origin})
    return jlog


def on_rq(wd: Watchdog, jlog: JobLog) -> JobLog:
    """Queue an RQ job with the id of ``jlog``'s job on the watchdog's queue (no worker takes
    it), as the producer does after opening the log; returns ``jlog``."""
    Queue(wd.config.queue_name, connection=wd.redis).enqueue("os.getpid", job_id=jlog.job_id)
    return jlog


@pytest.fixture
def sent(wd, monkeypatch) -> list[str]:
    """The names of the commands the watchdog's client sends from now on."""
    return count_commands(wd.redis, monkeypatch)


def last_entry(jlog: JobLog):
    """The newest entry of the job's log."""
    return list(jlog.entries())[-1]


def test_queued_and_running_jobs_fail_only_after_no_worker_lived_for_the_orphan_timeout(wd):
    # The queued job is on RQ, as the producer leaves it: one RQ lacks fails sooner (below).
    queued, running = on_rq(wd, new_job(wd.redis)), new_job(wd.redis)
    running.started("w1", 1)
    finished = new_job(wd.redis)
    finished.finished()
    assert wd.check(now=1000.0) == []
    assert wd.check(now=1014.0) == []
    assert sorted(wd.check(now=1015.5)) == sorted([queued.job_id, running.job_id])
    for jlog in (queued, running):
        entry = last_entry(jlog)
        assert entry.kind == "failed" and entry.data["reason"] == "no worker alive for 15 s"
    assert last_entry(finished).kind == "finished"
    assert wd.check(now=1030.0) == []  # a failed job is not failed twice


def test_the_grace_without_workers_is_one_for_every_web_process_and_starts_again_after_workers(
        wd, monkeypatch):
    """A review's finding: each process kept its own "no worker since", and set it back only
    in a round it ran itself. Whichever process holds the lock runs a round, so a process out
    of the rounds for hours kept an old gap's time: at the next gap, its first round failed
    every job at once (and another process counted a gap from its own first round)."""
    other = Watchdog(wd.redis, wd.logs, interval=0.1)
    workers = {"count": 0}
    monkeypatch.setattr(Watchdog, "live_workers", lambda self, queue, now: workers["count"])
    job = on_rq(wd, new_job(wd.redis))
    assert wd.check(now=1000.0) == []  # a gap begins
    assert other.check(now=1016.0) == [job.job_id]  # the same gap, timed from its start
    again = on_rq(wd, new_job(wd.redis))
    workers["count"] = 1
    assert other.check(now=1020.0) == []  # workers are back
    workers["count"] = 0
    assert wd.check(now=9000.0) == []  # a new gap: its grace starts now
    assert wd.check(now=9014.0) == []
    assert other.check(now=9015.5) == [again.job_id]


def test_jobs_on_another_rq_queue_are_left_to_their_own_workers(wd):
    other = new_job(wd.redis, origin="someone-elses-queue")
    own = new_job(wd.redis)       # the round does fail orphans: its own queue's
    wd.check(now=0.0)
    assert wd.fail_orphans("no worker") == [own.job_id]
    assert other.status() == "queued" and own.status() == "failed"


def test_plain_rq_jobs_end_as_rq_reports_them_and_vanished_ones_only_a_round_later(wd):
    q = Queue(wd.config.queue_name, connection=wd.redis)
    done = q.enqueue("os.getpid")
    broken = q.enqueue("os.getpid")
    gone_id = uuid.uuid4().hex
    for job_id in (done.id, broken.id, gone_id):
        JobLog(wd.redis, job_id).ensure("os.getpid()", q.name)
    done.set_status(JobStatus.FINISHED)
    broken.set_status(JobStatus.FAILED)

    assert sorted(wd.reconcile()) == sorted([done.id, broken.id])
    assert last_entry(JobLog(wd.redis, done.id)).kind == "finished"
    failed = last_entry(JobLog(wd.redis, broken.id))
    assert failed.kind == "failed" and failed.data["reason"] == "RQ reports the job failed"
    assert JobLog(wd.redis, gone_id).status() == "queued"  # RQ may be about to log "finished"

    assert wd.reconcile() == [gone_id]
    assert last_entry(JobLog(wd.redis, gone_id)).data["reason"] == "RQ reports the job gone"


def test_a_queued_jobcast_job_that_rq_lacks_fails_once_the_grace_is_over_with_the_reason(wd):
    """A review's finding: the producer opened the log, then RQ's Redis refused the job (or the
    producer died): the log said "queued" forever, and its viewers waited forever."""
    lost = new_job(wd.redis)
    assert wd.reconcile(now=0.0) == []  # the producer may be between its two steps
    assert wd.reconcile(now=UNQUEUED_GRACE - 1) == []  # its enqueue may ride out a failover
    assert lost.status() == "queued"
    assert wd.reconcile(now=UNQUEUED_GRACE) == [lost.job_id]
    entry = last_entry(lost)
    assert entry.kind == "failed" and entry.data["reason"] == UNQUEUED == "RQ has no such job"
    assert wd.reconcile() == []  # it left the open jobs: not failed twice


def test_only_queued_jobs_that_rq_lacked_two_rounds_running_fail_not_known_late_or_running(wd):
    lost = new_job(wd.redis)  # the control: proves the rounds did check
    known = on_rq(wd, new_job(wd.redis))
    late = new_job(wd.redis)  # the producer queues it on RQ between the two rounds
    running = new_job(wd.redis)  # its worker and RQ end it; the watchdog does not ask RQ
    running.started("w1", 1)

    assert wd.reconcile(now=0.0) == []
    on_rq(wd, late)
    assert wd.reconcile(now=UNQUEUED_GRACE) == [lost.job_id]
    assert wd.reconcile(now=2 * UNQUEUED_GRACE) == []
    assert [known.status(), late.status(), running.status()] == ["queued", "queued", "running"]


def test_a_job_whose_enqueue_outlasts_several_rounds_is_not_failed_before_the_grace(wd):
    """A review's finding: a producer whose enqueue rode out a failover for more than two
    rounds (10 s) found its job already failed as "RQ has no such job"."""
    slow = new_job(wd.redis)
    for now in range(0, int(UNQUEUED_GRACE), 5):
        assert wd.reconcile(now=float(now)) == []
    on_rq(wd, slow)
    assert wd.reconcile(now=UNQUEUED_GRACE + 5) == []
    assert slow.status() == "queued"


def test_a_queued_jobcast_job_that_rq_ended_fails_a_round_later_with_rq_s_reason(wd):
    """A Cluster operator's finding: with the stream store's node down, each work-horse failed
    before it wrote to the log, and so did the failure callback. RQ filed the job failed; its
    log said "queued" for good, and its viewers waited for good."""
    from rq.results import Result

    crashed = on_rq(wd, new_job(wd.redis))
    stopped = on_rq(wd, new_job(wd.redis))
    waiting = on_rq(wd, new_job(wd.redis))  # the control: RQ has it queued
    job = Queue(wd.config.queue_name, connection=wd.redis).fetch_job(crashed.job_id)
    job.set_status(JobStatus.FAILED)
    Result.create_failure(job, ttl=60, exc_string=(
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:7451."))
    Queue(wd.config.queue_name, connection=wd.redis).fetch_job(stopped.job_id).set_status(
        JobStatus.STOPPED)

    assert wd.reconcile() == []  # its failure callback may be writing its end
    assert sorted(wd.reconcile()) == sorted([crashed.job_id, stopped.job_id])
    assert last_entry(crashed).data["reason"] == (
        "RQ reports the job failed: ConnectionError: Error 111 connecting to 127.0.0.1:7451.")
    assert last_entry(stopped).data["reason"] == "RQ reports the job stopped"
    assert waiting.status() == "queued" and wd.reconcile() == []


def test_a_round_costs_one_status_read_per_queued_jobcast_job_and_no_command_per_running_one(
        wd, sent):
    """The web process's Redis commands per second are a benchmarked figure (the job list rows
    of docs/benchmarks.md, with 50 running jobs): running jobs must add none."""
    queued = on_rq(wd, new_job(wd.redis))
    for _ in range(3):
        new_job(wd.redis).started("w1", 1)  # no RQ job: were it asked about, it would fail
    wd.reconcile()  # a process's first round also reads the whole index once
    sent.clear()
    assert wd.reconcile() == [] and wd.reconcile() == []
    reads = ["ZRANGE"] + ["HMGET"] * 4  # the open jobs and their states, as before
    assert sorted(sent) == sorted((reads + ["HGET"]) * 2)
    assert queued.status() == "queued"


def test_stop_ends_the_watchdog_thread(wd):
    wd.start()
    thread = wd._thread
    assert thread.is_alive()
    wd.stop()
    wait_for(lambda: not thread.is_alive(), timeout=5, what="the watchdog thread to end")


def test_after_an_outage_the_watchdog_takes_no_job_for_abandoned_until_held_heartbeats_came(
        tmp_path):
    """An outage longer than a job's execution heartbeat (three monitoring intervals) expires
    it while its worker lives on. That worker beats again within an interval of Redis's
    return, but the watchdog's first round after it came first: it retried (or failed) the
    job, and the work-horse still running it wrote on. A failover review's finding: a
    Sentinel primary that froze holds a worker's heartbeat for RQ's socket timeout (25 s),
    while the web already reads the promoted replica, so three intervals were not enough."""
    grace = resume_grace(2)
    assert grace == RQ_SOCKET_TIMEOUT + 2
    from redis.exceptions import ConnectionError as RedisConnectionError

    from jobcast.launcher.redisserver import RedisServer

    with RedisServer(data_dir=tmp_path / "redis") as server:
        redis = Redis.from_url(server.url)
        config = Settings(redis_url=server.url, queue_name="wd-outage", monitor_interval=2)
        wd = Watchdog(redis, LogStore(redis, config), interval=0.1)
        wd.round()
        server.stop()
        with pytest.raises(RedisConnectionError):
            wd.round()
        server.start()
        queue = Queue(config.queue_name, connection=redis)
        job = queue.enqueue("os.getpid")
        job.set_status(JobStatus.STARTED)  # its execution's heartbeat expired a second ago
        redis.zadd(queue.started_job_registry.key, {f"{job.id}:e1": time.time() - 1})
        back = time.time()
        wd.round()  # Redis is back
        assert job.get_status() == JobStatus.STARTED
        wd.check(now=back + grace - 0.5)
        assert job.get_status() == JobStatus.STARTED
        wd.check(now=back + grace + 0.5)
        assert job.get_status() != JobStatus.STARTED  # abandoned: failed (it has no retry)
        redis.close()


@pytest.mark.slow  # a real worker
@pytest.mark.parametrize("command", ["jobcast worker", "rq worker -w jobcast.Worker"])
def test_a_busy_worker_beating_every_minute_is_alive_until_late_whatever_its_interval(
        wd, tmp_path, command):
    """A review's finding: `JOBCAST_MONITOR_INTERVAL=60` (or `rq worker -w jobcast.Worker
    --job-monitoring-interval 60`) was accepted, but the watchdog took a worker silent for 35 s
    for dead: every job over about 50 s failed ("no worker alive for 15 s") as it ran.

    Its silence is played forward: the watchdog's round is told a later time, and the worker's
    key is made that much nearer its end, as Redis would have it then."""
    from rq import Worker

    from jobcast.producer.enqueue import enqueue
    from tests.support.services import Workers, start_rq_worker

    url, queue = wd.config.redis_url, wd.config.queue_name
    if command == "jobcast worker":
        [proc] = Workers(url, tmp_path).start(1, JOBCAST_QUEUE=queue,
                                              JOBCAST_MONITOR_INTERVAL="60")
    else:
        proc = start_rq_worker(url, queue, log_path=tmp_path / "worker.log",
                               options=("--job-monitoring-interval", "60"))
    try:
        job_id = enqueue("sqrt", {"n": 300, "interval": 0.1}, config=wd.config)
        rq_queue = Queue(queue, connection=wd.redis)
        # Running, not only taken: RQ marks the worker busy before its work-horse starts and
        # beats once (which would rewrite the heartbeat and TTL read below).
        wait_for(lambda: JobLog(wd.redis, job_id).values_logged() >= 1, 20,
                 what="the job's first value")
        [worker] = Worker.all(queue=rq_queue)
        assert worker.get_state() == "busy"
        beat = worker.last_heartbeat.timestamp()
        ttl_at_beat = wd.redis.ttl(worker.key) + (time.time() - beat)

        def silent_for(seconds: float) -> float:
            """The time ``seconds`` after the worker's last heartbeat, its key's TTL as then."""
            wd.redis.expire(worker.key, int(ttl_at_beat - seconds))
            return beat + seconds

        assert wd.check(now=silent_for(40)) == []
        assert wd.check(now=silent_for(60)) == []  # a fixed grace failed the job here
        assert JobLog(wd.redis, job_id).status() == "running"
        # A worker killed then is found dead before its key expires: once over 30 s late (its
        # key with under 30 s left).
        assert wd.live_workers(rq_queue, silent_for(ttl_at_beat - 32)) == 1
        assert wd.live_workers(rq_queue, silent_for(ttl_at_beat - 28)) == 0
    finally:
        # Its key was played with: killed, with its work-horse (and RQ's scheduler).
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_reading_rq_s_workers_leaves_the_web_s_command_timeout_as_it_is(wd):
    """A failover review's finding: RQ's Worker, made for each registered worker the watchdog
    and the metrics read, raised the web's shared pool's socket timeout from 5 s to 415 s
    (its dequeue timeout plus 10): with Redis frozen, /readyz and the API hung instead of
    answering 503."""
    from rq import Worker

    from jobcast.core.store import COMMAND_TIMEOUT
    from jobcast.web.metrics import RQCollector

    redis = Redis(connection_pool=wd.redis.connection_pool.__class__(
        **{**wd.redis.connection_pool.connection_kwargs, "socket_timeout": COMMAND_TIMEOUT}))
    watchdog = Watchdog(redis, wd.logs, interval=0.1)
    other = Redis(connection_pool=wd.redis.connection_pool.__class__(
        **wd.redis.connection_pool.connection_kwargs))
    worker = Worker([Queue(wd.config.queue_name, connection=other)], connection=other)
    worker.register_birth()
    try:
        watchdog.check()
        list(RQCollector(redis, wd.config.queue_name).collect())
        assert redis.connection_pool.connection_kwargs["socket_timeout"] == COMMAND_TIMEOUT
    finally:
        worker.register_death()
        redis.close()
        other.close()
