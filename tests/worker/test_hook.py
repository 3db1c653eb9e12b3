"""The worker hook (`jobcast.Worker`, `jobcast.SimpleWorker`): every job's lifecycle in its log,
run in this process by RQ's non-forking worker on a real redis-server."""

from __future__ import annotations

import os

from rq import Queue, Retry
from rq.job import JobStatus

from jobcast.core.joblog import JobLog
from jobcast.worker.hook import SimpleWorker
from tests.rq_jobs import emit_lines, fail_naming_an_undecodable_file


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


def test_a_plain_job_enqueued_again_under_an_id_whose_earlier_run_ended_still_runs(redis, in_process):
    """A review's finding: a requeue, or a job with a fixed id, meets the log of the id's
    earlier run, ended before this enqueue. That end is not this run's: the job runs (as it
    always did), where one failed since its enqueue does not (above)."""
    queue = Queue(f"hook-again-{os.getpid()}", connection=redis)
    job_id = f"again-{os.getpid()}"
    earlier = JobLog(redis, job_id)
    earlier.ensure("an earlier run", queue.name)
    earlier.failed("it failed then")
    job = queue.enqueue(emit_lines, 3, job_id=job_id)
    SimpleWorker([queue], connection=redis).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.FINISHED and job.return_value() == 3
