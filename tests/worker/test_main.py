"""Jobcast's RQ worker classes (`jobcast worker`'s, and the hook's for `rq worker -w`), against a
real Redis."""

from __future__ import annotations

import threading
import uuid

import pytest
from redis import Redis

from rq import Queue, Retry
from rq.job import Job, JobStatus

import tests.tasks  # noqa: F401  (registers dies in this process, and in its work-horses)

from jobcast.core.joblog import JobLog
from jobcast.core.settings import get_settings
from jobcast.producer.enqueue import enqueue
from jobcast.worker.hook import SimpleWorker, Worker
from jobcast.worker.main import JobcastWorker
from tests.support.wait import wait_for


@pytest.mark.parametrize("worker_class", [JobcastWorker, Worker, SimpleWorker])
def test_a_warm_shutdown_ends_the_pubsub_thread_even_when_the_unsubscribe_reply_wakes_it_first(
        redis: Redis, worker_class):
    worker = worker_class(["jobcast-test-unsubscribe"], connection=redis)
    worker.subscribe()
    pubsub, thread = worker.pubsub, worker.pubsub_thread
    wait_for(lambda: pubsub.subscribed and thread.is_alive(), what="the pubsub thread")
    send = pubsub.unsubscribe

    def unsubscribe_and_let_the_reply_arrive(*args):
        """RQ's race, made certain: the thread handles the reply before anything else."""
        send(*args)
        wait_for(lambda: not pubsub.subscribed, what="the thread to handle the reply")

    pubsub.unsubscribe = unsubscribe_and_let_the_reply_arrive
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopping.start()
    # RQ's own unsubscribe, with redis-py 8.2, waits here for the thread's 60 s read.
    wait_for(lambda: not stopping.is_alive(), timeout=10, what="unsubscribe to return")
    assert not thread.is_alive()


@pytest.mark.parametrize("worker_class", [JobcastWorker, Worker, SimpleWorker])
def test_every_worker_class_files_a_job_cancelled_in_its_log_as_canceled_and_never_retries_it(
        redis: Redis, in_process, monkeypatch, worker_class):
    """A review's finding: only `jobcast worker` filed a job that Jobcast cancelled as
    canceled; under `rq worker -w jobcast.Worker` RQ took the task's JobCancelled for a
    failure and retried the job until its retries ran out, then filed it failed."""
    queue_name = f"jobcast-test-cancelled-{worker_class.__name__}"
    monkeypatch.setenv("JOBCAST_QUEUE", queue_name)
    monkeypatch.setenv("JOBCAST_JOB_RETRIES", "2")
    get_settings.cache_clear()
    job_id = enqueue("sqrt", {"n": 3, "interval": 0}, redis=redis)
    # Cancelled in its log as the worker takes it (the stop-job command missed it): the
    # task sees it at its start and raises JobCancelled.
    JobLog(redis, job_id).cancelled("test")
    queue = Queue(queue_name, connection=redis)
    worker_class([queue], connection=redis).work(burst=True)
    job = Job.fetch(job_id, connection=redis)
    assert job.get_status() == JobStatus.CANCELED
    assert job.retries_left == 2
    assert job_id not in queue.failed_job_registry.get_job_ids()
    assert [e.kind for e in JobLog(redis, job_id).entries()] == ["queued", "cancelled"]


@pytest.mark.parametrize("worker_class", [JobcastWorker, Worker])
@pytest.mark.parametrize("retries", [0, 1])
def test_a_task_whose_work_horse_dies_gets_its_attempt_s_end_logged_and_its_retry(
        redis: Redis, in_process, monkeypatch, worker_class, retries):
    """A review's finding: a Jobcast task whose work-horse was killed while its worker lived
    on (the OOM killer) kept a log saying ``running`` forever. RQ runs no failure callback on
    that path, and the hook left run_task's jobs to run_task."""
    queue_name = f"jobcast-test-horse-died-{worker_class.__name__}-{retries}"
    monkeypatch.setenv("JOBCAST_QUEUE", queue_name)
    monkeypatch.setenv("JOBCAST_JOB_RETRIES", str(retries))
    get_settings.cache_clear()
    job_id = enqueue("dies", {}, redis=redis)
    worker_class([Queue(queue_name, connection=redis)], connection=redis).work(burst=True)
    entries = list(JobLog(redis, job_id).entries())
    kinds = [e.kind for e in entries]
    first = ["queued", "started", "value"]
    if retries:
        # Attempt 2 logs value 1 (its value 0 is the one logged already) and finishes.
        assert kinds == first + ["retrying", "started", "value", "finished"]
        assert [e.data["i"] for e in entries if e.kind == "value"] == [0, 1]
        assert Job.fetch(job_id, connection=redis).get_status() == JobStatus.FINISHED
    else:
        assert kinds == first + ["failed"]
        assert Job.fetch(job_id, connection=redis).get_status() == JobStatus.FAILED
    assert "Work-horse terminated unexpectedly" in entries[3].data["reason"]


def records_that_it_ran(key: str) -> None:
    """A plain RQ job that notes it ran."""
    from rq import get_current_job

    get_current_job().connection.set(key, 1)


@pytest.mark.parametrize("worker_class", [JobcastWorker, Worker, SimpleWorker])
def test_a_plain_job_cancelled_as_it_is_taken_never_runs_and_is_filed_canceled(
        redis: Redis, worker_class):
    """A review's finding: the hook ran a plain RQ job whose log said ``cancelled`` by the
    time a worker took it (RQ does not look for a cancel as it dequeues a job)."""
    queue = Queue(f"jobcast-test-taken-cancelled-{worker_class.__name__}", connection=redis)
    ran = f"ran-{queue.name}"
    redis.delete(ran)
    job = queue.enqueue(records_that_it_ran, ran, retry=Retry(max=2))
    jlog = JobLog(redis, job.id)
    jlog.ensure(job.description, job.origin)   # opened by a viewer (the web adopts it)
    jlog.cancelled("test")                      # the cancel lands as the worker takes it
    worker_class([queue], connection=redis).work(burst=True)
    job = Job.fetch(job.id, connection=redis)
    assert redis.get(ran) is None
    assert job.get_status() == JobStatus.CANCELED and job.retries_left == 2
    assert job.id not in queue.failed_job_registry.get_job_ids()
    assert [e.kind for e in jlog.entries()] == ["queued", "cancelled"]


def test_a_jobs_heartbeat_outlives_one_late_beat_even_near_its_timeout():
    """A review's finding: near a job's timeout the execution lived one interval and a second
    (6 s, with a beat every 5 s): a beat a second late, and RQ's maintenance took the live job
    for abandoned, to run it a second time."""
    from types import SimpleNamespace

    from jobcast.worker.main import JobcastWorker

    worker = SimpleNamespace(job_monitoring_interval=5)
    ttl = lambda timeout, working: JobcastWorker.get_heartbeat_ttl(  # noqa: E731
        worker, SimpleNamespace(timeout=timeout), working)
    assert ttl(None, 0) == 15 and ttl(3600, 0) == 15
    assert ttl(3600, 3598) == 10 and ttl(3600, 3650) == 10


@pytest.mark.slow  # runs `jobcast worker`
def test_jobcast_worker_works_the_queues_it_is_given_in_order(redis: Redis, redis_server):
    """An embedding review's finding: `jobcast worker` (which waits for Redis, and rides out its
    outages) worked only JOBCAST_QUEUE's queue, so an app with queues of its own had to use
    `rq worker -w jobcast.Worker`, which exits at once when Redis is not up yet."""
    import subprocess

    from tests.support.services import JOBCAST, ROOT, service_env

    first, second = (Queue(f"own-{name}-{uuid.uuid4().hex[:6]}", connection=redis)
                     for name in ("first", "second"))
    jobs = [second.enqueue("tests.support.user_jobs.sleeps", 0),
            first.enqueue("tests.support.user_jobs.sleeps", 0)]
    done = subprocess.run([*JOBCAST, "worker", "--burst", first.name, second.name],
                          env=service_env(redis_server.url), cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for job in jobs:
        job.refresh()
    assert [job.get_status() for job in jobs] == [JobStatus.FINISHED] * 2
    assert jobs[1].ended_at < jobs[0].started_at, "the first queue's job first"
