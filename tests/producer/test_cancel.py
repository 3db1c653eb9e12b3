"""Cancelling a job whose log has ended while RQ holds its next run (a Repeat's, a requeue's),
on the session's real Redis, with RQ's non-forking worker and Jobcast's hook in this process.
Cancels of running and queued jobs through real processes: tests/test_cancel.py."""

from __future__ import annotations

import os

import pytest
from rq import Queue, Repeat
from rq.job import JobStatus

from jobcast.core.joblog import JobLog
from jobcast.core.settings import Settings
from jobcast.producer.cancel import AlreadyEnded, cancel
from jobcast.worker.hook import SimpleWorker
from tests.rq_jobs import emit_lines


@pytest.fixture
def queue(redis, redis_server, monkeypatch) -> Queue:
    """A queue of this test's own, its worker's settings read from the environment."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return Queue(f"cancel-next-{os.getpid()}-{id(monkeypatch)}", connection=redis)


def test_cancelling_a_repeated_job_between_runs_cancels_its_next_run_in_a_log_of_its_own(
        redis, redis_server, queue):
    """A review's finding: the log still held the run that finished, so a cancel answered
    "already ended" and never told RQ; the next run then ran anyway."""
    job = queue.enqueue(emit_lines, 2, repeat=Repeat(times=1))
    worker = SimpleWorker([queue], connection=redis)
    assert worker.work(burst=True, max_jobs=1)
    jlog = JobLog(redis, job.id)
    assert jlog.status() == "finished" and job.get_status(refresh=True) == JobStatus.QUEUED
    seq = cancel(job.id, "alice", redis=redis, config=Settings(redis_url=redis_server.url,
                                                               queues="*"))
    assert [(e.seq, e.kind) for e in jlog.entries()] == [(1, "queued"), (seq, "cancelled")]
    assert jlog.info().cancelled_by == "alice"
    assert job.get_status(refresh=True) == JobStatus.CANCELED and job.id not in queue.job_ids
    assert not worker.work(burst=True, max_jobs=1)            # the next run never comes


def test_cancelling_a_job_that_ended_with_no_run_waiting_still_says_it_had_ended(
        redis, redis_server, queue):
    job = queue.enqueue(emit_lines, 2)
    assert SimpleWorker([queue], connection=redis).work(burst=True, max_jobs=1)
    with pytest.raises(AlreadyEnded) as ended:
        cancel(job.id, "alice", redis=redis, config=Settings(redis_url=redis_server.url,
                                                             queues="*"))
    assert ended.value.status == "finished"
    assert [e.kind for e in JobLog(redis, job.id).entries()][-1] == "finished"


def test_a_cancel_written_to_the_log_stands_when_rq_cannot_be_told(redis, redis_server, queue,
                                                                   monkeypatch, caplog):
    """A review's finding: once the ``cancelled`` entry was written, RQ's Redis failing to
    answer (a separate instance, down for a moment) made the cancel raise, and the CLI say
    "unreachable" (exit 3); cancelling again then said "already ended". The cancel stands:
    the log refuses the job's values from then on."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    job = queue.enqueue(emit_lines, 2)
    JobLog(redis, job.id).create("emit_lines", {}, None)

    class Unreachable:
        """RQ's Job, on a Redis that does not answer."""

        @staticmethod
        def fetch(job_id, connection):
            raise RedisConnectionError("RQ's Redis is down")

    monkeypatch.setattr("jobcast.producer.cancel.Job", Unreachable)
    seq = cancel(job.id, "alice", redis=redis, config=Settings(redis_url=redis_server.url,
                                                               queues="*"))
    assert [e.kind for e in JobLog(redis, job.id).entries()][-1] == "cancelled"
    assert seq > 0 and "RQ could not be told" in caplog.text
