"""The HTTP API's contract: an OpenAPI 3.1 document at ``GET /api/openapi.json``.

It is built per request from the running configuration, so it states this server's auth
(public or private read mode, whether creating needs the token) and each registered task's
parameters: their JSON schemas come from pydantic, with JOBCAST_PARAM_CAPS applied to the
bounds. tests/web/test_openapi.py runs schemathesis against a live server from it.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, jsonify

from jobcast.core.registry import all_tasks
from jobcast.core.settings import Settings
from jobcast.web.links import MAX_TTL, PARAM
from jobcast.web.admission import MAX_SEQ
from jobcast.web.security import MAX_QUERY, SESSION_COOKIE
from jobcast.web.services import state

bp = Blueprint("openapi", __name__)

JSON = "application/json"
HTML = "text/html"
# jobcast.core.joblog.JOB_ID_RE: RQ's alphabet (Jobcast's ids are 32 hex characters, RQ's UUIDs).
JOB_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$",
          "description": "1 to 128 letters, digits, '_' or '-'"}
NULLABLE_NUMBER = {"type": ["number", "null"]}
VIEWS = ("page", "stream", "events", "frame", "framed", "status")


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def error(description: str) -> dict[str, Any]:
    """A response with the JSON error body."""
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


def html(description: str) -> dict[str, Any]:
    """A response with an HTML page."""
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def json_body(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response with a JSON body."""
    return {"description": description, "content": {JSON: {"schema": schema}}}


ERRORS = {
    "400": error("A malformed parameter or body; `field` names it"),
    "401": error("The token is needed (`WWW-Authenticate: Bearer`)"),
    "403": error("A view link that does not grant this job; `reason` says why "
                 "(invalid, other_job, expired)"),
    "404": error("No such job"),
    "409": error("The job has already ended (a second cancel included); `status` says how"),
    "413": error("The body is over JOBCAST_MAX_BODY bytes"),
    "414": {"description": f"The query string is over {MAX_QUERY} bytes (JSON), or the request "
                           "line over gunicorn's limit_request_line, 4094 bytes (gunicorn's own "
                           "HTML answer)",
            "content": {JSON: {"schema": ref("Error")}, HTML: {"schema": {"type": "string"}}}},
    "431": html("A header over gunicorn's limit_request_field_size (8190 bytes), or over "
                "limit_request_fields (100) headers: gunicorn's own answer"),
    "429": error("This client holds its maximum of concurrent streams (`Retry-After`)"),
    "503": error("Redis is unreachable, or this process holds its maximum of streams "
                 "(`Retry-After`)"),
}


def errors(*codes: str) -> dict[str, Any]:
    """The error responses ``codes``; every operation may also answer 414, 431 and 503."""
    return {code: ERRORS[code] for code in (*codes, "414", "431", "503")}


def job_id_param() -> dict[str, Any]:
    """The ``{job_id}`` path parameter."""
    return {"name": "job_id", "in": "path", "required": True, "schema": JOB_ID}


def position_param(name: str, description: str) -> dict[str, Any]:
    """A non-negative integer query parameter (a count or a seq)."""
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}}


def task_params_schema(name: str, schema: dict[str, Any], cfg: Settings,
                       components: dict[str, Any]) -> dict[str, Any]:
    """A task's pydantic schema, with this server's caps as maxima and $defs hoisted."""
    schema = copy.deepcopy(schema)
    for def_name, definition in schema.pop("$defs", {}).items():
        components[def_name] = definition
    caps = cfg.caps()
    for pname, prop in schema.get("properties", {}).items():
        cap = caps.get(f"{name}.{pname}", caps.get(pname))
        if cap is not None and prop.get("type") in ("integer", "number"):
            high = prop.get("maximum")
            prop["maximum"] = cap if high is None else min(high, cap)
            if prop["type"] == "integer":
                prop["maximum"] = int(prop["maximum"])
    return _rewrite_refs(schema)


def _rewrite_refs(node: Any) -> Any:
    """Point pydantic's ``#/$defs/X`` references at ``#/components/schemas/X``."""
    if isinstance(node, dict):
        return {k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" and isinstance(v, str)
                    else _rewrite_refs(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def schemas(cfg: Settings) -> dict[str, Any]:
    """The component schemas: errors, jobs, URLs, tasks and each task's parameters."""
    components: dict[str, Any] = {
        "Error": {
            "type": "object", "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "description": "a short code: bad_request, not_found, ..."},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the offending field (400)"},
                "details": {"type": "array", "items": {"type": "object"}},
                "reason": {"type": "string", "enum": ["invalid", "other_job", "expired"],
                           "description": "why a view link was refused (403)"},
                "status": {"type": ["string", "null"],
                           "description": "how the job ended (409 of a cancel)"},
            },
        },
        "Urls": {
            "type": "object", "required": list(VIEWS),
            "description": "Where the job can be watched; in private mode each carries ?sig=",
            "properties": {v: {"type": "string"} for v in VIEWS},
        },
        "Progress": {
            "type": "object", "required": ["i", "n"],
            "properties": {"i": {"type": "integer", "minimum": 0},
                           "n": {"type": ["integer", "null"]}},
        },
        "JobSummary": {
            "type": "object",
            "required": ["id", "task", "params", "status", "progress", "attempt", "last_seq"],
            "properties": {
                "id": JOB_ID, "task": {"type": ["string", "null"]}, "params": {"type": "object"},
                "status": {"type": ["string", "null"],
                           "description": "queued, running, retrying, finished, failed, ..."},
                "progress": ref("Progress"), "worker": {"type": ["string", "null"]},
                "attempt": {"type": "integer"}, "created_at": NULLABLE_NUMBER,
                "started_at": NULLABLE_NUMBER, "ended_at": NULLABLE_NUMBER,
                "reason": {"type": ["string", "null"]}, "last_seq": {"type": "integer"},
                "cancelled_by": {"type": ["string", "null"],
                                 "description": "who cancelled it: a client address, or cli"},
            },
        },
        "Job": {
            "allOf": [ref("JobSummary"), {
                "type": "object", "required": ["urls", "viewers", "viewers_here"],
                "properties": {
                    "urls": ref("Urls"),
                    "viewers": {"type": "integer", "minimum": 0,
                                "description": "viewers on all web processes (a few seconds old)"},
                    "viewers_here": {"type": "integer", "minimum": 0},
                    "first_seq": {"type": ["integer", "null"],
                                  "description": "the oldest entry the capped log still has"},
                    "first_value": {"type": ["integer", "null"],
                                    "description": "the index of the oldest value it still has"},
                },
            }],
        },
        "Cancelled": {"type": "object", "required": ["id", "status", "seq", "by"],
                      "properties": {"id": JOB_ID, "status": {"const": "cancelled"},
                                     "seq": {"type": "integer", "minimum": 1},
                                     "by": {"type": "string"}}},
        "Chart": {"type": "object", "required": ["span", "upto", "points", "min", "max", "first", "last"],
                  "description": "The worker's downsampled chart: per bucket of `span` values, "
                                 "their min, max, first and last (null: no numeric value)",
                  "properties": {"span": {"type": "integer", "minimum": 1},
                                 "upto": {"type": "integer", "minimum": -1},
                                 "points": {"type": "integer", "minimum": 0},
                                 **{k: {"type": "array", "items": NULLABLE_NUMBER}
                                    for k in ("min", "max", "first", "last")}}},
        "EarlierValues": {"type": "object", "required": ["first_seq", "first_value", "values"],
                          "properties": {"first_seq": {"type": ["integer", "null"]},
                                         "first_value": {"type": ["integer", "null"]},
                                         "values": {"type": "array", "items": ref("Entry")}}},
        "JobList": {"type": "object", "required": ["jobs"],
                    "properties": {"jobs": {"type": "array", "items": ref("JobSummary")}}},
        "JobCreated": {"type": "object", "required": ["id", "urls"],
                       "properties": {"id": JOB_ID, "urls": ref("Urls")}},
        "JobLink": {"type": "object", "required": ["id", "urls", "expires"],
                    "properties": {"id": JOB_ID, "urls": ref("Urls"),
                                   "expires": {"type": ["integer", "null"],
                                               "description": "Unix time the link stops working"}}},
        "Task": {"type": "object", "required": ["name", "description", "params"],
                 "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                                "params": {"type": "object", "description": "a JSON schema"}}},
        "TaskList": {"type": "object", "required": ["tasks"],
                     "properties": {"tasks": {"type": "array", "items": ref("Task")}}},
        "Entry": {
            "type": "object", "required": ["seq", "kind", "ts"],
            "description": "One entry of a job's log. value: i, v (text), j (JSON or null); "
                           "started: worker, attempt; failed/retrying: reason",
            "properties": {"seq": {"type": "integer", "minimum": 1},
                           "kind": {"type": "string"}, "ts": {"type": "number"}},
        },
        "TailEvent": {
            "type": "object", "required": ["tail", "skipped", "after"],
            "description": "?tail=N: the stream starts after seq `after`; `skipped` values came before",
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("tail", "skipped", "after")},
        },
        "TrimmedEvent": {
            "type": "object", "required": ["after", "first_seq", "lost"],
            "description": "The capped log no longer has the `lost` entries after `after`; it "
                           "goes on at `first_seq` (`first_value`: the oldest value kept)",
            "properties": {"after": {"type": "integer", "minimum": 0},
                           "first_seq": {"type": "integer", "minimum": 1},
                           "lost": {"type": "integer", "minimum": 1},
                           "first_value": {"type": ["integer", "null"]}},
        },
        "SseEvent": {
            "type": "object", "required": ["data"],
            "description": "One server-sent event (each event of the stream, as parsed)",
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the entry's seq"},
                "event": {"type": "string",
                          "description": "the entry's kind; or, before the first entry and "
                                         "without an id, `tail` or `trimmed`"},
                "data": {"type": "string", "contentMediaType": JSON,
                         "contentSchema": {"anyOf": [ref("Entry"), ref("TailEvent"),
                                                     ref("TrimmedEvent")]}},
                "retry": {"type": ["string", "integer"]},
            },
        },
        "Health": {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string"}, "reason": {"type": "string"}}},
    }
    requests = []
    for name, spec in sorted(all_tasks().items()):
        params_name = f"{name}_params"
        components[params_name] = task_params_schema(name, spec.schema(), cfg, components)
        requests.append({
            "type": "object", "title": f"{name} job", "required": ["task"],
            "additionalProperties": False,
            "properties": {"task": {"const": name}, "params": ref(params_name)},
        })
    components["JobRequest"] = {"oneOf": requests} if requests else {"type": "object"}
    return components


def document(cfg: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a server configured by ``cfg``."""
    private = cfg.read_mode == "private"
    token_set = bool(cfg.token)
    # Who may read: anyone (public), or the token (header or browser session); a job's own
    # views also take its view link.
    read = [{"bearerAuth": []}, {"session": []}] if private else [{}]
    read_job = [*read, {"viewLink": []}] if private else [{}]
    create = [{"bearerAuth": []}] if token_set else [{}]
    read_errors = ("401",) if private else ()
    job_errors = ("401", "403") if private else ()
    job = [job_id_param()]
    # ?tail=N: the last N values, then live (Last-Event-ID and ?after= win over it).
    TAIL = position_param("tail", "begin with the last N values (0: live only)")  # noqa: N806

    def stream(summary: str, media: str, extra: list, ok: str, more: dict | None = None,
               schema: dict | None = None):
        """A stream operation: its media type, parameters and refusals."""
        responses = {"200": {"description": ok,
                             "content": {media: {"schema": schema or {"type": "string"}}}},
                     **(more or {}),
                     **errors("400", *job_errors, "404", "429")}
        return {"get": {"summary": summary, "tags": ["streams"], "security": read_job,
                        "parameters": [*job, *extra], "responses": responses}}

    def page(summary: str, op_id: str):
        """An HTML page of one job."""
        responses = {"200": html(summary), **errors("400", *job_errors, "404")}
        if private:
            responses["401"] = html("The token form (no token, session or view link)")
        return {"get": {"summary": summary, "operationId": op_id, "tags": ["pages"],
                        "security": read_job, "parameters": job, "responses": responses}}

    index_responses = {"200": html("Recent jobs and the start form"), **errors()}
    if private:
        index_responses["401"] = html("The token form")
    paths: dict[str, Any] = {
        "/api/jobs": {
            "post": {
                "summary": "Create a job", "operationId": "createJob", "tags": ["jobs"],
                "security": create,
                "requestBody": {"required": True, "content": {JSON: {"schema": ref("JobRequest")}}},
                "responses": {
                    "201": {**json_body("Queued; its URLs (signed in private mode)", ref("JobCreated")),
                            "headers": {"Location": {"schema": {"type": "string"},
                                                     "description": "the job's status URL"}},
                            "links": {
                                "GetJob": {"operationId": "getJob",
                                           "parameters": {"job_id": "$response.body#/id"}},
                                "GetJobLink": {"operationId": "getJobLink",
                                               "parameters": {"job_id": "$response.body#/id"}},
                                "JobPage": {"operationId": "jobPage",
                                            "parameters": {"job_id": "$response.body#/id"}},
                            }},
                    **errors("400", "401", "413"),
                },
            },
            "get": {
                "summary": "Recent jobs, newest first", "operationId": "listJobs", "tags": ["jobs"],
                "security": read,
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 500,
                                           "default": 50}}],
                "responses": {"200": json_body("The jobs", ref("JobList")),
                              **errors("400", *read_errors)},
            },
        },
        "/api/jobs/{job_id}": {"get": {
            "summary": "One job's status, progress, worker, times, viewers and URLs",
            "operationId": "getJob", "tags": ["jobs"], "security": read_job, "parameters": job,
            "responses": {"200": json_body("The job", ref("Job")),
                          **errors("400", *job_errors, "404")},
        }},
        "/api/jobs/{job_id}/link": {"get": {
            "summary": "A new signed view link for the job (unsigned URLs in public mode)",
            "operationId": "getJobLink", "tags": ["jobs"], "security": create,
            "parameters": [*job, {"name": "ttl", "in": "query", "required": False,
                                  "description": "seconds until the link expires; omit or 0 for none",
                                  "schema": {"type": "integer", "minimum": 0, "maximum": MAX_TTL}}],
            "responses": {"200": json_body("The job's URLs carrying the new link", ref("JobLink")),
                          **errors("400", "401", "404")},
        }},
        "/api/jobs/{job_id}/cancel": {"post": {
            "summary": "Cancel a queued or running job: it leaves the queue, or its work-horse "
                       "is stopped; its log ends with `cancelled`",
            "operationId": "cancelJob", "tags": ["jobs"], "security": create, "parameters": job,
            "responses": {"200": json_body("Cancelled", ref("Cancelled")),
                          **errors("400", "401", "404", "409")},
        }},
        "/api/jobs/{job_id}/chart": {"get": {
            "summary": "The job's chart history, downsampled by its worker",
            "operationId": "getJobChart", "tags": ["jobs"], "security": read_job,
            "parameters": job,
            "responses": {"200": json_body("The chart", ref("Chart")),
                          **errors("400", *job_errors, "404")},
        }},
        "/api/jobs/{job_id}/values": {"get": {
            "summary": "Value entries logged before an entry, oldest first (load earlier values)",
            "operationId": "getEarlierValues", "tags": ["jobs"], "security": read_job,
            "parameters": [*job, position_param("before", "entries before this seq"),
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 5000,
                                       "default": 1000}}],
            "responses": {"200": json_body("The values", ref("EarlierValues")),
                          **errors("400", *job_errors, "404")},
        }},
        "/api/jobs/{job_id}/output": {"get": {
            "summary": "What the job printed (stdout, stderr, logging) as text, streamed",
            "operationId": "getJobOutput", "tags": ["jobs"], "security": read_job,
            "parameters": [*job, {"name": "attempt", "in": "query", "required": False,
                                  "description": "only this attempt's output",
                                  "schema": {"type": "integer", "minimum": 1,
                                             "maximum": 2**53}}],
            "responses": {"200": {"description": "The output, one line per line printed",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **errors("400", *job_errors, "404")},
        }},
        "/api/tasks": {"get": {
            "summary": "Registered tasks with their parameters' JSON schema",
            "operationId": "listTasks", "tags": ["jobs"], "security": read,
            "responses": {"200": json_body("The tasks", ref("TaskList")), **errors(*read_errors)},
        }},
        "/api/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi", "tags": ["meta"], "security": [{}],
            "responses": {"200": json_body("OpenAPI 3.1", {"type": "object"}), **errors()},
        }},
        "/jobs/{job_id}/stream": stream(
            "One value per line, history then live; ends with the job", "text/plain",
            [position_param("start", "skip the first K values (to resume)"), TAIL],
            "`\"{}\\n\".format(value)` per value; `Jobcast-First-Value` names the first value "
            "when a tail or a trimmed log skips earlier ones"),
        "/jobs/{job_id}/events": stream(
            "Server-sent events: `id:` the entry's seq, `event:` its kind, `data:` JSON",
            "text/event-stream",
            [position_param("after", "resume after this seq"), TAIL,
             {"name": "Last-Event-ID", "in": "header", "required": False,
              "description": "resume after this seq (wins over ?after=)",
              "schema": {"type": "string", "pattern": "^[0-9]{0,16}$"}}],
            "The events",
            {"204": {"description": "The job has ended and nothing is left after the given seq"}},
            ref("SseEvent")),
        "/jobs/{job_id}/frame": stream(
            "Streamed HTML for an <iframe>: one escaped <p>i: value</p> per value", HTML,
            [position_param("start", "skip the first K values"), TAIL], "The HTML stream"),
        "/": {"get": {"summary": "Recent jobs and the start form", "operationId": "index",
                      "tags": ["pages"], "security": read, "responses": index_responses}},
        "/jobs/{job_id}": page("The live job page", "jobPage"),
        "/jobs/{job_id}/plain": page("The original page over the text stream", "plainPage"),
        "/jobs/{job_id}/framed": page("The <iframe> page over /frame", "framedPage"),
        "/login": {
            "get": {"summary": "The token form", "operationId": "loginForm", "tags": ["pages"],
                    "security": [{}],
                    "parameters": [{"name": "next", "in": "query", "required": False,
                                    "schema": {"type": "string"}}],
                    "responses": {"200": html("The form"), **errors()}},
            "post": {"summary": "Check the token; set the session cookie", "operationId": "login",
                     "tags": ["pages"], "security": [{}],
                     "requestBody": {"required": True, "content": {
                         "application/x-www-form-urlencoded": {"schema": {
                             "type": "object", "required": ["token"],
                             "properties": {"token": {"type": "string"},
                                            "next": {"type": "string"}}}}}},
                     "responses": {"303": {"description": "The token is right: on to `next`, "
                                                          f"with the `{SESSION_COOKIE}` cookie"},
                                   "401": html("The form again: the token is not right"),
                                   **errors("400", "413")}},
        },
        "/metrics": {"get": {
            "summary": "Prometheus text format", "operationId": "metrics", "tags": ["meta"],
            "security": read,
            "responses": {"200": {"description": "The metrics",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **errors(*read_errors)},
        }},
        "/healthz": {"get": {"summary": "The process is alive", "operationId": "healthz",
                             "tags": ["meta"], "security": [{}],
                             "responses": {"200": json_body("Alive", ref("Health")), **errors()}}},
        "/readyz": {"get": {"summary": "Redis answers and the broker is subscribed",
                            "operationId": "readyz", "tags": ["meta"], "security": [{}],
                            "responses": {**errors(),
                                          "200": json_body("Ready", ref("Health")),
                                          "503": json_body("Not ready", ref("Health"))}}},
        "/favicon.ico": {"get": {"summary": "No icon", "operationId": "favicon", "tags": ["meta"],
                                 "security": [{}],
                                 "responses": {"204": {"description": "No content"}, **errors()}}},
    }
    for name in ("stream", "events", "frame"):
        paths[f"/jobs/{{job_id}}/{name}"]["get"]["operationId"] = f"{name}Stream"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Jobcast", "version": "1",
            "description": ("Streams what background jobs compute to every viewer. Read mode: "
                            f"**{cfg.read_mode}**. Errors are JSON (`Error`)."),
        },
        "paths": paths,
        "components": {
            "schemas": schemas(cfg),
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
def openapi():
    """The OpenAPI 3.1 document of this server's HTTP API."""
    return jsonify(document(state().config))
