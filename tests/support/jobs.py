"""Jobs as the tests make and read them: through the API, or straight into a log."""

from __future__ import annotations

import uuid

import httpx
from redis import Redis

from jobcast.core.joblog import JobLog
from tests.support.sse import parse_events


def create_job(http: httpx.Client, task: str, **params) -> str:
    """POST a job through the API and return its id."""
    r = http.post("/api/jobs", json={"task": task, "params": params})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def running_job(redis: Redis) -> JobLog:
    """A job with its queued and started entries, written straight to its log."""
    log = JobLog(redis, uuid.uuid4().hex)
    log.create("sqrt", {}, None)
    log.started("test", 1)
    return log


def job_status(http: httpx.Client, job_id: str) -> dict:
    """GET /api/jobs/<id>."""
    return http.get(f"/api/jobs/{job_id}").json()


# Each stream is read on a connection of its own, as curl or a browser tab would: a stream
# that the relay held ends by closing its connection, which a pooled client may reuse.

def stream_lines(http: httpx.Client, job_id: str) -> list[str]:
    """The text stream of a job, read until it ends."""
    with httpx.stream("GET", http.base_url.join(f"/jobs/{job_id}/stream"), timeout=30) as r:
        assert r.status_code == 200
        return list(r.iter_lines())  # returns only when the stream ends, with the job


def sse_events(http: httpx.Client, job_id: str) -> list[dict]:
    """Every SSE event of a job (id, event, data decoded), read with the tests' own parser
    until the stream ends."""
    with httpx.stream("GET", http.base_url.join(f"/jobs/{job_id}/events"), timeout=30) as r:
        assert r.status_code == 200
        return [dict(e._asdict(), data=e.json()) for e in parse_events(r)]
