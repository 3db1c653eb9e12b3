"""``emit()``: report values from inside any RQ job, generator or not, Jobcast's or not.

A job function calls ``emit(value)`` once per value. Each call appends a value entry to the
job's log with the next index and announces it, through the very script that logs a value a
Jobcast task yields (:meth:`jobcast.core.joblog.JobLog.value`), so viewers cannot tell the two apart.

Indices count the calls of one run of the function, from 0. A retried job runs again from the
start, and the log accepts value ``i`` only when it is the next one, so the values an earlier
attempt logged are dropped until the new run passes them: the log holds each value once, as one
uninterrupted run would have, provided the job emits the same values in the same order. A job
that would rather skip work already done calls :func:`resume` first.

Jobs that Jobcast did not enqueue have no log yet; it is created here (or by the worker hook in
:mod:`jobcast.worker.hook`, or by the web when someone opens the job's page first) from the RQ job.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.exceptions import DeserializationError
from rq.job import Job

from jobcast.core.epoch import LogReset
from jobcast.core.joblog import JobLog, Refused, task_label
from jobcast.core.keys import InvalidJobId
from jobcast.core.logstore import LogStore
from jobcast.core.registry import LEGACY_PATHS, RUNNER
from jobcast.core.settings import Settings
from jobcast.core.store import (REDIS_ERRORS, StreamRedis, connect, separate, stream_url,
                                 writer_client)
from jobcast.core.values import PreparedValue
from jobcast.worker import capture
from jobcast.worker.attempt import JobCancelled, start_attempt

log = logging.getLogger(__name__)

# Attributes kept on the RQ Job instance of the current run: a retry is a new instance, so the
# value counter starts again at 0 for each run, in forking and in non-forking workers alike.
STATE_ATTR = "_jobcast_emit"
HOOKED_ATTR = "_jobcast_hooked"


MAX_UNSENT = 1000
"""Values a run may hold while Redis is away (each emit() raises meanwhile); past it, emit()
raises :class:`ValuesUnsent` and the value is not held."""


class NotInJob(RuntimeError):
    """emit() was called outside a job that an RQ worker runs."""


class ValuesUnsent(RuntimeError):
    """Values of this run could not be logged: Redis stayed away, and the job went on past
    :data:`MAX_UNSENT` values, or ended, before they could be sent. Raised at the job's end by
    the worker hook, the run fails (or is retried) rather than finish without them."""

    def __init__(self, job_id: str, count: int):
        """``count`` values of ``job_id`` were not logged."""
        super().__init__(f"{count} value(s) of job {job_id} could not be logged (Redis "
                         f"unreachable)")
        self.job_id = job_id
        self.count = count


def log_connection(cfg: Settings, queue: Redis) -> StreamRedis:
    """A run's own client of its job's log: the stream store's (JOBCAST_STREAM_URL), else
    that of ``queue``, the job's own Redis (RQ's connection). It rides out a Redis restart (or
    a Cluster failover) by retrying with backoff (~60 s), where RQ's connection does not wait.

    Appends are safe to retry: the script appends a write sent again once (its writer numbers
    its writes), a value it already logged is refused by its index, and a second terminal
    entry is ignored.
    """
    if not separate(cfg):
        # One connection of its own, so that each value is sent without borrowing one from a
        # pool (on a single Redis or a Sentinel's primary).
        return writer_client(queue, retry_for=60.0)
    # A Cluster client has a pool per node.
    return connect(stream_url(cfg), retry_for=60.0, socket_connect_timeout=2, socket_timeout=10,
                   single=True)


def rq_log(job: Job, config: Settings | None = None, redis: StreamRedis | None = None) -> JobLog:
    """The JobLog of an RQ job, configured from ``config`` (default: the environment), on
    ``redis`` when given (a client of the stream store), else on the job's own Redis
    connection (or the stream store's)."""
    return LogStore.connect(config, job.connection, redis).log(job.id)


def is_runner(job: Job) -> bool:
    """True for Jobcast's own task jobs (:func:`jobcast.worker.runner.run_task`)."""
    try:
        name = job.func_name
        return LEGACY_PATHS.get(name, name) == RUNNER  # they log their lifecycle themselves
    except (DeserializationError, TypeError):
        # A job whose data cannot be read (RQ wraps whatever its serializer raised, and a
        # job without data) is not ours either; nor one whose stored function name is no
        # string (TypeError: unhashable, as a key of LEGACY_PATHS).
        return False


@dataclass
class EmitState:
    """One run's writer: the job's log, the index of the next value, and the values whose
    write failed (Redis unreachable), sent again, in order, before the next one."""

    log: JobLog
    next: int = 0
    warned: bool = False
    unsent: list[tuple[int, PreparedValue, int | None]] = field(default_factory=list)
    """The values Redis did not take, as their entries will show them (the job may change
    the objects it emitted)."""
    dropped: int = 0
    """Values not logged because :data:`MAX_UNSENT` were held (the job was told:
    ValuesUnsent); once one is, no later value of the run is logged either, so that none takes
    its index."""


def share(job: Job, jlog: JobLog) -> None:
    """Make ``jlog``, which the worker hook began for this run, the writer of its values: the
    capture writes its output through the same log, so both check one incarnation and one
    highest seq (jobcast.core.epoch)."""
    setattr(job, STATE_ATTR, EmitState(jlog))


def began_log(job: Job) -> JobLog | None:
    """The log this run of ``job`` began (the hook's, :func:`share`, or emit()'s), if any."""
    state = job.__dict__.get(STATE_ATTR)
    return state.log if state is not None else None


def run_log(job: Job) -> JobLog:
    """:func:`began_log`, or a new log when none was begun (a work-horse that died: its
    worker writes the end)."""
    began = began_log(job)
    return began if began is not None else rq_log(job)


def _state(job: Job) -> EmitState:
    """This run's EmitState: the log the hook shared (:func:`share`), or one created (with the
    log, if missing) and begun on the first call."""
    state = job.__dict__.get(STATE_ATTR)
    if state is None:
        jlog = rq_log(job)
        if not getattr(job, HOOKED_ATTR, False) and not is_runner(job):
            # No worker hook: create the log and say the job started, or values would land
            # in a log that viewers cannot find; its end goes unrecorded, hence the warning.
            # (Begun first: `started` then raises its highest seq, as in the hook.)
            jlog.ensure(job.description, job.origin)
            jlog.begin()
            start_attempt(jlog, job, job.worker_name or "unknown", task_label(job.description),
                          {}, None, {"origin": job.origin or ""})
            log.warning("job %s calls emit() on a worker without Jobcast's hook: its end will "
                        "not be logged until the web's watchdog sees RQ's status; run the "
                        "worker as `rq worker -w jobcast.Worker`", job.id)
        else:
            jlog.begin()  # values go into this incarnation only (LogReset otherwise)
        state = EmitState(jlog)
        setattr(job, STATE_ATTR, state)
    return state


def current_job() -> Job:
    """The RQ job running in this context, or NotInJob."""
    job = get_current_job()
    if job is None:
        raise NotInJob("emit() works only inside a job function that an RQ worker runs "
                       "(RQ keeps the current job per thread: call it from the job's own thread)")
    return job


def emit(value: Any, total: int | None = None) -> int | None:
    """Append ``value`` to the current RQ job's log and announce it to every viewer.

    ``total`` sets the number of values expected (the progress bar's end). Returns the
    entry's seq, or None when the value was not logged: an earlier attempt of this job
    already logged that index, the job has already ended, or its id is one Jobcast cannot log
    (over 128 characters: the job runs unlogged). Raises
    :class:`~jobcast.core.epoch.LogReset` when the log is not the one this run began (gone,
    or reset by a failover): RQ then retries or fails the job; ``JobCancelled`` when the job
    was cancelled (a non-forking worker cannot kill it): RQ files it canceled; on a worker
    without Jobcast's hook, at the first call, ``JobEnded`` when the web's watchdog failed this
    run before it began (:mod:`jobcast.worker.attempt`). On a worker with Jobcast's hook a
    write waits for an unreachable Redis for about a minute (a restart, a failover), as a
    Jobcast task's does; past that, or without the hook at once, a Redis error is raised,
    and a job that goes on loses nothing: the next calls send the values again,
    first and in order (:data:`MAX_UNSENT` at most, then ValuesUnsent), and on a worker with
    Jobcast's hook a run does not finish with values unsent. A value whose text cannot be made
    (its ``__str__`` raised) is not counted.
    """
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"total must be a non-negative int, not {total!r}")
    job = current_job()
    try:
        state = _state(job)
    except InvalidJobId:
        # An id Jobcast's keys cannot take (over 128 characters; RQ takes any): the job runs
        # unlogged, as the hook said when it began, and so do its values.
        return None
    index = state.next
    if state.dropped:
        # A value before this one was not even held: this one cannot take its index, and
        # the run will not finish (the held ones before it are still sent, in order).
        with contextlib.suppress(*REDIS_ERRORS):
            _send_held(job, state)
        state.dropped += 1
        raise ValuesUnsent(job.id, len(state.unsent) + state.dropped)
    if state.unsent:
        # Values before this one failed to reach Redis and the job went on: they go first, in
        # order, at their indices (one that landed, its reply lost, is refused as a repeat).
        # Without them, every later index would be past the log's count, refused, and lost
        # untold. While Redis is still away, this value waits behind them.
        try:
            _send_held(job, state)
        except REDIS_ERRORS:
            _hold(job, state, index, value, total)
            raise
    state.next += 1
    try:
        # What the job printed before this value is logged before it (RedisError while those
        # lines wait for Redis: the value then waits too, behind them).
        capture.before_value()
        return _write(job, state, index, value, total)
    except LogReset:
        raise  # the attempt is over: RQ retries or fails it
    except REDIS_ERRORS:
        state.next = index
        _hold(job, state, index, value, total)
        raise
    except Exception:
        state.next = index  # nothing was written (the value could not be shown): not counted
        raise


def _hold(job: Job, state: EmitState, index: int, value: Any, total: int | None) -> None:
    """Keep value ``index``, which Redis did not take, to be sent before the next one, as its
    entry will show it now; it is counted. One whose text cannot be made is not (as when Redis
    takes it); past :data:`MAX_UNSENT` held values, ValuesUnsent."""
    try:
        prepared = state.log.prepare(value)
    except Exception:  # not a value the log could take: not counted (see emit())
        return
    if len(state.unsent) >= MAX_UNSENT:
        state.dropped += 1
        raise ValuesUnsent(job.id, len(state.unsent) + state.dropped)
    state.unsent.append((index, prepared, total))
    capture.hold()  # what the job prints from now on waits for it
    state.next = index + 1


def send_unsent(job: Job) -> None:
    """Send, in order, the values of this run that Redis did not take; ValuesUnsent when some
    still cannot be sent, or were not even held (:data:`MAX_UNSENT`). The worker hook calls it
    as the job's execution ends, so that no run finishes without its values."""
    state = job.__dict__.get(STATE_ATTR)
    if state is None:
        return
    try:
        _send_held(job, state)
    except LogReset:
        raise  # (a RedisError too, but not one of Redis away: the log is not this run's)
    except REDIS_ERRORS as exc:
        raise ValuesUnsent(job.id, len(state.unsent) + state.dropped) from exc
    if state.dropped:
        raise ValuesUnsent(job.id, state.dropped)


def _send_held(job: Job, state: EmitState) -> None:
    """Send the held values in order, each after the lines printed before it and before those
    printed after it (:func:`jobcast.worker.capture.hold`); a RedisError leaves the rest held."""
    while state.unsent:
        capture.before_value()
        _write(job, state, *state.unsent[0])
        del state.unsent[0]
        capture.release()


def _write(job: Job, state: EmitState, index: int, value: Any, total: int | None) -> int | None:
    """Log value ``index``: its seq, or None when the log did not take it (a repeat of an
    earlier attempt's, or the job has ended). A job cancelled meanwhile is stopped here
    (JobCancelled): a non-forking worker cannot kill it, and it would compute to its end."""
    seq = state.log.value(index, value, total=total)
    if seq > 0:
        return seq
    if seq == Refused.ENDED:
        if state.log.status() == "cancelled":
            raise JobCancelled(job.id)
        if not state.warned:
            state.warned = True
            log.warning("job %s has already ended (failed by the watchdog?): emit() drops its "
                        "values", job.id)
    return None


def resume() -> int:
    """How many values earlier attempts of the current job logged; the next emit() follows.

    A job that can skip work already done starts there::

        for i in range(resume(), n):
            emit(work(i))
    """
    job = current_job()
    try:
        state = _state(job)
    except InvalidJobId:
        return 0  # (a job that runs unlogged: see emit)
    state.next = max(state.next, state.log.values_logged())
    return state.next
