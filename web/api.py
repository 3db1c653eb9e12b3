"""The JSON API: create jobs, list them, read one job's status, cancel one."""

from __future__ import annotations

import json
import logging
import time

from flask import Blueprint, Response, abort, request, url_for
from pydantic import ValidationError

from jobcast.core.joblog import UnknownJob
from jobcast.core.registry import ParamError, UnknownTask, all_tasks
from jobcast.core.urls import JOB_PATHS, job_urls
from jobcast.producer.cancel import AlreadyEnded, cancel
from jobcast.producer.enqueue import enqueue
from jobcast.web import metrics
from jobcast.web.admission import load_job, may_be_trimmed
from jobcast.web.errors import BadParam
from jobcast.web.limits import TooManyRequests, client_address
from jobcast.web.links import MAX_TTL, sign
from jobcast.web.models import (Cancelled, Chart, Created, EarlierValues, Error, JobList,
                                JobRequest, JobStatus, Link, Task, TaskList, reply)
from jobcast.web.openapi import job_requests
from jobcast.web.presence import total_viewers
from jobcast.web.security import urls_sig
from jobcast.web.services import state
from jobcast.web.surface import IntArg, job_scoped, private, returns, token_required

bp = Blueprint("api", __name__)
log = logging.getLogger(__name__)

LIMIT_JOBS = IntArg("limit", low=1, high=500, default=50)
LIMIT_VALUES = IntArg("limit", low=1, high=5000, default=1000)
BEFORE = IntArg("before", "entries before this seq; omitted: the newest values")
TTL = IntArg("ttl", "seconds until the link expires; 0 for none; omitted: JOBCAST_LINK_TTL",
             high=MAX_TTL)
# A job with no chart yet: what the worker writes before its first value.
EMPTY_CHART = Chart(span=1, upto=-1, points=0, min=[], max=[], first=[], last=[]).model_dump_json()


def _not_json() -> str:
    """Why the request's body could not be read as JSON (asked only once it could not)."""
    if request.is_json:
        try:
            json.loads(request.get_data())
        except RecursionError:
            return "body is nested too deeply"
        except ValueError as exc:  # (malformed, not UTF-8, or a number too long to convert)
            if "digits" in str(exc) and not isinstance(exc, json.JSONDecodeError):
                return "a number in the body has too many digits"  # (Python's limit: 4,300)
            return f"body is not valid JSON: {exc}"
    return "body must be a JSON object (Content-Type: application/json)"


def job_request() -> JobRequest:
    """The request's body as a JobRequest, or a 400 naming the wrong field.

    An unknown field is named first, then ``task``, then ``params``; ``body`` when the body
    is no JSON object, or is nested too deeply for the JSON parser. The message says what the
    field must be (its description).
    """
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        # "[[[[…" a thousand deep: the parser gives up before it finds the body malformed.
        body = None
    if body is None:
        raise BadParam("body", _not_json())
    try:
        return JobRequest.model_validate(body)
    except ValidationError as exc:
        # A stable sort: unknown fields first, then the model's fields in their order.
        first = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    fields = JobRequest.model_fields
    if first["type"] == "extra_forbidden":
        raise BadParam(str(first["loc"][0]), f"unknown field; expected only {' and '.join(fields)}")
    if not first["loc"]:
        raise BadParam("body", "body must be a JSON object")
    name = str(first["loc"][0])
    raise BadParam(name, f"{name} must be {fields[name].description}")


@bp.post("/api/jobs")
@token_required
@returns(Created, 201, body=job_requests, headers={"Location": "the job's status URL"},
         links=("api.get_job", "api.job_link", "pages.job_page"), errors=[429])
def create_job():
    """Create a job: validate ``{"task": ..., "params": {...}}``, enqueue it, answer 201 with
    its URLs.

    A client gets JOBCAST_CREATE_RATE jobs a minute (429 with Retry-After past that); a
    request refused as invalid (400) costs none of them, so fixing a form's mistakes is not
    throttled.
    """
    cfg = state().config
    job = job_request()
    client = client_address(cfg)
    wait = state().creations.take(client)
    if wait:
        raise TooManyRequests(f"at most {cfg.create_rate} jobs a minute per client "
                              "(JOBCAST_CREATE_RATE)", wait)
    try:
        job_id = enqueue(job.task, job.params, redis=state().redis, config=state().config,
                         streams=state().streams)
    except UnknownTask:
        state().creations.give_back(client)
        raise BadParam("task", f"unknown task; known tasks: {', '.join(sorted(all_tasks()))}") from None
    except ParamError as exc:
        state().creations.give_back(client)
        first = exc.errors[0]
        raise BadParam(first["field"], str(exc), exc.errors) from None
    # base: under init_app's prefix, if any
    created = state().logs.log(job_id).info().created_at
    urls = job_urls(job_id, base=request.script_root, sig=urls_sig(job_id, created))
    response = reply(Created(id=job_id, urls=urls), 201)
    response.headers["Location"] = url_for("api.get_job", job_id=job_id)
    return response


@bp.get("/api/jobs")
@private
@returns(JobList, args=[LIMIT_JOBS])
def list_jobs():
    """The most recent jobs, newest first (``?limit=`` up to 500)."""
    return reply(JobList(jobs=state().logs.recent(LIMIT_JOBS.read())))


@bp.get(JOB_PATHS["status"])
@job_scoped
@returns(JobStatus)
def get_job(job_id: str):
    """One job's status, progress, worker, times, viewers and URLs."""
    info = load_job(job_id)
    jlog = state().logs.log(job_id)
    # This process's count is exact and current; the others' arrive every few seconds.
    here = state().relay.viewers(job_id)
    # The log is capped: the oldest entry and value it still has (read only when it may
    # have been trimmed, since the page polls this).
    if may_be_trimmed(info.last_seq, state().config.log_maxlen):
        first_seq, first_value = jlog.first_kept()
    else:
        # Nothing trimmed: the log begins at entry 1 and value 0 (the next one, if none yet),
        # as /values says.
        first_seq, first_value = (1, 0) if info.last_seq else (None, None)
    return reply(JobStatus(
        **info.model_dump(),
        urls=job_urls(job_id, base=request.script_root, sig=urls_sig(job_id, info.created_at)),
        viewers=max(here, total_viewers(jlog)), viewers_here=here,
        first_seq=first_seq, first_value=first_value))


@bp.post("/api/jobs/<job_id>/cancel")
@token_required
@returns(Cancelled, errors=[409])
def cancel_job(job_id: str):
    """Cancel a queued or running job: it leaves the queue, or its work-horse is stopped; its
    log ends with ``cancelled``.

    409 (with the status) when the job has already ended, a second cancel included; the
    log then stays as it was. Needs the token when JOBCAST_TOKEN is set.
    """
    load_job(job_id)
    # The log's entry says "api", not the client's address: every viewer of the job reads
    # it, and the address of whoever holds the token is not theirs to know. The server's log
    # and the reply (to that client alone) name the address.
    client = client_address(state().config)
    log.info("job %s: cancel asked from %s", job_id, client)
    try:
        seq = cancel(job_id, "api", redis=state().redis, config=state().config,
                     streams=state().streams)
    except UnknownJob:
        abort(404, description=f"no job with id {job_id}")
    except AlreadyEnded as exc:
        return reply(Error(error="conflict", message=str(exc), status=exc.status), 409)
    metrics.job_cancelled()
    return reply(Cancelled(id=job_id, status="cancelled", seq=seq, by="api", client=client))


@bp.get("/api/jobs/<job_id>/chart")
@job_scoped
@returns(Chart)
def job_chart(job_id: str):
    """The job's chart history, downsampled (min/max/first/last per bucket) by its worker."""
    load_job(job_id)
    # As the worker stored it (already JSON).
    raw = state().logs.log(job_id).chart()
    return Response(raw or EMPTY_CHART, mimetype="application/json",
                    headers={"Cache-Control": "no-cache"})


@bp.get("/api/jobs/<job_id>/values")
@job_scoped
@returns(EarlierValues, args=[BEFORE, LIMIT_VALUES])
def earlier_values(job_id: str):
    """Up to ``limit`` value entries logged before entry ``before`` (a seq; omitted: the
    newest values), oldest first.

    The job page's "load earlier values". ``first_seq``/``first_value`` say where the
    capped log begins, so the page can tell what is no longer kept.
    """
    load_job(job_id)
    limit = LIMIT_VALUES.read()
    jlog = state().logs.log(job_id)
    if BEFORE.given():
        before = BEFORE.read()
    else:  # the newest values (a read with nothing before seq 0 would always be empty)
        position = jlog.position()
        before = position.seq + 1 if position is not None else 0
    raws = jlog.values_before(before, limit)
    first_seq, first_value = jlog.first_kept()
    # The entries go out as stored (already JSON): parsed, they would be encoded again. So
    # the model's own JSON of its other fields, and the stored entries as its list.
    rest = EarlierValues(first_seq=first_seq, first_value=first_value, values=[])
    head = rest.model_dump_json(exclude={"values"}).encode().removesuffix(b"}")
    return Response(head + b',"values":[' + b",".join(raws) + b"]}",
                    mimetype="application/json")


@bp.get("/api/tasks")
@private
@returns(TaskList)
def list_tasks():
    """The registered tasks with their parameters' JSON schema."""
    caps = state().config.caps()  # the maxima this server checks, not only the task's own
    return reply(TaskList(tasks=[Task(name=t.name, description=t.description,
                                      params=t.schema(caps))
                                 for t in all_tasks().values()]))


@bp.get("/api/jobs/<job_id>/link")
@token_required
@returns(Link, args=[TTL])
def job_link(job_id: str):
    """A new signed view link for the job (token required): ``?ttl=`` seconds (0: no expiry),
    by default JOBCAST_LINK_TTL's, as the links every other answer carries.

    In public mode, where no link is needed, the URLs come back unsigned.
    """
    cfg = state().config
    # An operator who made links expire did not mean this endpoint's to outlive them.
    ttl = TTL.read() if TTL.given() else cfg.link_ttl
    info = load_job(job_id)
    now = time.time()
    sig = sign(cfg, job_id, info.created_at, ttl, now=now) if cfg.read_mode == "private" else None
    # base: under init_app's prefix, if any
    return reply(Link(id=job_id, urls=job_urls(job_id, base=request.script_root, sig=sig),
                      expires=int(now + ttl) if sig and ttl else None))
