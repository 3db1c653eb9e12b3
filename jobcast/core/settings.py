"""One settings class for every Jobcast service, read from the environment.

Each variable is declared once: its type, default, bounds, environment name and what it sets.
pydantic-settings reads and checks them, so a bad value stops a service at start-up with the
variable's name, never halfway through a job. The README's configuration table is checked
against this class by tests/core/test_settings.py.

A process reads its settings once, with :func:`get_settings`; tests and embedding apps pass
``Settings(redis_url=...)`` (keyword arguments win over the environment).
"""

from __future__ import annotations

import difflib
import math
import os
from functools import lru_cache
from typing import Literal, Mapping
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobcast.core.redisurl import check_redis_url, node_urls


def parse_caps(text: str) -> dict[str, float]:
    """``"n=100000,sqrt.interval=10"`` as {"name" or "task.name": limit}; ValueError if malformed."""
    caps = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, sep, limit = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"item {item!r} is not name=limit")
        value = float(limit)
        if not math.isfinite(value) or value < 0:
            # (nan would pass every comparison, and cap nothing)
            raise ValueError(f"item {item!r}: the limit must be a finite number, 0 or more")
        caps[name.strip()] = value
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
        # A bad REDIS_URL may hold a password: errors name the setting, not what it was set to.
        hide_input_in_errors=True,
        # No setting means infinity or NaN (JOBCAST_HEARTBEAT=inf would never beat).
        allow_inf_nan=False,
    )

    redis_url: str = env("REDIS_URL", "redis://localhost:6379/0",
                         "Redis for the queue, logs and pub/sub; `redis+sentinel://host:port"
                         "[,host:port…]/<master>[/<db>]` finds the primary through Sentinel "
                         "and follows its failovers", min_length=1)
    stream_url: str = env("JOBCAST_STREAM_URL", "",
                          "Redis for the logs, job metadata and pub/sub, when not `REDIS_URL`; "
                          "a node of a Redis Cluster works (hash-tagged keys, "
                          "`SPUBLISH`/`SSUBSCRIBE`), or several, `redis://node-1:6379,"
                          "node-2:6379/0`: a client starts from the first that answers; "
                          "RQ's queue stays on `REDIS_URL`")
    public_url: str = env("JOBCAST_URL", "http://localhost:8000",
                          "public base URL printed by the CLI next to a job id", min_length=1)
    allowed_hosts: str = env("JOBCAST_ALLOWED_HOSTS", "",
                             "without a token (or with public reads), the host names the "
                             "web answers besides "
                             "localhost, IP addresses, names without a dot and `JOBCAST_URL`'s "
                             "host (comma-separated; `*`: any): other names get 400, so another "
                             "site's name pointed at this machine (DNS rebinding) cannot reach it")
    queue_name: str = env("JOBCAST_QUEUE", "jobcast", "RQ queue name", min_length=1,
                          pattern=r"^\S(.*\S)?$")
    queues: str = env("JOBCAST_QUEUES", "",
                      "RQ queues whose jobs Jobcast may adopt (open the log of a pending job it "
                      "did not enqueue) and cancel, comma-separated, `*` for every queue, "
                      "besides `JOBCAST_QUEUE` (always Jobcast's); others answer 404")
    tasks: str = env("JOBCAST_TASKS", "",
                     "extra task modules to import in every service (comma-separated)")
    log_maxlen: int = env("JOBCAST_LOG_MAXLEN", 100_000,
                          "entries kept per job log (older ones are trimmed)", ge=1)
    log_ttl: int = env("JOBCAST_LOG_TTL", 7 * 24 * 3600,
                       "seconds a log lives after its job ends (up to ten years)", ge=1,
                       le=10 * 365 * 24 * 3600)
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
    multi_write_delay: float = env("JOBCAST_MULTI_WRITE_DELAY", 0.004,
                                   "seconds a stream of several jobs (`/events`) gathers its "
                                   "jobs' new entries into one write; 0: one write per "
                                   "announcement", ge=0)
    value_max_bytes: int = env("JOBCAST_VALUE_MAX_BYTES", 65536,
                               "largest value a job may log, bytes; a larger one is logged as "
                               "refused, with its size", ge=1)
    max_body: int = env("JOBCAST_MAX_BODY", 16 * 1024,
                        "largest request body the API accepts, bytes (chunked ones too)", ge=1)
    body_timeout: float = env("JOBCAST_BODY_TIMEOUT", 10.0,
                              "seconds a request's body may take to arrive; then 408 and the "
                              "connection is closed (a client that sends it byte by byte)", gt=0)
    job_timeout: int = env("JOBCAST_JOB_TIMEOUT", 3600,
                           "RQ job timeout, seconds (tasks with a known duration get more, up "
                           "to `JOBCAST_JOB_MAX_DURATION`)", ge=1)
    job_max_values: int = env("JOBCAST_JOB_MAX_VALUES", 1_000_000,
                              "most values one job may yield, where its task knows its total; "
                              "over it, creating the job answers 400", ge=1)
    job_max_duration: int = env("JOBCAST_JOB_MAX_DURATION", 86400,
                                "longest a job may run, seconds: a task of known duration over "
                                "it answers 400, and no job's RQ timeout is longer", ge=1)
    job_retries: int = env("JOBCAST_JOB_RETRIES", 2, "RQ retries of a failed job", ge=0)
    failure_reason: Literal["message", "type", "none"] = env(
        "JOBCAST_FAILURE_REASON", "message",
        "what a failed job's viewers are told of the exception: message (its type and the "
        "first line of its message), type (its type alone) or none (only that it failed); "
        "RQ keeps the whole traceback for operators either way")
    token: str = env("JOBCAST_TOKEN", "",
                     "bearer token required to create and cancel jobs over HTTP; empty: none")
    read: Literal["", "public", "private"] = env(
        "JOBCAST_READ", "",
        "who may read jobs: public, or private (the token, or a signed view link for one job); "
        "empty: private when a token is set, else public")
    secret: str = env("JOBCAST_SECRET", "",
                      "key that signs view links and browser sessions; empty: a random key "
                      "generated once and kept in Redis (`jobcast:secret`), never the token")
    auth_failures: int = env("JOBCAST_AUTH_FAILURES", 10,
                             "failed authentications (a wrong bearer token, or a wrong token "
                             "in the form) one client address may make per minute, per web "
                             "process; then 429 with Retry-After (0: no limit)", ge=0)
    create_rate: int = env("JOBCAST_CREATE_RATE", 60,
                           "jobs one client address may create per minute over HTTP, per web "
                           "process (a burst of that many, then evenly); then 429 with "
                           "Retry-After (0: no limit)", ge=0)
    link_ttl: int = env("JOBCAST_LINK_TTL", 0,
                        "seconds a view link stays valid, made for a new job or by "
                        "/api/jobs/<id>/link without ttl (0: until the job's log expires)", ge=0)
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
    fast_admission: bool = env("JOBCAST_FAST_ADMISSION", True,
                               "admit public text and SSE stream requests in the gunicorn "
                               "worker, without a full Flask request (same answer, less CPU)")
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
    # What a job prints (worker/capture.py).
    capture: Literal["all", "logging", "off"] = env(
        "JOBCAST_CAPTURE", "all",
        "what workers put in a job's log of what it prints: all (stdout, stderr and logging), "
        "logging (logging records only), or off")
    capture_level: str = env("JOBCAST_CAPTURE_LEVEL", "INFO",
                             "lowest level of the logging records captured (a level name)")
    capture_rate: int = env("JOBCAST_CAPTURE_RATE", 200,
                            "output lines per second kept per job; the rest are counted and "
                            "announced in one line", ge=1)
    capture_echo: bool = env("JOBCAST_CAPTURE_ECHO", True,
                             "workers also print a job's output on their own console, each "
                             "line prefixed with the job id")
    # `jobcast web`
    port: int = env("PORT", 8000, "port `jobcast web` listens on", ge=1, le=65535)
    # Loopback by default: an open server (no token) runs jobs for anyone who reaches it.
    bind: str = env("JOBCAST_BIND", "127.0.0.1", "address `jobcast web` listens on (0.0.0.0: "
                    "every interface)", min_length=1)
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

    @field_validator("capture", mode="before")
    @classmethod
    def _normalize_capture(cls, value: object) -> object:
        """Accept ``OFF`` and `` all `` as well."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("capture_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        """A logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL), upper-cased."""
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"JOBCAST_CAPTURE_LEVEL={value!r} is not a logging level name")
        return level

    @field_validator("token", "secret", mode="before")
    @classmethod
    def _strip_credential(cls, value: object) -> object:
        """Strip a token or secret once, here: a ``.env`` line often ends in a space or a CR,
        and the bearer header (stripped by HTTP) and the token form must compare the same text."""
        return value.strip() if isinstance(value, str) else value

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: str) -> str:
        """Printable ASCII: the token travels in an HTTP header (``Authorization: Bearer``),
        which carries no other text, so any other character makes a token no client can send
        (the server would start, and refuse everyone)."""
        if not (value.isascii() and value.isprintable()):
            raise ValueError("JOBCAST_TOKEN must be printable ASCII (it is sent in an HTTP "
                             "header)")
        return value

    @field_validator("redis_url", "stream_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        """Refuse a malformed ``redis+sentinel://`` URL at start-up (redis-py has no such
        scheme, so it would fail only at the first command)."""
        return check_redis_url(value) if value else value

    @field_validator("redis_url")
    @classmethod
    def _check_one_redis(cls, value: str) -> str:
        """RQ's queue is on one Redis (RQ cannot use a Cluster): several hosts, a Cluster's
        nodes, belong in JOBCAST_STREAM_URL."""
        if len(node_urls(value)) > 1:
            raise ValueError("REDIS_URL names one Redis (RQ's queue cannot be on a Cluster); "
                             "a Redis Cluster's nodes go in JOBCAST_STREAM_URL")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        """An http(s) URL with a host: the CLI prints job URLs under it, and the web answers its
        host without a token. Refused at start-up, naming the variable, not at the first use."""
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (ValueError when out of range)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"JOBCAST_URL={value!r} is invalid: expected http://host[:port][/path] "
                             "or https://…")
        return value

    @field_validator("param_caps")
    @classmethod
    def _check_caps(cls, value: str) -> str:
        """Refuse malformed caps at start-up rather than at the first job."""
        parse_caps(value)
        return value

    def caps(self) -> dict[str, float]:
        """The parameter caps as {"name" or "task.name": limit}."""
        return parse_caps(self.param_caps)

    def is_jobcast_queue(self, name: str) -> bool:
        """True for a queue whose jobs Jobcast adopts and cancels: JOBCAST_QUEUE, where it
        enqueues its own jobs (it always cancels what it started), and JOBCAST_QUEUES (``*``:
        every queue)."""
        names = {q.strip() for q in self.queues.split(",") if q.strip()} | {self.queue_name}
        return "*" in names or name in names

    def task_modules(self) -> list[str]:
        """The modules named in JOBCAST_TASKS."""
        return [m.strip() for m in self.tasks.split(",") if m.strip()]

    @property
    def read_mode(self) -> str:
        """"public" or "private" (JOBCAST_READ, defaulting on whether a token is set)."""
        return self.read or ("private" if self.token else "public")

    def web_errors(self) -> list[str]:
        """What the web server cannot start with, though the other services can (a worker
        needs no token): one line each, naming the setting."""
        if self.read_mode == "private" and not (self.token or self.secret):
            return ["JOBCAST_READ=private needs JOBCAST_TOKEN (and optionally JOBCAST_SECRET)"]
        return []


OTHER_VARIABLES = frozenset({
    # docker-compose.yml's own (README, "Run with Docker")
    "JOBCAST_REDIS_URL", "JOBCAST_PORT", "JOBCAST_PUBLISH_ADDR", "JOBCAST_IMAGE",
    "JOBCAST_LB_IMAGE", "JOBCAST_DEMO_JOBS", "JOBCAST_DEMO_PARAMS", "JOBCAST_DEMO_TASK",
    "JOBCAST_WORKER_STOP_GRACE",
    # the test suite's (README, "Tests")
    "JOBCAST_COMPOSE_REAL", "JOBCAST_COMPOSE_STREAMS", "JOBCAST_UPDATE_SCREENSHOTS",
})
"""``JOBCAST_*`` variables that something other than :class:`Settings` reads."""


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A line for each ``JOBCAST_*`` variable that nothing reads, naming the setting it
    probably meant: a misspelt ``JOBCAST_TOKEN`` would otherwise leave a server open without
    a word."""
    environ = os.environ if environ is None else environ
    known = {field.validation_alias for field in Settings.model_fields.values()} | OTHER_VARIABLES
    lines = []
    for name in sorted(n for n in environ if n.startswith("JOBCAST_") and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{name} is not a Jobcast setting{hint}: it is ignored")
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return Settings()
