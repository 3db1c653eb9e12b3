"""Property-based fuzzing of the whole HTTP API against a real gunicorn: no input gives a 5xx,
and every error is JSON."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.services import WebServer

FUZZ = settings(max_examples=1500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)

task_names = st.sampled_from(["sqrt", "clock", "pi", "html", "nope", "", "../x", "sqrt\x00"]) | st.text(max_size=12)
param_values = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
                | st.text(max_size=8) | st.none() | st.booleans() | st.lists(st.integers(), max_size=2))
params = st.dictionaries(st.sampled_from(["n", "interval", "rate", "duration", "samples", "batch", "seed", "x"]),
                         param_values, max_size=4)
bodies = (st.fixed_dictionaries({"task": task_names, "params": params})
          | st.fixed_dictionaries({"task": task_names}, optional={"params": json_values, "extra": json_values})
          | json_values)

ids = st.text(max_size=40) | st.from_regex(r"[0-9a-f]{32}", fullmatch=True) | st.sampled_from(
    ["*", "..", "%00", "a:b", "jobcast:jobs", "é" * 32, "0" * 33])
endpoints = st.sampled_from(["/api/jobs/{}", "/jobs/{}", "/jobs/{}/stream", "/jobs/{}/events",
                             "/jobs/{}/frame", "/jobs/{}/framed", "/jobs/{}/plain"])
query_values = st.text(max_size=12) | st.integers(min_value=-(2**70), max_value=2**70).map(str)


@pytest.fixture(scope="module")
def server(redis_server, logs_dir):
    """A gunicorn with no workers behind it: fuzzed jobs stay queued and harm nothing."""
    s = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-fuzz.log",
                  JOBCAST_QUEUE="fuzz").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.text[:200]
        assert "error" in r.json()


@FUZZ
@given(body=bodies, truncated=st.booleans())
def test_fuzzed_job_creation_never_5xx(client, body, truncated):
    # allow_nan: NaN and Infinity are sent as Python writes them, which JSON forbids.
    text = json.dumps(body, allow_nan=True)
    r = client.post("/api/jobs", content=text[:-1] if truncated else text,
                    headers={"Content-Type": "application/json"})
    check(r)
    if r.status_code == 201:
        assert set(r.json()) == {"id", "urls"}


@FUZZ
@given(endpoint=endpoints, job_id=ids, after=query_values, start=query_values,
       # Header bytes gunicorn's parser accepts (it answers control characters itself).
       last_id=st.text(alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=12).map(str.strip))
def test_fuzzed_reads_never_5xx(client, endpoint, job_id, after, start, last_id):
    # A well-formed random id belongs to no job, so it answers 404, never a waiting stream.
    path = endpoint.format(urllib.parse.quote(job_id, safe=""))
    r = client.get(path, params={"after": after, "start": start},
                   headers={"Last-Event-ID": last_id.encode("latin-1")})
    check(r)


@FUZZ
@given(limit=query_values)
def test_fuzzed_job_list_never_5xx(client, limit):
    check(client.get("/api/jobs", params={"limit": limit}))
