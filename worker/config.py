"""One configuration object for every Jobcast service, read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


def _env(name: str, default, cast):
    """Read ``name`` from the environment, cast it, or fall back to ``default``."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is invalid: {exc}") from None


@dataclass(frozen=True)
class Config:
    """Settings shared by producer, worker and web. Every field has an env variable."""

    redis_url: str = "redis://localhost:6379/0"
    queue_name: str = "jobcast"
    # Public base URL printed by the CLI next to a job id.
    public_url: str = "http://localhost:8000"
    # Log entries kept per job (older ones are trimmed), and how long a log lives after its job ends.
    log_maxlen: int = 100_000
    log_ttl: int = 7 * 24 * 3600
    # How many jobs `GET /api/jobs` and the home page remember.
    jobs_index_max: int = 1000
    # Seconds a stream may stay silent before a heartbeat (and a dead-client check).
    heartbeat: float = 15.0
    # Entries a slow viewer may have pending before it falls back to reading the log.
    viewer_buffer: int = 1024
    # Largest request body accepted by the API, in bytes.
    max_body: int = 16 * 1024
    # RQ: default job timeout in seconds (tasks with a known duration get more), and retries.
    job_timeout: int = 3600
    job_retries: int = 2

    ENV = {
        "redis_url": "REDIS_URL",
        "queue_name": "JOBCAST_QUEUE",
        "public_url": "JOBCAST_URL",
        "log_maxlen": "JOBCAST_LOG_MAXLEN",
        "log_ttl": "JOBCAST_LOG_TTL",
        "jobs_index_max": "JOBCAST_JOBS_MAX",
        "heartbeat": "JOBCAST_HEARTBEAT",
        "viewer_buffer": "JOBCAST_VIEWER_BUFFER",
        "max_body": "JOBCAST_MAX_BODY",
        "job_timeout": "JOBCAST_JOB_TIMEOUT",
        "job_retries": "JOBCAST_JOB_RETRIES",
    }

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        """Build a Config from environment variables; keyword arguments win."""
        values = {}
        for f in fields(cls):
            default = f.default
            values[f.name] = _env(cls.ENV[f.name], default, type(default))
        values.update(overrides)
        return cls(**values)
