"""``redis+sentinel://`` URLs: read by hand (redis-py has no such scheme), checked as settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.sentinel import SentinelConnectionPool

from jobcast.core.redisurl import (BadRedisUrl, SentinelTarget, check_redis_url, node_urls,
                                   parse_sentinel_url)
from jobcast.core.settings import Settings
from jobcast.core.store import (BlockingSentinelPool, FollowingConnection, cluster_enabled,
                                redis_client)


def test_a_sentinel_url_names_its_hosts_primary_and_database():
    assert parse_sentinel_url("redis+sentinel://s1:26380,s2,10.0.0.3:5000/jobcast/2") == \
        SentinelTarget((("s1", 26380), ("s2", 26379), ("10.0.0.3", 5000)), "jobcast", 2)


def test_credentials_are_the_nodes_and_the_sentinels_have_their_own_option():
    target = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@[::1]:26379,[fe80::1]/main?sentinel_password=s3")
    assert target.sentinels == (("::1", 26379), ("fe80::1", 26379))
    assert (target.username, target.password, target.sentinel_password) == ("app", "p@ss", "s3")
    assert target.master == "main" and target.db == 0
    only_password = parse_sentinel_url("redis+sentinel://:secret@h:1/m/")
    assert (only_password.username, only_password.password, only_password.db) == (None, "secret", 0)


@pytest.mark.parametrize("url", [
    "redis+sentinel://h:1",                    # no primary named
    "redis+sentinel://h:1/",
    "redis+sentinel://h:1/m/x",                # db not a number
    "redis+sentinel://h:1/m/0/extra",
    "redis+sentinel://h:99999/m",              # port out of range
    "redis+sentinel://h:1,,h2:2/m",            # an empty host
    "redis+sentinel://[::1/m",
    "redis+sentinel://h:1/m?password=x",       # unknown option
])
def test_a_malformed_sentinel_url_is_refused_saying_why(url):
    with pytest.raises(BadRedisUrl):
        parse_sentinel_url(url)


def test_a_bad_sentinel_url_stops_the_settings_naming_the_variable(monkeypatch):
    monkeypatch.setenv("JOBCAST_STREAM_URL", "redis+sentinel://h:1")
    with pytest.raises(ValidationError, match="JOBCAST_STREAM_URL"):
        Settings()
    monkeypatch.delenv("JOBCAST_STREAM_URL")
    assert check_redis_url("redis://x:1/0") == "redis://x:1/0"  # redis-py's own, left to it
    assert Settings(redis_url="redis+sentinel://a:1,b:2/jc/1").redis_url.endswith("/jc/1")


@pytest.mark.parametrize("url", ["redis://h:1/0?decode_responses=True",
                                 "unix:///run/redis.sock?decode_responses=yes"])
def test_a_url_that_asks_for_decoded_responses_stops_the_settings_naming_it(monkeypatch, url):
    """A second reading's finding: ``REDIS_URL=…?decode_responses=True`` started, then every
    request that read Redis answered 500 (Jobcast reads bytes)."""
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ValidationError, match="decode_responses"):
        Settings()
    assert check_redis_url(url.replace("True", "0").replace("yes", "no")).startswith(url[:8])


def test_a_sentinel_client_follows_the_primary_on_every_connect_and_can_be_bounded():
    url = "redis+sentinel://127.0.0.1:1,127.0.0.1:2/jc/3"
    client = redis_client(url)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "jc"
    assert pool.connection_class is FollowingConnection
    assert pool.connection_kwargs["db"] == 3
    bounded = redis_client(url, pooled=True).connection_pool
    assert isinstance(bounded, BlockingSentinelPool) and bounded.max_connections == 64
    assert not cluster_enabled(url)  # never probed: a Sentinel's primary is no Cluster node


def test_a_following_connection_asks_the_sentinels_again_when_it_reconnects(monkeypatch):
    client = redis_client("redis+sentinel://127.0.0.1:1/jc")
    pool = client.connection_pool
    addresses = iter([("127.0.0.1", 7001), ("127.0.0.1", 7002)])
    monkeypatch.setattr(pool.proxy, "get_master_address", lambda: next(addresses))
    dialled = []
    monkeypatch.setattr("redis.connection.Connection._connect",
                        lambda self: dialled.append((self.host, self.port)) or object())
    conn = FollowingConnection(**pool.connection_kwargs)
    conn._connect()
    conn._connect()  # a retry within one command: redis-py's own would dial 7001 again
    assert dialled == [("127.0.0.1", 7001), ("127.0.0.1", 7002)]


@pytest.mark.parametrize("url", [
    "localhost:6379",                            # no scheme
    "redis://:pa#ss@127.0.0.1:1/0",              # an unencoded "#" in the password
    "redis://h:99999/0",
    "redis+sentinel://:s3cr/et@h:1/m",           # an unencoded "/" in the password
    "redis+sentinel://u:s3cr@et@h:x/m",
])
def test_a_malformed_redis_url_stops_the_settings_without_quoting_it(monkeypatch, url):
    """A review's finding: a URL without a scheme passed, to die later in a traceback; one
    whose password had a "#" or "/" was refused quoting part of it ("... as 'pa'")."""
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ValidationError, match="REDIS_URL") as caught:
        Settings()
    for secret in ("pa", "ss", "s3cr", "et"):
        assert f"'{secret}" not in str(caught.value) and f"{secret}'" not in str(caught.value)


def test_a_sentinel_password_keeps_its_plus_signs_as_the_primarys_password_does():
    """A review's finding: the query was read as a form (parse_qs), so a "+" in the Sentinel's
    password (base64 secrets hold them) became a space, and Sentinel refused the login."""
    target = parse_sentinel_url("redis+sentinel://:a+b@h1/main?sentinel_password=s+t%2Bu")
    assert (target.password, target.sentinel_password) == ("a+b", "s+t+u")


def test_a_stream_url_may_name_several_cluster_nodes_each_with_its_credentials_and_options():
    url = "rediss://u:p%2Cw@a:7001,b:7002?ssl_cert_reqs=none"
    assert node_urls(url) == ["rediss://u:p%2Cw@a:7001?ssl_cert_reqs=none",
                              "rediss://u:p%2Cw@b:7002?ssl_cert_reqs=none"]
    assert node_urls("redis://a:7001, b:7002/0") == ["redis://a:7001/0", "redis://b:7002/0"]
    for one in ("redis://a:7001/0", "unix:///run/redis.sock", "redis+sentinel://s1,s2/main"):
        assert node_urls(one) == [one]
    assert Settings(stream_url="redis://a:7001,b:7002/0").stream_url == "redis://a:7001,b:7002/0"
    with pytest.raises(BadRedisUrl):
        check_redis_url("redis://a:7001,b:port/0")


def test_redis_url_names_one_redis_as_rq_s_queue_cannot_be_on_a_cluster(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://a:7001,b:7002/0")
    with pytest.raises(ValidationError, match="JOBCAST_STREAM_URL"):
        Settings()


def test_several_hosts_of_a_redis_that_is_no_cluster_are_refused_naming_why(redis_server):
    from redis.exceptions import ClusterError

    from jobcast.core.store import connect

    port = redis_server.url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(ClusterError, match="not one"):
        connect(f"redis://127.0.0.1:{port},127.0.0.1:{port}/0")
