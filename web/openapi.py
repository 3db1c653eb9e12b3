"""The HTTP API's contract: an OpenAPI 3.1 document at ``GET /api/openapi.json``.

Nothing in it is written twice. The paths, methods and path parameters are the app's routes
(``app.url_map``); each operation's summary is its view's docstring, and its access, answers,
query parameters and body are what the view declares (:mod:`jobcast.web.surface`); the
schemas are those of the pydantic models the views build their bodies from
(:mod:`jobcast.web.models`). It is built per request from the running configuration, so it
states this server's auth (public or private read mode, whether creating needs the token) and
each registered task's parameters, with JOBCAST_PARAM_CAPS applied to the bounds.
tests/web/test_openapi.py runs schemathesis against a live server from it; tests/web/test_surface.py
checks that every route is in it.

Why no library: spectree (3.0) and flask-openapi3 (4.3) were weighed. Both describe a response
by a pydantic model as ``application/json`` only, where Jobcast also answers ``text/plain``,
``text/event-stream`` and ``text/html`` streams and pages; both build the document once and
cache it, where this one depends on the read mode and the task registry with caps; both answer
a failed validation with their own 422 body, not Jobcast's JSON error naming the field; and
flask-openapi3 documents only views registered through its own ``OpenAPI`` app and
``APIBlueprint`` classes (the streams' plain Blueprint would vanish). The builder below is the
small remainder: routes in, declarations read, model schemas hoisted into components.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import BaseModel
from werkzeug.routing import Rule

from jobcast.core.registry import all_tasks
from jobcast.core.task import cap_schema
from jobcast.core.settings import Settings
from jobcast.web.links import PARAM
from jobcast.web.models import Error, JobRequest
from jobcast.web.security import MAX_QUERY, SESSION_COOKIE, has_token
from jobcast.web.services import state
from jobcast.web.surface import (HTML, JSON, Access, Answer, Declaration, IntArg, declared, public,
                                 returns)

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
# jobcast.core.keys.JOB_ID_RE: RQ's alphabet (Jobcast's ids are 32 hex characters, RQ's UUIDs).
JOB_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$",
          "description": "1 to 128 letters, digits, '_' or '-'"}
PATH_PARAMS = {"job_id": JOB_ID}
# A werkzeug rule's variable, <name> or <converter:name>.
RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
# HTTP gives every GET a HEAD, and Flask answers OPTIONS itself: neither is an operation here.
IMPLIED_METHODS = {"HEAD", "OPTIONS"}


def error(description: str) -> dict[str, Any]:
    """A response with the JSON error body."""
    return {"description": description,
            "content": {JSON: {"schema": {"$ref": REF.format(model=Error.__name__)}}}}


def html(description: str) -> dict[str, Any]:
    """A response with an HTML page."""
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def too_long(limit: int) -> dict[str, Any]:
    """The 414 of a view that reads query strings up to ``limit`` bytes."""
    return {"description": f"The query string is over {limit} bytes, or the request line "
                           "over gunicorn's limit_request_line, 8190 bytes",
            "content": error("")["content"]}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                               "schema": {"type": "integer"}}}
ERRORS = {
    400: error("A malformed parameter or body; `field` names it (`Host`: a server without a "
               "token answers only its own names, see JOBCAST_ALLOWED_HOSTS)"),
    401: error("The token is needed (`WWW-Authenticate: Bearer`)"),
    403: error("A bearer token that is not this server's, a view link that does not grant "
               "this job, or a change from another site's page on a server without a token; "
               "`reason` says why (bad_token, invalid, other_job, expired, cross_site)"),
    404: error("No such job"),
    408: error("The body did not arrive within JOBCAST_BODY_TIMEOUT seconds"),
    409: error("The job has already ended (a second cancel included); `status` says how"),
    413: error("The body is over JOBCAST_MAX_BODY bytes (a chunked one too)"),
    414: too_long(MAX_QUERY),
    429: {**error("This client is over one of its limits: concurrent streams, failed "
                  "authentications (JOBCAST_AUTH_FAILURES) or jobs created; `Retry-After` says "
                  "when to try again"), "headers": RETRY_AFTER},
    431: html("A header over gunicorn's limit_request_field_size (8190 bytes), or over "
              "limit_request_fields (100) headers: gunicorn's own answer"),
    503: {**error("Redis is unreachable, or this process holds its maximum of streams "
                  "(`Retry-After`)"), "headers": RETRY_AFTER},
}
# Any operation may answer these (any request may carry a body: late, or over the limit).
ALWAYS = (408, 413, 414, 431, 503)


class Components:
    """The document's component schemas: each model's once, under its name."""

    def __init__(self, tasks: bool = True) -> None:
        """Start with none; ``tasks``: the registered tasks may be shown (see :func:`document`)."""
        self.schemas: dict[str, Any] = {}
        self.tasks = tasks

    def ref(self, model: type[BaseModel], mode: str = "serialization") -> dict[str, str]:
        """A reference to ``model``'s schema, added (with the models it nests) on first use."""
        name = model.__name__
        if name not in self.schemas:
            schema = model.model_json_schema(ref_template=REF, mode=mode)
            self.schemas.update(schema.pop("$defs", {}))
            self.schemas[name] = schema
        return {"$ref": REF.format(model=name)}


def job_requests(components: Components, cfg: Settings) -> dict[str, Any]:
    """The create body: JobRequest once per registered task, naming it, with its parameters
    (their pydantic schema, with this server's caps as maxima); JobRequest alone where the
    reader may not see the tasks."""
    if not components.tasks:
        return components.ref(JobRequest, "validation")
    envelope = JobRequest.model_json_schema()
    requests = []
    for name, spec in sorted(all_tasks().items()):
        params = components.ref(spec.model, "validation")
        cap_schema(components.schemas[spec.model.__name__], name, cfg.caps())
        requests.append({**envelope, "title": f"{name} job", "properties": {
            **envelope["properties"], "task": {"const": name}, "params": params}})
    return {"oneOf": requests} if requests else components.ref(JobRequest, "validation")


def security(access: Access, cfg: Settings) -> list[dict[str, list]]:
    """Who may call a view of ``access`` on this server (an empty requirement: anyone)."""
    if access is Access.TOKEN:
        # A private server with no token takes no write over HTTP: a token is still what the
        # operation asks for (and the guard answers 401 to every call).
        return [{"bearerAuth": []}] if cfg.token or cfg.read_mode == "private" else [{}]
    if access is Access.PUBLIC or cfg.read_mode != "private":
        return [{}]
    readers: list[dict[str, list]] = [{"bearerAuth": []}, {"session": []}]
    return [*readers, {"viewLink": []}] if access in (Access.JOB, Access.JOBS) else readers


def refusals(access: Access, cfg: Settings) -> set[int]:
    """The statuses the guard may refuse a view of ``access`` with on this server."""
    if access is Access.TOKEN:
        return {401} if cfg.token or cfg.read_mode == "private" else set()
    if access is Access.PUBLIC or cfg.read_mode != "private":
        return set()
    return {401, 403} if access in (Access.JOB, Access.JOBS) else {401}


def docstring(view: Callable[..., Any]) -> tuple[str, str]:
    """The view's docstring as (summary, description): its first paragraph, then the rest."""
    paragraphs = [" ".join(p.split()).replace("``", "`")
                  for p in (inspect.getdoc(view) or "").split("\n\n")]
    return paragraphs[0], "\n\n".join(paragraphs[1:])


def operation_id(view: Callable[..., Any]) -> str:
    """The view's function name in camelCase (``get_job``: ``getJob``)."""
    first, *rest = view.__name__.split("_")
    return first + "".join(word.capitalize() for word in rest)


def response(answer: Answer, summary: str, app: Flask, components: Components) -> dict[str, Any]:
    """One declared answer as an OpenAPI response object."""
    model = answer.model
    # (A stream's model is one of its events: the stream itself is what the view says.)
    described = model and answer.media == JSON and " ".join((model.__doc__ or "").split())
    out: dict[str, Any] = {"description": answer.description or described or summary}
    if answer.media:
        if model:
            # A JSON body is what the model dumps; a stream's events are text a client parses
            # (so a Json field stays a string).
            mode = "serialization" if answer.media == JSON else "validation"
            schema = components.ref(model, mode)
        else:
            schema = {"type": "object" if answer.media == JSON else "string"}
        out["content"] = {answer.media: {"schema": schema}}
    if answer.headers:
        out["headers"] = {name: {"schema": {"type": "string"}, "description": what}
                          for name, what in answer.headers.items()}
    if answer.links:
        # Every linked view is a view of the job whose id the body carries.
        targets = [operation_id(app.view_functions[endpoint]) for endpoint in answer.links]
        out["links"] = {op[0].upper() + op[1:]: {"operationId": op,
                                                 "parameters": {"job_id": "$response.body#/id"}}
                        for op in targets}
    return out


def parameter(arg: IntArg | dict[str, Any]) -> dict[str, Any]:
    """A declared argument as an OpenAPI parameter object."""
    if not isinstance(arg, IntArg):
        return arg
    schema = {"type": "integer", "minimum": arg.low, "maximum": arg.high}
    if arg.default is not None:
        schema["default"] = arg.default
    return {"name": arg.name, "in": "query", "required": False, "schema": schema,
            **({"description": arg.description} if arg.description else {})}


def operation(app: Flask, rule: Rule, method: str, spec: Declaration, cfg: Settings,
              components: Components) -> dict[str, Any]:
    """The OpenAPI operation of one route's method, from its view's declaration."""
    view = app.view_functions[rule.endpoint]
    summary, description = docstring(view)
    access = spec.access or Access.PRIVATE
    variables = RULE_VARIABLE.findall(rule.rule)
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": PATH_PARAMS.get(name, {"type": "string"})} for name in variables]
    parameters += [parameter(arg) for arg in spec.args]
    # The errors the route implies: a malformed id, argument or body (400), an unknown job
    # (404), a client over its streams (429); then the access's (a client over its failed
    # authentications gets 429 too).
    codes = set(spec.errors) | refusals(access, cfg)
    if variables or spec.body or spec.args:
        codes.add(400)
    if "job_id" in variables:
        codes.add(404)
    if spec.stream:
        codes.add(429)
    if cfg.token and 401 in codes:
        codes.add(429)  # a client over its failed authentications
        codes.add(403)  # a bearer token that is not this server's
    if not cfg.token:
        # Open to whoever reaches it, never to another site's pages (web.security.guard): a
        # Host it does not answer, a change from another site's page.
        codes.add(400)
        if method not in ("GET", "HEAD", "OPTIONS"):
            codes.add(403)
    responses = {str(code): ERRORS[code] for code in sorted(codes.union(ALWAYS))}
    if spec.max_query:
        responses["414"] = too_long(spec.max_query)
    if spec.page and 401 in codes:
        responses["401"] = html("The token form (no token, session or view link)")
    for status, answer in spec.answers.items():
        responses[str(status)] = response(answer, summary, app, components)
    op: dict[str, Any] = {"summary": summary, "operationId": operation_id(view),
                          "tags": [rule.endpoint.rpartition(".")[0]],
                          "security": security(access, cfg), "responses": responses}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if spec.body is not None:
        body = spec.body
        schema = (components.ref(body, "validation") if isinstance(body, type)
                  else body(components, cfg))
        op["requestBody"] = {"required": True, "content": {spec.body_media: {"schema": schema}}}
    return op


def document(app: Flask, cfg: Settings, tasks: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes, for a server configured by ``cfg``.

    ``tasks`` False leaves out the registered tasks and their parameters (the create body is
    then the bare JobRequest): in private mode they are for those who hold the token, as
    ``GET /api/tasks`` is, while the document itself stays open.
    """
    components = Components(tasks)
    components.ref(Error)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        spec = declared(app.view_functions[rule.endpoint])
        if not spec.documented:
            continue
        path = RULE_VARIABLE.sub(r"{\1}", rule.rule)
        for method in sorted(rule.methods - IMPLIED_METHODS):
            paths.setdefault(path, {})[method.lower()] = operation(app, rule, method, spec, cfg,
                                                                   components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Jobcast", "version": "1",
            "description": ("Streams what background jobs compute to every viewer. Read mode: "
                            f"**{cfg.read_mode}**. Errors are JSON (`Error`)."
                            + ("" if tasks else " The tasks and their parameters are listed "
                               "with the token (this document too, then).")),
        },
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "Authorization: Bearer <JOBCAST_TOKEN>"},
                "viewLink": {"type": "apiKey", "in": "query", "name": PARAM,
                             "description": "A signed view link for one job (GET /api/jobs/{id}/link)"},
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                            "description": "Set by POST /login in a browser; reads only"},
            },
        },
    }


@bp.get("/api/openapi.json")
@public
@returns(description="OpenAPI 3.1", errors=(429,))  # (a wrong token counts as a failure)
def openapi():
    """This document: the OpenAPI 3.1 contract of this server's HTTP API."""
    cfg = state().config
    # Private mode lists the tasks only to those who may read GET /api/tasks.
    tasks = cfg.read_mode != "private" or has_token(cfg)
    doc = document(current_app, cfg, tasks)
    # The paths are the app's; where it is mounted (init_app's prefix, SCRIPT_NAME) they live
    # under that, and a client reading the document would otherwise call them at the root.
    doc["servers"] = [{"url": request.script_root or "/"}]
    answer = jsonify(doc)
    answer.vary.update(("Authorization", "Cookie"))
    return answer
