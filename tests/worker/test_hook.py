"""The worker hook (`jobcast.Worker`, `jobcast.SimpleWorker`): every job's lifecycle in its log,
run in this process by RQ's non-forking worker on a real redis-server."""

from __future__ import annotations

import os

from rq import Queue

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
