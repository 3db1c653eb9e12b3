"""Who may read what, and the headers every response carries.

Read access (``JOBCAST_READ``):

- ``public``: anyone who can reach the server reads every job (the default without a token);
- ``private`` (the default with ``JOBCAST_TOKEN``): the job list, ``/api/tasks``, ``/metrics``
  and everything not about one job need the token, sent as ``Authorization: Bearer`` or, from
  a browser, as the session cookie that ``/login`` sets once the token is typed in. A job's own
  pages and streams also accept a signed view link (:mod:`jobcast.web.links`) for that job.

The check runs before every request (:func:`guard`), keyed on the endpoint, so the views and
streams need no change: a new endpoint needs the token unless it is listed below.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, g, redirect, render_template, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException, RequestURITooLarge

from jobcast.core.settings import Settings
from jobcast.web import metrics
from jobcast.web.limits import Unauthorized
from jobcast.web.links import PARAM, LinkError, verify, view_sig

log = logging.getLogger(__name__)

bp = Blueprint("security", __name__)

# Endpoints anyone may call, in either mode.
PUBLIC = frozenset({"static", "health.healthz", "health.readyz", "pages.favicon",
                    "openapi.openapi", "security.login_form", "security.login"})
# Endpoints about one job (their URL has <job_id>): the token or a view link for that job.
JOB_SCOPED = frozenset({"pages.job_page", "pages.plain_page", "pages.framed_page",
                        "stream.text_stream", "stream.sse_stream", "stream.html_stream",
                        "api.get_job", "api.job_chart", "api.earlier_values", "output.job_output"})
SESSION_COOKIE = "jobcast_session"
SESSION_SALT = "jobcast.session"
SESSION_DAYS = 30
# Longest query string the app reads; gunicorn refuses request lines over 4094 bytes itself.
MAX_QUERY = 2048

# No inline script or style anywhere: every script is a file under /static.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors {ancestors}")
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'"
# The only page meant to be embedded: by this site's own framed page (or others' of the
# same origin), never by another site.
FRAMEABLE = frozenset({"stream.html_stream"})


class Forbidden(HTTPException):
    """403 for a view link that does not grant this job, with a machine-readable reason."""

    code = 403

    def __init__(self, reason: str, description: str):
        """Keep the reason for the JSON body (see web.errors)."""
        super().__init__(description)
        self.reason = reason


def config() -> Settings:
    """The app's Settings."""
    return current_app.extensions["jobcast"].config


def _token_hash(cfg: Settings) -> str:
    """A digest of the token, so sessions end when the token changes."""
    return hashlib.sha256(cfg.token.encode()).hexdigest()[:32]


def _sessions(cfg: Settings) -> URLSafeTimedSerializer:
    """Signs and checks the browser session cookie."""
    return URLSafeTimedSerializer(cfg.signing_key, salt=SESSION_SALT)


def has_bearer(cfg: Settings) -> bool:
    """The request carries ``Authorization: Bearer <JOBCAST_TOKEN>``."""
    if not cfg.token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), cfg.token.encode())


def has_session(cfg: Settings) -> bool:
    """The request carries a valid session cookie (browsers, reading only)."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw or not cfg.token:
        return False
    try:
        value = _sessions(cfg).loads(raw, max_age=SESSION_DAYS * 86400)
    except BadSignature:
        return False
    return isinstance(value, str) and hmac.compare_digest(value, _token_hash(cfg))


def has_token(cfg: Settings) -> bool:
    """The request proves it knows the token: a bearer header, or (for reads) the session."""
    if has_bearer(cfg):
        return True
    # A cookie is sent by the browser on its own, so it never authorises a change (CSRF).
    return request.method in ("GET", "HEAD") and has_session(cfg)


def check_query_length() -> None:
    """414 (JSON) for a query string longer than the app reads."""
    if len(request.query_string) > MAX_QUERY:
        raise RequestURITooLarge(f"the query string is over {MAX_QUERY} bytes")


def guard():
    """Before every request: refuse what the read mode does not allow this request."""
    check_query_length()
    cfg = config()
    endpoint = request.endpoint
    if cfg.read_mode == "public" or endpoint is None or endpoint in PUBLIC:
        return None
    if has_token(cfg):
        return None
    sig = request.args.get(PARAM)
    job_id = (request.view_args or {}).get("job_id")
    if endpoint in JOB_SCOPED and sig:
        try:
            verify(cfg, job_id, sig)
        except LinkError as exc:
            if endpoint.startswith("stream."):
                metrics.stream_refused("forbidden")
            raise Forbidden(exc.reason, str(exc)) from None
        g.view_sig, g.view_job = sig, job_id
        return None
    if endpoint.startswith("stream."):
        metrics.stream_refused("unauthorized")
    if endpoint.startswith("pages.") and request.method in ("GET", "HEAD"):
        # A browser: ask for the token rather than answer JSON.
        # script_root: come back under the prefix Jobcast is mounted at (init_app), if any.
        return login_page(request.script_root + request.full_path.rstrip("?"), status=401)
    what = "this job needs the token or a signed view link" if endpoint in JOB_SCOPED else \
        "this server is private: reading needs Authorization: Bearer <token> (JOBCAST_TOKEN)"
    raise Unauthorized(what)


def carry_sig(endpoint: str, values: dict) -> None:
    """URLs of the same job built while serving a view link carry its signature.

    So the job page's stream, status and other-view URLs work for the link's holder, and for
    no other job.
    """
    sig = g.get("view_sig")
    if sig and endpoint in JOB_SCOPED and values.get("job_id") == g.get("view_job"):
        values.setdefault(PARAM, sig)


def urls_sig(job_id: str) -> str | None:
    """The signature a response's URLs of ``job_id`` carry.

    The request's own link when it came with one (never a longer-lived one), else a new link
    in private mode, else none.
    """
    if g.get("view_sig") and g.get("view_job") == job_id:
        return g.view_sig
    return view_sig(config(), job_id)


def security_headers(response: Response) -> Response:
    """Add the CSP, framing, sniffing and referrer headers to every response."""
    headers = response.headers
    if response.mimetype == "text/html":
        frameable = request.endpoint in FRAMEABLE
        headers["Content-Security-Policy"] = PAGE_CSP.format(
            ancestors="'self'" if frameable else "'none'")
        headers["X-Frame-Options"] = "SAMEORIGIN" if frameable else "DENY"
    else:
        headers.setdefault("Content-Security-Policy", OTHER_CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    # View links carry their signature in the URL: never send it on to another site.
    headers["Referrer-Policy"] = "no-referrer"
    return response


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (never //host or a scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def login_page(target: str, status: int = 200, error: str = "") -> Response:
    """The token form (HTML), answering ``status``."""
    body = render_template("login.html", next=safe_next(target), error=error)
    response = Response(body, status=status, mimetype="text/html")
    response.headers["WWW-Authenticate"] = 'Bearer realm="jobcast"'
    return response


@bp.get("/login")
def login_form():
    """The form that asks a browser for the token once."""
    return login_page(request.args.get("next", "/"))


@bp.post("/login")
def login():
    """Check the token typed in; on success set the session cookie and go on (303)."""
    cfg = config()
    token = request.form.get("token", "")
    target = request.form.get("next", "/")
    if not cfg.token or not hmac.compare_digest(token.encode(), cfg.token.encode()):
        return login_page(target, status=401, error="That token is not right.")
    response = redirect(safe_next(target), code=303)
    response.set_cookie(SESSION_COOKIE, _sessions(cfg).dumps(_token_hash(cfg)),
                        max_age=SESSION_DAYS * 86400, httponly=True, samesite="Strict",
                        secure=request.is_secure)
    return response


def install(app: Flask) -> None:
    """Check the read mode's settings, and install the guard, headers and login pages."""
    cfg: Settings = app.extensions["jobcast"].config
    if cfg.read_mode == "private" and not cfg.signing_key:
        raise ValueError("JOBCAST_READ=private needs JOBCAST_TOKEN (and optionally JOBCAST_SECRET)")
    app.before_request(guard)
    app.url_defaults(carry_sig)
    app.after_request(security_headers)
    app.register_blueprint(bp)
