"""Cancelling a job on a worker: its log's entries, three viewers reading it to its end, the
work-horse that runs it and how soon it dies (tests/test_cancel.py, test_browser_tail.py,
worker/test_capture.py)."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import psutil
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry

from jobcast.core.joblog import TERMINAL, Entry, JobLog
from jobcast.core.settings import Settings
from jobcast.producer.enqueue import enqueue
from tests.support.wait import wait_for
from tests.support.sse import Event, parse_events


def entries(redis, job_id: str) -> list[Entry]:
    """Every entry of the job's log."""
    return list(JobLog(redis, job_id).entries())


def terminal_entries(redis, job_id: str) -> list[Entry]:
    """The entries that end the job (one, when all is well)."""
    return [e for e in entries(redis, job_id) if e.kind in TERMINAL]


def started_on(redis, job_id: str) -> Entry | None:
    """The job's first `started` entry, if any."""
    return next((e for e in entries(redis, job_id) if e.kind == "started"), None)


class Viewers:
    """An SSE, a text and an HTML viewer of one job, each reading to its end in a thread."""

    def __init__(self, base: str, job_id: str):
        self.sse: list[Event] = []
        self.text = self.html = None
        self.threads = [threading.Thread(target=f, args=(base, job_id), daemon=True)
                        for f in (self._sse, self._text, self._html)]
        for t in self.threads:
            t.start()

    def _sse(self, base, job_id):
        with httpx.Client(base_url=base, timeout=60) as c, c.stream("GET", f"/jobs/{job_id}/events") as r:
            self.sse.extend(parse_events(r))

    def _text(self, base, job_id):
        self.text = httpx.get(f"{base}/jobs/{job_id}/stream", timeout=60).text

    def _html(self, base, job_id):
        self.html = httpx.get(f"{base}/jobs/{job_id}/frame", timeout=60).text

    def join(self, timeout: float = 10) -> None:
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a viewer's stream did not end"


def assert_cancelled_everywhere(http, redis, job_id: str, viewers: Viewers, by: str) -> None:
    """Every stream ended with the job; the log ends with one `cancelled`; RQ says canceled."""
    viewers.join()
    assert viewers.sse[-1].event == "cancelled"
    assert json.loads(viewers.sse[-1].data)["by"] == by
    assert "Cancelled" in viewers.html and "Failed" not in viewers.html
    assert viewers.text is not None
    log = entries(redis, job_id)
    assert [e.kind for e in log if e.kind in TERMINAL] == ["cancelled"] and log[-1].kind == "cancelled"
    info = http.get(f"/api/jobs/{job_id}").json()
    assert info["status"] == "cancelled" and info["cancelled_by"] == by
    rq_job = Job.fetch(job_id, connection=redis)
    wait_for(lambda: rq_job.get_status() == "canceled", 5, what="RQ status canceled")
    assert job_id in CanceledJobRegistry(rq_job.origin, connection=redis).get_job_ids()
    assert job_id not in FailedJobRegistry(rq_job.origin, connection=redis).get_job_ids()


def assert_next_job_starts_on(redis, cfg: Settings, worker_name: str, within: float = 5.0) -> None:
    """The job enqueued next starts on ``worker_name``, the lane's only worker, within
    ``within`` seconds: long before the cancelled job (a 60 s sleep or burn) would have let it
    go."""
    next_id = enqueue("sqrt", {"n": 2, "interval": 0}, redis=redis, config=cfg)
    entry = wait_for(lambda: started_on(redis, next_id), within, interval=0.02, what="next job to start")
    assert entry.data["worker"] == worker_name


def wait_started(redis, job_id: str, values: int = 1) -> Entry:
    """Wait until the job runs and has logged ``values`` values; return its started entry."""
    wait_for(lambda: JobLog(redis, job_id).values_logged() >= values, 20, what="job running")
    return started_on(redis, job_id)


def started_since_boot(proc: psutil.Process) -> float:
    """When ``proc`` started, in seconds since boot, as the kernel counts it.

    Not psutil's ``create_time()``: that adds the boot time in whole seconds (``btime`` of
    /proc/stat), so it can put a process up to a second before it started, and a horse that
    took a moment to log its start then looked older than its job.
    """
    with open(f"/proc/{proc.pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()  # the command may hold spaces
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks


def horse_of(worker_pid: int, started: Entry) -> psutil.Process:
    """The work-horse the worker forked for the job that logged ``started`` (the worker's
    other child, RQ's scheduler, is older)."""
    # The job's start on the boot clock, which process start times are counted on.
    offset = time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_BOOTTIME)
    since = started.data["ts"] - offset - 1

    def find():
        fresh = []
        for proc in psutil.Process(worker_pid).children():
            try:
                at = started_since_boot(proc)
            except OSError:  # it has just ended
                continue
            if at >= since:
                fresh.append((at, proc))
        return max(fresh, key=lambda pair: pair[0], default=(0.0, None))[1]

    return wait_for(find, 10, what="the work-horse")


def stop_delay(redis, job_id: str, horse: psutil.Process, within: float = 5.0) -> float:
    """Wait until the work-horse has died (within ``within`` seconds: the cancel, not the end
    of the job's 60 s of work, killed it) and RQ files the job canceled; return the seconds
    from the `cancelled` entry to the death, to print (speed is the benchmark's to assert)."""
    wait_for(lambda: not horse.is_running() or horse.status() == psutil.STATUS_ZOMBIE, within,
             interval=0.01, what="the work-horse to die")
    stopped = time.time()
    cancelled_at = terminal_entries(redis, job_id)[0].data["ts"]
    rq_job = Job.fetch(job_id, connection=redis)
    wait_for(lambda: rq_job.get_status() == "canceled", 5, interval=0.01, what="RQ status canceled")
    return stopped - cancelled_at
