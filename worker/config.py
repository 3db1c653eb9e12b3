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
    # The Redis (or a node of the Redis Cluster) holding job logs, metadata and channels;
    # empty: REDIS_URL. RQ's queue always stays on REDIS_URL (see worker/streams.py).
    stream_url: str = ""
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
    # Bearer token required to create jobs over HTTP; empty means no token is needed.
    token: str = ""
    # Who may read jobs: "public" (anyone who can reach the server) or "private" (the token,
    # or a signed view link for one job). Empty: private when a token is set, else public.
    read: str = ""
    # Key that signs view links and browser sessions; empty: derived from the token.
    secret: str = ""
    # Seconds a view link made for a new job stays valid (0: until the job's log expires).
    link_ttl: int = 0
    # Caps on task parameters, e.g. "n=100000,rate=1000,sqrt.interval=10": "name" caps that
    # parameter of every task, "task.name" one task's. Over a cap the request gets a 400.
    param_caps: str = "n=100000,rate=1000,duration=3600,samples=100000000"
    # Concurrent streams one client address may hold (429 over it; 0, the default, means no
    # per-address cap: viewers behind one NAT or proxy share an address), and one web process
    # (503 over it).
    streams_per_client: int = 0
    streams_per_process: int = 20000
    # Take the client address from X-Forwarded-For (only behind a trusted proxy).
    trust_proxy: int = 0
    # RQ: how often a worker checks its work-horse and cleans up after dead workers, seconds.
    monitor_interval: int = 5
    maintenance_interval: int = 10
    # Queued or running jobs fail after this many seconds with no live worker at all.
    orphan_timeout: int = 15

    ENV = {
        "redis_url": "REDIS_URL",
        "stream_url": "JOBCAST_STREAM_URL",
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
        "token": "JOBCAST_TOKEN",
        "read": "JOBCAST_READ",
        "secret": "JOBCAST_SECRET",
        "link_ttl": "JOBCAST_LINK_TTL",
        "param_caps": "JOBCAST_PARAM_CAPS",
        "streams_per_client": "JOBCAST_STREAMS_PER_CLIENT",
        "streams_per_process": "JOBCAST_STREAMS_PER_PROCESS",
        "trust_proxy": "JOBCAST_TRUST_PROXY",
        "monitor_interval": "JOBCAST_MONITOR_INTERVAL",
        "maintenance_interval": "JOBCAST_MAINTENANCE_INTERVAL",
        "orphan_timeout": "JOBCAST_ORPHAN_TIMEOUT",
    }

    def caps(self) -> dict[str, float]:
        """The parameter caps as {"name" or "task.name": limit}."""
        caps = {}
        for item in filter(None, (i.strip() for i in self.param_caps.split(","))):
            name, sep, limit = item.partition("=")
            if not sep:
                raise ValueError(f"JOBCAST_PARAM_CAPS item {item!r} is not name=limit")
            caps[name.strip()] = float(limit)
        return caps

    @property
    def read_mode(self) -> str:
        """"public" or "private" (JOBCAST_READ, defaulting on whether a token is set)."""
        mode = (self.read or ("private" if self.token else "public")).strip().lower()
        if mode not in ("public", "private"):
            raise ValueError(f"JOBCAST_READ={self.read!r} is invalid: expected public or private")
        return mode

    @property
    def signing_key(self) -> str:
        """The key for view links and sessions: JOBCAST_SECRET, else the token, else none."""
        return self.secret or self.token

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        """Build a Config from environment variables; keyword arguments win."""
        values = {}
        for f in fields(cls):
            default = f.default
            values[f.name] = _env(cls.ENV[f.name], default, type(default))
        values.update(overrides)
        return cls(**values)
