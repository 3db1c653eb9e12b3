"""The HTTP surface, declared at each view: who may call it, what it reads and what it answers.

In the spirit of flaskr's ``login_required``, each view says who may call it::

    @bp.get("/api/jobs/<job_id>")
    @job_scoped
    @returns(JobStatus)
    def get_job(job_id): ...

The decorators record a :class:`Declaration` on the view function itself and return the
function unchanged. Two readers look it up through ``app.view_functions[endpoint]``: the guard
(:func:`jobcast.web.security.guard`) enforces the access, and the OpenAPI document
(:mod:`jobcast.web.openapi`) describes the route from it. A view that declares no access needs
the token in private mode; tests/web/test_surface.py checks that every view declares one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Sequence, TypeVar

from flask import current_app, request
from pydantic import BaseModel

from jobcast.web.errors import BadParam
from jobcast.web.frames import Transport
from jobcast.web.params import MAX_SEQ, int_param

V = TypeVar("V", bound=Callable[..., Any])

JSON = "application/json"
HTML = "text/html"
FORM = "application/x-www-form-urlencoded"


class Access(Enum):
    """Who may call a view (see the module docstring of :mod:`jobcast.web.security`)."""

    PUBLIC = "public"    # anyone, in either read mode
    PRIVATE = "private"  # in private mode, the token: a bearer header, or a browser's session
    JOB = "job"          # as PRIVATE, or a signed view link for the job in the URL
    JOBS = "jobs"        # as PRIVATE, or a signed view link for each job named by ?job=
    TOKEN = "token"      # the bearer token whenever JOBCAST_TOKEN is set (a change: no cookie)


@dataclass(frozen=True)
class Answer:
    """One documented response of a view."""

    description: str | None = None  # None: the model's docstring, else the view's summary
    media: str | None = JSON        # None: no body
    model: type[BaseModel] | None = None  # the body's model (a stream's: each event's)
    headers: Mapping[str, str] = field(default_factory=dict)  # name: what it says
    links: tuple[str, ...] = ()     # endpoints whose job_id is this body's id


@dataclass(frozen=True)
class IntArg:
    """A non-negative integer query parameter, read and documented from this one declaration."""

    name: str
    description: str = ""
    low: int = 0
    high: int = MAX_SEQ
    default: int | None = None

    def read(self) -> int:
        """The current request's value (or the default), or a 400 naming the parameter and
        its own bounds (an empty value is taken as absent)."""
        try:
            value = int_param(self.name, request.args.get(self.name), default=self.default or 0)
        except BadParam:  # not a number: its message would name any integer's bounds
            value = None
        if value is None or not self.low <= value <= self.high:
            hint = f" ({self.description})" if self.description else ""
            raise BadParam(self.name, f"{self.name} must be an integer between {self.low} and "
                                      f"{self.high}{hint}")
        return value

    def given(self) -> bool:
        """The current request names a value (not empty) for this parameter."""
        return bool(request.args.get(self.name, "").strip())


# An argument as the document lists it: an IntArg, or an OpenAPI parameter object as is.
Arg = IntArg | dict[str, Any]
# A request body: a model, or a function of (components, settings) building its schema per
# document (the create body's, from the task registry and this server's caps).
Body = type[BaseModel] | Callable[..., dict[str, Any]]


@dataclass
class Declaration:
    """What one view declares."""

    access: Access | None = None
    answers: dict[int, Answer] = field(default_factory=dict)
    args: tuple[Arg, ...] = ()
    body: Body | None = None
    body_media: str = JSON
    errors: tuple[int, ...] = ()  # JSON errors besides those its route and access imply
    page: bool = False        # an HTML page: a browser without the token gets the token form
    stream: bool = False      # a stream: refusals are counted (jobcast_stream_refusals_total)
    frameable: bool = False   # may be shown in an <iframe> of this site
    documented: bool = True   # part of the OpenAPI document (static files are not)
    max_query: int | None = None  # the longest query string it reads (None: the default)


ATTR = "jobcast_view"


def declared(view: Callable[..., Any] | None) -> Declaration:
    """The view's declaration (an empty one for a view that declares nothing)."""
    return getattr(view, ATTR, None) or Declaration()


def declaration_of(endpoint: str | None) -> Declaration:
    """The declaration of the view ``endpoint`` names (an empty one for none)."""
    return declared(current_app.view_functions.get(endpoint)) if endpoint else Declaration()


def declare(view: V, **changes: Any) -> V:
    """Record ``changes`` in ``view``'s declaration; return the view itself."""
    spec = getattr(view, ATTR, None)
    if spec is None:
        spec = Declaration()
        setattr(view, ATTR, spec)
    for name, value in changes.items():
        if name == "answers":
            value = {**spec.answers, **value}
        setattr(spec, name, value)
    return view


# -- access ----------------------------------------------------------------------------------

def public(view: V) -> V:
    """Anyone may call the view, in either read mode (probes, the contract, the token form)."""
    return declare(view, access=Access.PUBLIC)


def private(view: V) -> V:
    """In private mode the view needs the token (a bearer header, or a browser's session)."""
    return declare(view, access=Access.PRIVATE)


def job_scoped(view: V) -> V:
    """A view of the job in its URL: the token, or a signed view link for that job."""
    return declare(view, access=Access.JOB)


def jobs_scoped(view: V) -> V:
    """A view of the jobs named by ``?job=``: the token, or a signed view link for each. The
    guard only keeps the links (``g.view_sigs``): the view checks them against the jobs it
    reads (:func:`jobcast.web.security.granted_jobs`)."""
    return declare(view, access=Access.JOBS)


def token_required(view: V) -> V:
    """A change: the bearer token whenever JOBCAST_TOKEN is set, in either read mode."""
    return declare(view, access=Access.TOKEN)


def long_query(limit: int) -> Callable[[V], V]:
    """The view reads query strings of up to ``limit`` bytes (many ``?job=`` at once)."""
    return lambda view: declare(view, max_query=limit)


def frameable(view: V) -> V:
    """The view's HTML may be shown in an ``<iframe>`` of this site (never of another)."""
    return declare(view, frameable=True)


def undocumented(view: V) -> V:
    """Leave the view out of the OpenAPI document (Flask's static files)."""
    return declare(view, documented=False)


# -- answers ---------------------------------------------------------------------------------

def returns(model: type[BaseModel] | None = None, status: int = 200, *,
            media: str | None = JSON, description: str | None = None, args: Sequence[Arg] = (),
            body: Body | None = None, body_media: str = JSON, errors: Sequence[int] = (),
            more: Mapping[int, Answer] | None = None, headers: Mapping[str, str] | None = None,
            links: Sequence[str] = ()) -> Callable[[V], V]:
    """Declare what the view answers: ``status`` with ``model`` (JSON) or another ``media``.

    ``args`` are its query parameters, ``body`` its request body, ``errors`` the JSON errors
    beyond those its route and access imply, ``more`` other documented answers.
    """
    ok = Answer(description, media, model, headers or {}, tuple(links))
    changes = dict(answers={status: ok, **(more or {})}, args=tuple(args), body=body,
                   body_media=body_media, errors=tuple(errors))
    return lambda view: declare(view, **changes)


def page(*args: Arg) -> Callable[[V], V]:
    """Declare an HTML page (a browser without the token is shown the token form instead)."""
    documented = returns(media=HTML, args=args)
    return lambda view: declare(documented(view), page=True)


def stream(transport: Transport, *args: Arg, model: type[BaseModel] | None = None,
           more: Mapping[int, Answer] | None = None, errors: Sequence[int] = (),
           headers: Mapping[str, str] | None = None) -> Callable[[V], V]:
    """Declare a stream of ``transport`` (``model``: each event's schema; ``errors``: JSON
    errors beyond those its route and access imply; ``headers``: what its answer may carry)."""
    documented = returns(model, media=transport.mimetype, args=args, more=more, errors=errors,
                         headers=headers)
    return lambda view: declare(documented(view), stream=True)


# The headers a single job's stream may answer with (jobcast.web.admission: Admission.headers).
EPOCH_HEADERS = {
    "Jobcast-Epoch": "the incarnation of the job's log this stream reads: resume with "
                     "?start=K&epoch=E (text, HTML) or an id's <seq>:<epoch>",
    "Jobcast-Reset": "epoch=E; after=S; values=V; reason=R: the position asked for is not in "
                     "the log as it is (a failover lost entries, or a new run), and where the "
                     "stream goes on instead"}
VALUE_HEADERS = {
    **EPOCH_HEADERS,
    "Jobcast-First-Value": "the index of the first value sent, when it is not the one asked "
                           "for (a tail, or a trimmed log)",
    "Jobcast-Values-Lost": "how many values between the one asked for and the first sent the "
                           "log no longer keeps"}


# The stream parameters, as jobcast.web.admission.StreamRequest.parse reads them.
START = IntArg("start", "skip the first K values (to resume)")
TAIL = IntArg("tail", "begin with the last N values (0: live only)")
SEQ = "[0-9]{1,15}"
"""A seq as the document allows it: 15 digits at most, under the 2**53 the server takes."""
POSITION = f"^{SEQ}(:[A-Za-z0-9_-]{{1,16}})?$"
"""A position in a job's log: ``<seq>:<epoch>`` (an SSE id), or ``<seq>`` alone."""
AFTER = {"name": "after", "in": "query", "required": False,
         "description": "resume after this entry: <seq>:<epoch> (an SSE id), or <seq>",
         "schema": {"type": "string", "pattern": POSITION}}
LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False,
                 "description": "resume after this entry, <seq>:<epoch> or <seq> (wins over "
                                "?after=)",
                 "schema": {"type": "string", "pattern": POSITION}}
EPOCH = {"name": "epoch", "in": "query", "required": False,
         "description": "the epoch ?start= was counted in (the Jobcast-Epoch header of the "
                        "answer that had those values): a resume into another is reset",
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,16}$"}}
