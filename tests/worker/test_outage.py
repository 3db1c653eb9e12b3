"""Workers across a Redis outage, against a redis-server of each test's own that the test stops
and starts: a busy worker rides it out, one that starts in it waits for Redis, no worker takes
the jobs that ran through it for abandoned just after it, and a Redis that comes back empty
lists every live worker again."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, Worker
from rq.job import Job, JobStatus

from jobcast.core.joblog import JobLog
from jobcast.core.settings import Settings
from jobcast.core.workers import RQ_SOCKET_TIMEOUT, resume_grace
from jobcast.launcher.redisserver import RedisServer
from jobcast.producer.enqueue import enqueue
from jobcast.core.logstore import LogStore
from jobcast.web.watchdog import Watchdog
from jobcast.worker.main import JobcastWorker
from tests.support.clock import FakeClock
from tests.support.services import (JOBCAST, ROOT, Workers, service_env, start_rq_worker,
                                    stop_process)
from tests.support.wait import wait_for

WARNED = "cannot reach Redis while job"  # the busy worker's one line per outage


@pytest.fixture
def server(tmp_path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, with its AOF (a restart keeps its data)."""
    s = RedisServer(data_dir=tmp_path / "redis", appendonly=True).start()
    yield s
    s.stop()


@pytest.fixture
def workers(server, tmp_path) -> Iterator[Workers]:
    """`jobcast worker` processes on that Redis, stopped at the end of the test."""
    pool = Workers(server.url, tmp_path)
    yield pool
    for proc in pool.procs:
        stop_process(proc, timeout=20)


@pytest.fixture
def own_worker(server, tmp_path) -> Iterator[tuple[Queue, subprocess.Popen, Path]]:
    """`rq worker -w jobcast.Worker` on a queue of the test's own: the queue, the worker and
    its log. Stopped at the end of the test, when it must exit 0 (a warm shutdown)."""
    log_path = tmp_path / "worker.log"
    redis = Redis.from_url(server.url)
    queue = Queue(f"own-{uuid.uuid4().hex[:8]}", connection=redis)
    proc = start_rq_worker(server.url, queue.name, log_path=log_path)
    try:
        yield queue, proc, log_path
    finally:
        stop_process(proc)
        redis.close()
    assert proc.returncode == 0, log_path.read_text()


def monitoring_worker(redis: Redis, clock: FakeClock) -> tuple[Queue, JobcastWorker]:
    """A queue of its own, and a Jobcast worker of it that monitors every 2 s by ``clock``."""
    queue = Queue(f"outage-{uuid.uuid4().hex[:8]}", connection=redis)
    worker = JobcastWorker([queue], connection=redis, job_monitoring_interval=2)
    worker.clock = clock
    return queue, worker


def abandoned_job(redis: Redis, queue: Queue) -> Job:
    """A job RQ has as started, whose execution's heartbeat expired a second ago: what an
    outage longer than that heartbeat leaves behind a live worker."""
    job = queue.enqueue("os.getpid")
    job.set_status(JobStatus.STARTED)
    redis.zadd(queue.started_job_registry.key, {f"{job.id}:{uuid.uuid4().hex}": time.time() - 1})
    return job


@pytest.mark.slow
@pytest.mark.chaos
def test_a_busy_worker_rides_out_an_outage_longer_than_its_heartbeat_and_the_job_ends_whole(
        server, workers, tmp_path):
    """A review's finding: an outage covering the worker's next heartbeat while it ran a job
    made RQ's loop quit ("found an unhandled exception, quitting"), `jobcast worker` exit 3
    and the work-horse run on without its parent; the job was retried, then failed."""
    [proc] = workers.start(1, JOBCAST_MONITOR_INTERVAL="1")
    log_path = tmp_path / "worker-0.log"
    redis = Redis.from_url(server.url)
    job_id = enqueue("sqrt", {"n": 30, "interval": 0.1}, config=Settings(redis_url=server.url))
    jlog = JobLog(redis, job_id)
    wait_for(lambda: jlog.values_logged() >= 5, 20, what="the job under way")
    # (the work-horse and RQ's scheduler: a worker that dies leaves them running)
    family = psutil.Process(proc.pid).children(recursive=True)
    try:
        [(_, expires)] = redis.zrange(Queue("jobcast", connection=redis).started_job_registry.key,
                                      0, -1, withscores=True)
        server.stop()
        # Down until the worker's heartbeats (one a second here) have met the outage, and past
        # the execution's own heartbeat (three intervals).
        wait_for(lambda: proc.poll() is not None or (WARNED in log_path.read_text()
                                                     and time.time() > expires + 1), 15,
                 what="heartbeats to fail")
        assert proc.poll() is None, log_path.read_text()
        server.start()
        wait_for(lambda: jlog.status() == "finished", 60, interval=0.2, what="the job to finish")
    finally:
        if proc.poll() is not None:
            for p in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
    entries = list(jlog.entries())
    assert [e.data["i"] for e in entries if e.kind == "value"] == list(range(30))
    assert [e.kind for e in entries if e.kind != "value"] == ["queued", "started", "finished"]
    # (RQ files a run_task job finished after the job itself has written its log's end)
    wait_for(lambda: Job.fetch(job_id, connection=redis).get_status() == JobStatus.FINISHED, 10,
             what="RQ to file the job finished")
    text = log_path.read_text()
    assert proc.poll() is None, text
    assert text.count(WARNED) == 1 and "Redis answers again" in text
    assert "unhandled exception" not in text
    stop_process(proc)
    assert proc.returncode == 0
    redis.close()


def outage(server: RedisServer, proc: subprocess.Popen, seconds: float) -> None:
    """Stop ``server`` for ``seconds`` (its AOF keeps what it had), failing at once if the
    worker ``proc`` quits meanwhile."""
    server.stop()
    back_at = time.monotonic() + seconds
    wait_for(lambda: proc.poll() is not None or time.monotonic() > back_at, seconds + 10,
             what="the outage to pass")
    assert proc.poll() is None, "the worker quit during the outage"
    server.start()


@pytest.mark.slow
@pytest.mark.chaos
def test_a_users_emit_job_rides_out_a_redis_restart_and_logs_each_value_once(server, own_worker):
    """A review's finding: a job of the user's own calling emit(), as in the README, failed at
    its first value in a 1.5 s Redis restart (its log was written on RQ's connection, which
    does not wait), and its worker quit ("found an unhandled exception, quitting")."""
    queue, proc, log_path = own_worker
    job = queue.enqueue("tests.support.user_jobs.emits", 30, 0.1)
    jlog = JobLog(queue.connection, job.id)
    wait_for(lambda: jlog.values_logged() >= 5, 20, what="the job under way")
    outage(server, proc, 2.0)
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 60, interval=0.2,
             what="the job to finish")
    entries = list(jlog.entries())
    assert [e.data["i"] for e in entries if e.kind == "value"] == list(range(30))
    assert [e.kind for e in entries if e.kind != "value"] == ["queued", "started", "finished"]
    assert proc.poll() is None and "unhandled exception" not in log_path.read_text()


@pytest.mark.slow
@pytest.mark.chaos
def test_a_work_horse_that_dies_in_an_outage_has_its_job_failed_once_redis_is_back(server,
                                                                                   own_worker):
    """Two reviews' finding: a work-horse that ended while Redis was down without recording its
    job's end (it crashed, or could not reach Redis) made its worker quit as it read the job's
    status ("found an unhandled exception, quitting"): the job stayed "started" and its viewers
    waited until a watchdog gave up on it."""
    queue, proc, log_path = own_worker
    job = queue.enqueue("tests.support.user_jobs.dies", 0.5)
    jlog = JobLog(queue.connection, job.id)
    wait_for(lambda: jlog.status() == "running", 20, what="the job to start")
    outage(server, proc, 3.0)  # the work-horse dies in it
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 30, interval=0.2,
             what="the job to be filed failed")
    assert jlog.status() == "failed"
    [end] = [e for e in jlog.entries() if e.kind == "failed"]
    assert "Work-horse terminated unexpectedly" in end.data["reason"], end.data
    text = log_path.read_text()
    assert proc.poll() is None and "unhandled exception" not in text, text
    # The worker goes on taking jobs.
    after = queue.enqueue("tests.support.user_jobs.sleeps", 0)
    wait_for(lambda: after.get_status(refresh=True) == JobStatus.FINISHED, 20,
             what="the next job to run")


@pytest.mark.slow
@pytest.mark.chaos
def test_a_work_horse_dies_with_its_worker_and_writes_nothing_after_it(server, workers):
    """A reliability review's finding: a worker SIGKILLed alone left its work-horse running on,
    orphaned; the job, taken for abandoned, ran again beside it, and each attempt's new epoch
    refused the other's writes until the retries ran out: the job failed ("LogReset"), though
    nothing had failed, while RQ filed it finished."""
    [proc] = workers.start(1)
    redis = Redis.from_url(server.url)
    job_id = enqueue("sqrt", {"n": 300, "interval": 0.05}, config=Settings(redis_url=server.url))
    jlog = JobLog(redis, job_id)
    wait_for(lambda: jlog.values_logged() >= 5, 20, what="the job under way")
    # The work-horse leads a process group of its own (RQ's scheduler, the other child, does not).
    [horse] = [p for p in psutil.Process(proc.pid).children() if os.getpgid(p.pid) == p.pid]
    proc.kill()
    proc.wait(10)
    try:
        alive = psutil.wait_procs([horse], timeout=5)[1]
        assert not alive, "the work-horse outlived its worker"
        assert jlog.values_logged() < 300, "it stopped writing mid-job"
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            horse.kill()
        redis.close()


@pytest.mark.slow
@pytest.mark.chaos
def test_jobcast_worker_started_while_redis_is_down_waits_for_it(tmp_path):
    """A review's finding: `jobcast worker` exited 3 at once when Redis was down, so a
    supervisor restarting it (`jobcast up`: 6 exits in 60 s) gave up during an outage."""
    server = RedisServer(data_dir=tmp_path / "redis")  # not started yet
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([*JOBCAST, "worker"], env=service_env(server.url), cwd=ROOT,
                                stdout=out, stderr=out)
    try:
        wait_for(lambda: proc.poll() is not None or "cannot reach Redis" in log_path.read_text(),
                 20, what="the worker to try Redis")
        assert proc.poll() is None, log_path.read_text()
        server.start()
        redis = Redis.from_url(server.url)
        # Idle: listening on its queue (and past the start, where SIGTERM is not handled yet).
        wait_for(lambda: [(w.pid, w.get_state()) for w in Worker.all(connection=redis)]
                 == [(proc.pid, "idle")], 20, what="the worker to register and listen")
        redis.close()
    finally:
        stop_process(proc)
        server.stop()
    assert proc.returncode == 0, log_path.read_text()


def test_waiting_for_redis_gives_up_after_its_limit_and_at_once_on_a_refused_password(tmp_path):
    from jobcast.worker.main import wait_for_redis

    clock = FakeClock()
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        """Let the time pass on the fake clock."""
        pauses.append(seconds)
        clock.advance(seconds)

    nobody = RedisServer(data_dir=tmp_path / "none")  # a free port, where no Redis listens
    with pytest.raises(RedisConnectionError):
        wait_for_redis(Redis.from_url(nobody.url), nobody.url, limit=10, clock=clock, sleep=sleep)
    assert pauses == [1, 2, 4, 3]
    with RedisServer(data_dir=tmp_path / "pw", password="right") as guarded:
        wrong = guarded.url.replace(":right@", ":wrong@")
        pauses.clear()
        with pytest.raises(AuthenticationError):
            wait_for_redis(Redis.from_url(wrong), wrong, clock=clock, sleep=sleep)
        assert pauses == []
        assert wait_for_redis(Redis.from_url(guarded.url), guarded.url, clock=clock,
                              sleep=sleep) is False, "it answered at once"


def test_a_worker_that_started_in_an_outage_holds_its_maintenance_as_one_that_rode_it_out(
        server):
    """A second reading's finding: a worker (re)started while Redis was down ran RQ's cleanup
    the moment Redis answered, and took the jobs of live workers that rode the outage out for
    abandoned."""
    from jobcast.worker.main import wait_for_redis

    clock = FakeClock()
    server.stop()
    # Redis comes back during the wait's first pause.
    assert wait_for_redis(Redis.from_url(server.url), server.url, limit=10, clock=clock,
                          sleep=lambda seconds: server.start()) is True
    redis = Redis.from_url(server.url)
    queue, worker = monitoring_worker(redis, clock)
    worker.redis_back()  # as run_worker does after a wait
    worker.register_birth()
    job = abandoned_job(redis, queue)
    worker.clean_registries()
    assert job.get_status() == JobStatus.STARTED
    clock.advance(resume_grace(2))
    worker.clean_registries()
    assert job.get_status() != JobStatus.STARTED
    redis.close()


def test_between_jobs_a_worker_tries_an_unreachable_redis_again_at_most_4_s_apart(server):
    """A second reading's finding: RQ's loop waits up to 60 s between tries; a worker idle
    through an outage of 35 s or more came back after the watchdog had failed the queued jobs
    for want of a live worker (15 s after Redis's return)."""
    from rq.worker import base
    from jobcast.worker import hook

    class Waited(Exception):
        """Enough waits seen."""

    waits = []

    def sleep(seconds: float) -> None:
        """RQ's wait between two tries, noted (the seventh ends the test's loop)."""
        waits.append(seconds)
        if len(waits) == 7:
            raise Waited

    redis = Redis.from_url(server.url, socket_connect_timeout=0.5)
    workers = [cls(["q"], connection=redis)
               for cls in (JobcastWorker, hook.Worker, hook.SimpleWorker)]
    server.stop()
    for worker in workers:
        cls = type(worker)
        waits.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(base.time, "sleep", sleep)
            # (the state RQ writes before its loop is not what this is about)
            patch.setattr(worker, "set_state", lambda *args, **kwargs: None)
            with pytest.raises(Waited):
                worker.dequeue_job_and_maintain_ttl(timeout=1)
        assert waits == [1, 2, 4, 4, 4, 4, 4], cls  # RQ's own: 1, 2, 4 ... 60


def test_a_worker_back_from_an_outage_takes_no_job_for_abandoned_until_held_heartbeats_came(
        server):
    """An outage longer than a job's execution heartbeat (three monitoring intervals) expires
    it while its worker lives on; that worker beats again within an interval of Redis's
    return (or, held by a primary that froze, of RQ's socket timeout), but a peer's
    maintenance that came first retried (or failed) the job."""
    grace = resume_grace(2)
    assert grace == RQ_SOCKET_TIMEOUT + 2 == 27
    redis = Redis.from_url(server.url)
    clock = FakeClock()
    queue, worker = monitoring_worker(redis, clock)
    worker.register_birth()
    server.stop()
    with pytest.raises(RedisConnectionError):
        worker.heartbeat()  # between jobs: RQ's loop waits and tries again
    server.start()
    worker.heartbeat()
    job = abandoned_job(redis, queue)
    worker.clean_registries()
    assert job.get_status() == JobStatus.STARTED
    clock.advance(grace - 0.1)
    worker.clean_registries()
    assert job.get_status() == JobStatus.STARTED
    clock.advance(0.1)
    worker.clean_registries()
    assert job.get_status() != JobStatus.STARTED  # abandoned: failed (it has no retry)
    redis.close()


def test_a_redis_url_in_the_wait_s_log_line_is_masked(tmp_path, caplog):
    from jobcast.worker.main import wait_for_redis

    nobody = RedisServer(data_dir=tmp_path / "none", password="s3cret")
    clock = FakeClock()
    with pytest.raises(RedisConnectionError):
        wait_for_redis(Redis.from_url(nobody.url), nobody.url, limit=1, clock=clock,
                       sleep=clock.advance)
    assert "s3cret" not in caplog.text and "cannot reach Redis at redis://:***@" in caplog.text



@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.parametrize("command", ["jobcast worker", "rq worker -w jobcast.Worker"])
def test_a_live_worker_is_listed_again_after_redis_restarts_empty_idle_or_busy(tmp_path, command):
    """A review's finding: RQ registers a worker only at its birth, and its heartbeat writes
    its key again but not its place in RQ's sets of workers. After Redis restarted without its
    data the worker ran every job unlisted, and the web's watchdog failed each one ("no worker
    alive for 15 s") as it ran."""
    with RedisServer(data_dir=tmp_path / "redis") as server:  # no AOF: it restarts empty
        log_path = tmp_path / "worker.log"
        if command == "jobcast worker":
            [proc] = Workers(server.url, tmp_path).start(1, JOBCAST_MONITOR_INTERVAL="1")
        else:
            proc = start_rq_worker(server.url, "jobcast", log_path=log_path,
                                   options=("--job-monitoring-interval", "1"))
        family: list[psutil.Process] = []
        redis = Redis.from_url(server.url)
        queue = Queue("jobcast", connection=redis)
        watchdog = Watchdog(redis, LogStore(redis, Settings(redis_url=server.url)))

        def listed(state: str) -> bool:
            """True when RQ lists the worker on the queue, in ``state``, and the watchdog
            counts it alive."""
            assert proc.poll() is None, f"the worker exited (see {tmp_path})"
            workers = Worker.all(queue=queue)
            return ([(w.pid, w.get_state()) for w in workers] == [(proc.pid, state)]
                    and watchdog.live_workers(queue, time.time()) == 1)

        try:
            wait_for(lambda: listed("idle"), 10, what="the worker to listen")
            server.stop()
            server.start()
            # (between jobs RQ's loop tries again after 1, 2, 4, 8 s...: 20 s covers a slow
            # restart)
            wait_for(lambda: listed("idle"), 20, what="the idle worker to be listed again")
            # A job that outlasts the test however slow the machine (it is killed below).
            queue.enqueue("time.sleep", 300)
            wait_for(lambda: listed("busy"), 10, what="the worker to take the job")
            family = psutil.Process(proc.pid).children(recursive=True)
            server.stop()
            server.start()
            wait_for(lambda: listed("busy"), 10, what="the busy worker to be listed again")
        finally:
            proc.kill()
            proc.wait()
            for p in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            redis.close()


def test_a_running_job_s_heartbeat_gives_a_frozen_redis_up_after_the_command_timeout(server):
    """A failover review's finding: a job's heartbeats went on RQ's connection, whose socket
    timeout RQ raises for its blocking dequeue (25 s for `jobcast worker`, 415 s here). Held
    that long by a Sentinel primary that froze, they reached the promoted one after the job's
    execution had expired (three monitoring intervals), and the web's watchdog retried the job
    beside itself, every time. They now give up after COMMAND_TIMEOUT, and a Sentinel client's
    retry finds the new primary."""
    import signal
    import threading

    from jobcast.core.store import COMMAND_TIMEOUT

    redis = Redis.from_url(server.url)
    queue = Queue(f"beats-{uuid.uuid4().hex[:8]}", connection=redis)
    worker = JobcastWorker([queue], connection=redis, job_monitoring_interval=2)
    assert redis.connection_pool.connection_kwargs["socket_timeout"] > 3 * COMMAND_TIMEOUT
    worker.register_birth()
    job = queue.enqueue("os.getpid")
    execution = worker.prepare_execution(job)
    worker.maintain_heartbeats(job, execution)
    server.proc.send_signal(signal.SIGSTOP)
    try:
        beat = threading.Thread(target=worker.maintain_heartbeats, args=(job, execution),
                                daemon=True)
        beat.start()
        beat.join(3 * COMMAND_TIMEOUT)  # the deadline: a heartbeat still held fails the test
        assert not beat.is_alive()
        assert worker._redis_lost_at is not None  # ridden out: the work-horse goes on
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert worker.connection is redis  # RQ's own again
    worker.maintain_heartbeats(job, execution)
    assert worker._redis_lost_at is None
    redis.close()
