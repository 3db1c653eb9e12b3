"""The JSON API: create jobs, list them, read one job's status."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, request, url_for

from producer.enqueue import enqueue, job_urls
from web import state
from web.errors import BadParam
from web.limits import require_token
from web.links import MAX_TTL, sign
from web.lookup import int_param, load_job
from web.presence import total_viewers
from web.security import urls_sig
from worker.joblog import recent_jobs
from worker.registry import ParamError, UnknownTask, all_tasks

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.post("/jobs")
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
        job_id = enqueue(task, params, redis=state().redis, config=state().config)
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


@bp.get("/jobs")
def list_jobs():
    """The most recent jobs, newest first (``?limit=`` up to 500)."""
    limit = int_param("limit", request.args.get("limit"), default=50)
    if not 1 <= limit <= 500:
        raise BadParam("limit", "limit must be between 1 and 500")
    return jsonify(jobs=recent_jobs(state().redis, limit))


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """One job's status, progress, worker and times."""
    info = load_job(job_id)
    info["urls"] = job_urls(job_id, base=request.script_root, sig=urls_sig(job_id))
    # This process's count is exact and current; the others' arrive every few seconds.
    info["viewers_here"] = state().hub.viewers(job_id)
    info["viewers"] = max(info["viewers_here"], total_viewers(state().redis, job_id))
    return jsonify(info)


@bp.get("/tasks")
def list_tasks():
    """The registered tasks with their parameters' JSON schema."""
    return jsonify(tasks=[
        {"name": t.name, "description": t.description, "params": t.schema()}
        for t in all_tasks().values()
    ])


@bp.get("/jobs/<job_id>/link")
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
