"""A job as the HTTP API and the pages show it: its metadata hash as a JSON-ready dict."""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from jobcast.joblog import JOBS_INDEX, UnknownJob, job_keys


def job_info(redis: Redis, job_id: str) -> dict[str, Any]:
    """Return a job's status as a JSON-ready dict, or raise UnknownJob."""
    raw = redis.hgetall(job_keys(redis, job_id).meta)
    if not raw:
        raise UnknownJob(job_id)
    return info_from_hash(job_id, raw)


def info_from_hash(job_id: str, raw: dict) -> dict[str, Any]:
    """Turn a metadata hash as returned by HGETALL into the API's job dict."""
    m = {k.decode(): v.decode() for k, v in raw.items()}

    def num(name: str) -> float | None:
        """A float field, or None when empty."""
        return float(m[name]) if m.get(name) else None

    total = int(m["n"]) if m.get("n") else None
    return {
        "id": job_id,
        "task": m.get("task"),
        "params": json.loads(m.get("params") or "{}"),
        "status": m.get("status"),
        "progress": {"i": int(m.get("values") or 0), "n": total},
        "worker": m.get("worker") or None,
        "attempt": int(m["attempt"]) if m.get("attempt") else 0,
        "created_at": num("created_at"),
        "started_at": num("started_at"),
        "ended_at": num("ended_at"),
        "reason": m.get("reason") or None,
        "last_seq": int(m.get("seq") or 0),
        "cancelled_by": m.get("cancelled_by") or None,
    }


def recent_jobs(redis: Redis, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent jobs, newest first; expired ones are dropped from the index."""
    ids = [i.decode() for i in redis.zrevrange(JOBS_INDEX, 0, limit - 1)]
    pipe = redis.pipeline()
    for job_id in ids:
        pipe.hgetall(job_keys(redis, job_id).meta)
    jobs, gone = [], []
    for job_id, raw in zip(ids, pipe.execute()):
        if raw:
            jobs.append(info_from_hash(job_id, raw))
        else:
            gone.append(job_id)
    if gone:
        redis.zrem(JOBS_INDEX, *gone)
    return jobs
