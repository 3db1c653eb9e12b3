"""An attempt's start: whether the job runs, and in which run of its log.

RQ runs a job id more than once: a retry (the same run, its log goes on after ``retrying``),
and a new run of the id: RQ's ``Repeat``, a requeue from the failed registry, or the id
enqueued again. Each start records which run and retry it is (:func:`run_of`). A log that
finished or failed in an earlier run is opened anew for this one
(:meth:`jobcast.core.joblog.JobLog.reopen`), or its values would be dropped while RQ filed the
job finished. A log whose end is this run's (the web's watchdog failed it) stands, and a
cancelled log stays cancelled: the attempt does not run (:func:`ended_in_this_run`).
"""

from __future__ import annotations

import logging
from datetime import timezone
from typing import Any, NamedTuple

from rq.job import Job

from jobcast.core.joblog import JobLog, Refused

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job was cancelled: its log already ends with ``cancelled``, so it stops here.

    Raised where the job runs (a work-horse, or a non-forking worker's own process) by the
    runner or by ``emit()``; the worker (worker/hook.py) then files the RQ job as canceled
    instead of failing or retrying it.
    """

    jobcast_logged = True  # on_failure has nothing to write: the log has its ending


class JobEnded(Exception):
    """The job's log had ended before this attempt began (the web's watchdog failed it, seeing
    no live worker holding it): the attempt does not run it."""


def run_of(job: Job) -> str:
    """Which run, and which retry of it, this attempt of ``job`` is: RQ's repeats left, then
    its retries left (``<repeats>/<retries>``). A ``Repeat``'s next run has one repeat less; a
    retry, one retry less; a requeue from the failed registry changes neither."""
    return f"{job.repeats_left}/{job.retries_left}"


def _enqueued(job: Job) -> float | None:
    """When RQ last enqueued ``job`` (unix time), None if it does not say."""
    enqueued = job.enqueued_at
    if enqueued is None:
        return None
    if enqueued.tzinfo is None:  # RQ's times are UTC
        enqueued = enqueued.replace(tzinfo=timezone.utc)
    return enqueued.timestamp()


def ended_in_this_run(jlog: JobLog, job: Job) -> bool:
    """True when ``jlog``'s end is this run's (the web's watchdog failed it: no live worker
    seemed to hold it), not an earlier run's of the same id.

    The run that last started in the log names itself (:func:`run_of`): an end logged under
    other repeats left was an earlier run's; under other retries left, this run's (this is its
    retry). Otherwise (the same attempt taken again, or a requeue, or a log from before runs
    were named) the end is this run's if it came after this enqueue.
    """
    ended_at, run = jlog.run_end()
    if ended_at is None:
        return False
    if run:
        repeats, _, retries = run.partition("/")
        now_repeats, _, now_retries = run_of(job).partition("/")
        if repeats != now_repeats:
            return False
        if retries != now_retries:
            return True
    enqueued = _enqueued(job)
    return enqueued is not None and ended_at >= enqueued


def _end_unlogged_run(jlog: JobLog, job: Job) -> None:
    """Log ``finished`` for the earlier run of a repeated job whose end was never logged (a
    worker without Jobcast's hook): RQ repeats a job only once it has succeeded."""
    ended_at, run = jlog.run_end()
    if ended_at is None and run and run.partition("/")[0] != run_of(job).partition("/")[0]:
        if jlog.finished() > 0:
            log.info("job %s: its earlier run's end was not logged; logged finished", job.id)


class Attempt(NamedTuple):
    """An attempt that runs: its number, and whether it opened the log anew (a new run)."""

    number: int
    new_run: bool


def start_attempt(jlog: JobLog, job: Job, worker: str, task: str, params: dict[str, Any],
                  total: int | None, extra: dict[str, str] | None = None) -> Attempt:
    """Log ``started`` for this attempt of ``job``; the attempt.

    When the log has ended, the attempt runs only if that end was an earlier run's: the log is
    opened anew, as ``task`` with ``params``, ``total`` and ``extra`` (the new run's
    description), and the attempt is its first. Otherwise raises :class:`JobCancelled` (RQ
    files the job canceled) or :class:`JobEnded` (failed, without a retry: a retry would meet
    the same end).
    """
    _end_unlogged_run(jlog, job)
    attempt, run = jlog.next_attempt(), run_of(job)
    if jlog.started(worker, attempt, run) != Refused.ENDED:
        return Attempt(attempt, False)
    # Cancelled as the job was taken (a retry's, say: RQ does not look at a job's cancel when
    # it dequeues it), or enqueued again after a cancel: a cancel is never undone here.
    if jlog.status() == "cancelled":
        raise JobCancelled(job.id)
    if ended_in_this_run(jlog, job):
        raise JobEnded(job.id)
    if jlog.reopen(task, params, total, extra):
        log.info("job %s runs again: its log is opened anew for this run", job.id)
    attempt = jlog.next_attempt()
    # Ended again meanwhile (a cancel of the new run)?
    if jlog.started(worker, attempt, run) == Refused.ENDED:
        if jlog.status() == "cancelled":
            raise JobCancelled(job.id)
        raise JobEnded(job.id)
    return Attempt(attempt, True)
