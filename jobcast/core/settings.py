"""One settings class for every Jobcast service, read from the environment.

Each variable is declared once: its type, default, bounds, environment name and what it sets.
pydantic-settings reads and checks them, so a bad value stops a service at start-up with the
variable's name, never halfway through a job. The README's configuration table is checked
against this class by tests/jobcast/test_settings.py.

A process reads its settings once, with :func:`get_settings`; tests and embedding apps pass
``Settings(redis_url=...)`` (keyword arguments win over the environment).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobcast.core.redisurl import check_redis_url


def parse_caps(text: str) -> dict[str, float]:
    """``"n=100000,sqrt.interval=10"`` as {"name" or "task.name": limit}; ValueError if malformed."""
    caps = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, sep, limit = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"item {item!r} is not name=limit")
        caps[name.strip()] = float(limit)
    return caps


def env(name: str, default, description: str, **bounds):
    """A field read from the environment variable ``name``."""
    return Field(default, validation_alias=name, description=description, **bounds)


class Settings(BaseSettings):
    """Settings shared by producer, worker and web. Every field has an environment variable."""

    model_config = SettingsConfigDict(
        frozen=True,
        # An empty variable (``JOBCAST_TOKEN=``) means the default, as a missing one does.
        env_ignore_empty=True,
        # Settings(redis_url=...) by field name, the environment by variable name.
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
    )

    redis_url: str = env("REDIS_URL", "redis://localhost:6379/0",
                         "Redis for the queue, logs and pub/sub; `redis+sentinel://host:port"
                         "[,host:port…]/<master>[/<db>]` finds the primary through Sentinel "
                         "and follows its failovers", min_length=1)
    stream_url: str = env("JOBCAST_STREAM_URL", "",
                          "Redis for the logs, job metadata and pub/sub, when not `REDIS_URL`; "
                          "a node of a Redis Cluster works (hash-tagged keys, "
                          "`SPUBLISH`/`SSUBSCRIBE`); RQ's queue stays on `REDIS_URL`")
    public_url: str = env("JOBCAST_URL", "http://localhost:8000",
                          "public base URL printed by the CLI next to a job id", min_length=1)
    queue_name: str = env("JOBCAST_QUEUE", "jobcast", "RQ queue name", min_length=1)
    tasks: str = env("JOBCAST_TASKS", "",
                     "extra task modules to import in every service (comma-separated)")
    log_maxlen: int = env("JOBCAST_LOG_MAXLEN", 100_000,
                          "entries kept per job log (older ones are trimmed)", ge=1)
    log_ttl: int = env("JOBCAST_LOG_TTL", 7 * 24 * 3600,
                       "seconds a log lives after its job ends", ge=1)
    jobs_index_max: int = env("JOBCAST_JOBS_MAX", 1000,
                              "jobs remembered by the job list (`GET /api/jobs`, the home page)",
                              ge=1)
    heartbeat: float = env("JOBCAST_HEARTBEAT", 15.0,
                           "seconds a stream may stay silent before a heartbeat and a "
                           "dead-client check", gt=0)
    viewer_buffer: int = env("JOBCAST_VIEWER_BUFFER", 262144,
                             "bytes a viewer's queue holds (under a server other than Jobcast's "
                             "worker class) before it reads the log instead", ge=1)
    write_timeout: float = env("JOBCAST_WRITE_TIMEOUT", 30.0,
                               "seconds a stream may accept no byte before it is dropped "
                               "(a client that never reads)", gt=0)
    value_max_bytes: int = env("JOBCAST_VALUE_MAX_BYTES", 65536,
                               "largest value a job may log, bytes; a larger one is logged as "
                               "refused, with its size", ge=1)
    max_body: int = env("JOBCAST_MAX_BODY", 16 * 1024,
                        "largest request body the API accepts, bytes", ge=1)
    job_timeout: int = env("JOBCAST_JOB_TIMEOUT", 3600,
                           "RQ job timeout, seconds (tasks with a known duration get more)", ge=1)
    job_retries: int = env("JOBCAST_JOB_RETRIES", 2, "RQ retries of a failed job", ge=0)
    token: str = env("JOBCAST_TOKEN", "",
                     "bearer token required to create and cancel jobs over HTTP; empty: none")
    read: Literal["", "public", "private"] = env(
        "JOBCAST_READ", "",
        "who may read jobs: public, or private (the token, or a signed view link for one job); "
        "empty: private when a token is set, else public")
    secret: str = env("JOBCAST_SECRET", "",
                      "key that signs view links and browser sessions; empty: the token")
    link_ttl: int = env("JOBCAST_LINK_TTL", 0,
                        "seconds a view link made for a new job stays valid (0: until the "
                        "job's log expires)", ge=0)
    param_caps: str = env("JOBCAST_PARAM_CAPS", "n=100000,rate=1000,duration=3600,samples=100000000",
                          "caps on task parameters: name=limit for every task, task.name=limit "
                          "for one; over a cap the request gets a 400")
    # 0 by default: viewers behind one NAT or proxy share an address.
    streams_per_client: int = env("JOBCAST_STREAMS_PER_CLIENT", 0,
                                  "concurrent streams one client address may hold, 429 over "
                                  "it (0: no cap)", ge=0)
    streams_per_process: int = env("JOBCAST_STREAMS_PER_PROCESS", 20000,
                                   "concurrent streams one web process may hold, 503 over it",
                                   ge=1)
    trust_proxy: bool = env("JOBCAST_TRUST_PROXY", False,
                            "take the client address from X-Forwarded-For (only behind a "
                            "trusted proxy)")
    monitor_interval: int = env("JOBCAST_MONITOR_INTERVAL", 5,
                                "seconds between a worker's heartbeats while it runs a job", ge=1)
    maintenance_interval: int = env("JOBCAST_MAINTENANCE_INTERVAL", 10,
                                    "seconds between a worker's cleanups after dead workers", ge=1)
    terminal_replicas: int = env("JOBCAST_TERMINAL_REPLICAS", 0,
                                 "replicas that must acknowledge a job's last entry (finished, "
                                 "failed, cancelled) before its writer goes on (`WAIT`; single "
                                 "Redis and Sentinel); 0: none", ge=0)
    terminal_wait_ms: int = env("JOBCAST_TERMINAL_WAIT_MS", 500,
                                "most milliseconds a last entry waits for those replicas; fewer "
                                "in time is logged as a warning, and the job goes on", ge=1)
    orphan_timeout: int = env("JOBCAST_ORPHAN_TIMEOUT", 15,
                              "seconds with no live worker after which queued and running jobs "
                              "fail", ge=1)
    # `jobcast web`
    port: int = env("PORT", 8000, "port `jobcast web` listens on", ge=1, le=65535)
    bind: str = env("JOBCAST_BIND", "0.0.0.0", "address `jobcast web` listens on", min_length=1)
    web_concurrency: int = env("WEB_CONCURRENCY", 2, "gunicorn worker processes of `jobcast web`",
                               ge=1)
    # Read by prometheus_client itself too; `jobcast web` sets it before gunicorn starts.
    prometheus_multiproc_dir: str = env(
        "PROMETHEUS_MULTIPROC_DIR", "",
        "where gunicorn workers keep their metrics (`jobcast web` creates one when unset)")

    @field_validator("read", mode="before")
    @classmethod
    def _normalize_read(cls, value: object) -> object:
        """Accept ``PRIVATE`` and `` public `` as well; name the variable when it is neither."""
        if not isinstance(value, str):
            return value
        mode = value.strip().lower()
        if mode not in ("", "public", "private"):
            raise ValueError(f"JOBCAST_READ={value!r} is invalid: expected public or private")
        return mode

    @field_validator("redis_url", "stream_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        """Refuse a malformed ``redis+sentinel://`` URL at start-up (redis-py has no such
        scheme, so it would fail only at the first command)."""
        return check_redis_url(value) if value else value

    @field_validator("param_caps")
    @classmethod
    def _check_caps(cls, value: str) -> str:
        """Refuse malformed caps at start-up rather than at the first job."""
        parse_caps(value)
        return value

    def caps(self) -> dict[str, float]:
        """The parameter caps as {"name" or "task.name": limit}."""
        return parse_caps(self.param_caps)

    def task_modules(self) -> list[str]:
        """The modules named in JOBCAST_TASKS."""
        return [m.strip() for m in self.tasks.split(",") if m.strip()]

    @property
    def read_mode(self) -> str:
        """"public" or "private" (JOBCAST_READ, defaulting on whether a token is set)."""
        return self.read or ("private" if self.token else "public")

    @property
    def signing_key(self) -> str:
        """The key for view links and sessions: JOBCAST_SECRET, else the token, else none."""
        return self.secret or self.token


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return Settings()
