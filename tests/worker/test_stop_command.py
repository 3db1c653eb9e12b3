"""RQ's own stop-job command (``rq.command.send_stop_job_command``, what operators' tooling
sends), not Jobcast's cancel, on a Jobcast task run by a real forking `rq worker -w
jobcast.Worker`."""

from __future__ import annotations

import uuid

import pytest
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus

from jobcast.core.joblog import JobLog
from jobcast.core.keys import meta_key
from jobcast.core.settings import Settings
from jobcast.producer.enqueue import enqueue
from tests.support.services import start_rq_worker, stop_process
from tests.support.wait import wait_for


@pytest.mark.slow  # starts an rq worker
def test_a_task_stopped_by_rqs_own_command_gets_its_end_in_the_log(redis, redis_server,
                                                                    logs_dir):
    """A review's finding: RQ killed the work-horse and filed the job stopped, but the task
    logs its own end, which its killed code never reached, and the hook wrote none: the log
    said running forever, and its viewers waited forever."""
    queue = f"stop-{uuid.uuid4().hex[:8]}"
    proc = start_rq_worker(redis_server.url, queue, log_path=logs_dir / "rq-worker-stop.log")
    try:
        job_id = enqueue("sqrt", {"n": 100, "interval": 0.2},
                         config=Settings(redis_url=redis_server.url, queue_name=queue))
        jlog = JobLog(redis, job_id)
        wait_for(lambda: jlog.values_logged() >= 2, 20, what="the task running")
        send_stop_job_command(redis, job_id)
        wait_for(lambda: Job.fetch(job_id, connection=redis).get_status() == JobStatus.STOPPED,
                 20, what="RQ filing the job stopped")
        wait_for(lambda: jlog.status() == "failed", 10, what="the end in the log")
        end = list(jlog.entries())[-1]
        assert end.kind == "failed" and end.data["reason"] == "stopped"
        assert redis.ttl(meta_key(job_id)) > 0  # an ended log expires
    finally:
        stop_process(proc)
