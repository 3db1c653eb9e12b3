"""The API contract: /api/openapi.json is OpenAPI 3.1, and schemathesis finds the live server
true to it (positive and negative data, stateful links, four checks, 0 failures).

The server runs in private mode on a queue no worker reads, so the jobs schemathesis creates
(with any parameters the contract allows) stay queued. Streams are fuzzed in a run of their
own, pointed at a job that has already ended so every stream answers at once.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from jobcast.core.joblog import JobLog
from tests.support.services import WebServer

TOKEN = "fuzz-token"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
STREAMS = r"^/jobs/\{job_id\}/(stream|events|frame)$"
# The multi-job stream (with the job list it never ends) is left to tests/web/test_events.py.
MULTI = r"^/events$"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Where schemathesis runs (it keeps a cache in .schemathesis/ under its working directory)."""
    return tmp_path_factory.mktemp("schemathesis")


@pytest.fixture(scope="module")
def fuzzed(redis_server, logs_dir):
    """A private-mode gunicorn on a queue of its own."""
    s = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-openapi.log",
                  JOBCAST_TOKEN=TOKEN, JOBCAST_QUEUE=f"fuzz-{uuid.uuid4().hex[:8]}",
                  # The fuzzer tries wrong credentials on purpose: throttling them (tested in
                  # test_auth.py) would answer 429 and leave the operations behind untested.
                  JOBCAST_AUTH_FAILURES="0").start()
    yield s
    s.stop()


def schemathesis(server, workdir: Path, *args: str, config: Path | None = None,
                 timeout: float = 240) -> str:
    """Run schemathesis against ``server``'s own document; fail with its report unless clean."""
    if not SCHEMATHESIS.exists():
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    cmd = [str(SCHEMATHESIS), *(["--config-file", str(config)] if config else []), "run",
           f"{server.url}/api/openapi.json", "--checks", CHECKS, "--max-examples", "40",
           "--request-timeout", "10", "--max-redirects", "0", "--workers", "1",
           # Strings a UTF-8 request can carry: with lone surrogates (sent as JSON escapes)
           # schemathesis 4.32 fails in its own coverage phase, reusing what it sent
           # (jsonschema_rs cannot encode them), in a run now and then. Jobcast's answer to
           # them is tested in test_api.py.
           "--generation-codec", "utf-8",
           "--no-color", *args]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert " passed" in out and "failure" not in out.split("SUMMARY")[-1], out[-3000:]
    return out


def test_the_document_is_openapi_3_1_with_every_endpoint_auth_scheme_and_task_schema(fuzzed):
    # (A private server: its tasks are in the document for those who hold the token.)
    doc = httpx.get(f"{fuzzed.url}/api/openapi.json",
                    headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/link", "/api/tasks",
                 "/jobs/{job_id}/stream", "/jobs/{job_id}/events", "/jobs/{job_id}/frame", "/",
                 "/jobs/{job_id}", "/jobs/{job_id}/plain", "/jobs/{job_id}/framed", "/metrics",
                 "/healthz", "/readyz", "/login"):
        assert path in paths, path
    assert set(doc["components"]["securitySchemes"]) == {"bearerAuth", "viewLink", "session"}
    media = {name: list(paths[f"/jobs/{{job_id}}/{name}"]["get"]["responses"]["200"]["content"])
             for name in ("stream", "events", "frame")}
    assert media == {"stream": ["text/plain"], "events": ["text/event-stream"], "frame": ["text/html"]}
    # Every error answer has the JSON error shape.
    create = paths["/api/jobs"]["post"]["responses"]
    for code in ("400", "401", "413"):
        assert create[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    # The tasks' parameter schemas come from pydantic, with this server's caps as maxima.
    sqrt = doc["components"]["schemas"]["sqrt_params"]
    assert sqrt["properties"]["n"]["maximum"] == 100000 and sqrt["additionalProperties"] is False


def test_schemathesis_finds_no_failure_in_any_operation_but_the_streams(fuzzed, workdir):
    out = schemathesis(fuzzed, workdir, "--header", f"Authorization: Bearer {TOKEN}",
                       "--exclude-path-regex", f"{STREAMS}|{MULTI}")
    assert "Stateful" in out


def test_schemathesis_finds_no_failure_without_credentials(fuzzed, workdir):
    # Private mode with no token: every guarded operation must answer its documented 401/403.
    schemathesis(fuzzed, workdir, "--phases", "coverage,fuzzing", "--max-examples", "10")


def test_schemathesis_finds_no_failure_in_the_streams_of_an_ended_job(fuzzed, workdir, redis, tmp_path):
    # Unknown and malformed ids first, then a job that has ended, so every stream ends at once.
    args = ("--header", f"Authorization: Bearer {TOKEN}", "--include-path-regex", STREAMS,
            "--phases", "coverage,fuzzing")
    schemathesis(fuzzed, workdir, *args)
    jlog = JobLog(redis, uuid.uuid4().hex)
    jlog.create("sqrt", {"n": 3}, 3)
    jlog.started("fuzz", 1)
    for i in range(3):
        jlog.value(i, i ** 0.5)
    jlog.finished()
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.job_id" = "{jlog.job_id}"\n')
    schemathesis(fuzzed, workdir, *args, config=config)


@pytest.mark.parametrize(("settings", "create"), [
    ({}, [{}]),
    ({"token": "t" * 32}, [{"bearerAuth": []}]),
    # A review's finding: documented as open to anyone, every call got 401.
    ({"read": "private", "secret": "s" * 32}, [{"bearerAuth": []}]),
])
def test_the_document_says_who_may_create_a_job_as_the_guard_decides(make_app, config,
                                                                     settings, create):
    from jobcast.web.openapi import document

    cfg = config.model_copy(update=settings)
    app = make_app({"JOBCAST": cfg})
    with app.app_context():
        doc = document(app, app.extensions["jobcast"].config)
    operation = doc["paths"]["/api/jobs"]["post"]
    assert operation["security"] == create
    assert ("401" in operation["responses"]) is (create != [{}])


def test_a_private_server_lists_its_tasks_in_the_document_only_to_the_token(make_app, config):
    """A review's finding: ``GET /api/tasks`` needs the token in private mode, and the open
    document listed every task with its parameters all the same."""
    app = make_app({"JOBCAST": config.model_copy(update={"read": "private", "token": "t" * 32})})
    client = app.test_client()
    anonymous = client.get("/api/openapi.json")
    holder = client.get("/api/openapi.json", headers={"Authorization": "Bearer " + "t" * 32})
    assert anonymous.status_code == holder.status_code == 200
    assert {"Authorization", "Cookie"} <= set(anonymous.vary)
    assert client.get("/api/tasks").status_code == 401
    create = "#/components/schemas/JobRequest"
    schema = anonymous.json["paths"]["/api/jobs"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert schema == {"$ref": create} and "sqrt" not in anonymous.get_data(as_text=True)
    assert "sqrt_params" in holder.json["components"]["schemas"]
    # A public server shows them to anyone, as GET /api/tasks does.
    public = make_app({"JOBCAST": config}).test_client().get("/api/openapi.json")
    assert "sqrt_params" in public.json["components"]["schemas"]


def test_each_operation_documents_every_argument_it_reads_and_every_refusal(make_app, config):
    """A review's finding: the text and HTML streams resume by ``?after=`` and
    ``Last-Event-ID`` (a bad one is a 400 naming it), and their operations did not say so;
    nor did an operation without a body say that a body sent to it may be refused."""
    from jobcast.web.openapi import document

    app = make_app({"JOBCAST": config})
    with app.app_context():
        paths = document(app, app.extensions["jobcast"].config)["paths"]
    read = {"stream": {"start", "epoch", "tail", "after", "Last-Event-ID"},
            "frame": {"start", "epoch", "tail", "after", "Last-Event-ID"},
            "events": {"tail", "after", "Last-Event-ID"}}
    for name, args in read.items():
        documented = {p["name"] for p in paths[f"/jobs/{{job_id}}/{name}"]["get"]["parameters"]}
        assert args <= documented, (name, args - documented)
    # Any request may carry a body, late or over the limit (BodyLimits refuses it on any route).
    cancel = paths["/api/jobs/{job_id}/cancel"]["post"]["responses"]
    assert {"408", "413"} <= set(cancel)


def test_the_documents_patterns_take_only_what_the_server_takes(make_app, config):
    """A review's finding: the patterns allowed list=0 and list=501..9999, and seqs over
    2**53, which the server answers with 400: a client true to the document was refused."""
    import re

    from jobcast.web.params import MAX_SEQ
    from jobcast.web.events import LIST_MAX
    from jobcast.web.openapi import document

    app = make_app({"JOBCAST": config})
    with app.app_context():
        paths = document(app, app.extensions["jobcast"].config)["paths"]
    params = {p["name"]: p["schema"] for p in paths["/events"]["get"]["parameters"]}
    listed = re.compile(params["list"]["pattern"])
    assert [n for n in range(0, 10_000) if listed.match(str(n))] == list(range(1, LIST_MAX + 1))
    after = re.compile({p["name"]: p["schema"] for p in
                        paths["/jobs/{job_id}/events"]["get"]["parameters"]}["after"]["pattern"])
    job = re.compile(params["job"]["items"]["pattern"])
    for seq in (MAX_SEQ + 1, 10 ** 16 - 1):
        assert not after.match(str(seq)) and not job.match(f"abc:{seq}")
    assert after.match(str(10 ** 15 - 1)) and job.match(f"abc:{10 ** 15 - 1}~Ep0ch")


def test_the_document_says_what_the_answers_carry_as_the_server_sends_it(make_app, config):
    """A review's findings: ``/events`` documented the 2,048-byte query limit (it reads 8,000),
    the single job's SSE stream was described as "one event of /events", the streams' own
    headers and ``Retry-After`` were prose only, and the 303s said "no body" over werkzeug's
    HTML one."""
    from jobcast.web.openapi import document

    app = make_app({"JOBCAST": config.model_copy(update={"token": "t" * 32})})
    with app.app_context():
        doc = document(app, app.extensions["jobcast"].config)
    paths = doc["paths"]
    assert "8000 bytes" in paths["/events"]["get"]["responses"]["414"]["description"]
    assert "2048 bytes" in paths["/api/jobs"]["get"]["responses"]["414"]["description"]
    single = paths["/jobs/{job_id}/events"]["get"]["responses"]["200"]
    assert "/events" not in single["description"]
    assert set(single["headers"]) == {"Jobcast-Epoch", "Jobcast-Reset"}
    for path in ("/jobs/{job_id}/stream", "/jobs/{job_id}/frame"):
        assert set(paths[path]["get"]["responses"]["200"]["headers"]) == {
            "Jobcast-Epoch", "Jobcast-Reset", "Jobcast-First-Value", "Jobcast-Values-Lost"}
    for status in ("429", "503"):
        assert "Retry-After" in paths["/jobs/{job_id}/stream"]["get"]["responses"][status]["headers"]
    client = app.test_client()
    for r in (client.post("/logout"), client.post("/login", data={"token": "t" * 32, "next": "/"})):
        assert r.status_code == 303 and r.get_data() == b"" and "Content-Type" not in r.headers
