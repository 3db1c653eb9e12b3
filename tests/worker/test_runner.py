"""The RQ job function, run in this process against the session's real Redis: what it logs
for a task that finishes, fails, is retried, resumes, or was ended before it ran.

Each job is enqueued on a queue of its own (no worker of the session takes it) and run with
RQ's ``Job.perform``, which is what a work-horse calls.
"""

from __future__ import annotations

import math

import pytest
from redis import ConnectionPool, Redis
from rq import Queue
from rq.job import Job, JobStatus

import tests.tasks  # noqa: F401  (registers boom, flaky and flaky_resumable in this process)
from jobcast.core.epoch import LogReset
from jobcast.core.joblog import JobLog
from jobcast.core.settings import Settings, get_settings
from jobcast.producer.enqueue import enqueue
from jobcast.worker import runner
from jobcast.worker.runner import JobCancelled, describe, on_failure, run_task
from tests.support.loss import lose


def queued(redis: Redis, settings: Settings, task: str, **params) -> tuple[Job, JobLog]:
    """Enqueue ``task`` and return its RQ job and its log."""
    job_id = enqueue(task, params, redis=redis, config=settings)
    return Job.fetch(job_id, connection=redis), JobLog(redis, job_id)


def kinds(log: JobLog) -> list[str]:
    """The kinds of the log's entries, in seq order."""
    return [e.kind for e in log.entries()]


def values(log: JobLog) -> list[int]:
    """The value indexes logged, in seq order."""
    return [e.i for e in log.entries() if e.kind == "value"]


def test_run_task_logs_started_each_value_then_finished_and_returns_the_count(redis, settings):
    job, log = queued(redis, settings, "sqrt", n=4, interval=0)
    assert job.perform() == {"values": 4}
    assert kinds(log) == ["queued", "started", "value", "value", "value", "value", "finished"]
    assert values(log) == [0, 1, 2, 3]
    started = next(e for e in log.entries() if e.kind == "started")
    assert started.data["attempt"] == 1 and started.data["worker"] == "unknown"


def test_a_run_writes_its_values_on_one_connection_of_its_own_borrowing_none_per_value(
        redis, settings, monkeypatch):
    # Borrowing a pooled connection costs a poll() of its socket and redis-py's bookkeeping,
    # for every value, between the task yielding it and its viewers getting it.
    made = []
    log_connection = runner.log_connection
    monkeypatch.setattr(runner, "log_connection",
                        lambda cfg, queue: made.append(log_connection(cfg, queue)) or made[-1])
    borrowed = []
    get_connection = ConnectionPool.get_connection
    monkeypatch.setattr(ConnectionPool, "get_connection",
                        lambda pool, *a, **k: borrowed.append(pool) or get_connection(pool, *a, **k))
    job, log = queued(redis, settings, "sqrt", n=20, interval=0)
    assert job.perform() == {"values": 20}
    assert values(log) == list(range(20))
    assert borrowed.count(made[0].connection_pool) == 1  # its own, once


@pytest.mark.parametrize("task, params", [("sqrt", {"n": 2, "interval": 0}),
                                          ("boom", {"after": 1})], ids=["finished", "failed"])
def test_a_run_closes_its_own_connection_however_it_ends(redis, settings, monkeypatch, task,
                                                         params):
    """A review's finding: the run's connection was closed only when the task finished; a
    failed (or cancelled, or ended) run left it open until the garbage collector found it, on
    a non-forking worker that runs job after job."""
    made = []
    log_connection = runner.log_connection
    monkeypatch.setattr(runner, "log_connection",
                        lambda cfg, queue: made.append(log_connection(cfg, queue)) or made[-1])
    job, _ = queued(redis, settings, task, **params)
    try:
        job.perform()
    except Exception:  # noqa: BLE001 (the failed run's own exception)
        pass
    (own,) = made
    assert own.connection is None  # closed (a single-connection client lets go of it then)


def test_a_task_that_returns_a_list_logs_its_values_and_finishes(redis, settings, monkeypatch):
    """A review's finding: the runner closed what the task returned as a generator, so a task
    returning a list failed after logging all its values."""
    from jobcast.core.task import TASKS, task

    def listed(n: int = 3) -> list[int]:
        """Values in a list, not yielded."""
        return [i * i for i in range(n)]

    monkeypatch.setitem(TASKS, "listed", None)  # (taken out again after the test)
    task("listed")(listed)
    job, log = queued(redis, settings, "listed", n=3)
    assert job.perform() == {"values": 3}
    assert kinds(log) == ["queued", "started", "value", "value", "value", "finished"]


def test_a_task_yielding_ints_past_a_float_and_past_pythons_text_limit_logs_them_in_full(
        redis, settings, monkeypatch):
    """A review's finding: an int past a float's range failed the job at the chart's point
    (OverflowError), retried it and failed it again; one over 4,300 digits failed at its text
    (Python's guard on int-to-text conversion), though well within the value limit."""
    from jobcast.core.task import TASKS, task

    def big(n: int = 2) -> list[int]:
        """Factorials, then a 5,000-digit power of ten, then a point the chart takes."""
        return [math.factorial(200), 10 ** 5000 + 7, 3]

    monkeypatch.setitem(TASKS, "big", None)  # (taken out again after the test)
    task("big")(big)
    job, log = queued(redis, settings, "big")
    assert job.perform() == {"values": 3}
    assert kinds(log) == ["queued", "started", "value", "value", "value", "finished"]
    shown = [e.data["v"] for e in log.entries() if e.kind == "value"]
    assert shown == [str(math.factorial(200)), "1" + "0" * 4999 + "7", "3"]


def test_run_task_outside_an_rq_job_raises_runtime_error():
    with pytest.raises(RuntimeError, match="inside an RQ job"):
        run_task("sqrt", {"n": 1, "interval": 0})


def test_a_failure_with_retries_left_logs_retrying_and_marks_the_exception_logged(redis, settings):
    job, log = queued(redis, settings, "boom", after=2)
    assert job.retries_left == settings.job_retries > 0
    with pytest.raises(RuntimeError) as caught:
        job.perform()
    assert caught.value.jobcast_logged is True
    assert kinds(log) == ["queued", "started", "value", "value", "retrying"]
    assert list(log.entries())[-1].data["reason"] == "RuntimeError: boom after 2 values"
    assert log.status() != "failed"


def test_a_failure_without_retries_left_logs_the_terminal_failed_entry(redis, settings):
    job, log = queued(redis, settings, "boom", after=1)
    job.retries_left = 0
    with pytest.raises(RuntimeError):
        job.perform()
    assert kinds(log) == ["queued", "started", "value", "failed"]
    assert log.status() == "failed"


def test_a_retried_attempt_counts_up_and_a_resumable_task_starts_at_the_first_missing_value(
        redis, settings):
    job, log = queued(redis, settings, "flaky_resumable", n=6, fail_at=3)
    with pytest.raises(ConnectionError):
        job.perform()  # the first attempt logs 0, 1, 2 and dies at 3
    assert values(log) == [0, 1, 2] and log.values_logged() == 3
    assert job.perform() == {"values": 6}
    assert values(log) == [0, 1, 2, 3, 4, 5]
    attempts = [e.data["attempt"] for e in log.entries() if e.kind == "started"]
    assert attempts == [1, 2]
    assert kinds(log)[-1] == "finished"


def test_a_replayed_non_resumable_task_logs_each_value_once(redis, settings):
    job, log = queued(redis, settings, "flaky", n=6, fail_at=4)
    with pytest.raises(ConnectionError):
        job.perform()  # logs 0..3, dies at 4
    job.perform()  # replays from 0: the log refuses 0..3 again
    assert values(log) == [0, 1, 2, 3, 4, 5]


def test_a_job_cancelled_before_it_runs_raises_job_cancelled_and_logs_nothing_more(redis, settings):
    job, log = queued(redis, settings, "sqrt", n=3, interval=0)
    log.cancelled("tester")
    with pytest.raises(JobCancelled):
        job.perform()
    assert kinds(log) == ["queued", "cancelled"]


def test_a_job_already_failed_by_the_watchdog_is_not_run_and_rq_files_it_failed_with_no_retry(
        redis, settings):
    """A code review's finding: RQ filed it finished, while its viewers were told it failed."""
    from rq import SimpleWorker

    job_id = enqueue("sqrt", {"n": 3, "interval": 0}, redis=redis, config=settings)
    job = Job.fetch(job_id, connection=redis)
    job.retries_left, job.retry_intervals = 2, [0]
    job.save()
    log = JobLog(redis, job_id)
    log.failed("no live worker")
    SimpleWorker([Queue(settings.queue_name, connection=redis)], connection=redis).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.FAILED and "JobEnded" in job.latest_result().exc_string
    assert job.retries_left == 0 and job_id not in Queue(settings.queue_name, connection=redis).job_ids
    assert kinds(log) == ["queued", "failed"]


def test_a_job_failed_by_the_watchdog_while_it_runs_stops_and_rq_files_it_failed(
        redis, settings, monkeypatch):
    """A code review's finding: the run stopped at the log's end, and returned as if it had
    finished: RQ filed it finished, while its viewers were told it failed."""
    from rq import SimpleWorker

    job, log = queued(redis, settings, "sqrt", n=5, interval=0)
    value = JobLog.value

    def failed_at_the_third(self, index, *args, **kwargs):
        """The watchdog fails the log as the third value is written."""
        if index == 2:
            JobLog(redis, self.job_id).failed("no worker alive for 15 s")
        return value(self, index, *args, **kwargs)

    monkeypatch.setattr(JobLog, "value", failed_at_the_third)
    SimpleWorker([Queue(settings.queue_name, connection=redis)], connection=redis).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.FAILED and "JobEnded" in job.latest_result().exc_string
    assert kinds(log) == ["queued", "started", "value", "value", "failed"]


def test_a_task_whose_cleanup_raises_still_saves_its_chart_and_ends_as_it_ended(
        redis, settings, monkeypatch):
    """A code review's finding: a generator's ``finally`` that raised skipped the chart and the
    output's seal, and hid the run's own ending (a cancel became a RuntimeError)."""
    saved = []
    monkeypatch.setattr(runner.ChartWriter, "save", lambda self: saved.append(self.jlog.job_id))
    cancelled, cancelled_log = queued(redis, settings, "untidy", n=3)
    value = JobLog.value

    def cancelled_at_the_second(self, index, *args, **kwargs):
        """A cancel as the second value is written."""
        if index == 1 and self.job_id == cancelled.id:
            JobLog(redis, self.job_id).cancelled("tester")
        return value(self, index, *args, **kwargs)

    monkeypatch.setattr(JobLog, "value", cancelled_at_the_second)
    with pytest.raises(JobCancelled):
        cancelled.perform()
    assert kinds(cancelled_log)[-1] == "cancelled"
    finished, finished_log = queued(redis, settings, "untidy", n=2)
    with pytest.raises(RuntimeError, match="cleanup failed"):  # the run's failure
        finished.perform()
    assert kinds(finished_log)[-2:] == ["value", "retrying"]  # (retries left: retried)
    assert saved == [cancelled.id, finished.id]


def test_a_task_enqueued_again_after_it_ended_runs_from_its_first_value_in_its_log_opened_anew(
        redis, settings):
    """RQ's requeue (or a Repeat) runs a task job again under its id. Before, run_task found
    the earlier run's end, ran nothing, and RQ filed the job finished; a resumable task would
    also have started at the earlier run's count of values."""
    job, log = queued(redis, settings, "flaky_resumable", n=3, fail_at=10)
    assert job.perform() == {"values": 3}
    earlier = [(e.kind, e.ep, e.data["ts"]) for e in log.entries()]
    Queue(settings.queue_name, connection=redis).enqueue_job(job)  # as `rq requeue` does
    job = Job.fetch(job.id, connection=redis)
    assert job.perform() == {"values": 3}
    assert kinds(log) == ["queued", "started", "value", "value", "value", "finished"]
    assert values(log) == [0, 1, 2]
    again = [(e.kind, e.ep, e.data["ts"]) for e in log.entries()]
    assert {epoch for _, epoch, _ in again}.isdisjoint({epoch for _, epoch, _ in earlier})
    assert min(ts for _, _, ts in again) > max(ts for _, _, ts in earlier)
    assert log.info().params == {"n": 3, "fail_at": 10} and log.info().attempt == 1


def test_on_failure_logs_failed_for_a_job_whose_worker_died_without_logging(redis, settings):
    job, log = queued(redis, settings, "sqrt", n=3, interval=0)
    job.retries_left = 0
    on_failure(job, redis, SystemExit, SystemExit("work-horse killed"), None)
    assert kinds(log) == ["queued", "failed"]
    assert list(log.entries())[-1].data["reason"] == "SystemExit: work-horse killed"


def test_on_failure_logs_retrying_while_the_job_has_retries_left(redis, settings):
    job, log = queued(redis, settings, "sqrt", n=3, interval=0)
    on_failure(job, redis, None, None, None)
    assert kinds(log) == ["queued", "retrying"]
    assert list(log.entries())[-1].data["reason"] == "job failed"


def test_on_failure_writes_nothing_when_run_task_already_logged_the_failure(redis, settings):
    job, log = queued(redis, settings, "sqrt", n=3, interval=0)
    exc = RuntimeError("already logged")
    exc.jobcast_logged = True
    on_failure(job, redis, RuntimeError, exc, None)
    assert kinds(log) == ["queued"]


@pytest.mark.parametrize("exc, reason", [
    (RuntimeError("boom\nsecond line"), "RuntimeError: boom"),
    (ValueError(""), "ValueError"),
    (KeyError("n"), "KeyError: 'n'"),
])
def test_describe_gives_the_exception_type_and_the_first_line_of_its_message(exc, reason):
    assert describe(exc) == reason


BILLING = "ConnectionError: postgres://billing:hunter2@db/prod refused\nsecond line"


@pytest.mark.parametrize("shown, reason", [
    ("message", "ConnectionError: postgres://billing:hunter2@db/prod refused"),
    ("type", "ConnectionError"),
    ("none", "job failed"),
])
def test_what_viewers_are_told_of_a_failure_is_the_setting_s_to_choose(shown, reason, monkeypatch):
    """Finding 20 of issue 23: viewers saw the first line of any exception; how much of it
    they see is now JOBCAST_FAILURE_REASON's, for task jobs and plain RQ jobs alike."""
    from jobcast.core.settings import get_settings
    from jobcast.worker.hook import reason_from

    exc = ConnectionError(BILLING.partition(": ")[2])
    traceback = ("Traceback (most recent call last):\n  File \"jobs.py\", line 3, in pay\n"
                 "    connect()\n" + BILLING + "\n")
    assert describe(exc, shown) == reason and reason_from(traceback, shown) == reason
    monkeypatch.setenv("JOBCAST_FAILURE_REASON", shown)
    get_settings.cache_clear()
    try:
        assert describe(exc) == reason and reason_from(traceback) == reason
    finally:
        get_settings.cache_clear()


def test_a_plain_rq_jobs_reason_is_its_last_exception_type_and_message():
    """A multi-line message used to give its last line, without the type."""
    from jobcast.worker.hook import reason_from

    chained = ("Traceback (most recent call last):\n  File \"a.py\", line 1, in f\n"
               "KeyError: 'n'\n\nDuring handling of the above exception, another exception "
               "occurred:\n\nTraceback (most recent call last):\n  File \"a.py\", line 3, in f\n"
               "    raise tests.rq_jobs.Refused(msg)\ntests.rq_jobs.Refused: card refused\n"
               "  for customer 42\n")
    assert reason_from(chained, "message") == "Refused: card refused"
    assert reason_from("Work-horse terminated unexpectedly; waitpid returned 9", "message") == \
        "Work-horse terminated unexpectedly; waitpid returned 9"
    assert reason_from("", "message") == "job failed"


def test_a_log_reset_under_a_running_job_retries_it_and_the_retry_adds_no_duplicate(
        redis, settings, monkeypatch):
    job, log = queued(redis, settings, "sqrt", n=6, interval=0)
    first = log.head().epoch
    logged = JobLog.value

    def value_then_failover(self, index, v, total=None):
        """Log the value; after value 3 (seq 6), fail over to a replica that has only seq 4."""
        seq = logged(self, index, v, total)
        if index == 3 and self.epoch == first:
            lose(log, keep=4)
        return seq

    monkeypatch.setattr(JobLog, "value", value_then_failover)
    with pytest.raises(LogReset):
        job.perform()
    assert kinds(log) == ["queued", "started", "value", "value", "retrying"]
    assert "was reset" in list(log.entries())[-1].data["reason"]
    assert Job.fetch(job.id, connection=redis).perform() == {"values": 6}
    entries = list(log.entries())
    second, third = [era.epoch for era in log.head().eras[1:]]
    assert [e.seq for e in entries] == list(range(1, 12))
    # The reset's epoch, with "retrying", then the retry's own, from its start.
    assert [e.ep for e in entries] == [first] * 4 + [second] + [third] * 6
    assert values(log) == [0, 1, 2, 3, 4, 5] and kinds(log)[-1] == "finished"


def test_a_lost_log_the_web_opened_for_a_viewer_says_which_task_once_the_runner_starts(
        redis, settings):
    """A review's finding: the web, adopting the pending job as a plain RQ job, recorded RQ's
    description for its task, no parameters and no total, and the runner kept it so."""
    from jobcast.core.logstore import LogStore

    job, log = queued(redis, settings, "sqrt", n=2, interval=0)
    redis.delete(log.keys.meta, log.keys.log)
    assert LogStore(redis, settings).adopt(job.id)          # a viewer opened its page
    assert (log.info().task, log.info().params) == ("jobcast sqrt", {})  # RQ's description
    assert job.perform() == {"values": 2}
    info = log.info()
    assert (info.task, info.params, info.progress.n) == ("sqrt", {"n": 2, "interval": 0}, 2)


def test_a_log_lost_with_its_store_is_opened_again_by_the_next_attempt(redis, settings):
    job, log = queued(redis, settings, "sqrt", n=2, interval=0)
    first = log.head().epoch
    redis.delete(log.keys.meta, log.keys.log)
    assert job.perform() == {"values": 2}
    assert kinds(log) == ["queued", "started", "value", "value", "finished"]
    assert log.head().epoch != first and log.info().task == "sqrt"
