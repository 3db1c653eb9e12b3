"""The watchdog's rounds against a real Redis (a database of its own, so its job index holds only
this module's jobs): orphans fail after the timeout, plain RQ jobs end as RQ reports them."""

from __future__ import annotations

import uuid

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus

from jobcast.core.joblog import JobLog
from jobcast.core.logstore import LogStore
from jobcast.core.settings import Settings
from tests.conftest import own_database, wait_for
from jobcast.web.watchdog import Watchdog

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


def last_entry(jlog: JobLog):
    """The newest entry of the job's log."""
    return list(jlog.entries())[-1]


def test_queued_and_running_jobs_fail_only_after_no_worker_lived_for_the_orphan_timeout(wd):
    queued, running = new_job(wd.redis), new_job(wd.redis)
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


def test_jobs_on_another_rq_queue_are_left_to_their_own_workers(wd):
    other = new_job(wd.redis, origin="someone-elses-queue")
    wd.check(now=0.0)
    assert wd.fail_orphans("no worker") == []
    assert other.status() == "queued"


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


def test_stop_ends_the_watchdog_thread(wd):
    wd.start()
    thread = wd._thread
    assert thread.is_alive()
    wd.stop()
    wait_for(lambda: not thread.is_alive(), timeout=5, what="the watchdog thread to end")
