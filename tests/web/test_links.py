"""Signed view links and the read-mode setting: pure logic, no server."""

from __future__ import annotations

import uuid

import pytest
from itsdangerous import URLSafeSerializer

from jobcast.core import secret
from jobcast.core.joblog import JobLog, UnknownJob
from jobcast.core.secret import SECRET_KEY, signing_key
from jobcast.core.settings import Settings
from jobcast.core.urls import with_sig
from jobcast.web.links import SALT, LinkError, sign, verify, view_sig

JOB = "a" * 32
CREATED = 1764000000.123456  # the job's created_at
SECRET = "s" * 32
CFG = Settings(token="t0ken", secret=SECRET)


def created() -> float:
    """The creation time of the job named JOB now in Redis (a link names it, with the id)."""
    return CREATED


def tampered(token: str) -> str:
    """``token`` with one character of its payload changed."""
    k = 5
    return token[:k] + ("x" if token[k] != "x" else "y") + token[k + 1:]


def test_a_link_verifies_for_its_job_until_it_expires():
    assert verify(CFG, JOB, sign(CFG, JOB, CREATED), created) == {"j": JOB, "c": CREATED}
    timed = sign(CFG, JOB, CREATED, ttl=60, now=1000.0)
    assert verify(CFG, JOB, timed, created, now=1059.0)["e"] == 1060
    with pytest.raises(LinkError) as exc:
        verify(CFG, JOB, timed, created, now=1060.0)
    assert exc.value.reason == "expired"


@pytest.mark.parametrize("token, reason", [
    (sign(CFG, "b" * 32, CREATED), "other_job"),
    # An earlier job given the same id (finding 20 of issue 23).
    (sign(CFG, JOB, CREATED - 60), "other_job"),
    (URLSafeSerializer(SECRET, salt=SALT).dumps({"j": JOB}), "other_job"),
    (sign(Settings(secret="another"), JOB, CREATED), "invalid"),
    # Signed with the token: never the key (finding 5 of issue 23).
    (URLSafeSerializer("t0ken", salt=SALT).dumps({"j": JOB, "c": CREATED}), "invalid"),
    (tampered(sign(CFG, JOB, CREATED)), "invalid"),
    ("", "invalid"),
    ("not.a.link", "invalid"),
])
def test_other_job_other_key_and_tampered_links_are_refused_with_a_reason(token, reason):
    with pytest.raises(LinkError) as exc:
        verify(CFG, JOB, token, created)
    assert exc.value.reason == reason


def test_the_secret_signs_links_when_set_so_the_token_can_rotate():
    with_secret = Settings(token="old", secret="s3")
    link = sign(with_secret, JOB, CREATED)
    assert verify(Settings(token="new", secret="s3"), JOB, link, created)["j"] == JOB


def test_read_mode_defaults_on_the_token_and_rejects_other_values():
    assert Settings().read_mode == "public"
    assert Settings(token="t").read_mode == "private"
    assert Settings(token="t", read="public").read_mode == "public"
    assert Settings(read="PRIVATE", secret="s").read_mode == "private"
    with pytest.raises(ValueError, match="JOBCAST_READ"):
        Settings(read="open").read_mode


def test_urls_are_signed_only_in_private_mode():
    assert view_sig(Settings(), JOB, CREATED) is None
    sig = view_sig(Settings(token="t", secret=SECRET), JOB, CREATED)
    assert with_sig("/jobs/x", sig) == f"/jobs/x?sig={sig}"
    assert with_sig("/jobs/x?start=2", sig).startswith("/jobs/x?start=2&sig=")
    assert with_sig("/jobs/x", None) == "/jobs/x"


def test_without_a_secret_links_are_signed_with_a_key_generated_once_in_redis_never_the_token(
        redis_server, redis, monkeypatch):
    """Finding 5 of issue 23: links were signed with the token, so one link allowed guessing
    it offline. The generated key is 32 random bytes, shared by every process through Redis."""
    cfg = Settings(redis_url=redis_server.url, token="t0ken")
    monkeypatch.setattr(secret, "_keys", {})
    link = sign(cfg, JOB, CREATED)
    key = redis.get(SECRET_KEY).decode()
    assert len(key) == 64 and key != cfg.token and signing_key(cfg) == key
    # Another process (nothing cached) reads the same key, and accepts the link.
    monkeypatch.setattr(secret, "_keys", {})
    assert verify(cfg, JOB, link, created)["j"] == JOB
    forged = URLSafeSerializer(cfg.token, salt=SALT).dumps({"j": JOB, "c": CREATED})
    with pytest.raises(LinkError) as exc:
        verify(cfg, JOB, forged, created)
    assert exc.value.reason == "invalid"


def test_a_link_opens_its_own_job_and_not_a_later_one_given_the_same_id(redis_server, redis):
    """Finding 20 of issue 23: a link bound only the job id, so a link for an RQ job with a
    chosen id also opened any later job given that id."""
    cfg = Settings(redis_url=redis_server.url, token="t0ken", secret=SECRET)
    job_id = f"chosen-{uuid.uuid4().hex[:8]}"
    first = JobLog(redis, job_id)
    first.create("sqrt", {}, 1)
    link = sign(cfg, job_id, first.info().created_at)
    assert verify(cfg, job_id, link, lambda: first.info().created_at)["j"] == job_id
    redis.delete(first.keys.meta, first.keys.log)  # it expired: no job of that id (the
    with pytest.raises(UnknownJob):                 # caller answers 404) ...
        verify(cfg, job_id, link, lambda: first.info().created_at)
    later = JobLog(redis, job_id)  # ... and someone gave a new job the same id
    later.create("sqrt", {}, 1)
    with pytest.raises(LinkError) as exc:
        verify(cfg, job_id, link, lambda: later.info().created_at)
    assert exc.value.reason == "other_job"


def private_job_with_link(redis_server, redis, make_app, prefix: str):
    """A private server's settings and test client, a new job (id ``<prefix>-…``) and a view
    link for it."""
    cfg = Settings(redis_url=redis_server.url, token="t0ken-for-this-test", secret=SECRET)
    client = make_app({"JOBCAST": cfg}).test_client()
    jlog = JobLog(redis, f"{prefix}-{uuid.uuid4().hex[:8]}")
    jlog.create("sqrt", {}, 1)
    return cfg, client, jlog, sign(cfg, jlog.job_id, jlog.info().created_at)


def test_a_good_link_to_a_job_that_is_gone_gets_the_token_holders_404_and_no_later_job(
        redis_server, redis, make_app):
    """A link whose job has no log now was answered 403 "for an earlier job of that id",
    where the token got 404. Its holder gets the same 404; a later job of that id is still
    refused, and the multi-job stream grants it nothing."""
    cfg, client, first, link = private_job_with_link(redis_server, redis, make_app, "gone")
    job_id = first.job_id
    redis.delete(first.keys.meta, first.keys.log)
    for path in (f"/jobs/{job_id}/stream", f"/jobs/{job_id}/events", f"/jobs/{job_id}",
                 f"/api/jobs/{job_id}"):
        by_link = client.get(path, query_string={"sig": link})
        by_token = client.get(path, headers={"Authorization": f"Bearer {cfg.token}"})
        assert by_link.status_code == by_token.status_code == 404, path
        assert by_link.json == by_token.json, path
    events = client.get("/events", query_string={"job": job_id, "sig": link})
    assert events.status_code == 403 and events.json["reason"] == "other_job"
    JobLog(redis, job_id).create("sqrt", {}, 1)  # a later job given the same id
    later = client.get(f"/jobs/{job_id}/stream", query_string={"sig": link})
    assert later.status_code == 403 and later.json["reason"] == "other_job"


def test_a_multi_job_stream_refused_for_a_job_or_the_list_is_counted(redis_server, redis,
                                                                       make_app):
    """A review's finding: ``/events`` refusals raised in the view (a job no link grants, the
    job list without the token) were missing from jobcast_stream_refusals_total."""
    from jobcast.web import metrics

    def refused(reason: str) -> float:
        """The refusals counted for ``reason`` so far."""
        return metrics.STREAM_REFUSALS.labels(reason)._value.get()

    cfg = Settings(redis_url=redis_server.url, token="t0ken-for-this-test", secret=SECRET)
    client = make_app({"JOBCAST": cfg}).test_client()
    a, b = JobLog(redis, uuid.uuid4().hex), JobLog(redis, uuid.uuid4().hex)
    for log in (a, b):
        log.create("sqrt", {}, 1)
    link = sign(cfg, a.job_id, a.info().created_at)
    forbidden, unauthorized = refused("forbidden"), refused("unauthorized")
    assert client.get("/events", query_string={"job": [a.job_id, b.job_id],
                                               "sig": link}).status_code == 403
    assert refused("forbidden") == forbidden + 1
    assert client.get("/events", query_string={"job": a.job_id, "list": "10",
                                               "sig": link}).status_code == 401
    assert refused("unauthorized") == unauthorized + 1


def test_a_link_repeated_beside_many_jobs_is_checked_once_not_once_per_job(
        redis_server, redis, make_app, monkeypatch):
    """A review's finding: the multi-job stream checked every link against every job, and a
    repeated link was checked again: one link sent 70 times beside 99 other jobs cost ~7,000
    signature checks (~100 ms of the loop) per request."""
    from jobcast.web import security

    _cfg, client, jlog, link = private_job_with_link(redis_server, redis, make_app, "many")
    job_id = jlog.job_id
    checks = []
    real = security.verify
    monkeypatch.setattr(security, "verify", lambda *a, **k: checks.append(a[1]) or real(*a, **k))
    others = [f"j{k}" for k in range(99)]
    r = client.get("/events", query_string={"job": [*others, job_id], "sig": [link] * 70})
    assert r.status_code == 403 and r.json["reason"] == "other_job"  # the others: no link
    assert checks == [job_id]
    checks.clear()
    r = client.get("/events", query_string={"job": others[:3], "sig": [link, tampered(link)]})
    assert r.status_code == 403 and r.json["reason"] in ("other_job", "invalid")
    assert len(checks) <= 1


def test_a_multi_job_stream_refused_for_one_jobs_link_names_that_job_in_its_body(
        redis_server, redis, make_app):
    """A review's finding: a stream of several jobs refused for one job's expired link said
    only "the view link has expired", so jobcast.js refused every job of the connection (tabs
    share it). The 403 names the job its refusal is for, whatever the reason."""
    cfg, client, a, link_a = private_job_with_link(redis_server, redis, make_app, "one")
    b = JobLog(redis, f"two-{uuid.uuid4().hex[:8]}")
    b.create("sqrt", {}, 1)
    created_b = b.info().created_at
    expired = sign(cfg, b.job_id, created_b, ttl=60, now=created_b - 3600)
    jobs = {"job": [a.job_id, b.job_id]}
    r = client.get("/events", query_string={**jobs, "sig": [link_a, expired]})
    assert (r.status_code, r.json["reason"], r.json["job"]) == (403, "expired", b.job_id)
    r = client.get("/events", query_string={**jobs, "sig": link_a})  # b: no link at all
    assert (r.status_code, r.json["reason"], r.json["job"]) == (403, "other_job", b.job_id)
    redis.delete(b.keys.meta, b.keys.log)  # b's link is good, and its job gone
    r = client.get("/events", query_string={**jobs, "sig": [link_a, sign(cfg, b.job_id, created_b)]})
    assert (r.status_code, r.json["reason"], r.json["job"]) == (403, "other_job", b.job_id)
    # A tampered link (it names no job) refuses the request.
    r = client.get("/events", query_string={"job": a.job_id, "sig": [link_a, tampered(link_a)]})
    assert r.status_code == 403 and r.json["reason"] == "invalid" and "job" not in r.json


def test_a_multi_job_stream_reads_the_request_before_the_links_and_ignores_a_link_not_asked_for(
        redis_server, redis, make_app):
    """A review's finding: the links were checked before the request was read, so a request
    with a good link answered 403 "other_job" where it asked for the job list (401) or named
    no job or a malformed one (400); and a good link for a job the request did not ask for
    refused the whole stream."""
    cfg, client, a, link_a = private_job_with_link(redis_server, redis, make_app, "read")
    b = JobLog(redis, f"other-{uuid.uuid4().hex[:8]}")
    b.create("sqrt", {}, 1)
    link_b = sign(cfg, b.job_id, b.info().created_at)
    expired = sign(cfg, a.job_id, a.info().created_at, ttl=60, now=a.info().created_at - 3600)
    r = client.get("/events", query_string={"list": "5", "sig": link_a})
    assert r.status_code == 401, r.json
    r = client.get("/events", query_string={"list": "5", "sig": expired})
    assert r.status_code == 401, r.json
    r = client.get("/events", query_string={"list": "5", "sig": link_a},
                   headers={"Authorization": "Bearer not-the-token"})
    assert (r.status_code, r.json["reason"]) == (403, "bad_token")
    for query in ({"sig": link_a}, {"job": "a*b", "sig": link_a}):
        r = client.get("/events", query_string=query)
        assert (r.status_code, r.json["field"]) == (400, "job"), query
    r = client.get("/events", query_string={"job": a.job_id, "sig": [link_a, link_b]})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    r.close()
