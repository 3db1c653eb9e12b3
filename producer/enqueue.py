"""Put a job on the queue: validate its parameters, open its log, enqueue it on RQ."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Mapping

from redis import Redis
from rq import Callback, Queue, Retry

from jobcast.core.joblog import JobLog
from jobcast.core.logstore import LogStore
from jobcast.core.reasons import failure_reason
from jobcast.core.registry import ON_FAILURE, RUNNER, ParamError, Task, get_task
from jobcast.core.settings import Settings, get_settings
from jobcast.core.store import REDIS_ERRORS, StreamRedis, queue_redis

log = logging.getLogger(__name__)

# Anything written like a URL ("redis://:secret@host/0"): a connection error's message may
# name one, and the reason goes into a log that every viewer of the job reads.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")


def enqueue(task: str, params: Mapping[str, Any] | None = None, *, redis: Redis | None = None,
            config: Settings | None = None, strict: bool = True,
            streams: StreamRedis | None = None) -> str:
    """Validate ``params`` for ``task``, enqueue the job and return its id.

    ``redis`` holds RQ's queue; the job's log goes to ``streams`` (the stream store,
    JOBCAST_STREAM_URL, by default the same Redis).

    Raises UnknownTask or ParamError before anything reaches Redis. Should RQ refuse the job
    (its Redis down, say), the log just opened is ended as ``failed`` and RQ's exception is
    raised again.
    """
    cfg = config or get_settings()
    spec = get_task(task)
    checked = validate(task, params, config=cfg, strict=strict)
    redis = redis or queue_redis(cfg)
    job_id = uuid.uuid4().hex
    # The log exists before the job is queued, so a viewer can attach at once.
    jlog = LogStore.connect(cfg, redis, streams).log(job_id)
    jlog.create(task, checked, spec.total_for(checked))
    try:
        Queue(cfg.queue_name, connection=redis).enqueue(
            RUNNER, task, checked,
            job_id=job_id,
            job_timeout=rq_timeout(spec.duration_for(checked), cfg),
            result_ttl=cfg.log_ttl,
            failure_ttl=cfg.log_ttl,
            retry=Retry(max=cfg.job_retries) if cfg.job_retries > 0 else None,
            on_failure=Callback(ON_FAILURE),
            description=f"jobcast {task}",
        )
    # Whatever went wrong, no worker will take the job (were it queued after all, a worker
    # does not run a job whose log has ended): its log must not stay "queued" with viewers
    # waiting on it. The exception is raised again, for the caller to answer.
    except Exception as exc:
        fail_unqueued(jlog, exc, cfg)
        raise
    return job_id


def validate(task: str, params: Mapping[str, Any] | None = None, *,
             config: Settings | None = None, strict: bool = True) -> dict[str, Any]:
    """``params`` as :func:`enqueue` would queue them for ``task``, checked against its schema
    and the settings' caps and bounds; nothing reaches Redis. Raises UnknownTask or
    ParamError."""
    cfg = config or get_settings()
    spec = get_task(task)
    try:
        checked = spec.validate(params, strict=strict)
    except ParamError as exc:
        raise ParamError(cap_messages(spec, params, exc.errors, cfg)) from None
    check_caps(task, checked, cfg)
    check_bounds(spec, checked, cfg)
    return checked


def fail_unqueued(jlog: JobLog, exc: Exception, config: Settings) -> None:
    """End the log of a job that RQ refused with ``exc``, best effort: the stream store may be
    down too, and then the watchdog ends it later (it fails queued jobs that RQ does not have).

    The reason says why, as much of it as JOBCAST_FAILURE_REASON shows, with any URL taken out.
    """
    reason = "could not be queued"
    if config.failure_reason != "none":  # else failure_reason() says only "job failed"
        message = _URL.sub("<url>", str(exc))
        reason += ": " + failure_reason(type(exc).__name__, message, config.failure_reason)
    try:
        jlog.failed(reason)
    except REDIS_ERRORS as write_error:
        log.warning("job %s could not be queued (%s), and its log could not be ended: %s",
                    jlog.job_id, type(exc).__name__, write_error)


def rq_timeout(duration: float | None, config: Settings) -> int:
    """RQ's timeout for a job expected to run ``duration`` seconds (None: unknown).

    Twice the expected time and a minute, at least JOBCAST_JOB_TIMEOUT, and never over
    JOBCAST_JOB_MAX_DURATION: the bound holds for tasks that declare no duration too.
    """
    timeout = config.job_timeout if duration is None else max(config.job_timeout,
                                                               int(duration * 2) + 60)
    return min(timeout, config.job_max_duration)


def check_bounds(spec: Task, params: dict[str, Any], config: Settings) -> None:
    """Raise ParamError when the job would yield more values (JOBCAST_JOB_MAX_VALUES) or run
    longer (JOBCAST_JOB_MAX_DURATION) than this server allows, as its task declares.

    Each parameter may be within its cap while their product is not (``n`` × ``interval``,
    ``samples`` ÷ ``batch``): the bounds are on the job as a whole, so both are checked
    together and both are reported, under ``params``.
    """
    errors = []
    total = spec.total_for(params)
    if total is not None and total > config.job_max_values:
        errors.append({"field": "params", "message": f"this job would yield {total:,} values, "
                       f"over this server's bound of {config.job_max_values:,} per job "
                       "(JOBCAST_JOB_MAX_VALUES)"})
    duration = spec.duration_for(params)
    if duration is not None and duration > config.job_max_duration:
        errors.append({"field": "params", "message": f"this job would run for {duration:,.0f} s, "
                       f"over this server's bound of {config.job_max_duration:,} s per job "
                       "(JOBCAST_JOB_MAX_DURATION)"})
    if errors:
        raise ParamError(errors)


def cap_messages(spec: Task, params: Mapping[str, Any] | None, errors: list[dict[str, Any]],
                 config: Settings) -> list[dict[str, Any]]:
    """``errors`` of the task's own schema, where a number is over this server's cap as well as
    the task's own maximum, saying the cap: the bound that holds here, which ``/api/tasks``
    publishes, so a client that corrects itself from the message is not refused again."""
    caps = config.caps()
    if not caps or not isinstance(params, Mapping):
        return errors
    own = spec.model.model_json_schema().get("properties", {})
    out = []
    for error in errors:
        name = error["field"].removeprefix("params.")
        value = params.get(name)
        cap = caps.get(f"{spec.name}.{name}", caps.get(name))
        high = own.get(name, {}).get("maximum")
        if (cap is not None and isinstance(value, (int, float)) and not isinstance(value, bool)
                and value > cap and (high is None or cap < high)):
            error = {"field": error["field"], "message": f"{value} is over this server's cap of {cap:g}"}
        out.append(error)
    return out


def check_caps(task: str, params: dict[str, Any], config: Settings) -> None:
    """Raise ParamError for any parameter over its configured cap (JOBCAST_PARAM_CAPS)."""
    caps = config.caps()
    errors = []
    for name, value in params.items():
        cap = caps.get(f"{task}.{name}", caps.get(name))
        if cap is not None and isinstance(value, (int, float)) and value > cap:
            errors.append({"field": f"params.{name}",
                           "message": f"{value} is over this server's cap of {cap:g}"})
    if errors:
        raise ParamError(errors)
