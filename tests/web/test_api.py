"""The HTTP API validates at the edge: the right 4xx with a JSON error, never a 500."""

import json
import uuid

import pytest

from jobcast.core.joblog import JobLog
from jobcast.core.settings import Settings
from jobcast.producer.enqueue import enqueue


def post_job(client, body, **kw):
    return client.post("/api/jobs", data=body if isinstance(body, (str, bytes)) else json.dumps(body),
                       content_type=kw.pop("content_type", "application/json"), **kw)


def test_post_job_answers_201_with_id_and_urls(client, redis):
    r = post_job(client, {"task": "sqrt", "params": {"n": 20, "interval": 0.1}})
    assert r.status_code == 201
    job_id = r.json["id"]
    assert r.json["urls"]["stream"] == f"/jobs/{job_id}/stream"
    assert set(r.json["urls"]) >= {"page", "stream", "events", "frame", "framed", "status"}
    status = client.get(f"/api/jobs/{job_id}").json
    assert status["status"] == "queued" and status["progress"] == {"i": 0, "n": 20}
    assert status["params"] == {"n": 20, "interval": 0.1}
    assert job_id in [j["id"] for j in client.get("/api/jobs").json["jobs"]]


@pytest.mark.parametrize("body, field", [
    ('{"task": "sqrt", "params": ', "body"),
    ("[1, 2]", "body"),
    ('"sqrt"', "body"),
    ({"params": {}}, "task"),
    ({"task": 5}, "task"),
    ({"task": "nope"}, "task"),
    ({"task": "sqrt", "params": [1]}, "params"),
    ({"task": "sqrt", "params": {"n": "twenty"}}, "params.n"),
    ({"task": "sqrt", "params": {"n": 1e300}}, "params.n"),
    ({"task": "sqrt", "params": {"n": 10**40}}, "params.n"),
    ({"task": "sqrt", "params": {"n": -5}}, "params.n"),
    ({"task": "sqrt", "params": {"interval": -1}}, "params.interval"),
    ({"task": "sqrt", "params": {"zzz": 1}}, "params.zzz"),
    ({"task": "sqrt", "extra": 1}, "extra"),
    # Each within its cap, together over JOBCAST_JOB_MAX_DURATION (finding 8 of issue 23).
    ({"task": "sqrt", "params": {"n": 100000, "interval": 3600}}, "params"),
])
def test_bad_job_requests_get_400_naming_the_field(client, body, field):
    r = post_job(client, body)
    assert r.status_code == 400, r.json
    assert r.is_json and r.json["field"] == field and r.json["message"]


def test_a_body_that_is_no_valid_json_is_told_why(client):
    """A review's finding: a JSON object holding a 5,000-digit integer was refused as "body
    must be a JSON object", which it was."""
    r = post_job(client, '{"task": "sqrt", "params": {"n": ' + "9" * 5000 + "}}")
    assert r.status_code == 400 and r.json["field"] == "body"
    assert r.json["message"] == "a number in the body has too many digits"
    r = post_job(client, '{"task": "sqrt", "params": ')
    assert r.status_code == 400 and r.json["message"].startswith("body is not valid JSON: ")


def test_nan_in_json_is_rejected(client):
    r = post_job(client, '{"task": "sqrt", "params": {"interval": NaN}}')
    assert r.status_code == 400 and r.json["field"] == "params.interval"


def test_wrong_content_type_is_rejected(client):
    r = post_job(client, '{"task": "sqrt"}', content_type="text/plain")
    assert r.status_code == 400 and r.json["field"] == "body"


def test_oversized_body_is_rejected_with_413(client):
    r = post_job(client, {"task": "sqrt", "params": {"n": 1}, "pad": "x" * 20000})
    assert r.status_code == 413 and r.is_json


@pytest.mark.parametrize("path", ["/api/jobs/{}", "/jobs/{}", "/jobs/{}/stream", "/jobs/{}/events",
                                  "/jobs/{}/frame", "/jobs/{}/framed"])
def test_unknown_job_is_404_and_malformed_id_is_400(client, path):
    # Well-formed ids of no job: Jobcast's, RQ's (a UUID with dashes) and user-chosen ones.
    for unknown in [uuid.uuid4().hex, str(uuid.uuid4()), "A" * 32, "0" * 31]:
        r = client.get(path.format(unknown))
        assert r.status_code == 404 and r.is_json, unknown
    # "A" * 32 and "0" * 31 were malformed while ids were 32 hex characters; RQ accepts them.
    for bad in ["*", "jobcast:jobs", "..", "%00", "%C3%A9" * 16, "A.B", "0" * 129, "a%0A", "a%20b"]:
        r = client.get(path.format(bad))
        assert r.status_code in (400, 404) and r.is_json, (bad, r.status_code)
        if bad != "..":  # ".." is resolved by the URL layer, never reaching a job lookup
            assert r.status_code == 400 and r.json["field"] == "job_id", bad


@pytest.mark.parametrize("query, headers, field", [
    ("?after=abc", {}, "after"),
    ("?after=-1", {}, "after"),
    ("?after=1e3", {}, "after"),
    ("?after=99999999999999999999", {}, "after"),
    ("", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
])
def test_bad_resume_positions_get_400(client, idle_queue, redis, query, headers, field):
    job_id = enqueue("sqrt", {"n": 1}, redis=redis, config=idle_queue)
    r = client.get(f"/jobs/{job_id}/events{query}", headers=headers)
    assert r.status_code == 400 and r.json["field"] == field


def test_list_limit_is_validated(client):
    assert client.get("/api/jobs?limit=0").status_code == 400
    assert client.get("/api/jobs?limit=x").json["field"] == "limit"


@pytest.mark.parametrize("query, field, bounds", [
    ("/api/jobs?limit=abc", "limit", "between 1 and 500"),
    ("/api/jobs?limit=-1", "limit", "between 1 and 500"),
    ("/api/jobs/{job}/values?limit=x", "limit", "between 1 and 5000"),
    ("/api/jobs/{job}/link?ttl=-1", "ttl", "between 0 and 315360000"),
    ("/api/jobs/{job}/output?attempt=0", "attempt", "between 1 and "),
])
def test_a_bad_number_is_told_the_parameters_own_bounds(client, idle_queue, redis, query, field,
                                                        bounds):
    """A review's finding: a parameter that was not a number was told the bounds of any
    integer ("up to 9007199254740992"), whatever its own."""
    job_id = enqueue("sqrt", {"n": 1}, redis=redis, config=idle_queue)
    r = client.get(query.format(job=job_id))
    assert r.status_code == 400 and r.json["field"] == field
    assert bounds in r.json["message"], r.json


def test_earlier_values_without_before_are_the_newest(client, idle_queue, redis):
    """A review's finding: ``GET /api/jobs/<id>/values`` with no ``before`` read the values
    before seq 0, and answered none, whatever the job had logged."""
    job_id = enqueue("sqrt", {"n": 5}, redis=redis, config=idle_queue)
    jlog = JobLog(redis, job_id)
    jlog.started("w1", 1)
    for i in range(5):
        jlog.value(i, float(i))
    newest = client.get(f"/api/jobs/{job_id}/values?limit=2").json
    assert [e["i"] for e in newest["values"]] == [3, 4]
    assert [e["i"] for e in client.get(f"/api/jobs/{job_id}/values").json["values"]] == \
        [0, 1, 2, 3, 4]
    assert client.get(f"/api/jobs/{job_id}/values?before=&limit=2").json == newest
    before = client.get(f"/api/jobs/{job_id}/values?before=5&limit=9").json["values"]
    assert [e["i"] for e in before] == [0, 1]  # seq 1 queued, 2 started, 3 value 0
    # An empty attempt is absent too, as an empty limit or before is: all attempts' output.
    assert client.get(f"/api/jobs/{job_id}/output?attempt=").status_code == 200


def test_a_job_with_no_value_yet_says_its_first_value_is_0_as_its_values_do(client, idle_queue,
                                                                            redis):
    """A review's finding: ``GET /api/jobs/<id>`` said ``first_value: null`` for a queued job, or
    one that logged none, where its schema and ``/values`` say 0 (the next value's index)."""
    job_id = enqueue("sqrt", {"n": 0}, redis=redis, config=idle_queue)
    for _ in range(2):
        status = client.get(f"/api/jobs/{job_id}").json
        values = client.get(f"/api/jobs/{job_id}/values").json
        assert (status["first_seq"], status["first_value"]) == (1, 0)
        assert (values["first_seq"], values["first_value"]) == (1, 0)
        JobLog(redis, job_id).started("w1", 1)


def test_earlier_values_answer_at_most_a_mebibyte_and_the_rest_comes_by_paging(client, idle_queue,
                                                                               redis):
    """A security review's finding: ``limit`` counted values, not bytes, so one answer of
    5,000 values of 60 KB each was built in memory at once (300 MB)."""
    job_id = enqueue("sqrt", {"n": 40}, redis=redis, config=idle_queue)
    jlog = JobLog(redis, job_id)
    jlog.started("w1", 1)
    for i in range(40):
        jlog.value(i, f"{i:02d}" + "x" * 60_000)
    r = client.get(f"/api/jobs/{job_id}/values?limit=5000")
    got = [e["i"] for e in r.json["values"]]
    assert len(r.data) <= (1 << 20) + 10_000 and 4 <= len(got) < 40, (len(r.data), got)
    assert got == list(range(40 - len(got), 40)), "the newest ones, in order"
    seen = got
    while seen[0] > 0:
        oldest = r.json["values"][0]["seq"]
        r = client.get(f"/api/jobs/{job_id}/values?limit=5000&before={oldest}")
        seen = [e["i"] for e in r.json["values"]] + seen
    assert seen == list(range(40)), "paging before the oldest one gets every value once"


def test_healthz_is_ok_and_readyz_is_ready_while_redis_answers(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


def test_readyz_is_503_when_redis_is_down(make_app):
    from jobcast.launcher.redisserver import free_port

    dead = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    r = make_app({"JOBCAST": dead}).test_client().get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "unavailable"
    # Where Redis is stays in the log (a review's finding: the public probe told anyone).
    assert r.json["reason"] == "redis: unreachable (ConnectionError)"


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").status_code == 404 and client.get("/nope").is_json
    r = client.delete("/api/jobs")
    assert r.status_code == 405 and r.json["error"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


def test_tasks_endpoint_describes_parameters_with_bounds(client):
    tasks = {t["name"]: t for t in client.get("/api/tasks").json["tasks"]}
    assert {"sqrt", "clock", "pi"} <= set(tasks)
    n = tasks["sqrt"]["params"]["properties"]["n"]
    assert (n["type"], n["default"], n["minimum"]) == ("integer", 500, 0)
    # A review's finding: the maximum was the task's own (1,000,000), not this server's cap
    # (JOBCAST_PARAM_CAPS, n=100000), which creating a job checks and the OpenAPI document says.
    assert n["maximum"] == 100000
    assert client.post("/api/jobs", json={"task": "sqrt", "params": {"n": 100001}}).status_code == 400


def test_home_page_lists_jobs_and_offers_a_form(client, idle_queue, redis):
    job_id = enqueue("sqrt", {"n": 1}, redis=redis, config=idle_queue)
    html = client.get("/").get_data(as_text=True)
    assert job_id[:8] in html and '<form id="start"' in html and 'name="interval"' in html


def test_job_creation_is_rate_limited_per_client_with_retry_after(config, make_app, clock):
    """Finding 6 of issue 23: 100 POST /api/jobs in 0.3 s met no rate limit."""
    cfg = config.model_copy(update={"create_rate": 5, "queue_name": f"rate-{uuid.uuid4().hex}"})
    app = make_app({"JOBCAST": cfg, "TESTING": True})
    app.extensions["jobcast"].creations.clock = clock
    client = app.test_client()
    body = {"task": "sqrt", "params": {"n": 1}}
    assert [post_job(client, body).status_code for _ in range(5)] == [201] * 5
    r = post_job(client, body)
    assert r.status_code == 429 and r.json["error"] == "too_many_requests"
    assert r.headers["Retry-After"] == "12", "5 a minute: the next one is due in 12 s"
    assert post_job(client, body, environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 201
    clock.advance(12)
    assert post_job(client, body).status_code == 201


def test_a_refused_creation_costs_nothing_of_the_create_rate(config, make_app, clock):
    """A review's finding: the rate's token was spent before the body was checked, so three
    mistakes in a form of a server with JOBCAST_CREATE_RATE=3 throttled the fixed request."""
    cfg = config.model_copy(update={"create_rate": 3, "queue_name": f"rate-{uuid.uuid4().hex}"})
    app = make_app({"JOBCAST": cfg, "TESTING": True})
    app.extensions["jobcast"].creations.clock = clock
    client = app.test_client()
    for bad in ({"task": "nope"}, {"task": "sqrt", "params": {"n": -1}}, "[1", {"tusk": 1}) * 2:
        assert post_job(client, bad).status_code == 400, bad
    good = {"task": "sqrt", "params": {"n": 1}}
    assert [post_job(client, good).status_code for _ in range(4)] == [201, 201, 201, 429]


def test_a_body_nested_a_thousand_deep_is_a_400_not_a_500(client):
    """Finding 13 of issue 23: 1,000 nested `[` gave a 500 (RecursionError)."""
    r = post_job(client, "[" * 1000)
    assert r.status_code == 400 and r.json["field"] == "body"
    deep = '{"task": "sqrt", "params": {"n": ' + "[" * 500 + "]" * 500 + "}}"
    r = post_job(client, deep)
    assert r.status_code == 400 and r.json["field"] == "params.n"


@pytest.mark.parametrize("body, field", [
    ('{"task": "\\ud800"}', "task"),
    ('{"task": "sqrt", "params": {"n": "\\udcff"}}', "params.n"),
    ('{"task": "sqrt", "params": {"\\ud800": 1}}', "params"),
])
def test_a_body_with_lone_surrogate_escapes_is_a_400_naming_the_field_in_valid_unicode(
        client, body, field):
    """JSON may escape a lone surrogate (``"\\ud800"``), which no UTF-8 text holds: refused as
    any bad field, and the answer echoes none (strict parsers refuse them)."""
    r = client.post("/api/jobs", data=body, content_type="application/json")
    assert r.status_code == 400 and r.json["field"] == field
    assert b"\\ud8" not in r.data and b"\\udc" not in r.data
    r.data.decode("utf-8")  # (strict)

