"""The JSON API: create jobs, list them, read one job's status, cancel one."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, abort, jsonify, request, url_for

from jobcast.core.joblog import UnknownJob
from jobcast.core.registry import ParamError, UnknownTask, all_tasks
from jobcast.core.urls import JOB_PATHS, job_urls
from jobcast.producer.cancel import AlreadyEnded, cancel
from jobcast.producer.enqueue import enqueue
from jobcast.web import metrics
from jobcast.web.errors import BadParam
from jobcast.web.limits import client_address, require_token
from jobcast.web.links import MAX_TTL, sign
from jobcast.web.admission import int_param, load_job, may_be_trimmed
from jobcast.web.presence import total_viewers
from jobcast.web.security import urls_sig
from jobcast.web.services import state

bp = Blueprint("api", __name__)


@bp.post("/api/jobs")
def create_job():
    """Validate ``{"task": ..., "params": {...}}``, enqueue it, answer 201 with its URLs."""
    require_token(state().config)
    body = request.get_json(silent=True)
    if body is None:
        raise BadParam("body", "body must be a JSON object (Content-Type: application/json)")
    if not isinstance(body, dict):
        raise BadParam("body", "body must be a JSON object")
    unknown = set(body) - {"task", "params"}
    if unknown:
        raise BadParam(sorted(unknown)[0], "unknown field; expected only task and params")
    task = body.get("task")
    if not isinstance(task, str):
        raise BadParam("task", "task must be a string naming a registered task")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise BadParam("params", "params must be a JSON object")
    try:
        job_id = enqueue(task, params, redis=state().redis, config=state().config,
                         streams=state().streams)
    except UnknownTask:
        raise BadParam("task", f"unknown task; known tasks: {', '.join(sorted(all_tasks()))}") from None
    except ParamError as exc:
        first = exc.errors[0]
        raise BadParam(first["field"], str(exc), exc.errors) from None
    # base: under init_app's prefix, if any
    urls = job_urls(job_id, base=request.script_root, sig=urls_sig(job_id))
    response = jsonify(id=job_id, urls=urls)
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_job", job_id=job_id)
    return response


@bp.get("/api/jobs")
def list_jobs():
    """The most recent jobs, newest first (``?limit=`` up to 500)."""
    limit = int_param("limit", request.args.get("limit"), default=50)
    if not 1 <= limit <= 500:
        raise BadParam("limit", "limit must be between 1 and 500")
    return jsonify(jobs=[job.model_dump() for job in state().logs.recent(limit)])


@bp.get(JOB_PATHS["status"])
def get_job(job_id: str):
    """One job's status, progress, worker and times."""
    info = load_job(job_id).model_dump()
    jlog = state().logs.log(job_id)
    info["urls"] = job_urls(job_id, base=request.script_root, sig=urls_sig(job_id))
    # This process's count is exact and current; the others' arrive every few seconds.
    info["viewers_here"] = state().relay.viewers(job_id)
    info["viewers"] = max(info["viewers_here"], total_viewers(jlog))
    # The log is capped: the oldest entry and value it still has (read only when it may
    # have been trimmed, since the page polls this).
    if may_be_trimmed(info["last_seq"], state().config.log_maxlen):
        info["first_seq"], info["first_value"] = jlog.first_kept()
    else:
        info["first_seq"] = 1 if info["last_seq"] else None
        info["first_value"] = 0 if info["progress"]["i"] else None
    return jsonify(info)


@bp.post("/api/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Cancel a queued or running job: 200 with the ``cancelled`` entry's seq.

    409 (with the status) when the job has already ended, a second cancel included; the
    log then stays as it was. Needs the token when JOBCAST_TOKEN is set.
    """
    require_token(state().config)
    load_job(job_id)
    by = client_address(state().config)
    try:
        seq = cancel(job_id, by, redis=state().redis, config=state().config,
                     streams=state().streams)
    except UnknownJob:
        abort(404, description=f"no job with id {job_id}")
    except AlreadyEnded as exc:
        response = jsonify(error="conflict", message=str(exc), status=exc.status)
        response.status_code = 409
        return response
    metrics.job_cancelled()
    return jsonify(id=job_id, status="cancelled", seq=seq, by=by)


@bp.get("/api/jobs/<job_id>/chart")
def job_chart(job_id: str):
    """The job's downsampled chart (min/max/first/last per bucket), kept by its worker."""
    load_job(job_id)
    raw = state().logs.log(job_id).chart()
    return Response(raw or b'{"span":1,"upto":-1,"points":0,"min":[],"max":[],"first":[],"last":[]}',
                    mimetype="application/json", headers={"Cache-Control": "no-cache"})


@bp.get("/api/jobs/<job_id>/values")
def earlier_values(job_id: str):
    """Up to ``limit`` value entries logged before entry ``before`` (a seq), oldest first.

    The job page's "load earlier values". ``first_seq``/``first_value`` say where the
    capped log begins, so the page can tell what is no longer kept.
    """
    load_job(job_id)
    before = int_param("before", request.args.get("before"))
    limit = int_param("limit", request.args.get("limit"), default=1000)
    if not 1 <= limit <= 5000:
        raise BadParam("limit", "limit must be between 1 and 5000")
    jlog = state().logs.log(job_id)
    raws = jlog.values_before(before, limit)
    first_seq, first_value = jlog.first_kept()
    # The entries go out as stored (already JSON): parsed, they would be encoded again.
    head = json.dumps({"first_seq": first_seq, "first_value": first_value},
                      separators=(",", ":")).encode()[:-1]
    return Response(head + b',"values":[' + b",".join(raws) + b"]}", mimetype="application/json")


@bp.get("/api/tasks")
def list_tasks():
    """The registered tasks with their parameters' JSON schema."""
    return jsonify(tasks=[
        {"name": t.name, "description": t.description, "params": t.schema()}
        for t in all_tasks().values()
    ])


@bp.get("/api/jobs/<job_id>/link")
def job_link(job_id: str):
    """A new signed view link for the job (token required): ``?ttl=`` seconds, or no expiry.

    In public mode, where no link is needed, the URLs come back unsigned.
    """
    require_token(state().config)
    ttl = int_param("ttl", request.args.get("ttl"))
    if ttl > MAX_TTL:
        raise BadParam("ttl", f"ttl must be at most {MAX_TTL} seconds (omit it for no expiry)")
    load_job(job_id)
    cfg = state().config
    now = time.time()
    sig = sign(cfg, job_id, ttl, now=now) if cfg.read_mode == "private" else None
    return jsonify(id=job_id, urls=job_urls(job_id, sig=sig),
                   expires=int(now + ttl) if sig and ttl else None)
