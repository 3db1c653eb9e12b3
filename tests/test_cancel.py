"""Cancelling a job, end to end: real redis-server, gunicorn and RQ worker processes.

A dedicated queue with one worker makes "the worker is free at once" measurable: the job
enqueued right after a cancel must start on that very worker.
"""

from __future__ import annotations

import subprocess
import threading
import uuid

import psutil
import pytest
from rq import Queue
from rq.job import Job

import tests.tasks  # noqa: F401  (registers sleepy and burn in this process too)
from jobcast.core.joblog import TERMINAL
from jobcast.core.settings import Settings
from jobcast.producer.enqueue import enqueue
from tests.support.services import JOBCAST, ROOT, Workers, kill_at_once, service_env
from tests.support.wait import wait_for
from tests.support.cancel import (Viewers, assert_cancelled_everywhere, assert_next_job_starts_on,
                                  entries, horse_of, stop_delay, terminal_entries, wait_started)


def lane_env(redis_server, cfg: Settings) -> dict[str, str]:
    """The environment of a `jobcast cancel` of the lane's jobs: Jobcast cancels only the jobs
    of its own queues (JOBCAST_QUEUES)."""
    return service_env(redis_server.url, JOBCAST_QUEUES=cfg.queue_name)


def test_cancel_a_running_sleeping_job_through_the_api_kills_its_horse_and_frees_the_worker(
        http, web, redis, lane):
    cfg, proc, _ = lane
    job_id = enqueue("sleepy", {"n": 3, "interval": 60}, redis=redis, config=cfg)
    started = wait_started(redis, job_id)
    horse = horse_of(proc.pid, started)
    viewers = Viewers(web.url, job_id)
    wait_for(lambda: http.get(f"/api/jobs/{job_id}").json()["viewers"] >= 1, 10, what="viewers")
    r = http.post(f"/api/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    delay = stop_delay(redis, job_id, horse)
    print(f"work-horse of {job_id[:8]} stopped {delay * 1000:.0f} ms after the cancel")
    assert_cancelled_everywhere(http, redis, job_id, viewers, by="api")
    assert_next_job_starts_on(redis, cfg, started.data["worker"])


def test_cancel_a_job_burning_cpu_inside_one_value_through_the_cli_kills_its_horse_and_frees_the_worker(
        http, web, redis, redis_server, lane):
    cfg, proc, _ = lane
    job_id = enqueue("burn", {"seconds": 60}, redis=redis, config=cfg)
    started = wait_started(redis, job_id)
    horse = horse_of(proc.pid, started)
    viewers = Viewers(web.url, job_id)
    out = subprocess.run([*JOBCAST, "cancel", job_id], cwd=ROOT, env=lane_env(redis_server, cfg),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    delay = stop_delay(redis, job_id, horse)
    print(f"work-horse of {job_id[:8]} stopped {delay * 1000:.0f} ms after the cancel")
    assert_cancelled_everywhere(http, redis, job_id, viewers, by="cli")
    assert_next_job_starts_on(redis, cfg, started.data["worker"])
    # The CLI's own answers for an ended job and an unknown one.
    again = subprocess.run([*JOBCAST, "cancel", job_id], cwd=ROOT, env=lane_env(redis_server, cfg),
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "already ended (cancelled)" in again.stderr
    # `jobcast follow` of a cancelled job exits with its own code, 4.
    followed = subprocess.run([*JOBCAST, "follow", job_id, "--url", web.url, "--no-progress"], cwd=ROOT,
                              env=service_env(redis_server.url), capture_output=True, text=True, timeout=30)
    assert followed.returncode == 4 and "Cancelled by cli" in followed.stderr


@pytest.mark.parametrize("how", ["api", "cli"])
def test_cancel_a_queued_job_takes_it_off_the_queue_and_it_never_runs(http, web, redis, redis_server,
                                                                      lane, how):
    cfg, proc, _ = lane
    busy = enqueue("sleepy", {"n": 2, "interval": 60}, redis=redis, config=cfg)
    worker = wait_started(redis, busy).data["worker"]
    queued = enqueue("sqrt", {"n": 3, "interval": 0}, redis=redis, config=cfg)
    assert queued in Queue(cfg.queue_name, connection=redis).job_ids
    viewers = Viewers(web.url, queued)
    if how == "api":
        assert http.post(f"/api/jobs/{queued}/cancel").status_code == 200
    else:
        out = subprocess.run([*JOBCAST, "cancel", queued], cwd=ROOT, env=lane_env(redis_server, cfg),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    assert queued not in Queue(cfg.queue_name, connection=redis).job_ids
    assert_cancelled_everywhere(http, redis, queued, viewers, by=how)
    assert http.post(f"/api/jobs/{busy}/cancel").status_code == 200
    # The worker, free again, runs the next job and never the cancelled one.
    assert_next_job_starts_on(redis, cfg, worker)
    assert [e.kind for e in entries(redis, queued)] == ["queued", "cancelled"]


def test_cancel_while_the_worker_is_killed_leaves_one_terminal_entry_and_never_reruns(
        http, web, redis, redis_server, logs_dir):
    queue = "killed-" + uuid.uuid4().hex[:8]
    cfg = Settings(redis_url=redis_server.url, queue_name=queue)
    pool = Workers(redis_server.url, logs_dir)
    try:
        (proc,) = pool.start(1, JOBCAST_QUEUE=queue)
        job_id = enqueue("sleepy", {"n": 3, "interval": 60}, redis=redis, config=cfg)
        wait_started(redis, job_id)
        # The worker dies (its work-horse too) while the cancel request is on its way.
        killer = threading.Thread(target=kill_at_once, args=(psutil.Process(proc.pid),))
        killer.start()
        r = http.post(f"/api/jobs/{job_id}/cancel")
        killer.join(5)
        proc.wait(10)
        assert r.status_code == 200
        assert [e.kind for e in terminal_entries(redis, job_id)] == ["cancelled"]
        # RQ later puts an abandoned job back on its queue; a new worker must not run it.
        Queue(queue, connection=redis).enqueue_job(Job.fetch(job_id, connection=redis))
        pool.start(1, JOBCAST_QUEUE=queue)
        wait_for(lambda: Job.fetch(job_id, connection=redis).get_status() == "canceled", 20,
                 what="re-run job filed as canceled")
        kinds = [e.kind for e in entries(redis, job_id)]
        assert kinds.count("started") == 1 and kinds[-1] == "cancelled"
        assert sum(k in TERMINAL for k in kinds) == 1
    finally:
        pool.stop_all()
