"""The HTTP API's JSON bodies as pydantic models.

Each view builds its body from one of these models (:func:`reply`), and the OpenAPI document
(:mod:`jobcast.web.openapi`) takes its schemas from the same models, so a body and its schema
cannot drift apart. A job's own fields come from the foundation's
:class:`~jobcast.core.joblog.JobInfo`, which the CLI and the pages read as well.

Bodies carry every field they are given; an optional field left unset is left out (an error's
``field`` or ``reason``, a probe's ``reason``), so required fields have no defaults here.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from flask import Response, jsonify
from pydantic import BaseModel, ConfigDict, Field, Json, StrictStr, create_model

from jobcast.core.joblog import JobInfo
from jobcast.core.urls import JOB_PATHS
from jobcast.web.links import LinkError

# One URL per view of a job, named as jobcast.core.urls names them (the CLI prints the same).
Urls = create_model(
    "Urls", __doc__="Where the job can be watched; in private mode each URL carries ?sig=",
    **{name: (str, ...) for name in JOB_PATHS})


class JobStatus(JobInfo):
    """The job: its status, progress, worker, times, viewers and URLs."""

    urls: Urls
    viewers: int = Field(ge=0, description="viewers on all web processes (a few seconds old)")
    viewers_here: int = Field(ge=0, description="viewers on the process that answered")
    first_seq: int | None = Field(description="the oldest entry the capped log still has")
    first_value: int | None = Field(description="the index of the oldest value it still has "
                                    "(holding none yet, of the next one): every value before "
                                    "it is gone")


class JobList(BaseModel):
    """The most recent jobs, newest first."""

    jobs: list[JobInfo]


class Created(BaseModel):
    """Queued; its URLs (signed in private mode)."""

    id: str
    urls: Urls


class Cancelled(BaseModel):
    """Cancelled: the seq of the ``cancelled`` entry, and who asked."""

    id: str
    status: Literal["cancelled"]
    seq: int = Field(ge=1)
    by: str = Field(description="who cancelled, as the log's entry says: api, or cli")
    client: str = Field(description="the address this cancel came from, as the server sees it "
                        "(behind JOBCAST_TRUST_PROXY, the proxy's client)")


class Link(BaseModel):
    """The job's URLs carrying a new view link."""

    id: str
    urls: Urls
    expires: int | None = Field(description="Unix time the link stops working (null: never)")


class Task(BaseModel):
    """A registered task."""

    name: str
    description: str
    params: dict[str, Any] = Field(description="the JSON schema of its parameters")


class TaskList(BaseModel):
    """The registered tasks."""

    tasks: list[Task]


class Chart(BaseModel):
    """The worker's downsampled chart: per bucket of ``span`` values, their min, max, first and
    last (null: no numeric value)."""

    span: int = Field(ge=1)
    upto: int = Field(ge=-1)
    points: int = Field(ge=0)
    min: list[float | None]
    max: list[float | None]
    first: list[float | None]
    last: list[float | None]


class Entry(BaseModel):
    """One entry of a job's log. value: i, v (text), j (JSON or null); started: worker,
    attempt; failed/retrying: reason."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(ge=1)
    kind: str
    ts: float


class EarlierValues(BaseModel):
    """Value entries logged before an entry, oldest first, and where the capped log begins."""

    first_seq: int | None
    first_value: int | None
    values: list[Entry]


class TailEvent(BaseModel):
    """?tail=N: the stream starts after seq ``after``; ``skipped`` values came before."""

    tail: int = Field(ge=0)
    skipped: int = Field(ge=0)
    after: int = Field(ge=0)


class TrimmedEvent(BaseModel):
    """The capped log no longer has the ``lost`` entries after ``after``; it goes on at
    ``first_seq`` (``first_value``: the oldest value kept)."""

    after: int = Field(ge=0)
    first_seq: int = Field(ge=1)
    lost: int = Field(ge=1)
    first_value: int | None


class ResetEvent(BaseModel):
    """The log is not what the viewer followed (Redis lost entries, or re-created the log):
    drop what you hold after seq ``after`` (values from index ``values`` on); the stream goes
    on at ``after + 1`` in ``epoch``."""

    epoch: str | None
    after: int = Field(ge=0)
    values: int = Field(ge=0)
    reason: Literal["lost", "past_end", "unknown_epoch"]
    was: dict[str, Any] = Field(description="the position resumed from: seq (or values) and "
                                            "epoch")


class SseEvent(BaseModel):
    """One server-sent event of ``/events``, as parsed."""

    id: str | None = Field(None, pattern="^[0-9]+(:[A-Za-z0-9_-]+)?$",
                           description="the entry's <seq>:<epoch> (a reset's: where the stream "
                                       "goes on)")
    event: str | None = Field(None, description="the entry's kind; or, before the first entry, "
                                                "reset, and tail or trimmed (without an id)")
    data: Json[Entry | TailEvent | TrimmedEvent | ResetEvent]
    retry: str | int | None = None


class Health(BaseModel):
    """A probe's answer."""

    status: str
    reason: str | None = None


CROSS_SITE = "cross_site"
"""The 403 ``reason`` of a change from another site's page (a server without a token)."""
BAD_TOKEN = "bad_token"
"""The 403 ``reason`` of a bearer token that is not this server's."""


class Error(BaseModel):
    """Every error's body."""

    error: str = Field(description="a short code: bad_request, not_found, ...")
    message: str
    field: str | None = Field(None, description="the offending field (400)")
    details: list[dict[str, Any]] | None = None
    reason: Literal[  # type: ignore[valid-type]
        (*LinkError.REASONS, CROSS_SITE, BAD_TOKEN)] | None = Field(
        None, description="why a view link, a bearer token, or a change from another site's "
                          "page was refused (403)")
    status: str | None = Field(None, description="how the job ended (409 of a cancel)")
    job: str | None = Field(None, description="the job refused (403 of a stream of several "
                            "jobs): the others may be asked for again without it")


class JobRequest(BaseModel):
    """The body that creates a job: a registered task's name and its parameters."""

    model_config = ConfigDict(extra="forbid")

    task: StrictStr = Field(description="a string naming a registered task")
    params: dict[str, Any] = Field(default_factory=dict, description="a JSON object")


class LoginForm(BaseModel):
    """The token form's fields (form-encoded)."""

    token: str = ""
    next: str = ""


def no_content() -> Response:
    """204, with no body and so no Content-Type (a bare Response would say text/html)."""
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


def stream_head(mimetype: str, headers: Mapping[str, str]) -> Response:
    """A stream's answer to ``HEAD``: its GET's headers, without a body. Not ``Content-Length:
    0``, which would say the stream is empty: its length is not known until it ends."""
    return Response(iter(()), mimetype=mimetype, headers=headers)


def error_code(status_name: str) -> str:
    """An error body's ``error``: the status's name in snake case (``Not Found``:
    ``not_found``)."""
    return status_name.lower().replace(" ", "_")


def reply(body: BaseModel, status: int = 200) -> Response:
    """``body`` as a JSON response (optional fields left unset are left out)."""
    response = jsonify(body.model_dump(exclude_unset=True))
    response.status_code = status
    return response
