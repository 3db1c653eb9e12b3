"""A Redis that stops answering behind live connections (frozen, or cut off without a reset):
the web process answers 503 within its command timeout, not never, and is ready again once
Redis answers. Real redis-server (paused with SIGSTOP) and real gunicorn."""

from __future__ import annotations

import signal
from typing import Iterator

import httpx
import pytest
from redis import Redis

from jobcast.launcher.redisserver import RedisServer
from jobcast.core.store import COMMAND_TIMEOUT
from jobcast.web.broker import READER_CHECK_INTERVAL, Broker
from tests.support.jobs import running_job
from tests.support.services import WebServer
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def frozen(tmp_path_factory, logs_dir) -> Iterator[tuple[RedisServer, WebServer]]:
    """A redis-server of its own (the tests pause it) and a one-worker gunicorn on it."""
    redis_server = RedisServer(data_dir=tmp_path_factory.mktemp("redis-frozen")).start()
    web = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-frozen.log").start()
    yield redis_server, web
    redis_server.proc.send_signal(signal.SIGCONT)
    web.stop()
    redis_server.stop()


def test_readyz_and_the_json_reads_answer_503_while_redis_is_frozen_and_200_once_it_answers(frozen):
    """A review reported ``/readyz`` and the JSON reads hanging while Redis was paused; the
    web's pooled client now says its own timeout (redis-py's default was none before its
    version 8), so a readiness probe says "not ready" and a reader gets a 503 to retry."""
    redis_server, web = frozen
    with Redis.from_url(redis_server.url) as redis:
        job_id = running_job(redis).job_id
    # The client's timeout is the deadline: a request that hangs fails the test.
    with httpx.Client(base_url=web.url, timeout=3 * COMMAND_TIMEOUT) as http:
        assert http.get(f"/api/jobs/{job_id}").status_code == 200   # its connections are open
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            for path in (f"/api/jobs/{job_id}", "/api/jobs?limit=1"):
                r = http.get(path)
                assert r.status_code == 503, path
                assert r.json()["error"] == "service_unavailable" and r.headers["Retry-After"]
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: http.get("/readyz").status_code == 200, 30, what="ready again")
        assert http.get(f"/api/jobs/{job_id}").json()["status"] == "running"


def test_a_frozen_redis_leaves_the_broker_not_ready_within_two_of_its_health_checks(frozen):
    """A failover review's finding: after a Sentinel primary froze and its replica was
    promoted, the web's requests went to the new primary while the broker's pub/sub
    connection waited on the frozen one for 30–60 s (a PING every 30 s, given up after 30 s
    more unanswered): ``/readyz`` said 200 while every newcomer was refused with 503."""
    redis_server, _ = frozen
    redis = Redis.from_url(redis_server.url)
    broker = Broker(redis, poll=0.1)
    broker.start()
    try:
        assert broker.wait_ready(10)
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not broker.ready, 2 * READER_CHECK_INTERVAL + 5,
                     what="the broker to give the frozen connection up")
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert broker.wait_ready(30)
    finally:
        broker.stop(5)
        redis.close()
