"""The function RQ runs for every Jobcast job: drive a task and log what it yields."""

from __future__ import annotations

import logging
from typing import Any

from rq import get_current_job
from rq.job import Job

from jobcast.core.epoch import LogReset
from jobcast.core.joblog import JobExists, JobLog, Refused
from jobcast.core.reasons import failure_reason
from jobcast.core.registry import get_task
from jobcast.core.settings import get_settings
from jobcast.worker import capture
from jobcast.worker.attempt import JobCancelled, JobEnded, start_attempt
from jobcast.worker.chart import ChartWriter
from jobcast.worker.emit import log_connection, rq_log

log = logging.getLogger(__name__)


def describe(exc: BaseException, shown: str | None = None) -> str:
    """A one-line reason for a failure, as shown to viewers: as much of the exception as
    ``shown`` (JOBCAST_FAILURE_REASON) allows."""
    return failure_reason(type(exc).__name__, str(exc), shown or get_settings().failure_reason)


def run_task(task_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one job: log ``started``, each value, then ``finished`` (or ``failed``).

    A retried job continues the same log: a resumable task starts at the first value not yet
    logged, and any value logged before is dropped by the log's own sequence check.

    The run writes into the log's incarnation it began (jobcast.core.epoch): when Redis loses
    entries under it (a failover), its next entry raises LogReset (an output line's, through
    :func:`capture.seal`) and RQ retries (or fails) the job as it would a killed worker's; the
    retry begins the log as it is then. A log lost with its store is opened again, in a new
    epoch, from the job's task and parameters.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_task must run inside an RQ job")
    cfg = get_settings()
    redis = log_connection(cfg, job.connection)
    try:
        return _run(job, rq_log(job, cfg, redis), task_name, params)
    finally:
        # The run's own connection, whatever ends it (a non-forking worker lives on).
        redis.close()


def _run(job: Job, jlog: JobLog, task_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_task` on the log ``jlog``, through the run's own connection."""
    task = get_task(task_name)
    exists, start, attempt = jlog.begin()
    if not exists:
        log.warning("job %s: its log is gone (the stream store lost it); opening it again",
                    job.id)
        try:
            jlog.create(task_name, params, task.total_for(params))
        except JobExists:
            pass  # opened meanwhile (the web, for a viewer)
        exists, start, attempt = jlog.begin()
    if exists and jlog.named != task_name:
        # Opened by the web for a viewer while the stream store had lost it, from RQ's
        # description of the call: say which task this is, with its parameters and total.
        jlog.describe(task_name, params, task.total_for(params))
    try:
        started = start_attempt(jlog, job, job.worker_name or "unknown", task_name, params,
                                task.total_for(params))
    except JobEnded as exc:
        log.warning("job %s already ended (failed by the watchdog?); not running it", job.id)
        raise _filed_failed(job, exc) from None
    attempt = started.number
    if started.new_run:
        start = 0  # the id runs again, in a log opened anew: from its first value
    # The output is this attempt's, comes after `started`, and goes through this began log:
    # its lines and the values share one incarnation and one highest seq.
    capture.set_attempt(attempt, jlog)
    log.info("job %s: task %s attempt %s from value %s", job.id, task_name, attempt, start)
    index = start if task.resumable else 0
    values = task.iterate(params, start=start)
    chart = ChartWriter(jlog)
    ended = False
    failure: Exception | None = None
    try:
        for value in values:
            capture.before_value()
            seq = jlog.value(index, value)
            if seq == Refused.ENDED:
                # The log has ended under us (a cancel between two values): stop computing.
                ended = True
                break
            if seq > 0:
                chart.add(index, value)
            index += 1
    except Exception as exc:
        failure = exc
    finally:
        close = getattr(values, "close", None)  # a generator's; a task may return a list
        if close is not None:
            try:
                close()
            except Exception as exc:  # the task's own cleanup (its ``finally``) failed
                if failure is None and not ended:
                    failure = exc  # the run's failure, as if its loop had raised it
                else:  # the run's own ending (its failure, a cancel) is what it reports
                    log.warning("job %s: the task's cleanup failed too: %s", job.id,
                                describe(exc))
        chart.save()
        # Everything the task printed (its generator's cleanup too) before the last entry.
        reset = capture.seal()
    if failure is None and reset and not ended:
        # Its output met a reset of the log: retried (or failed) as if a value had, never
        # finished, even when no value came after (a log already ended keeps its end).
        failure = LogReset(job.id)
    if failure is not None:
        reason = describe(failure)
        if job.retries_left:
            jlog.retrying(reason)
        else:
            jlog.failed(reason)
        failure.jobcast_logged = True  # tells on_failure not to log this failure again
        raise failure
    if not ended:
        ended = jlog.finished() == Refused.ENDED
    if ended and jlog.status() == "cancelled":
        # Cancelled while the last value was written: the log already has its one ending.
        raise JobCancelled(job.id)
    if ended:
        # Failed under it (the watchdog took its worker for dead): RQ must not file it
        # finished while its viewers were told it failed.
        log.warning("job %s: its log ended while it ran (failed by the watchdog?); stopped",
                    job.id)
        raise _filed_failed(job, JobEnded(job.id))
    return {"values": index}


def _filed_failed(job: Job, exc: JobEnded) -> JobEnded:
    """``exc``, raised for a job whose log has already ended (not cancelled): RQ files it failed,
    with no retry (a retry would meet the same end), and the failure callback writes nothing
    (the log keeps its one end)."""
    job.retries_left = 0
    exc.jobcast_logged = True
    return exc


def on_failure(job: Job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback: also runs for jobs abandoned by a killed worker.

    It writes the terminal ``failed`` entry once no retry is left; the log ignores a second
    terminal entry, so it is safe when run_task already wrote one.
    """
    if getattr(exc_value, "jobcast_logged", False):
        return
    reason = describe(exc_value) if exc_value is not None else "job failed"
    jlog = rq_log(job)
    if job.retries_left:
        jlog.retrying(reason)
    else:
        jlog.failed(reason)
