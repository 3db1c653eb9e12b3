"""HTML pages: the job list with a start form, the live job page, and the original views."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, render_template

from jobcast.core.registry import all_tasks
from jobcast.core.urls import JOB_PATHS
from jobcast.web.admission import load_job
from jobcast.web.models import no_content
from jobcast.web.security import WORKER_SCRIPT
from jobcast.web.services import state
from jobcast.web.surface import job_scoped, page, private, public, returns

bp = Blueprint("pages", __name__)


@cache
def static_digest(filename: str) -> str:
    """The first 12 hex digits of the SHA-256 of static file ``filename`` (read once)."""
    data = (Path(__file__).parent / "static" / filename).read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


@bp.app_url_defaults
def shared_script_version(endpoint: str, values: dict) -> None:
    """Pages load ``jobcast.js?v=<its digest>``. The script puts the digest in its version,
    which names the SharedWorker that tabs share: after a deploy that changed the file, new
    pages start a worker of the new code instead of joining the old one still running for
    tabs opened before (whose messages the new code might not read)."""
    if endpoint == "static" and values.get("filename") == WORKER_SCRIPT:
        values.setdefault("v", static_digest(WORKER_SCRIPT))


def age_text(seconds: float | None) -> str:
    """A short human age: "12 s", "3 min", "5 h", "2 d" (the page's script keeps it fresh)."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def bound_text(x: float) -> str:
    """A bound as people write it: 1,000,000 rather than 1e+06."""
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:g}"


def form_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Describe each parameter of a task's JSON schema as one form field.

    The kind picks the control (number, checkbox, select, text); the bounds become the
    input's min/max and a hint, so the form offers what the API will accept.
    """
    fields = []
    for name, p in schema.get("properties", {}).items():
        kind = p.get("type")
        if "enum" in p:
            kind = "select"
        elif kind not in ("integer", "number", "boolean", "string"):
            kind = "string"
        low = p.get("minimum", p.get("exclusiveMinimum"))
        high = p.get("maximum", p.get("exclusiveMaximum"))
        hint = []
        if low is not None:
            hint.append(("> " if "exclusiveMinimum" in p else "≥ ") + bound_text(low))
        if high is not None:
            hint.append(("< " if "exclusiveMaximum" in p else "≤ ") + bound_text(high))
        fields.append({
            "name": name,
            "label": p.get("title") or name,
            "kind": kind,
            "min": low,
            "max": high,
            "default": p.get("default"),
            "description": p.get("description") or "",
            "bounds": ", ".join(hint),
            "options": p.get("enum", []),
        })
    return fields


@bp.get("/")
@private
@page()
def index():
    """Recent jobs with their status, progress and age, and a form to start a job."""
    tasks = all_tasks()
    caps = state().config.caps()  # the form offers what the API accepts on this server
    forms = {name: form_fields(t.schema(caps)) for name, t in tasks.items()}
    now = time.time()
    jobs = [job.model_dump() for job in state().logs.recent(50)]
    for job in jobs:
        created = job["created_at"]
        job["age"] = age_text(now - created if created else None)
        job["created_iso"] = (datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="seconds")
                              if created else "")
    return render_template("index.html", jobs=jobs, tasks=tasks, forms=forms)


@bp.get("/favicon.ico")
@public
@returns(None, 204, media=None)
def favicon():
    """No icon: answer 204 so browsers do not log a 404 on every page."""
    return no_content()


@bp.get(JOB_PATHS["page"])
@job_scoped
@page()
def job_page(job_id: str):
    """The live page: latest value, chart, progress, status, watchers and the log."""
    job = load_job(job_id).model_dump()
    return render_template("job.html", job=job,
                           params=", ".join(f"{k}={v}" for k, v in job["params"].items()))


@bp.get("/jobs/<job_id>/plain")
@job_scoped
@page()
def plain_page(job_id: str):
    """The original page: latest value, the list of all values, and "Done" at the end."""
    return render_template("plain.html", job=load_job(job_id).model_dump())


@bp.get(JOB_PATHS["framed"])
@job_scoped
@page()
def framed_page(job_id: str):
    """The ``<iframe>`` variant, embedding the streamed HTML of ``/jobs/<id>/frame``."""
    return render_template("framed.html", job=load_job(job_id).model_dump(),
                           heartbeat=state().config.heartbeat)
