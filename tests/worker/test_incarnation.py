"""One job attempt's writers share one incarnation of its log: the value writer and the output
capture check the epoch the attempt began and the highest seq either wrote, so a failover that
loses output lines is a new epoch (a reset for viewers), never a seq reused in the old one.

Run in this process, on the session's real redis-server: the failover is played by
:func:`tests.support.loss.lose` from inside the job, between two of its writes.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Iterator

import pytest
from redis import Redis
from rq import Queue, Retry, get_current_job
from rq.job import Job, JobStatus

import tests.tasks  # noqa: F401  (registers chatty in this process)
from jobcast import emit
from jobcast.core.epoch import LogReset
from jobcast.core.joblog import Entry, JobLog
from jobcast.core.settings import get_settings
from jobcast.producer.enqueue import enqueue
from jobcast.worker import capture
from jobcast.worker.emit import rq_log
from jobcast.worker.hook import SimpleWorker, Worker
from tests.support.wait import wait_for
from tests.support.loss import lose

# -- jobs, run by the non-forking worker in this process ------------------------------------------


def lines_after_a_failover() -> None:
    """Log value 0 and five lines; fail over to a replica that has only value 0; print three
    other lines, then value 1 (the review's scenario)."""
    keep = emit(0)
    for i in range(5):
        print(f"old {i}")
    capture.before_value()          # seqs keep+1..keep+5: a viewer may have them
    lose(rq_log(get_current_job()), keep=keep)
    for i in range(3):
        print(f"new {i}")
    capture.before_value()          # would take keep+1..keep+3 again, in the same epoch
    emit(1)


def value_after_lines_and_a_failover() -> None:
    """Log value 0 and five lines; fail over to a replica that has only value 0; log value 1."""
    keep = emit(0)
    for i in range(5):
        print(f"line {i}")
    capture.before_value()
    lose(rq_log(get_current_job()), keep=keep)
    emit(1)


Run = tuple[Job, list[Entry], str]


@pytest.fixture(scope="module")
def ran(redis_server) -> Iterator[dict[str, Run]]:
    """Each job above run by one non-forking hooked worker in this process (one burst: RQ's
    worker takes its time to stop): by name, the job, its log's entries and the epoch its log
    was created in."""
    redis = Redis.from_url(redis_server.url)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", redis_server.url)   # as a worker reads its settings
        get_settings.cache_clear()
        try:
            queue = Queue(f"incarnation-{os.getpid()}-{uuid.uuid4().hex[:6]}", connection=redis)
            started = {}
            for func in (lines_after_a_failover, value_after_lines_and_a_failover):
                job = queue.enqueue(func)
                jlog = JobLog(redis, job.id)
                jlog.ensure(job.description, job.origin)
                started[func.__name__] = (job, jlog, jlog.head().epoch)
            SimpleWorker([queue], connection=redis).work(burst=True)
            yield {name: (Job.fetch(job.id, connection=redis), list(jlog.entries()), first)
                   for name, (job, jlog, first) in started.items()}
        finally:
            get_settings.cache_clear()
            redis.close()


def value_seq(entries: list[Entry], index: int) -> int:
    """The seq of value ``index`` in ``entries``."""
    return next(e.seq for e in entries if e.kind == "value" and e.i == index)


def test_output_lines_after_a_failover_begin_a_new_epoch_instead_of_reusing_seqs(redis, ran):
    job, entries, first = ran["lines_after_a_failover"]
    keep = value_seq(entries, 0)
    old = [e for e in entries if e.ep == first]
    # The old epoch ends where the replica did: nothing after it reuses keep+1.. in that epoch.
    assert [e.seq for e in old] == list(range(1, keep + 1))
    assert [e.kind for e in old][-1] == "value"
    assert all(e.ep != first for e in entries if e.seq > keep)
    assert not any(e.data.get("text", "").startswith("new") for e in old)
    # The capture stopped quietly; the value writer found the new epoch and the attempt ended
    # through RQ's normal path.
    assert job.get_status() == JobStatus.FAILED and "LogReset" in job.latest_result().exc_string
    assert entries[-1].kind == "failed" and "was reset" in entries[-1].data["reason"]
    assert JobLog(redis, job.id).head().epoch != first
    assert capture.current() is None


def test_a_value_after_lost_output_lines_is_refused_by_the_high_the_capture_raised(ran):
    job, entries, first = ran["value_after_lines_and_a_failover"]
    keep = value_seq(entries, 0)
    assert [e.seq for e in entries if e.ep == first] == list(range(1, keep + 1))
    assert [e.i for e in entries if e.kind == "value"] == [0]     # value 1 raised LogReset
    assert "LogReset" in job.latest_result().exc_string
    assert entries[-1].kind == "failed" and entries[-1].seq == keep + 1


def test_a_capture_whose_log_was_reset_stops_sending_and_warns_once(caplog):
    calls: list[int] = []

    def reset_sink(entries):
        """A log that was reset under the attempt."""
        calls.append(len(entries))
        raise LogReset("j")

    cap = capture.Capture("j", reset_sink, rate=1000, level=logging.INFO, echo=False, attempt=1,
                          mode="sys")
    cap.start()
    try:
        with caplog.at_level(logging.WARNING, logger="jobcast.worker.capture"):
            print("first")
            cap.before_value()
            print("second")
            cap.before_value()
    finally:
        cap.close()
    assert calls == [1] and cap.ended and cap.reset and not cap.retry
    warnings = [r.getMessage() for r in caplog.records if r.name == "jobcast.worker.capture"]
    assert len(warnings) == 1 and "was reset" in warnings[0]


# -- output that meets a reset: the attempt is retried as if a value had met it -------------------


def output_after_a_failover_then(ending: str) -> str:
    """Attempt 1: log value 0 and five lines; fail over to a replica that has only value 0;
    print one more line (its write meets the reset) and end with no other value, as
    ``ending`` says: "returns" at once (the line goes with the attempt's last flush, mostly),
    "returns later" (once the flush thread has met the reset), or "raises". Later attempts
    print a line and return."""
    jlog = rq_log(get_current_job())
    if jlog.info().attempt > 1:
        print("again")
        return "done"
    keep = emit(0)
    for i in range(5):
        print(f"old {i}")
    capture.before_value()
    lose(jlog, keep=keep)
    print("lost")
    if ending == "returns later":
        wait_for(lambda: capture.current().ended, what="the flush thread to meet the reset")
    elif ending == "raises":
        raise ValueError("on purpose")
    return "done"


def run_hooked(redis: Redis, worker_class: type, *args, **kwargs) -> tuple[Job, list[Entry]]:
    """Run :func:`output_after_a_failover_then` with ``args`` by a hooked ``worker_class`` in
    this process (the forking one forks its work-horse from here), to the end of its retries:
    the job and its log's entries."""
    queue = Queue(f"reset-output-{os.getpid()}-{uuid.uuid4().hex[:6]}", connection=redis)
    job = queue.enqueue(output_after_a_failover_then, *args, **kwargs)
    worker_class([queue], connection=redis).work(burst=True)
    return Job.fetch(job.id, connection=redis), list(JobLog(redis, job.id).entries())


@pytest.mark.parametrize("worker_class", [SimpleWorker, Worker])
@pytest.mark.parametrize("ending", ["returns", "returns later", "raises"])
def test_an_attempt_whose_output_met_a_reset_is_retried_though_it_emits_no_more_values(
        redis, in_process, worker_class, ending):
    job, entries = run_hooked(redis, worker_class, ending, retry=Retry(max=1))
    kinds = [(e.kind, e.data.get("attempt"), e.data.get("text")) for e in entries]
    retrying = kinds.index(("retrying", None, None))
    # Attempt 1 never finished: its `retrying` comes before attempt 2's start, and the only
    # `finished` is attempt 2's, last.
    assert kinds[retrying + 1:] == [("started", 2, None), ("log", 2, "again"), ("finished", None, None)]
    assert [k for k, _a, _t in kinds].count("finished") == 1
    assert ("log", 1, "lost") not in kinds
    reason = entries[retrying].data["reason"]
    if ending == "raises":
        assert reason == "ValueError: on purpose"
    else:   # as when a value meets the reset (emit() raises LogReset)
        assert reason == f"LogReset: {LogReset(job.id)}"
    assert job.get_status() == JobStatus.FINISHED and job.return_value() == "done"
    assert job.retries_left == 0    # the retry was counted as RQ counts any other
    assert capture.current() is None


@pytest.mark.parametrize("worker_class", [SimpleWorker, Worker])
def test_an_attempt_whose_output_met_a_reset_with_no_retry_left_fails_and_never_finishes(
        redis, in_process, worker_class):
    job, entries = run_hooked(redis, worker_class, "returns")
    assert [e.kind for e in entries].count("finished") == 0
    assert entries[-1].kind == "failed" and "was reset" in entries[-1].data["reason"]
    assert job.get_status() == JobStatus.FAILED and "LogReset" in job.latest_result().exc_string


# -- values lost after the last write: the attempt is retried, its end never reuses a seq ---------


def loses_its_last_value_then_returns() -> str:
    """Attempt 1: log values 0..2, then fail over to a replica that lacks value 2, and return
    with nothing more written. Later attempts log the values again and return."""
    jlog = rq_log(get_current_job())
    seqs = [emit(i) for i in range(3)]
    if jlog.info().attempt == 1:
        lose(jlog, keep=seqs[1])
    return "done"


@pytest.mark.parametrize("worker_class", [SimpleWorker, Worker])
@pytest.mark.parametrize("retries", [0, 1])
def test_an_attempt_whose_last_values_a_failover_lost_is_retried_and_its_end_reuses_no_seq(
        redis, in_process, worker_class, retries):
    """A review's finding: the hook wrote the end of such an attempt (``finished``) with a new
    writer, at the lost value's seq in the same epoch: a viewer that had that value was never
    told it was lost, and RQ filed the job finished without it."""
    queue = Queue(f"lost-last-{os.getpid()}-{uuid.uuid4().hex[:6]}", connection=redis)
    job = queue.enqueue(loses_its_last_value_then_returns,
                        retry=Retry(max=retries) if retries else None)
    worker_class([queue], connection=redis).work(burst=True)
    job = Job.fetch(job.id, connection=redis)
    entries = list(JobLog(redis, job.id).entries())
    first = entries[0].ep
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    # Seq 5 (value 2) was lost: what comes at seq 5 now is in a new epoch.
    assert [e.ep == first for e in entries] == [True] * 4 + [False] * (len(entries) - 4)
    assert entries[4].kind == ("retrying" if retries else "failed")
    assert entries[4].data["reason"] == f"LogReset: {LogReset(job.id)}"
    if retries:
        assert [(e.kind, e.data.get("i")) for e in entries[5:]] == [
            ("started", None), ("value", 2), ("finished", None)]
        assert job.get_status() == JobStatus.FINISHED
    else:
        assert len(entries) == 5 and job.get_status() == JobStatus.FAILED


# -- Jobcast's own tasks: run_task shares its log with the capture the hook started --------------


def fail_over_to_value_0(monkeypatch, jlog: JobLog, *, before_value_1: bool) -> list[int]:
    """Make the job's writer fail over, once, to where its value 0 was last in the log: just
    before value 1 is written (its lines already logged), or just after. Returns the seqs the
    writer's values got (value 0's first)."""
    first = jlog.head().epoch
    logged = JobLog.value
    kept: list[int] = []

    def value_then_failover(self, index, v, total=None):
        """Write value ``index``; around value 1, lose the log's entries after value 0's."""
        if before_value_1 and index == 1 and self.epoch == first:
            lose(jlog, keep=kept[0])
        seq = logged(self, index, v, total)
        kept.append(seq)
        if not before_value_1 and index == 1 and self.epoch == first:
            lose(jlog, keep=kept[0])
        return seq

    monkeypatch.setattr(JobLog, "value", value_then_failover)
    return kept


def perform_meeting_a_reset(redis, job: Job) -> None:
    """Run ``job`` here, its output captured as the hook does for run_task (the capture starts
    before the runner begins its log), and expect it to raise LogReset."""
    capture.start(job.id, JobLog(redis, job.id), get_settings(), attempt=None, fds=False)
    try:
        with pytest.raises(LogReset):
            job.perform()
    finally:
        capture.seal()


def test_the_runner_s_value_after_lost_output_lines_raises_log_reset(redis, settings, monkeypatch):
    job_id = enqueue("chatty", {}, redis=redis, config=settings)
    job = Job.fetch(job_id, connection=redis)
    jlog = JobLog(redis, job_id)
    first = jlog.head().epoch
    kept = fail_over_to_value_0(monkeypatch, jlog, before_value_1=True)
    perform_meeting_a_reset(redis, job)
    entries = list(jlog.entries())
    keep = kept[0]
    assert [e.seq for e in entries if e.ep == first] == list(range(1, keep + 1))
    assert [e.kind for e in entries if e.seq > keep] == ["retrying"]
    assert jlog.head().epoch != first


def test_the_runner_s_output_after_its_last_value_meeting_a_reset_retries_it_instead_of_finishing(
        redis, settings, monkeypatch):
    job_id = enqueue("chatty", {}, redis=redis, config=settings)
    job = Job.fetch(job_id, connection=redis)
    jlog = JobLog(redis, job_id)
    first = jlog.head().epoch
    # After the last value (1): the line the task prints next ("bye") meets the reset.
    kept = fail_over_to_value_0(monkeypatch, jlog, before_value_1=False)
    perform_meeting_a_reset(redis, job)
    entries = list(jlog.entries())
    assert [e.kind for e in entries if e.seq > kept[0]] == ["retrying"]
    assert entries[-1].data["reason"] == f"LogReset: {LogReset(job_id)}"
    assert jlog.head().epoch != first
