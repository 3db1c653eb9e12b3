"""Validation at the edge: turn user-supplied ids and positions into safe values."""

from __future__ import annotations

from typing import Any

from flask import abort, request
from redis import Redis
from rq.job import Job

from jobcast.joblog import InvalidJobId, JobLog, UnknownJob, check_job_id, ensure_log
from jobcast.settings import Settings
from web.errors import BadParam
from web.jobs import job_info
from web.services import state

# RQ states of a job that a Jobcast-aware worker has not finished with yet.
ADOPTABLE = frozenset({b"queued", b"deferred", b"scheduled", b"started"})

MAX_SEQ = 2**53  # anything larger cannot be a real position (and JS could not hold it)


def load_job(job_id: str) -> dict[str, Any]:
    """The job's info, or 400 for a malformed id and 404 for an unknown one."""
    try:
        check_job_id(job_id)
    except InvalidJobId as exc:
        raise BadParam("id", str(exc)) from None
    try:
        return job_info(state().streams, job_id)
    except UnknownJob:
        pass
    if adopt_rq_job(state().redis, job_id, state().config, state().streams):
        return job_info(state().streams, job_id)
    abort(404, description=f"no job with id {job_id}")


def adopt_rq_job(redis: Redis, job_id: str, config: Settings, streams=None) -> bool:
    """Open the log of an RQ job that Jobcast did not enqueue, if RQ has it pending or running.

    A page opened right after ``Queue.enqueue`` then follows the job from its ``queued``
    entry, before a worker takes it. Only RQ's status, description and queue are read (no
    unpickling); a job that has already ended without a log has nothing to show, hence 404.
    ``redis`` holds RQ's queue, ``streams`` the logs (by default the same Redis).
    """
    status, description, origin = redis.hmget(Job.key_for(job_id), "status", "description", "origin")
    if status not in ADOPTABLE:
        return False
    jlog = JobLog(redis if streams is None else streams, job_id, maxlen=config.log_maxlen,
                  ttl=config.log_ttl, index_max=config.jobs_index_max)
    ensure_log(jlog, (description or b"").decode(errors="replace"),
               (origin or b"").decode(errors="replace"))
    return True


def stream_position(job_id: str) -> tuple[bool, int]:
    """(ended, last seq) of a job about to be streamed; 400 for a malformed id, 404 if unknown.

    A job that viewers here already watch is answered from the relay's recent entries, with
    no Redis round trip, and newcomers arriving together share one read: a burst of them costs
    Redis next to nothing.
    """
    try:
        check_job_id(job_id)
    except InvalidJobId as exc:
        raise BadParam("id", str(exc)) from None
    position = state().hub.relay.position(job_id)
    if position is None and adopt_rq_job(state().redis, job_id, state().config, state().streams):
        position = state().hub.relay.position(job_id)  # a plain RQ job, its log just opened
    if position is None:
        abort(404, description=f"no job with id {job_id}")
    return position


def int_param(name: str, raw: str | None, *, default: int = 0) -> int:
    """A non-negative integer parameter, or a 400 naming it."""
    if raw is None or raw == "":
        return default
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or int(raw) > MAX_SEQ:
        raise BadParam(name, f"{name} must be a non-negative integer up to {MAX_SEQ}")
    return int(raw)


def resume_position() -> int:
    """Where a stream resumes: ``Last-Event-ID`` (sent by EventSource) wins over ``?after=``."""
    header = request.headers.get("Last-Event-ID")
    if header is not None and header != "":
        return int_param("Last-Event-ID", header)
    return int_param("after", request.args.get("after"))
