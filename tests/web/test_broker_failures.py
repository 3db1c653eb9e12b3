"""The broker's (UN)SUBSCRIBE batches when they fail, on their own (a stand-in pub/sub
connection: the real connection's losses are in tests/web/test_subscriptions.py and
tests/chaos/)."""

from __future__ import annotations

import logging

import fakeredis
from redis.exceptions import ConnectionError as RedisConnectionError

from jobcast.web.broker import Broker, Shard


class FailingPubSub:
    """A pub/sub connection whose every SUBSCRIBE raises ``exc``."""

    def __init__(self, exc: Exception):
        """Raise ``exc`` on each subscribe."""
        self.exc = exc

    def subscribe(self, *names: str) -> None:
        """Fail."""
        raise self.exc


def broker_with(exc: Exception) -> Broker:
    """A broker whose one shard's connection fails each SUBSCRIBE with ``exc``, and a job
    waiting to be subscribed to."""
    broker = Broker(fakeredis.FakeRedis())
    shard = broker._shards["redis"] = Shard("redis", None, sharded=False)
    shard.pubsub = FailingPubSub(exc)
    broker.subscribe("job-1")
    return broker


def test_a_subscribe_that_fails_on_a_bug_is_logged_with_its_traceback_once_and_tried_again(caplog):
    broker = broker_with(TypeError("a bug"))
    with caplog.at_level(logging.INFO, logger="jobcast.web.broker"):
        broker._flush()
        broker._flush()
    first, second = [r for r in caplog.records if "subscribe on redis failed" in r.getMessage()]
    assert first.levelno == logging.ERROR and first.exc_info[0] is TypeError
    assert second.levelno == logging.INFO and second.exc_info is None  # not every 0.1 s
    assert broker._to_subscribe == {"job-1"}  # the next round tries again
    assert "job-1" not in broker._shards["redis"].sent


def test_a_subscribe_that_fails_on_a_lost_connection_is_one_line_each_time(caplog):
    broker = broker_with(RedisConnectionError("Connection reset by peer"))
    with caplog.at_level(logging.INFO, logger="jobcast.web.broker"):
        broker._flush()
    [line] = [r for r in caplog.records if "subscribe on redis failed" in r.getMessage()]
    assert line.levelno == logging.INFO and line.exc_info is None
    assert "Connection reset by peer" in line.getMessage() and "retrying" in line.getMessage()
    assert broker._to_subscribe == {"job-1"}
