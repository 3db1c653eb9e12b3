"""Mount Jobcast in your own Flask app: ``jobcast.init_app(app, url_prefix="/jobcast")``.

Jobcast runs as its own Flask app under the prefix (Flask's "application dispatching": a
werkzeug DispatcherMiddleware in front of ``app.wsgi_app``), in the same processes as your app,
so its relay starts there at its first request. Keeping it a separate app means its templates,
static files, endpoint names, JSON error handlers and request-size limit cannot collide with
yours; every URL it renders comes from ``url_for``, which includes the prefix by itself.

Your app can still link to a job: ``url_for("jobcast.job_page", job_id=job.id)`` (and
``jobcast.text_stream``, ``jobcast.sse_stream``, ``jobcast.html_stream``, ``jobcast.get_job``),
and to Jobcast's static files, jobcast.js for your own pages:
``url_for("jobcast.static", filename="jobcast.js")``.
Requests under the prefix do not pass through your app's ``before_request`` hooks.
"""

from __future__ import annotations

from flask import Flask
from redis import Redis
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from jobcast.core.settings import Settings
from jobcast.web.app import create_app
from jobcast.web.gunicorn_check import UnsuitableWorker, check_worker_class
from jobcast.web.pages import shared_script_version

__all__ = ["init_app", "UnsuitableWorker", "check_worker_class"]

# The views the host app's url_for() can link to, as ``jobcast.<view>``: build-only rules in
# the host app, copied from the mounted app's own routes.
LINKS = ("pages.index", "pages.job_page", "stream.text_stream", "stream.sse_stream",
         "stream.html_stream", "api.get_job", "static")


def init_app(app: Flask, url_prefix: str = "/jobcast", *, config: Settings | None = None,
             redis: Redis | None = None) -> Flask:
    """Serve Jobcast's pages, its three streams and its JSON API in ``app`` under ``url_prefix``.

    ``config`` defaults to the environment (``REDIS_URL``, ``JOBCAST_*``); ``redis`` to a
    bounded pool on ``config.redis_url`` (a client given must return bytes: ValueError for one
    made with ``decode_responses=True``). Raises UnsuitableWorker when loaded by a gunicorn
    worker class that cannot hold streams (sync). Returns the mounted Jobcast app.
    """
    prefix = "/" + url_prefix.strip("/")
    if prefix == "/":
        raise ValueError("url_prefix must be a path below the root, such as /jobcast")
    if "jobcast" in app.extensions:
        raise RuntimeError("Jobcast is already mounted in this app")
    check_worker_class()
    jobcast_app = create_app({"JOBCAST": config, "REDIS": redis})
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {prefix: jobcast_app})
    for endpoint in LINKS:
        for rule in jobcast_app.url_map.iter_rules(endpoint):
            app.add_url_rule(prefix + rule.rule, endpoint=f"jobcast.{endpoint.rpartition('.')[2]}",
                             build_only=True)
    app.url_defaults(_shared_script_version)
    app.extensions["jobcast"] = jobcast_app.extensions["jobcast"]
    return jobcast_app


def _shared_script_version(endpoint: str, values: dict) -> None:
    """Your pages' jobcast.js URL names the file's digest, as Jobcast's own pages' does
    (:func:`jobcast.web.pages.shared_script_version`): a deploy that changes it starts new
    SharedWorkers. Your app's own endpoints are left alone."""
    if endpoint == "jobcast.static":
        shared_script_version("static", values)
