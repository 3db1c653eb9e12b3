"""emit() from plain RQ jobs, enqueued with RQ's own Queue.enqueue and run by `rq worker -w
jobcast.Worker`, watched through the real gunicorn: streams, lifecycle, retries, adoption."""

from __future__ import annotations

import uuid

import httpx
import pytest
from rq import Queue, Retry

from tests.support.jobs import sse_events, stream_lines
from tests.support.services import start_rq_worker, stop_process
from tests.support.wait import wait_for
from tests.rq_jobs import ask_retry_once, crash_once, emit_lines
from tests.support.sse import id_seq, parse_events
from jobcast.worker.emit import NotInJob, emit

QUEUE = "plain-rq"


@pytest.fixture(scope="module")
def rq_worker(redis_server, logs_dir):
    """One real `rq worker -w jobcast.Worker` on the plain queue."""
    proc = start_rq_worker(redis_server.url, QUEUE, log_path=logs_dir / "rq-worker.log")
    yield proc
    stop_process(proc)


@pytest.fixture
def queue(redis):
    return Queue(QUEUE, connection=redis)


def test_emit_outside_a_job_says_so():
    with pytest.raises(NotInJob):
        emit(1)


def test_plain_rq_job_that_emits_20_times_streams_exactly_those_lines_and_its_lifecycle(
        http, queue, rq_worker):
    job = queue.enqueue(emit_lines, 20, 0.02)
    assert "-" in job.id  # RQ's own id: a UUID with dashes
    # Opened at once, maybe before a worker took the job: the web opens its log from RQ.
    assert stream_lines(http, job.id) == [f"line {i}" for i in range(20)]
    events = sse_events(http, job.id)
    assert [e["event"] for e in events] == ["queued", "started"] + ["value"] * 20 + ["finished"]
    assert [id_seq(e["id"]) for e in events] == list(range(1, 24))
    assert events[1]["data"]["worker"] == f"rq-{QUEUE}-" + events[1]["data"]["worker"].rsplit("-", 1)[1]
    assert events[2]["data"]["n"] == 20
    info = http.get(f"/api/jobs/{job.id}").json()
    assert info["status"] == "finished" and info["progress"] == {"i": 20, "n": 20}
    assert info["task"] == "tests.rq_jobs.emit_lines" and info["params"] == {}  # no arguments shown
    assert job.get_status(refresh=True) == "finished" and job.return_value() == 20


@pytest.mark.parametrize("resumable", [False, True], ids=["replayed", "resumed"])
def test_retried_job_logs_each_emitted_value_once(http, queue, rq_worker, resumable):
    job = queue.enqueue(crash_once, 6, 3, resumable, retry=Retry(max=1))
    assert stream_lines(http, job.id) == [str(i) for i in range(6)]
    events = sse_events(http, job.id)
    assert [e["event"] for e in events] == (["queued", "started"] + ["value"] * 3 + ["retrying", "started"]
                                            + ["value"] * 3 + ["finished"])
    assert [e["data"]["attempt"] for e in events if e["event"] == "started"] == [1, 2]
    assert [e["data"]["i"] for e in events if e["event"] == "value"] == list(range(6))
    retrying = next(e for e in events if e["event"] == "retrying")
    assert retrying["data"]["reason"] == "ConnectionError: simulated crash at value 3"


def test_job_that_returns_rq_retry_is_logged_as_retrying_and_its_values_once(http, queue, rq_worker):
    job = queue.enqueue(ask_retry_once, 4)
    events = sse_events(http, job.id)
    assert [e["event"] for e in events] == (["queued", "started"] + ["value"] * 4
                                            + ["retrying", "started", "finished"])
    assert [e["data"]["i"] for e in events if e["event"] == "value"] == [0, 1, 2, 3]


def test_failing_plain_job_ends_its_stream_with_the_reason(http, queue, rq_worker):
    job = queue.enqueue(crash_once, 6, 0)  # no retry: fails at once
    events = sse_events(http, job.id)
    assert events[-1]["event"] == "failed"
    assert events[-1]["data"]["reason"] == "ConnectionError: simulated crash at value 0"


def test_stream_and_page_of_a_queued_rq_job_work_before_any_worker_and_end_when_rq_cancels_it(http, redis):
    idle = Queue(f"idle-{uuid.uuid4().hex[:8]}", connection=redis)  # no worker listens here
    job = idle.enqueue(emit_lines, 3)
    # A stream is the first to ask: it opens the job's log from RQ and starts at "queued".
    with httpx.stream("GET", http.base_url.join(f"/jobs/{job.id}/events"), timeout=30) as r:
        assert r.status_code == 200
        first = next(parse_events(r))
    assert first.event == "queued" and first.json()["task"] == "tests.rq_jobs.emit_lines"
    assert http.get(f"/jobs/{job.id}").status_code == 200
    assert http.get(f"/api/jobs/{job.id}").json()["status"] == "queued"
    job.cancel()
    # The web's watchdog sees RQ's status and writes the terminal entry.
    wait_for(lambda: http.get(f"/api/jobs/{job.id}").json()["status"] == "failed", 20,
             what="the watchdog to end the cancelled job")
    assert http.get(f"/api/jobs/{job.id}").json()["reason"] == "RQ reports the job canceled"


def test_without_the_hook_emit_still_logs_and_the_web_ends_the_stream_from_rqs_status(
        http, redis, redis_server, logs_dir):
    name = f"nohook-{uuid.uuid4().hex[:8]}"
    proc = start_rq_worker(redis_server.url, name, worker_class="rq.Worker",
                           log_path=logs_dir / "rq-worker-nohook.log")
    try:
        job = Queue(name, connection=redis).enqueue(emit_lines, 5)
        assert stream_lines(http, job.id) == [f"line {i}" for i in range(5)]
        kinds = [e["event"] for e in sse_events(http, job.id)]
        assert kinds == ["queued", "started"] + ["value"] * 5 + ["finished"]
    finally:
        stop_process(proc)
    assert "rq worker -w jobcast.Worker" in (logs_dir / "rq-worker-nohook.log").read_text()
