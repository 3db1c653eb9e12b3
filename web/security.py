"""Who may read what, and the headers every response carries.

Read access (``JOBCAST_READ``):

- ``public``: anyone who can reach the server reads every job (the default without a token);
- ``private`` (the default with ``JOBCAST_TOKEN``): the job list, ``/api/tasks``, ``/metrics``
  and everything not about one job need the token, sent as ``Authorization: Bearer`` or, from
  a browser, as the session cookie that ``/login`` sets once the token is typed in. A job's own
  pages and streams also accept a signed view link (:mod:`jobcast.web.links`) for that job.

Creating and cancelling a job, and minting a view link, need the bearer token whenever
``JOBCAST_TOKEN`` is set, in either mode.

Links and session cookies are signed with ``JOBCAST_SECRET`` or a generated key
(:mod:`jobcast.core.secret`), never the token. A client address that fails to authenticate
(a wrong bearer token, a wrong token in the form) more than ``JOBCAST_AUTH_FAILURES`` times a
minute gets 429 until its next attempt is due, whatever it sends.

A server without a token (or one whose reads are public) is open to whoever reaches it,
which by default is this machine only (``jobcast web`` listens on 127.0.0.1). Two things keep
other sites' pages in a browser on this machine out (:func:`guard`): it answers only a ``Host``
that a local client or its own URL would send (:func:`local_host`), so a name an attacker
points at 127.0.0.1 (DNS rebinding) gets 400; and, without a token, it refuses a change
(``POST``) that a page of another site makes (CSRF), as the browser tells (:func:`cross_site`).
With a token, a change needs the bearer header, which no other site's page can send.

Each view declares who may call it (:mod:`jobcast.web.surface`: ``@public``, ``@private``,
``@job_scoped``, ``@token_required``), and the check runs before every request (:func:`guard`),
reading the declaration of the view the request is routed to: a view that declares nothing
needs the token in private mode.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
from functools import lru_cache
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, g, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException, NotFound, RequestURITooLarge

from jobcast.core.secret import signing_key
from jobcast.core.joblog import UnknownJob
from jobcast.core.settings import Settings
from jobcast.web import metrics
from jobcast.web.errors import BadParam
from jobcast.web.gunicorn_check import gunicorn_worker
from jobcast.web.limits import ClientRate, TooManyRequests, client_address
from jobcast.web.links import PARAM, LinkError, named_job, verify, view_sig
from jobcast.web.models import BAD_TOKEN, CROSS_SITE, LoginForm
from jobcast.web.services import state, warn_if_weak
from jobcast.web.surface import (FORM, HTML, Access, Answer, Declaration, declaration_of, page,
                                 public, returns, undocumented)


log = logging.getLogger(__name__)

bp = Blueprint("security", __name__)

SESSION_COOKIE = "jobcast_session"
SESSION_SALT = "jobcast.session"
SESSION_DAYS = 30
# Longest query string the app reads (/events reads longer ones); gunicorn refuses request
# lines over limit_request_line (8190 bytes) itself.
MAX_QUERY = 2048

# No inline script or style anywhere: every script is a file under /static.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors {ancestors}")
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'"
REFERRER_POLICY = "same-origin"
"""Every response's: a page's URL (a view link's signature) goes to no other site."""
# static/jobcast.js also runs as a SharedWorker, whose policy is its script's response's: its
# EventSource and status reads need connect-src (OTHER_CSP would block them).
WORKER_SCRIPT = "jobcast.js"
WORKER_CSP = "default-src 'none'; connect-src 'self'; frame-ancestors 'none'"


class Unauthorized(HTTPException):
    """401 with a Bearer challenge."""

    code = 401
    description = "this request needs Authorization: Bearer <token> (JOBCAST_TOKEN)"

    def get_headers(self, environ=None, scope=None):
        """Ask for a bearer token."""
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", 'Bearer realm="jobcast"')]


class Forbidden(HTTPException):
    """403 with a machine-readable reason: a view link that does not grant this job, or a
    bearer token that is not this server's (``bad_token``); and the job refused when the
    request named several (a stream of many jobs goes on without it: its client must not
    have to read that from the message)."""

    code = 403

    def __init__(self, reason: str, description: str, job: str | None = None):
        """Keep the reason and the job for the JSON body (see web.errors)."""
        super().__init__(description)
        self.reason = reason
        self.job = job


def config() -> Settings:
    """The app's Settings."""
    return state().config


def _token_hash(cfg: Settings) -> str:
    """A keyed digest of the token, so sessions end when the token changes.

    Keyed with the links' key: a session cookie is signed, not encrypted, so a plain hash in
    it would let whoever reads a cookie guess the token offline.
    """
    return hmac.new(signing_key(cfg).encode(), cfg.token.encode(), hashlib.sha256).hexdigest()[:32]


def _sessions(cfg: Settings) -> URLSafeTimedSerializer:
    """Signs and checks the browser session cookie (with the links' key, never the token)."""
    return URLSafeTimedSerializer(signing_key(cfg), salt=SESSION_SALT)


def failures() -> ClientRate:
    """This app's rate of failed authentications per client (JOBCAST_AUTH_FAILURES)."""
    return state().auth_failures


def failure_key(cfg: Settings) -> str:
    """Whose failed authentications a request counts against: its client's address, apart
    for the requests that call this server by a name it does not know as its own.

    Such a request may come from another site's page in a browser on this machine (DNS
    rebinding: the page's own origin, as far as the browser knows). Its wrong tokens would
    otherwise lock out the address it shares with the local CLI, scripts and scrapers. All
    of an address's unknown names share one count, so changing the Host header buys no
    more guesses.
    """
    client = client_address(cfg)
    return client if local_host(request.host, cfg) else f"{client} under another name"


def refuse_if_throttled(cfg: Settings, what: str) -> None:
    """429 for a client that has used up its failed authentications: while it waits, no
    credential it sends is even checked, so guessing goes no faster than the setting."""
    wait = failures().wait(failure_key(cfg))
    if wait:
        raise TooManyRequests(f"too many failed {what} from this address; retry after "
                              f"{math.ceil(wait)} s", wait)


def has_bearer(cfg: Settings) -> bool:
    """The request carries ``Authorization: Bearer <JOBCAST_TOKEN>``.

    Another bearer token counts as a failed authentication of the client (once per request),
    and a client over JOBCAST_AUTH_FAILURES gets 429 for any bearer token it sends. A header
    of another scheme is not Jobcast's (a proxy's ``Basic`` credentials, passed on): it is
    ignored, as if absent, so a browser behind such a proxy keeps reading with its session.
    """
    if not cfg.token or "Authorization" not in request.headers:
        return False
    if "jobcast_bearer" not in g:
        scheme, _, given = request.headers["Authorization"].strip().partition(" ")
        if scheme.lower() != "bearer":
            g.jobcast_bearer = False
            return False
        refuse_if_throttled(cfg, "authentications")
        g.jobcast_bearer = hmac.compare_digest(given.strip().encode(), cfg.token.encode())
        if not g.jobcast_bearer:
            g.jobcast_bad_bearer = True
            failures().take(failure_key(cfg))
    return g.jobcast_bearer


def unauthorized(what: str | None = None, *, stream: bool = False) -> HTTPException:
    """What refuses a request without the credentials it needs: 401 when it sent none, 403
    when it sent a bearer token that is not this server's (a client must tell a mistyped
    token from a forgotten one). A ``stream``'s refusal is counted, under its status."""
    bad = bool(g.get("jobcast_bad_bearer"))
    if stream:
        metrics.stream_refused("forbidden" if bad else "unauthorized")
    if bad:
        return Forbidden(BAD_TOKEN, "the bearer token is not this server's (JOBCAST_TOKEN)")
    return Unauthorized(what)


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


def check_query_length(declaration: Declaration) -> None:
    """414 (JSON) for a query string longer than the view reads."""
    limit = declaration.max_query or MAX_QUERY
    if len(request.query_string) > limit:
        raise RequestURITooLarge(f"the query string is over {limit} bytes")


def local_host(host: str, cfg: Settings) -> bool:
    """Whether ``host`` (a request's Host header) is one a client of a server without a token
    sends: an IP address, a name without a dot (``localhost``, a container's), a name under
    ``localhost``, the host of JOBCAST_URL, or one of JOBCAST_ALLOWED_HOSTS.

    Any other name may be another site's, pointed at this machine's address (DNS rebinding):
    a browser would then let that site's pages read and write here as their own origin. (A
    public name always has a dot.) Answered once per Host and settings: every request and
    every fast admission asks.
    """
    return _local_host(host, cfg.public_url, cfg.allowed_hosts)


@lru_cache(maxsize=1024)
def _local_host(host: str, public_url: str, allowed_hosts: str) -> bool:
    """:func:`local_host`, from the settings it reads."""
    try:
        name = urlsplit(f"//{host}").hostname if host else None
    except ValueError:  # e.g. a bracketed name that is no IPv6 address
        return False
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if "." not in name or name.endswith(".localhost"):
        return True
    names = {urlsplit(public_url).hostname or ""}
    for item in allowed_hosts.split(","):
        if item.strip() == "*":
            return True
        try:
            names.add(urlsplit(f"//{item.strip()}").hostname or "")
        except ValueError:
            continue
    return name in names - {""}


def guard() -> Response | None:
    """Before every request: refuse what the routed view's declared access does not allow."""
    cfg = config()
    if not cfg.token or cfg.read_mode == "public":
        # Open to whoever reaches it (to read, or to change too): never to another site's
        # pages (see the module's doc).
        if not local_host(request.host, cfg):
            raise BadParam("Host", f"this server is open to whoever reaches it, and answers "
                                   f"only its own names (localhost, an IP address, a name "
                                   f"without a dot, the host of JOBCAST_URL), not "
                                   f"{request.host[:100]!r}: name it in JOBCAST_URL or "
                                   f"JOBCAST_ALLOWED_HOSTS")
        if not cfg.token and request.method not in ("GET", "HEAD", "OPTIONS") and cross_site():
            raise Forbidden(CROSS_SITE, "a change from another site's page is refused "
                                          "(this server has no token)")
    declaration = declaration_of(request.endpoint)
    check_query_length(declaration)
    if request.endpoint is None:  # no route: routing answers 404 or 405 itself
        return None
    access = declaration.access or Access.PRIVATE
    if cfg.read_mode == "private" and access is not Access.PUBLIC and not has_token(cfg):
        return admit_link(cfg, declaration, access)
    if access is Access.TOKEN and cfg.token and not has_bearer(cfg):
        raise unauthorized()
    return None


def admit_link(cfg: Settings, declaration: Declaration, access: Access) -> Response | None:
    """Private mode and no token: a view link for the job may still grant a job's view.

    Otherwise refuse: 403 with the reason for a link that does not grant the job, 404 for a
    good link whose job is gone, the token form for a browser asking for a page, else 401.
    """
    sig = request.args.get(PARAM)
    if access is Access.JOBS and sig:
        # Several jobs (the multi-job stream): each link grants its own job. The view checks
        # them (granted_jobs), once it has read the request: a request it refuses (400), or
        # one that asks for the job list (401), is told so before any link is.
        g.view_sigs = request.args.getlist(PARAM)
        return None
    if access is Access.JOB and sig:
        job_id = (request.view_args or {}).get("job_id")
        try:
            verify(cfg, job_id, sig, lambda: created_at(job_id))
        except LinkError as exc:
            if declaration.stream:
                metrics.stream_refused("forbidden")
            raise Forbidden(exc.reason, str(exc)) from None
        except UnknownJob:
            # The link is good for this id but its job has no log now: the holder is told what
            # a token holder is told of a job that is not there. Answered here, not by the
            # view, which would open the log of a pending RQ job given the id since
            # (LogStore.adopt): another job, which the link does not grant.
            raise NotFound(f"no job with id {job_id}") from None
        g.view_sig, g.view_job = sig, job_id
        return None
    if declaration.page and request.method in ("GET", "HEAD") and not g.get("jobcast_bad_bearer"):
        # A browser: ask for the token rather than answer JSON.
        # script_root: come back under the prefix Jobcast is mounted at (init_app), if any.
        return login_page(request.script_root + request.full_path.rstrip("?"), status=401)
    if access is Access.TOKEN:  # a change (create, cancel, a new link): the token alone
        raise unauthorized(stream=declaration.stream)
    what = "this job needs the token or a signed view link" if access is Access.JOB else \
        "this server is private: reading needs Authorization: Bearer <token> (JOBCAST_TOKEN)"
    raise unauthorized(what, stream=declaration.stream)


def granted_jobs(cfg: Settings, sigs: list[str], job_ids: list[str]) -> set[str]:
    """The jobs among ``job_ids`` that the view links ``sigs`` grant; 403 with the reason and
    the job for a link of one of them that does not grant it (tampered, expired, or its job
    is gone). A link for a job not asked for grants nothing, and refuses nothing.

    Each distinct link is checked once, against the one job it names: a request repeating a
    link beside a hundred jobs costs a check per link, not one per pair (~7,000 signature
    checks, 100 ms of the loop, when it was)."""
    wanted = set(job_ids)
    granted: set[str] = set()
    for sig in dict.fromkeys(sigs):
        job_id = None
        try:
            job_id = named_job(cfg, sig)
            if job_id not in wanted or job_id in granted:
                continue
            verify(cfg, job_id, sig, lambda: created_at(job_id))
        except LinkError as exc:  # (tampered: it names no job)
            metrics.stream_refused("forbidden")
            raise Forbidden(exc.reason, str(exc), job_id) from None
        except UnknownJob:
            # The link's job has no log now. Not granted: the stream would open the log of a
            # pending RQ job given that id since (LogStore.adopt), another job.
            metrics.stream_refused("forbidden")
            raise Forbidden("other_job", "a view link grants none of these jobs", job_id
                            ) from None
        granted.add(job_id)
    return granted


def carry_sig(endpoint: str, values: dict) -> None:
    """URLs of the same job built while serving a view link carry its signature.

    So the job page's stream, status and other-view URLs work for the link's holder, and for
    no other job.
    """
    sig = g.get("view_sig")
    if (sig and values.get("job_id") == g.get("view_job")
            and declaration_of(endpoint).access is Access.JOB):
        values.setdefault(PARAM, sig)


def created_at(job_id: str) -> float | None:
    """When the job ``job_id`` now in Redis was created (a link names the job it was made for
    by its id and this time); UnknownJob when it has no log."""
    return state().logs.log(job_id).info().created_at


def urls_sig(job_id: str, created: float | None) -> str | None:
    """The signature a response's URLs of the job ``job_id`` created at ``created`` carry.

    The request's own link when it came with one (never a longer-lived one), else a new link
    in private mode for a holder of the token, else none. A browser's session reads with its
    cookie and needs no link; minting one for it would hand a read-only session a link that
    outlives it (the token's rotation, a logout), which only ``/link`` with the token may do.
    """
    if g.get("view_sig") and g.get("view_job") == job_id:
        return g.view_sig
    cfg = config()
    if not has_bearer(cfg):
        return None
    return view_sig(cfg, job_id, created)


def security_headers(response: Response) -> Response:
    """Add the CSP, framing, sniffing and referrer headers to every response."""
    headers = response.headers
    if response.mimetype == "text/html":
        frameable = declaration_of(request.endpoint).frameable
        headers["Content-Security-Policy"] = PAGE_CSP.format(
            ancestors="'self'" if frameable else "'none'")
        headers["X-Frame-Options"] = "SAMEORIGIN" if frameable else "DENY"
    elif request.endpoint == "static" and (request.view_args or {}).get("filename") == WORKER_SCRIPT:
        headers["Content-Security-Policy"] = WORKER_CSP
    else:
        headers.setdefault("Content-Security-Policy", OTHER_CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    # View links carry their signature in the URL: never send it on to another site. Not
    # no-referrer: under it a browser sends `Origin: null` with this site's own forms and
    # posts, which then cannot be told from another site's where it sends no Sec-Fetch-Site
    # (plain HTTP to a host that is not localhost): cross_site() would refuse them all.
    headers["Referrer-Policy"] = REFERRER_POLICY
    if (config().read_mode == "private" and request.endpoint != "static"
            and headers.get("Cache-Control", "no-cache") == "no-cache"):
        # What a private server answers was read with a credential (a session's cookie, a
        # link): no shared cache may keep it for the next client, nor the browser on disk
        # (streams, the chart and the output download say no-cache, which allows storing).
        headers["Cache-Control"] = "private, no-store"
    return response


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (never //host or a scheme, nor
    a control character, which could split the Location header); else Jobcast's home page,
    under the prefix it is mounted at (init_app), never the host app's root."""
    home = url_for("pages.index")
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 0x20 or ord(c) == 0x7f for c in target)):
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return home
    return target


def login_page(target: str, status: int = 200, error: str = "") -> Response:
    """The token form (HTML), answering ``status``."""
    body = render_template("login.html", next=safe_next(target), error=error)
    response = Response(body, status=status, mimetype="text/html")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="jobcast"'
    return response


def see_other(location: str) -> Response:
    """303 to ``location``, with no body (a redirect's HTML body is for no one: the document
    says it has none)."""
    response = redirect(location, code=303)
    response.set_data(b"")
    del response.headers["Content-Type"]
    return response


def cookie_path() -> str:
    """The session cookie's path: where Jobcast is mounted (init_app's prefix), else the root,
    so the host app's other pages never receive it."""
    return request.script_root or "/"


@bp.get("/login")
@public
@page({"name": "next", "in": "query", "required": False, "schema": {"type": "string"}})
def login_form():
    """The form that asks a browser for the token once."""
    return login_page(request.args.get("next", ""))


@bp.post("/login")
@public
@returns(None, 303, media=None, body=LoginForm, body_media=FORM,
         description=f"The token is right: on to `next`, with the `{SESSION_COOKIE}` cookie",
         more={403: Answer("The form again: the token is not right (a post from another "
                           "site's page is refused with the JSON error instead, and not "
                           "counted as a failed login)", HTML),
               429: Answer("The form again: too many wrong tokens from this address "
                           "(JOBCAST_AUTH_FAILURES); `Retry-After` says when to try again",
                           HTML, headers={"Retry-After": "seconds to wait"})})
def login():
    """Check the token typed in; on success set the session cookie and go on (303)."""
    if cross_site():
        # Any page could post wrong tokens here, and each would count against the browser's
        # address (JOBCAST_AUTH_FAILURES): while it stayed open, that address (its API clients
        # too) would be refused. Refused before the count, as logout() is.
        raise Forbidden(CROSS_SITE, "logging in is only possible from this site's own form")
    cfg = config()
    form = LoginForm.model_validate(request.form.to_dict())
    client = failure_key(cfg)
    wait = failures().wait(client)
    if wait:
        response = login_page(form.next, status=429, error="Too many wrong tokens from this "
                              f"address: try again in {math.ceil(wait)} s.")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    # Stripped as the bearer header and the settings are: a pasted token often ends in a space.
    if not cfg.token or not hmac.compare_digest(form.token.strip().encode(), cfg.token.encode()):
        failures().take(client)
        return login_page(form.next, status=403, error="That token is not right.")
    response = see_other(safe_next(form.next))
    response.set_cookie(SESSION_COOKIE, _sessions(cfg).dumps(_token_hash(cfg)),
                        max_age=SESSION_DAYS * 86400, path=cookie_path(), httponly=True,
                        samesite="Strict", secure=request.is_secure)
    return response


@bp.post("/logout")
@public
@returns(None, 303, media=None,
         description="The session cookie is cleared: on to the token form", errors=[403])
def logout():
    """End this browser's session: clear its session cookie (the pages forget the token too).

    Only from this site's own pages: a form on another site could otherwise post here, and
    the browser would take the cleared cookie (SameSite rules what is sent, not what is set).
    """
    if cross_site():
        raise Forbidden(CROSS_SITE, "logging out is only possible from this site's pages")
    response = see_other(url_for("security.login_form"))
    response.delete_cookie(SESSION_COOKIE, path=cookie_path(), httponly=True, samesite="Strict",
                           secure=request.is_secure)
    return response


def cross_site() -> bool:
    """The request comes from another site's page, as the browser says (``Sec-Fetch-Site``,
    else ``Origin``); a request saying neither (a script, an old browser) is not."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    # The host alone: behind a proxy that ends TLS the page's https origin is this request's
    # http one.
    return origin is not None and urlsplit(origin).netloc != request.host


def template_context() -> dict[str, bool]:
    """What every page needs to know: whether the server has a token (a "Log out" button)."""
    return {"jobcast_has_token": bool(config().token)}


def install(app: Flask) -> None:
    """Check the read mode's settings, and install the guard, headers and login pages."""
    cfg: Settings = app.extensions["jobcast"].config
    problems = cfg.web_errors()
    if problems:
        raise ValueError("; ".join(problems))
    if gunicorn_worker() is not None:
        warn_if_weak(app.extensions["jobcast"])  # a gunicorn worker's boot (not --preload's)
    # Flask's own view of the static files: anyone may read them; they are no API operation.
    public(undocumented(app.view_functions["static"]))
    app.before_request(guard)
    app.url_defaults(carry_sig)
    app.after_request(security_headers)
    app.context_processor(template_context)
    app.register_blueprint(bp)
