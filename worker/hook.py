"""The worker hook: RQ workers that log every job's lifecycle in its Jobcast log.

A user adds one line, the worker class: ``rq worker -w jobcast.Worker`` (or
``jobcast.Worker(queues, connection=...)`` in code). For every job it runs, whoever enqueued it,
the job's log gets ``started`` (after ``queued``, written here too if nobody created the log
yet), then ``finished``, or ``retrying`` / ``failed`` with the reason. Jobcast's own task jobs
are left alone: :func:`jobcast.worker.runner.run_task` logs those itself.

Entries that a retry changes are written before RQ re-queues the job, so the next attempt's
``started`` can never come before this attempt's ``retrying``.

What the job prints is captured from its ``started`` entry on and sealed when its execution
ends, before the terminal entry (:mod:`jobcast.worker.capture`): in a work-horse, at the file
descriptors; in the non-forking worker, at ``sys.stdout`` and ``sys.stderr``.
"""

from __future__ import annotations

import logging
import os

from rq import SimpleWorker as RQSimpleWorker
from rq import Worker as RQWorker
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus

from jobcast.core.epoch import LogReset
from jobcast.core.joblog import JobLog, task_label
from jobcast.core.keys import InvalidJobId
from jobcast.core.process import die_with_parent
from jobcast.core.reasons import reason_from_traceback
from jobcast.core.settings import get_settings
from jobcast.core.store import REDIS_ERRORS
from jobcast.core.values import valid_text
from jobcast.core.workers import JobcastJob
from jobcast.worker import capture
from jobcast.worker.attempt import JobCancelled, JobEnded, start_attempt
from jobcast.worker.emit import (HOOKED_ATTR, ValuesUnsent, began_log, is_runner, log_connection,
                                 rq_log, run_log, send_unsent, share)
from jobcast.worker.outage import OutageMixin

log = logging.getLogger(__name__)

CONNECTION_ATTR = "_jobcast_connection"
"""The run's own connection to the stream store, kept on the RQ Job instance until the run ends."""


def reason_from(exc_string: str, shown: str | None = None) -> str:
    """The reason viewers see, from RQ's traceback text: ``ValueError: boom``, or as much of
    it as ``shown`` (JOBCAST_FAILURE_REASON) allows."""
    return reason_from_traceback(exc_string, shown or get_settings().failure_reason)


class LifecycleMixin(OutageMixin):
    """Mix into any RQ worker class (before it) to log the lifecycle of the jobs it runs; it
    rides out Redis outages too (:class:`~jobcast.worker.outage.OutageMixin`).

    A failure to reach Redis here is logged and never fails the job itself.
    """

    _horse_died_job_id: str | None = None
    """The job whose work-horse just died (:meth:`handle_work_horse_killed`), until its failure
    is handled."""
    _ended_job_id: str | None = None
    """The job whose log had ended before its attempt began (:class:`JobEnded`), until its
    failure is handled."""
    _forked_by: int = 0
    """The worker's pid, as it forks a work-horse."""

    def __init__(self, *args, **kwargs) -> None:
        """Set up the RQ worker, and read Jobcast's settings before RQ forks any work-horse,
        so every job inherits them instead of reading the environment again."""
        super().__init__(*args, **kwargs)
        if self.job_class is Job:
            # rq's CLI passes its default job class explicitly; ours also runs old jobs.
            self.job_class = JobcastJob
        get_settings()

    def fork_work_horse(self, job: Job, queue) -> None:
        """RQ's fork of the work-horse; the work-horse dies with this process."""
        self._forked_by = os.getpid()
        super().fork_work_horse(job, queue)

    def main_work_horse(self, job: Job, queue) -> None:
        """The work-horse, in a process of its own, which dies with its worker.

        RQ's work-horse outlives a worker killed under it (SIGKILL, the OOM killer), in a
        process group of its own: its job, taken for abandoned, then ran again beside it, and
        each attempt's new epoch refused the other's writes, attempt after attempt, until the
        retries ran out and the job failed though it was fine."""
        die_with_parent(self._forked_by)
        super().main_work_horse(job, queue)

    def prepare_job_execution(self, job: Job, *args, **kwargs) -> None:
        """After RQ marks the job started: create its log if missing, log ``started``, then
        capture what the job prints.

        The attempt begins the log just after its ``started`` entry; the values emit() logs and
        the lines captured go through that one began log, so both are checked against the
        incarnation and the highest seq the attempt wrote (jobcast.core.epoch).
        """
        super().prepare_job_execution(job, *args, **kwargs)
        if is_runner(job):
            # run_task logs its own start, then gives the capture its attempt and its log.
            self._capture(job, None, None)
            return
        # emit() in this run knows the lifecycle is taken care of (same Job instance).
        setattr(job, HOOKED_ATTR, True)
        try:
            # The run's own connection, which rides out a Redis restart as run_task's does:
            # emit() and the output lines wait for Redis (about a minute) instead of failing
            # the job at once. Closed when the run ends (perform_job).
            redis = log_connection(get_settings(), job.connection)
            setattr(job, CONNECTION_ATTR, redis)
            jlog = rq_log(job, redis=redis)
        except InvalidJobId:
            # RQ takes ids of any length; Jobcast's keys take 128 characters at most. The job
            # runs as RQ would run it, unlogged: failing it here would end the worker.
            log.warning("jobcast: job %s has an id Jobcast cannot log (over 128 characters?): "
                        "it runs unlogged", job.id)
            return
        except REDIS_ERRORS as exc:
            # A stream store of its own (JOBCAST_STREAM_URL) that cannot be reached: its client
            # is made here, once per work-horse. The job runs unlogged, as below.
            log.warning("jobcast: could not log the start of job %s: %s", job.id, exc)
            return
        try:
            jlog.ensure(job.description, job.origin)
            # A log that has ended was cancelled, or failed by the web's watchdog in this run:
            # raised inside RQ's ``try``, JobCancelled and JobEnded never run the job, and the
            # failure path files it canceled, or failed with no retry, as the log says. A log
            # that finished or failed in an earlier run (RQ's Repeat, a requeue, a fixed id) is
            # opened anew for this one (worker/attempt.py).
            # Begun before its `started` is written, as the runner's is: that write raises
            # the writer's highest seq, so a failover that loses it is found at the next
            # write (a new epoch), not written over in the same one.
            jlog.begin()
            attempt = start_attempt(jlog, job, self.name, task_label(job.description), {},
                                    None, {"origin": job.origin or ""}).number
        except JobEnded:
            self._ended_job_id = job.id
            raise
        except REDIS_ERRORS as exc:
            log.warning("jobcast: could not log the start of job %s: %s", job.id, exc)
            return
        share(job, jlog)
        self._capture(job, jlog, attempt)

    def _capture(self, job: Job, jlog: JobLog | None, attempt: int | None) -> None:
        """Start capturing the job's output into ``jlog`` (None: run_task's job, which gives
        its own log with the attempt): at the descriptors in a work-horse (a process of its
        own), else at Python's streams."""
        try:
            capture.start(job.id, jlog if jlog is not None else rq_log(job), get_settings(),
                          attempt=attempt, fds=self.is_horse)
        except REDIS_ERRORS as exc:
            log.warning("jobcast: cannot capture the output of job %s: %s", job.id, exc)

    def handle_execution_ended(self, job: Job, *args, **kwargs):
        """The job has returned or raised: send all it printed, before any terminal entry.

        When its output met a reset of its log (:func:`jobcast.worker.capture.seal`), a job
        that returned fails here with LogReset, as if its next value had raised it: RQ calls
        this inside its own ``try``, so its failure path logs ``retrying`` (or ``failed``) and
        retries the job by its retries left, and ``finished`` is never logged. A job that
        raised is on that path already.
        """
        # RQ marks a job that raised FAILED before this call: raising then would escape its
        # failure path (and end a work-horse without logging the job's end).
        returned = job.get_status(refresh=False) != JobStatus.FAILED
        unsent: ValuesUnsent | None = None
        reset = False
        if returned and not is_runner(job):
            # Values emit() could not write while Redis was away go now, each between the
            # lines printed before and after it (the capture is still open); a run that cannot
            # send them fails (and is retried, as RQ decides) rather than finish without them.
            try:
                send_unsent(job)
            except ValuesUnsent as exc:
                unsent = exc
            except LogReset:
                reset = True
        reset = capture.seal() or reset
        began = began_log(job)
        if returned and not reset and not is_runner(job) and began is not None:
            # A failover may also have lost the job's last values, with nothing written since:
            # its log is then not what it wrote, and the attempt is retried as above.
            try:
                reset = not began.intact()
            except REDIS_ERRORS as exc:  # its end is written (or not) as Redis allows
                log.warning("jobcast: could not check the log of job %s: %s", job.id, exc)
        result = super().handle_execution_ended(job, *args, **kwargs)
        if reset and returned:
            raise LogReset(job.id)
        if unsent is not None:
            raise unsent
        return result

    def perform_job(self, job: Job, *args, **kwargs) -> bool:
        """Run the job; whatever happens, neither its capture nor its connection outlives it (a
        non-forking worker would keep its streams replaced, and a connection per job)."""
        try:
            return super().perform_job(job, *args, **kwargs)
        finally:
            capture.seal()
            redis = job.__dict__.pop(CONNECTION_ATTR, None)
            if redis is not None:
                redis.close()

    def handle_job_success(self, job: Job, *args, **kwargs):
        """After RQ saved the result: log ``finished``. A job RQ repeats logs it before: RQ
        enqueues its next run in the same step, and another worker may start that run before
        this one would have logged the end of its own."""
        repeats = bool(job.repeats_left) and not is_runner(job)
        if repeats:
            self._log_end(job, "finished")
        result = super().handle_job_success(job, *args, **kwargs)
        if not repeats and not is_runner(job):
            self._log_end(job, "finished")
        return result

    def handle_job_failure(self, job: Job, queue, started_job_registry=None, exc_string: str = "",
                           execution=None):
        """Log ``retrying`` or ``failed`` as RQ is about to decide, then let RQ handle it; a
        job that Jobcast cancelled is filed as canceled: never retried, never "failed".

        Also runs in the worker (not the work-horse) when the work-horse died. A cancelled job
        ends here in two ways: its work-horse was killed by RQ's stop-job command, or it
        noticed the ``cancelled`` entry itself (JobCancelled, or a value the log refused). RQ
        would fail (and maybe retry) it; marking it stopped first stops the retry, and
        ``job.cancel()`` then moves it to the CanceledJobRegistry, where rq-dashboard shows it.
        """
        # RQ saves the traceback as strict UTF-8: a lone surrogate in it (a file name that
        # os.fsdecode could not decode) would raise there, and the worker would quit.
        exc_string = valid_text(exc_string)
        try:
            status = rq_log(job).status()
        except (*REDIS_ERRORS, ValueError):
            status = None
        cancelled = status == "cancelled"
        # run_task logs its own attempt's end, but not when its work-horse died under it, or
        # was killed by RQ's stop-job command (not Jobcast's cancel: ``rq``'s own tooling): its
        # code never got there, and RQ runs no failure callback on those paths.
        stopped = getattr(self, "_stopped_job_id", None) == job.id
        died = (self._horse_died_job_id == job.id or stopped) and status == "running"
        self._horse_died_job_id = None
        ended = self._ended_job_id == job.id
        self._ended_job_id = None
        if cancelled:
            self._stopped_job_id = job.id  # (its log has its end: nothing more to write)
        elif ended:
            # Its log's end stands, and a retry would meet it again: RQ files it failed.
            job.retries_left = 0
        elif died or not is_runner(job):
            retry = bool(job.retries_left) and not stopped
            reason = "stopped" if stopped else reason_from(exc_string)
            self._log_end(job, "retrying" if retry else "failed", reason)
        result = super().handle_job_failure(job, queue, started_job_registry=started_job_registry,
                                            exc_string=exc_string, execution=execution)
        if cancelled:
            try:
                job.cancel()
            except InvalidJobOperation:
                pass  # already filed as canceled (the cancel request got there first)
            except REDIS_ERRORS as exc:
                # Its log says cancelled; RQ's registry is only late. Raised here, it would end
                # a non-forking worker ("unhandled exception, quitting") and every job behind.
                log.warning("jobcast: could not file job %s as canceled in RQ: %s", job.id, exc)
        return result

    def handle_exception(self, job: Job, *exc_info) -> None:
        """RQ logs a job's exception as an error with its traceback, then runs the worker's
        exception handlers. A job cancelled through Jobcast raises JobCancelled (at its next
        value, or before it runs): no error, so one line says so; and as for a forking worker's
        work-horse killed by a cancel, no handler runs. Its failure path files it canceled."""
        if isinstance(exc_info[1], JobCancelled):
            # (RQ's own logger: `rq worker` shows its INFO lines, not those of others)
            self.log.info("Worker %s: jobcast: job %s was cancelled", self.name, job.id)
            return
        super().handle_exception(job, *exc_info)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage) -> None:
        """RQ's seam for a work-horse that died while the worker lives on (the OOM killer, a
        crash in a C extension, RQ's own kill at the job's timeout + 60 s); the job's failure
        is handled next (:meth:`handle_job_failure`), where its log gets its end."""
        self._horse_died_job_id = job.id
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def handle_job_retry(self, job: Job, queue, retry, *args, **kwargs):
        """The job returned ``rq.Retry``: log ``retrying``, or ``failed`` once none is left."""
        if not is_runner(job):
            exhausted = bool(job.number_of_retries and job.number_of_retries >= retry.max)
            self._log_end(job, "failed" if exhausted else "retrying",
                          "retries exhausted" if exhausted else "the job asked to be retried")
        return super().handle_job_retry(job, queue, retry, *args, **kwargs)

    def _log_end(self, job: Job, kind: str, reason: str = "") -> None:
        """Write a ``finished``, ``retrying`` or ``failed`` entry; Redis errors only warn.

        It goes through the log this run began, which knows the highest seq the attempt wrote:
        written after a failover that lost entries, it begins a new epoch instead of reusing
        their seqs. A ``finished`` refused that way (the loss came after the check at the end
        of the execution) is written as any writer writes it, into the new epoch."""
        try:
            jlog = run_log(job)
            try:
                self._write_end(jlog, kind, reason)
            except LogReset:
                log.warning("jobcast: the log of job %s was reset as it ended", job.id)
                self._write_end(rq_log(job), kind, reason)
        except REDIS_ERRORS as exc:
            log.warning("jobcast: could not log %s for job %s: %s", kind, job.id, exc)
        except InvalidJobId:
            pass  # a job Jobcast cannot log (prepare_job_execution said so)

    @staticmethod
    def _write_end(jlog: JobLog, kind: str, reason: str) -> None:
        """Write ``kind`` (``finished``, ``retrying`` or ``failed``) with ``reason``."""
        if kind == "finished":
            jlog.finished()
        elif kind == "retrying":
            jlog.retrying(reason)
        else:
            jlog.failed(reason)


class Worker(LifecycleMixin, RQWorker):
    """RQ's forking worker, with Jobcast's lifecycle hook: ``rq worker -w jobcast.Worker``."""

    job_class = JobcastJob


class SimpleWorker(LifecycleMixin, RQSimpleWorker):
    """RQ's non-forking worker, with Jobcast's lifecycle hook."""

    job_class = JobcastJob
