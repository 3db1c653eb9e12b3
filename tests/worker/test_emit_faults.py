"""emit() when a value cannot be written, or the job is cancelled under it: run by Jobcast's
non-forking worker in this process, on the session's real redis-server."""

from __future__ import annotations

import os
import uuid

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError
from rq import Queue, get_current_job
from rq.job import Job, JobStatus

from jobcast import emit
from jobcast.core.joblog import JobLog
from jobcast.core.settings import get_settings
from jobcast.producer.cancel import cancel
from jobcast.worker import capture
from jobcast.worker.hook import SimpleWorker


class Unprintable:
    """A value whose text cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


def tolerant(values: list) -> list:
    """Emit each value, going on past any emit() that raises (a job that catches it)."""
    got = []
    for value in values:
        try:
            got.append(emit(Unprintable() if value == "unprintable" else value))
        except Exception as exc:  # noqa: BLE001 (what a tolerant job does)
            got.append(type(exc).__name__)
    return got


def cancelled_at(n: int, at: int) -> list:
    """Emit 0..n-1; the job is cancelled (as the web or the CLI would) after value ``at``. The
    key ``computed:<job id>`` counts the values it computed."""
    job = get_current_job()
    got = []
    for i in range(n):
        job.connection.incr(f"computed:{job.id}")
        got.append(emit(i))
        if i == at:
            cancel(job.id, "test", redis=job.connection)
    return got


def run(redis: Redis, func, *args) -> tuple[Job, list]:
    """Run ``func(*args)`` as an RQ job by the hooked non-forking worker: the job, its log's
    entries."""
    queue = Queue(f"emit-faults-{os.getpid()}-{uuid.uuid4().hex[:6]}", connection=redis)
    job = queue.enqueue(func, *args)
    SimpleWorker([queue], connection=redis).work(burst=True)
    return Job.fetch(job.id, connection=redis), list(JobLog(redis, job.id).entries())


def value_write_fails_once(monkeypatch, index: int) -> list[int]:
    """The first write of value ``index`` fails (Redis away for a moment); every other goes.
    Returns the list of the writes failed (``[index]`` once it has)."""
    real = JobLog.value
    failed = []

    def flaky(self, i, value, total=None):
        """Value ``index``'s first write raises."""
        if i == index and not failed:
            failed.append(i)
            raise RedisConnectionError("Redis went away for a moment")
        return real(self, i, value, total)

    monkeypatch.setattr(JobLog, "value", flaky)
    return failed


def values(entries) -> list:
    """(index, text) of the value entries."""
    return [(e.i, e.text) for e in entries if e.kind == "value"]


def test_a_value_that_cannot_be_shown_is_not_counted_and_the_values_after_it_are_logged(
        redis, in_process):
    """A review's finding: its index was counted all the same, so every later value was one
    past the log's count, refused, and lost untold; the job finished without them."""
    job, entries = run(redis, tolerant, [0, "unprintable", 2, 3])
    assert job.return_value()[1] == "RuntimeError"
    assert values(entries) == [(0, "0"), (1, "2"), (2, "3")]
    assert entries[-1].kind == "finished"


@pytest.mark.parametrize("landed", [False, True], ids=["not written", "reply lost"])
def test_a_value_redis_failed_to_take_is_sent_again_before_the_next_and_none_is_lost(
        redis, in_process, monkeypatch, landed):
    """A review's finding: after one write raised (Redis unreachable for a moment) and the job
    went on, every later value was refused untold. The value goes again, first, at the next
    emit(); one that had landed (its reply lost) is refused as a repeat, and logged once."""
    real = JobLog.value
    failed = []

    def flaky(self, index, value, total=None):
        """The second value's first write fails."""
        if index == 1 and not failed:
            failed.append(index)
            if landed:
                real(self, index, value, total)
            raise RedisConnectionError("Redis went away for a moment")
        return real(self, index, value, total)

    monkeypatch.setattr(JobLog, "value", flaky)
    job, entries = run(redis, tolerant, ["a", "b", "c", "d"])
    assert job.return_value()[1] == "ConnectionError"
    assert values(entries) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert entries[-1].kind == "finished"


def test_a_job_cancelled_on_a_non_forking_worker_stops_at_its_next_value(redis, in_process,
                                                                        monkeypatch):
    """A review's finding: RQ's stop cannot kill a non-forking worker's job, and emit()
    returned None for each value the log refused: the job computed to its end, and RQ filed it
    finished under a log that said cancelled."""
    monkeypatch.setenv("JOBCAST_QUEUES", "*")  # the test's own queue is Jobcast's to cancel
    get_settings.cache_clear()
    job, entries = run(redis, cancelled_at, 10, 2)
    assert values(entries) == [(0, "0"), (1, "1"), (2, "2")]
    assert entries[-1].kind == "cancelled"
    assert int(redis.get(f"computed:{job.id}")) == 4  # stopped at its first value after it
    assert job.get_status() == JobStatus.CANCELED


def test_a_redis_error_filing_a_cancelled_job_in_rq_does_not_stop_the_worker(redis, in_process,
                                                                           monkeypatch):
    """A review's finding: the hook files a job cancelled under a non-forking worker as RQ's
    canceled (Job.cancel); a Redis error there escaped RQ's failure handling, and the worker
    quit with every job behind it waiting."""
    monkeypatch.setenv("JOBCAST_QUEUES", "*")
    get_settings.cache_clear()

    def unanswered(self, *args, **kwargs):
        """Redis does not answer."""
        raise RedisConnectionError("Redis went away for a moment")

    monkeypatch.setattr(Job, "cancel", unanswered)
    queue = Queue(f"emit-faults-{os.getpid()}-{uuid.uuid4().hex[:6]}", connection=redis)
    cancelled = queue.enqueue(cancelled_at, 10, 2)
    after = queue.enqueue(tolerant, ["a"])
    SimpleWorker([queue], connection=redis).work(burst=True)
    assert list(JobLog(redis, cancelled.id).entries())[-1].kind == "cancelled"
    assert Job.fetch(after.id, connection=redis).get_status() == JobStatus.FINISHED


def test_values_redis_failed_to_take_twice_in_a_row_are_all_logged_in_order(redis, in_process,
                                                                            monkeypatch):
    """A review's finding: when the resend of a held value failed too, the value of that call
    was never counted: the log read a, b, d, its indices contiguous, and no gap was told."""
    real = JobLog.value
    failures = {1: 2}  # value 1's first two writes fail (in emit("b") and emit("c"))

    def flaky(self, index, value, total=None):
        """Value 1's write fails as many times as ``failures`` says."""
        if failures.get(index):
            failures[index] -= 1
            raise RedisConnectionError("Redis went away for a moment")
        return real(self, index, value, total)

    monkeypatch.setattr(JobLog, "value", flaky)
    job, entries = run(redis, tolerant, ["a", "b", "c", "d"])
    assert job.return_value()[1:3] == ["ConnectionError", "ConnectionError"]
    assert values(entries) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert entries[-1].kind == "finished"


def test_a_last_value_redis_failed_to_take_is_sent_as_the_job_ends(redis, in_process,
                                                                   monkeypatch):
    """A review's finding: the held value went out only with a next emit(); after the job's
    last one nothing sent it, and the job finished without it."""
    value_write_fails_once(monkeypatch, 2)  # the last value's
    job, entries = run(redis, tolerant, ["a", "b", "c"])
    assert job.return_value()[2] == "ConnectionError"
    assert values(entries) == [(0, "a"), (1, "b"), (2, "c")]
    assert entries[-1].kind == "finished"
    assert job.get_status() == JobStatus.FINISHED


def test_a_run_whose_values_redis_never_took_fails_rather_than_finish_without_them(
        redis, in_process, monkeypatch):
    """Redis stays away for the job's last value, as the job ends: the run fails (RQ's retry
    would run it again), saying why, and its log never says finished."""
    real = JobLog.value

    def flaky(self, index, value, total=None):
        """The last value never reaches Redis."""
        if index == 2:
            raise RedisConnectionError("Redis went away")
        return real(self, index, value, total)

    monkeypatch.setattr(JobLog, "value", flaky)
    job, entries = run(redis, tolerant, ["a", "b", "c"])
    assert values(entries) == [(0, "a"), (1, "b")]
    assert entries[-1].kind == "failed"
    assert "ValuesUnsent" in entries[-1].data["reason"]
    assert job.get_status() == JobStatus.FAILED


def changing_in_place(n: int) -> list:
    """Emit one dict ``n`` times, changing it in place after each emit() (a job's running
    state), going on past any emit() that raises."""
    state = {"k": 0}
    got = []
    for k in range(n):
        state["k"] = k
        try:
            got.append(emit(state))
        except Exception as exc:  # noqa: BLE001 (what a tolerant job does)
            got.append(type(exc).__name__)
    return got


def test_a_value_held_while_redis_was_away_is_logged_as_it_was_when_emitted(
        redis, in_process, monkeypatch):
    """A review's finding: a value Redis did not take was held as the object, and sent again
    at the next emit() as the job had changed it since: the log showed value 0 as {'k': 1}."""
    failed = value_write_fails_once(monkeypatch, 0)
    job, entries = run(redis, changing_in_place, 3)
    assert failed == [0]
    assert values(entries) == [(0, "{'k': 0}"), (1, "{'k': 1}"), (2, "{'k': 2}")]
    assert entries[-1].kind == "finished"


def test_no_value_takes_the_index_of_one_that_could_not_even_be_held(
        redis, in_process, monkeypatch):
    """A review's finding: past MAX_UNSENT held values, the value not held left its index to
    the next one: once Redis was back the log read a, b, d, e, and "c" never came (a retry
    resumes after the values logged, and would have found d where c belongs)."""
    from jobcast.worker import emit as emit_module

    monkeypatch.setattr(emit_module, "MAX_UNSENT", 2)
    real = JobLog.value
    calls = []

    def flaky(self, index, value, total=None):
        """Redis is away for the first three writes."""
        calls.append(index)
        if len(calls) <= 3:
            raise RedisConnectionError("Redis went away")
        return real(self, index, value, total)

    monkeypatch.setattr(JobLog, "value", flaky)
    job, entries = run(redis, tolerant, ["a", "b", "c", "d", "e"])
    assert job.return_value() is None  # the run failed
    assert values(entries) == [(0, "a"), (1, "b")]  # held, sent, and nothing at c's index
    assert entries[-1].kind == "failed" and "ValuesUnsent" in entries[-1].data["reason"]


def prints_around(values: list, tick: bool = False) -> list:
    """For each value: print ``before <v>``, emit it (going on past an emit() that raises),
    print ``after <v>``; with ``tick``, the capture then sends what is queued, as its flush
    thread does every 100 ms while a job works."""
    got = []
    for value in values:
        print(f"before {value}", flush=True)
        try:
            got.append(emit(value))
        except Exception as exc:  # noqa: BLE001 (what a tolerant job does)
            got.append(type(exc).__name__)
        print(f"after {value}", flush=True)
        if tick:
            capture.current().barrier()
            capture.current().send()
    return got


def order(entries) -> list[str]:
    """The job's printed lines and values, in the log's order (by seq)."""
    return [e.data["text"] if e.kind == "log" else f"value {e.text}"
            for e in sorted(entries, key=lambda e: e.seq) if e.kind in ("log", "value")]


@pytest.mark.parametrize("landed, error", [
    (False, RedisConnectionError), (True, RedisConnectionError),
    # A Cluster's refusal is no RedisError: the batch was dropped untold, every value after
    # it refused, and the job finished.
    (False, SlotNotCoveredError), (True, SlotNotCoveredError),
], ids=["not written", "reply lost", "slot not covered", "slot not covered after some landed"])
def test_lines_printed_before_a_value_stay_before_it_when_redis_fails_to_take_them(
        redis, in_process, monkeypatch, landed, error):
    """A review's finding: when the send of the lines printed before a value failed, they
    were queued again and the value written at once, before them (and when that send had
    landed, its reply lost, the value's write made the lines' resend look new: twice)."""
    real = JobLog._append_calls
    failed = []

    def flaky(self, script, calls):
        """The first send of the job's output fails."""
        if not failed:
            failed.append(1)
            if landed:
                real(self, script, calls)
            raise error("Redis went away for a moment")
        return real(self, script, calls)

    monkeypatch.setattr(JobLog, "_append_calls", flaky)
    job, entries = run(redis, prints_around, ["a", "b"])
    assert failed
    assert order(entries) == ["before a", "value a", "after a", "before b", "value b", "after b"]
    assert entries[-1].kind == "finished"


def test_lines_printed_after_a_held_value_never_come_before_it(redis, in_process, monkeypatch):
    """A review's finding: a value Redis did not take waits for the next emit(), but the
    lines printed after it were sent meanwhile, and came before it in the log."""
    failed = value_write_fails_once(monkeypatch, 0)
    job, entries = run(redis, prints_around, ["a", "b"], True)
    assert failed == [0]
    assert order(entries) == ["before a", "value a", "after a", "before b", "value b", "after b"]
    assert entries[-1].kind == "finished"


def last_words() -> str:
    """Emit one value, then print a line and return at once (the capture's last send has it)."""
    emit("v")
    print("last words", flush=True)
    return "done"


def test_lines_of_the_last_send_are_tried_again_when_redis_did_not_take_them(
        redis, in_process, monkeypatch):
    """A review's finding: the capture's last send, as the job ends, was tried once; lines it
    failed to send were only counted in the worker's own log, and the job's log showed its
    end with nothing to say that they were missing."""
    real = JobLog._append_calls
    failed = []

    def flaky(self, script, calls):
        """The first send carrying the last line fails."""
        if not failed and any("last words" in str(args) for _keys, args in calls):
            failed.append(1)
            raise RedisConnectionError("Redis went away for a moment")
        return real(self, script, calls)

    monkeypatch.setattr(JobLog, "_append_calls", flaky)
    job, entries = run(redis, last_words)
    assert failed and order(entries) == ["value v", "last words"]
    assert entries[-1].kind == "finished"


def test_a_failover_that_loses_a_hooked_jobs_started_entry_is_not_written_over(
        redis, in_process, monkeypatch):
    """A review's finding: the hook wrote ``started`` and only then began the log, so a
    failover that lost ``started`` in between went unseen: the job's first value took its
    seq in the same epoch, and viewers that had ``started`` skipped that value. Begun first,
    the log's next write finds it behind what this run wrote and begins a new epoch."""
    from jobcast.worker import hook
    from tests.support.loss import lose

    real = hook.start_attempt

    def then_lost(jlog, job, *args, **kwargs):
        """``started`` lands, then the failover loses it (the log as after ``queued``)."""
        started = real(jlog, job, *args, **kwargs)
        lose(JobLog(redis, job.id), keep=1)
        return started

    monkeypatch.setattr(hook, "start_attempt", then_lost)
    job, entries = run(redis, tolerant, ["a", "b"])
    queued, *after = entries
    assert queued.kind == "queued" and after
    assert all(e.ep != queued.ep for e in after), [(e.seq, e.kind, e.ep) for e in entries]
    # The values met the reset: the attempt fails (no retry here) rather than finish.
    assert entries[-1].kind == "failed" and job.get_status() == JobStatus.FAILED

