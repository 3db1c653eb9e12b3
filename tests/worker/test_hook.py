"""The worker hook (`jobcast.Worker`, `jobcast.SimpleWorker`): every job's lifecycle in its log,
run in this process by RQ's non-forking worker on a real redis-server."""

from __future__ import annotations

import logging
import os
from datetime import timezone

import rq
from rq import Queue, Repeat, Retry
from rq.job import JobStatus

from jobcast.core.joblog import JobLog
from jobcast.worker.hook import SimpleWorker
from jobcast.worker.outage import OutageMixin
from tests.rq_jobs import (cancelled_midway, crash_once, emit_lines,
                           fail_naming_an_undecodable_file)


def test_a_failure_naming_an_undecodable_file_is_logged_and_the_worker_goes_on(redis, in_process):
    """A review's finding: a lone surrogate in the reason made the ``failed`` write raise, and
    the non-forking worker quit with the job left running."""
    queue = Queue(f"hook-surrogate-{os.getpid()}", connection=redis)
    bad = queue.enqueue(fail_naming_an_undecodable_file)
    after = queue.enqueue(emit_lines, 2)
    SimpleWorker([queue], connection=redis).work(burst=True)
    failed = JobLog(redis, bad.id)
    assert failed.status() == "failed"
    assert "report-\\xff.csv" in failed.info().reason
    assert [e.data.get("reason") for e in failed.entries() if e.kind == "failed"] == [
        failed.info().reason]
    assert JobLog(redis, after.id).status() == "finished"


def test_a_plain_job_whose_log_the_watchdog_failed_is_not_run_and_filed_failed_without_a_retry(
        redis, in_process):
    """The watchdog fails a job's log when no live worker holds it. A worker that takes the job
    after that must not run it (its values would be dropped, and RQ would file it finished
    while its viewers were told it failed), nor retry it into the same ended log."""
    queue = Queue(f"hook-ended-{os.getpid()}", connection=redis)
    job = queue.enqueue(emit_lines, 3, retry=Retry(max=2))
    after = queue.enqueue(emit_lines, 2)
    jlog = JobLog(redis, job.id)
    jlog.ensure(job.description, job.origin)
    jlog.failed("no live worker")
    SimpleWorker([queue], connection=redis).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.FAILED and job.return_value() is None
    assert "JobEnded" in job.latest_result().exc_string
    assert [e.kind for e in jlog.entries()] == ["queued", "failed"]
    assert job.id not in queue.job_ids and job.retries_left == 0
    assert JobLog(redis, after.id).status() == "finished"


def test_a_plain_job_enqueued_again_under_an_id_whose_earlier_run_ended_runs_in_its_log_opened_anew(
        redis, in_process):
    """A requeue, or a job with a fixed id, meets the log of the id's earlier run, ended before
    this enqueue. That end is not this run's: the job runs, and its values reach viewers in the
    log opened anew (before, they were dropped while RQ filed the job finished)."""
    queue = Queue(f"hook-again-{os.getpid()}", connection=redis)
    job_id = f"again-{os.getpid()}"
    earlier = JobLog(redis, job_id)
    earlier.ensure("an earlier run", queue.name)
    earlier.failed("it failed then")
    earlier.save_chart('{"earlier": true}')
    old_epoch = earlier.position().epoch
    job = queue.enqueue(emit_lines, 3, job_id=job_id)
    SimpleWorker([queue], connection=redis).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.FINISHED and job.return_value() == 3
    jlog = JobLog(redis, job_id)
    entries = list(jlog.entries())
    assert [e.kind for e in entries] == ["queued", "started", "value", "value", "value",
                                         "finished"]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e.data["v"] for e in entries if e.kind == "value"] == ["line 0", "line 1", "line 2"]
    info = jlog.info()
    assert info.status == "finished" and info.attempt == 1 and info.reason is None
    assert jlog.position().epoch != old_epoch  # a viewer of the earlier run is told (reset)
    assert jlog.chart() is None or b"earlier" not in jlog.chart()


def test_each_run_of_an_rq_repeat_reaches_viewers_in_the_jobs_log(redis, in_process):
    """RQ's ``Repeat`` runs a job again under its id once it has finished. Each run's values
    reach the log: the log is opened anew for the next run, which viewers then watch."""
    queue = Queue(f"hook-repeat-{os.getpid()}", connection=redis)
    job = queue.enqueue(emit_lines, 2, repeat=Repeat(times=2))
    jlog = JobLog(redis, job.id)
    runs = []
    worker = SimpleWorker([queue], connection=redis)
    for k in range(3):
        assert worker.work(burst=True, max_jobs=1)
        runs.append(([e.kind for e in jlog.entries()], jlog.position().epoch,
                     [e.data["v"] for e in jlog.entries() if e.kind == "value"]))
        if k < 2:
            # Its end was logged before RQ enqueued the next run, which another worker could
            # have started at once (into a log still running, dropping its values as repeats).
            job.refresh()
            ended = [e.data["ts"] for e in jlog.entries() if e.kind == "finished"]
            assert ended[0] <= job.enqueued_at.replace(tzinfo=timezone.utc).timestamp()
    assert [kinds for kinds, _, _ in runs] == [
        ["queued", "started", "value", "value", "finished"]] * 3
    assert [values for _, _, values in runs] == [["line 0", "line 1"]] * 3
    assert len({epoch for _, epoch, _ in runs}) == 3
    assert jlog.values_logged() == 2


class RQSimpleWorker(rq.SimpleWorker):
    """RQ's own worker, without Jobcast's hook, but ending its pubsub thread as Jobcast's
    workers do: RQ's own stop of it can wait 60 s (see OutageMixin.unsubscribe)."""

    unsubscribe = OutageMixin.unsubscribe


def test_each_run_of_an_rq_repeat_reaches_the_log_on_a_worker_without_the_hook(redis, in_process):
    """A review's finding: with emit() on RQ's own worker, nothing logs a run's end, so the
    next run's start went into the log still running, and its values were dropped as repeats.
    RQ repeats a job only once it succeeded: the next run logs that end, then opens the log
    anew."""
    queue = Queue(f"hook-plain-repeat-{os.getpid()}", connection=redis)
    job = queue.enqueue(emit_lines, 2, repeat=Repeat(times=1))
    jlog = JobLog(redis, job.id)
    worker = RQSimpleWorker([queue], connection=redis)
    assert worker.work(burst=True, max_jobs=1)
    first = jlog.position().epoch
    assert [e.kind for e in jlog.entries()] == ["queued", "started", "value", "value"]
    assert worker.work(burst=True, max_jobs=1)
    assert [e.kind for e in jlog.entries()] == ["queued", "started", "value", "value"]
    assert jlog.position().epoch != first and jlog.values_logged() == 2


def test_a_retry_after_the_watchdog_failed_the_log_is_not_run(redis, in_process):
    """A review's finding: RQ enqueues a retry anew, so its enqueue time came after the
    watchdog's end of the log, which was then taken for an earlier run's end and reopened.
    One retry less is the same run: its end stands."""
    queue = Queue(f"hook-retry-ended-{os.getpid()}", connection=redis)
    job = queue.enqueue(crash_once, 4, 1, retry=Retry(max=1))
    worker = SimpleWorker([queue], connection=redis)
    assert worker.work(burst=True, max_jobs=1)             # the first attempt crashes
    jlog = JobLog(redis, job.id)
    assert not jlog.head().ended and job.id in queue.job_ids
    jlog.failed("no live worker")                          # the watchdog, during the wait
    assert worker.work(burst=True, max_jobs=1)
    job.refresh()
    assert job.get_status() == JobStatus.FAILED and "JobEnded" in job.latest_result().exc_string
    assert [e.kind for e in jlog.entries()][-2:] == ["retrying", "failed"]


def test_a_job_enqueued_again_after_a_cancel_is_still_not_run(redis, in_process):
    """A cancel is never undone by running the id again: RQ files the attempt canceled, and
    the log keeps its end."""
    queue = Queue(f"hook-cancelled-{os.getpid()}", connection=redis)
    job_id = f"cancelled-{os.getpid()}"
    earlier = JobLog(redis, job_id)
    earlier.ensure("an earlier run", queue.name)
    earlier.cancelled("alice")
    job = queue.enqueue(emit_lines, 3, job_id=job_id)
    SimpleWorker([queue], connection=redis).work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.CANCELED
    assert [e.kind for e in JobLog(redis, job_id).entries()] == ["queued", "cancelled"]


def test_a_plain_job_whose_id_jobcast_cannot_log_runs_unlogged_and_the_worker_goes_on(
        redis, in_process):
    """A review's finding: RQ takes ids of any length, Jobcast's keys 128 characters at most.
    The hook raised on such a job, RQ's failure path raised again, and the worker quit, with
    the job left started and every job behind it waiting."""
    queue = Queue(f"hook-long-id-{os.getpid()}", connection=redis)
    long = queue.enqueue("os.getpid", job_id="long-" + "x" * 140)
    emitting = queue.enqueue(emit_lines, 2, job_id="emits-" + "x" * 140)  # emit() a no-op
    after = queue.enqueue(emit_lines, 2)
    SimpleWorker([queue], connection=redis).work(burst=True)
    assert long.get_status(refresh=True) == JobStatus.FINISHED
    assert emitting.get_status(refresh=True) == JobStatus.FINISHED
    assert JobLog(redis, after.id).status() == "finished"


def test_a_plain_job_runs_unlogged_when_a_separate_stream_store_cannot_be_reached(
        redis, in_process, monkeypatch):
    """A review's finding: with JOBCAST_STREAM_URL set, the hook makes its client as a job
    starts; a store that could not be reached raised there, and the job failed without
    running, where the hook promises a job runs unlogged when Redis does not take its log."""
    from jobcast.core import store
    from jobcast.core.settings import get_settings

    monkeypatch.setenv("JOBCAST_STREAM_URL", "redis://127.0.0.1:1/0")  # nothing listens
    monkeypatch.setattr(store, "_clients", {})
    get_settings.cache_clear()
    queue = Queue(f"hook-no-store-{os.getpid()}", connection=redis)
    job = queue.enqueue("os.getpid")
    SimpleWorker([queue], connection=redis).work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert job.return_value() == os.getpid()


def test_a_job_cancelled_while_running_is_logged_as_one_line_not_as_an_error_with_a_traceback(
        redis, in_process, caplog):
    """A review's finding: the non-forking worker logged RQ's "exception raised while
    executing" with the traceback of JobCancelled, for a cancel that went as asked."""
    queue = Queue(f"hook-cancel-running-{os.getpid()}", connection=redis)
    job = queue.enqueue(cancelled_midway)
    with caplog.at_level(logging.INFO):
        SimpleWorker([queue], connection=redis).work(burst=True)
    assert [e.kind for e in JobLog(redis, job.id).entries()][-2:] == ["value", "cancelled"]
    assert job.get_status(refresh=True) == JobStatus.CANCELED
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any("Traceback" in r.getMessage() for r in caplog.records)
    assert any(f"job {job.id} was cancelled" in r.getMessage() for r in caplog.records)
