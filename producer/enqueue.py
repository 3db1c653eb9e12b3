"""Put a job on the queue: validate its parameters, open its log, enqueue it on RQ."""

from __future__ import annotations

import uuid
from typing import Any, Mapping

from redis import Redis
from rq import Callback, Queue, Retry

from jobcast.core.logstore import LogStore
from jobcast.core.registry import ON_FAILURE, RUNNER, ParamError, get_task
from jobcast.core.settings import Settings, get_settings
from jobcast.core.store import StreamRedis, redis_client


def enqueue(task: str, params: Mapping[str, Any] | None = None, *, redis: Redis | None = None,
            config: Settings | None = None, strict: bool = True,
            streams: StreamRedis | None = None) -> str:
    """Validate ``params`` for ``task``, enqueue the job and return its id.

    ``redis`` holds RQ's queue; the job's log goes to ``streams`` (the stream store,
    JOBCAST_STREAM_URL, by default the same Redis).

    Raises UnknownTask or ParamError before anything reaches Redis.
    """
    cfg = config or get_settings()
    spec = get_task(task)
    checked = spec.validate(params, strict=strict)
    check_caps(task, checked, cfg)
    redis = redis or redis_client(cfg.redis_url)
    job_id = uuid.uuid4().hex
    # The log exists before the job is queued, so a viewer can attach at once.
    LogStore.connect(cfg, redis, streams).log(job_id).create(task, checked, spec.total_for(checked))
    duration = spec.duration_for(checked)
    timeout = cfg.job_timeout if duration is None else max(cfg.job_timeout, int(duration * 2) + 60)
    Queue(cfg.queue_name, connection=redis).enqueue(
        RUNNER, task, checked,
        job_id=job_id,
        job_timeout=timeout,
        result_ttl=cfg.log_ttl,
        failure_ttl=cfg.log_ttl,
        retry=Retry(max=cfg.job_retries) if cfg.job_retries > 0 else None,
        on_failure=Callback(ON_FAILURE),
        description=f"jobcast {task}",
    )
    return job_id


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
