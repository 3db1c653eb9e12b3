"""Abuse limits: a token for creating jobs, caps on parameters and on concurrent streams."""

from __future__ import annotations


import logging
import re

import httpx
import pytest

from tests.support.metrics import served_refusals
from tests.support.services import WebServer
from tests.support.wait import wait_for

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def guarded(redis_server, logs_dir):
    """A gunicorn with a token and tight stream caps (no workers: jobs stay queued).

    Reading is public here (a token alone makes it private): these tests are about creating
    and the stream caps; tests/web/test_security.py covers private reading.
    """
    s = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-limits.log",
                  JOBCAST_TOKEN=TOKEN, JOBCAST_READ="public", JOBCAST_STREAMS_PER_CLIENT="3", JOBCAST_HEARTBEAT="1",
                  JOBCAST_STREAMS_PER_PROCESS="5", JOBCAST_TRUST_PROXY="1",
                  JOBCAST_QUEUE="limits", JOBCAST_PARAM_CAPS="n=1000,sqrt.interval=2").start()
    yield s
    s.stop()


def post(server, headers=None, **params):
    return httpx.post(f"{server.url}/api/jobs", json={"task": "sqrt", "params": params},
                      headers=headers or {})


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_creating_a_job_needs_the_bearer_token(guarded):
    for headers in ({}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        r = post(guarded, headers, n=5)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = post(guarded, auth("wrong"), n=5)  # a token, not this server's
    assert r.status_code == 403 and r.json()["reason"] == "bad_token"
    assert post(guarded, auth(), n=5).status_code == 201


def test_parameters_over_the_configured_caps_are_refused(guarded):
    r = post(guarded, auth(), n=1001)
    assert r.status_code == 400 and r.json()["field"] == "params.n" and "cap" in r.json()["message"]
    assert post(guarded, auth(), n=10, interval=3).json()["field"] == "params.interval"
    assert post(guarded, auth(), n=1000, interval=2).status_code == 201


def hold_streams(server, job_id, count, client_ip):
    """Open ``count`` event streams from ``client_ip``; return (responses, closer)."""
    c = httpx.Client(base_url=server.url, timeout=10)
    streams = []
    for _ in range(count):
        cm = c.stream("GET", f"/jobs/{job_id}/events", headers={"X-Forwarded-For": client_ip})
        streams.append((cm, cm.__enter__()))

    def close():
        for cm, _ in streams:
            cm.__exit__(None, None, None)
        c.close()

    return [r for _, r in streams], close


def test_stream_caps_answer_429_per_client_and_503_per_process_with_retry_after(guarded):
    before = {r: served_refusals(guarded.url, r) for r in ("per_client", "per_process")}
    job_id = post(guarded, auth(), n=5).json()["id"]
    held, close_a = hold_streams(guarded, job_id, 3, "10.0.0.1")
    try:
        assert [r.status_code for r in held] == [200, 200, 200]
        r = httpx.get(f"{guarded.url}/jobs/{job_id}/stream", headers={"X-Forwarded-For": "10.0.0.1"})
        assert r.status_code == 429 and r.headers["Retry-After"] and r.json()["error"]
        more, close_b = hold_streams(guarded, job_id, 2, "10.0.0.2")
        try:
            assert [r.status_code for r in more] == [200, 200]
            r = httpx.get(f"{guarded.url}/jobs/{job_id}/frame", headers={"X-Forwarded-For": "10.0.0.3"})
            assert r.status_code == 503 and r.headers["Retry-After"]
        finally:
            close_b()
    finally:
        close_a()
    # Closed streams are released: the client may stream again.
    wait_for(lambda: httpx.get(f"{guarded.url}/api/jobs/{job_id}").json()["viewers_here"] == 0, 10,
             what="streams released")
    held, close_c = hold_streams(guarded, job_id, 3, "10.0.0.1")
    try:
        assert [r.status_code for r in held] == [200, 200, 200]
    finally:
        close_c()
    # Each refusal is counted by its reason (the module's other tests refuse some too).
    assert {r: served_refusals(guarded.url, r) - n for r, n in before.items()} == \
        {"per_client": 1, "per_process": 1}


def test_behind_a_trusted_proxy_the_client_is_its_last_hop_not_what_the_client_wrote(guarded):
    job_id = post(guarded, auth(), n=5).json()["id"]
    wait_for(lambda: re.search(r"^jobcast_viewers 0\.0$", httpx.get(f"{guarded.url}/metrics").text,
                               re.M), 10, what="earlier tests' streams released")
    held, close = hold_streams(guarded, job_id, 3, "10.0.0.1")
    try:
        assert [r.status_code for r in held] == [200, 200, 200]
        # A proxy that appends (nginx's $proxy_add_x_forwarded_for) keeps whatever the client
        # wrote in front of the address it saw: 10.0.0.1 at its cap cannot pass as 10.0.0.4 ...
        r = httpx.get(f"{guarded.url}/jobs/{job_id}/stream",
                      headers={"X-Forwarded-For": "10.0.0.4, 10.0.0.1"})
        assert r.status_code == 429
        # ... and 10.0.0.4 is not refused for 10.0.0.1's streams because it wrote that address.
        other, close_other = hold_streams(guarded, job_id, 1, "10.0.0.1, 10.0.0.4")
        assert [r.status_code for r in other] == [200]
        close_other()
    finally:
        close()


# ---- per-client rates (unit: no server) ------------------------------------------------------

def test_a_client_rate_allows_a_burst_then_one_per_share_of_a_minute(clock):
    from jobcast.web.limits import ClientRate

    rate = ClientRate(6, clock=clock)
    assert [rate.take("a") for _ in range(6)] == [0.0] * 6
    assert rate.take("a") == pytest.approx(10.0) and rate.wait("a") == pytest.approx(10.0)
    assert rate.take("b") == 0.0, "each client has its own bucket"
    clock.advance(5)
    assert rate.wait("a") == pytest.approx(5.0)
    clock.advance(5)
    assert rate.take("a") == 0.0 and rate.take("a") > 0
    assert ClientRate(0, clock=clock).take("a") == 0.0, "0: no limit"


def test_a_client_rate_keeps_a_bounded_number_of_buckets(clock):
    from jobcast.web.limits import ClientRate

    rate = ClientRate(2, clock=clock, max_clients=100)
    for i in range(1000):
        rate.take(f"10.0.{i // 256}.{i % 256}")
        clock.advance(0.01)
    assert len(rate.buckets) <= 100
    assert "10.0.3.231" in rate.buckets, "the most recent clients are kept"


def test_many_addresses_spending_a_little_each_never_free_a_throttled_client(clock):
    """A security review's finding: the oldest buckets were dropped past ``max_clients``, so
    after one token each from 10,001 other addresses a throttled client could guess again."""
    from jobcast.web.limits import ClientRate

    rate = ClientRate(3, clock=clock, max_clients=100)
    while not rate.take("2001:db8::/64"):
        pass
    for i in range(1000):
        assert rate.take(f"10.0.{i // 256}.{i % 256}") == 0.0
    assert rate.wait("2001:db8::/64") > 0, "still held back"
    assert len(rate.buckets) <= 100


@pytest.mark.parametrize("remote, client", [
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("203.0.113.7", "203.0.113.7"),
    ("unix:/run/sock", "unix:/run/sock"),
])
def test_an_ipv6_client_is_its_slash_64_for_every_per_client_limit(remote, client):
    """A security review's finding: each IPv6 address counted as a client of its own, so a host
    with a /64 (as most are given) had unlimited failed tokens, creates and streams."""
    from jobcast.core.settings import Settings
    from jobcast.web import limits

    assert limits.client_address_of(Settings(), remote, "") == client
    trusted = Settings(trust_proxy=True)
    assert limits.client_address_of(trusted, "10.0.0.9", f"198.51.100.1, {remote}") == client


def test_a_proxy_this_server_does_not_trust_is_warned_about_once(monkeypatch, caplog):
    """A review's finding: behind a proxy without JOBCAST_TRUST_PROXY every client shares the
    proxy's address, so ten wrong tokens from one of them lock all of them out; nothing said
    so. The first request that carries X-Forwarded-For now warns, once per process."""
    from jobcast.core.settings import Settings
    from jobcast.web import limits

    monkeypatch.setattr(limits, "_told_of_proxy", False)
    with caplog.at_level(logging.WARNING, logger="jobcast.web.limits"):
        trusted = Settings(trust_proxy=True)
        assert limits.client_address_of(trusted, "10.0.0.9", "203.0.113.5") == "203.0.113.5"
        assert limits.client_address_of(Settings(), "10.0.0.9", "") == "10.0.0.9"
        assert caplog.records == []
        for _ in range(3):
            assert limits.client_address_of(Settings(), "10.0.0.9", "203.0.113.5") == "10.0.0.9"
    [warning] = caplog.records
    assert "JOBCAST_TRUST_PROXY" in warning.getMessage() and "10.0.0.9" in warning.getMessage()


def test_a_stream_whose_admission_fails_gives_back_its_slot_and_its_subscription(
        app, client, redis, monkeypatch):
    """A code review's finding: an error in the Flask path between taking a stream's slot and
    subscription and handing the response over (building the preamble, the response) kept
    both for good: the slot counted against the client's cap until the process restarted."""
    from jobcast.web import admission
    from tests.support.jobs import running_job

    def broken(environ):
        """Fail as the view reaches the connection."""
        raise RuntimeError("broken")

    job = running_job(redis)
    monkeypatch.setattr(admission, "can_take", broken)
    r = client.get(f"/jobs/{job.job_id}/stream")
    assert r.status_code == 500 and r.json == {"error": "internal_server_error",
                                               "message": "internal server error"}
    st = app.extensions["jobcast"]
    assert st.limiter.total == 0 and sum(st.limiter.by_client.values()) == 0
    assert st.relay.broker._subs[job.job_id].refs == 0


def test_a_stream_whose_subscription_redis_does_not_confirm_is_503_with_retry_after(
        app, client, redis, monkeypatch):
    """README's promise: a stream is refused 503, with Retry-After, when Redis does not
    confirm its job's subscription in time (its live entries could not be vouched for); the
    refusal keeps neither the client's slot nor the subscription."""
    from tests.support.jobs import running_job

    job = running_job(redis)
    st = app.extensions["jobcast"]
    client.get("/healthz")  # the app's services start at its first request
    # Redis never confirms: the broker's wait for the confirmation runs out at once.
    monkeypatch.setattr(st.relay.broker, "wait_subscribed", lambda job_id, timeout=0: False)
    r = client.get(f"/jobs/{job.job_id}/stream")
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert r.json["error"] == "service_unavailable" and "subscription" in r.json["message"]
    assert st.limiter.total == 0 and sum(st.limiter.by_client.values()) == 0
    assert st.relay.broker._subs[job.job_id].refs == 0


def test_a_multi_job_stream_whose_response_fails_gives_back_its_slot_and_subscriptions(
        app, client, redis, monkeypatch):
    """A Flask maintainer's review: /events took a slot and a subscription per job, and an
    error before its response existed kept them for good (the one-job stream gave them back)."""
    from jobcast.web import events
    from tests.support.jobs import running_job

    def broken(environ):
        """Fail as the view reaches the connection."""
        raise RuntimeError("broken")

    jobs = [running_job(redis), running_job(redis)]
    monkeypatch.setattr(events, "can_take", broken)
    r = client.get("/events?" + "&".join(f"job={j.job_id}" for j in jobs))
    assert r.status_code == 500
    st = app.extensions["jobcast"]
    assert st.limiter.total == 0 and sum(st.limiter.by_client.values()) == 0
    assert [st.relay.broker._subs[j.job_id].refs for j in jobs] == [0, 0]
