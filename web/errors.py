"""Every error answers JSON: ``{"error": ..., "message": ..., "field": ...}``."""

from __future__ import annotations

import logging

from flask import Flask, render_template, request
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from jobcast.web.models import Error, error_code, reply
from jobcast.web.gunicorn_check import UnsuitableWorker

log = logging.getLogger(__name__)


class BadParam(HTTPException):
    """A 400 that names the offending field."""

    code = 400

    def __init__(self, field: str, message: str, details: list | None = None):
        """Remember which field is wrong and why."""
        super().__init__(message)
        self.field = field
        self.details = details


def wants_page() -> bool:
    """The request is a browser's for one of the pages, or for the HTML stream an ``<iframe>``
    shows (a view declared a page or frameable, asked for with an Accept header that prefers
    HTML)."""
    from jobcast.web.surface import declaration_of  # (the surface imports this module)

    declared = declaration_of(request.endpoint)
    if not (declared.page or declared.frameable):
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def register(app: Flask) -> None:
    """Install the JSON error handlers on ``app``."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        """Render any HTTP error as JSON, keeping its status and headers (a browser asking
        for a page gets it as a page)."""
        no_job = exc.code == 404 or (isinstance(exc, BadParam) and exc.field == "job_id")
        if no_job and wants_page():
            # A mistyped or expired link to a job's page: said in HTML, not as raw JSON.
            title = "No such job" if exc.code == 404 else "Not a job's address"
            return render_template("error.html", title=title,
                                   message=exc.description or ""), exc.code
        extra = {}
        if isinstance(exc, BadParam):
            extra["field"] = exc.field
            if exc.details:
                extra["details"] = exc.details
        if getattr(exc, "reason", None):
            extra["reason"] = exc.reason  # e.g. why a view link was refused (web.security)
        if getattr(exc, "job", None):
            extra["job"] = exc.job  # the job refused, of a stream of several
        response = reply(Error(error=error_code(exc.name or "error"),
                               message=exc.description or "", **extra), exc.code or 500)
        for name, value in (exc.get_headers() if exc.response is None else []):
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(RedisError)
    def redis_down(exc: RedisError):
        """Redis is unreachable: 503 and a hint to retry, not a 500."""
        log.warning("redis error: %s", exc)
        # The code every 503 has (a stream refused as the process is full, a subscription
        # Redis did not confirm): a client tells them apart by the message, not the code.
        response = reply(Error(error=error_code("Service Unavailable"),
                               message="Redis is unreachable; retry shortly"), 503)
        response.headers["Retry-After"] = "2"
        return response

    @app.errorhandler(UnsuitableWorker)
    def unsuitable_worker(exc: UnsuitableWorker):
        """Streams under a worker class that cannot hold them: say so, never hang."""
        log.error("%s", exc)
        return reply(Error(error="unsuitable_worker", message=str(exc)), 503)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        """Log the traceback, and never leak it to the client."""
        log.exception("unhandled error")
        return reply(Error(error=error_code("Internal Server Error"),
                             message="internal server error"), 500)
