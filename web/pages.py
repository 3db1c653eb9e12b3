"""HTML pages: the job list with a start form, the job page, and the framed view."""

from __future__ import annotations

from flask import Blueprint, render_template

from web import state
from web.lookup import load_job
from worker.joblog import recent_jobs
from worker.registry import all_tasks

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    """Recent jobs with their status, and a form to start a job."""
    tasks = all_tasks()
    forms = {name: t.schema() for name, t in tasks.items()}
    return render_template("index.html", jobs=recent_jobs(state().redis, 50), tasks=tasks,
                           forms=forms)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    """The original page: latest value, the list of all values, and "Done" at the end."""
    return render_template("job.html", job=load_job(job_id))


@bp.get("/jobs/<job_id>/plain")
def plain_page(job_id: str):
    """The original text-stream page under its own path too."""
    return render_template("job.html", job=load_job(job_id))


@bp.get("/jobs/<job_id>/framed")
def framed_page(job_id: str):
    """The ``<iframe>`` variant, embedding the streamed HTML of ``/jobs/<id>/frame``."""
    return render_template("framed.html", job=load_job(job_id))
