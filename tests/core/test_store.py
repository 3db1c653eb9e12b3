"""The stream store: where job logs live (JOBCAST_STREAM_URL) and how their keys are named.

A single Redis keeps the plain key names; on a Redis Cluster one job's keys and channel share
a hash tag (one slot), so the append script stays atomic. A pub/sub reader gets a client of
its own (:func:`reader_client`).
"""

from __future__ import annotations

import logging
import uuid

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from jobcast.core import store
from jobcast.core.joblog import JobLog
from jobcast.core.keys import (InvalidJobId, channel, job_id_from_channel, job_keys, log_key,
                               meta_key)
from jobcast.core.settings import Settings
from jobcast.launcher.redisserver import free_port
from jobcast.core.store import (cluster_enabled, error_text, is_cluster, is_masked, masked_url,
                                reader_client, redis_client, separate, stream_redis, stream_url)


# A job id of each form RQ makes (uuid4), fixed so that every collection names the same tests.
FIXED_UUID = uuid.UUID("8f14e45f-ceea-467f-a1c2-9a3b5d6e7f80")


def test_the_stream_store_defaults_to_redis_url_with_no_new_setting(monkeypatch, redis):
    monkeypatch.delenv("JOBCAST_STREAM_URL", raising=False)
    cfg = Settings(redis_url="redis://127.0.0.1:1/0")
    assert cfg.stream_url == "" and stream_url(cfg) == cfg.redis_url and not separate(cfg)
    assert stream_redis(cfg, redis) is redis  # the queue's own client: one Redis, one client
    monkeypatch.setenv("JOBCAST_STREAM_URL", "redis://other:6379/0")
    cfg = Settings(redis_url="redis://127.0.0.1:1/0")
    assert stream_url(cfg) == "redis://other:6379/0" and separate(cfg)


def test_a_plain_redis_is_not_taken_for_a_cluster_and_keeps_its_key_names(redis, redis_server):
    assert not cluster_enabled(redis_server.url) and not is_cluster(redis)
    job_id = uuid.uuid4().hex
    assert job_keys(redis, job_id) == (f"jobcast:job:{job_id}", f"jobcast:job:{job_id}:log",
                                       f"jobcast:job:{job_id}:ch")
    assert JobLog(redis, job_id).keys.log == log_key(job_id)


@pytest.mark.parametrize("job_id", [FIXED_UUID.hex, str(FIXED_UUID), "nightly_report-2026"])
def test_a_jobs_cluster_keys_and_channel_share_one_slot(job_id):
    names = [meta_key(job_id, tagged=True), log_key(job_id, tagged=True),
             channel(job_id, tagged=True)]
    assert names == [f"jobcast:job:{{{job_id}}}", f"jobcast:job:{{{job_id}}}:log",
                     f"jobcast:job:{{{job_id}}}:ch"]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert job_id_from_channel(channel(job_id, tagged=True)) == job_id


@pytest.mark.parametrize("bad", ["{x}", "a}b", "a{b", "*", "a:b", ""])
def test_braces_and_other_characters_never_reach_a_cluster_key(bad):
    with pytest.raises(InvalidJobId):
        meta_key(bad, tagged=True)
    assert job_id_from_channel(f"jobcast:job:{{{bad}}}:ch") is None


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
    ("redis://host:6379/0?password=s3cret&db=2", "redis://host:6379/0?password=***&db=2"),
    ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ("redis+sentinel://:pw@h1,h2/main/0?sentinel_password=SENTPW",
     "redis+sentinel://:***@h1,h2/main/0?sentinel_password=***"),
    # A review's finding: urlsplit took what follows an unencoded "#" or "/" for a fragment
    # or a path, and the password was printed whole.
    ("redis://:pa#ss@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
    ("redis://u:a/b@host:6379/0", "redis://u:***@host:6379/0"),
    # A review's finding: an "@" or "#" in a password given as a parameter, or a URL without
    # "://", showed the password or the rest of it.
    ("redis://localhost:6379/0?password=s3cr@tpass", "redis://localhost:6379/0?password=***"),
    ("redis+sentinel://s1:26379,s2:26379/main?sentinel_password=Xy9@Qz7Kw2",
     "redis+sentinel://s1:26379,s2:26379/main?sentinel_password=***"),
    ("redis://h/0?sentinel_password=Xy9#Qz7Kw2&db=1", "redis://h/0?sentinel_password=***&db=1"),
    ("redis:/:s3cretpw@host:6379/0", "redis:***@host:6379/0"),
    ("redis://:p@ss@h:1/0?password=a@b", "redis://:***@h:1/0?password=***"),
    # A CLI user's review: a password put where redis-py reads a user name was shown.
    ("redis://s3cret@host:6379/0", "redis://***@host:6379/0"),
    ("rediss://p%40ss@host/1", "rediss://***@host/1"),
    ("s3cret@host:6379", "***@host:6379"),
    # An "@" in a parameter, with no credentials: nothing to mask (a second reading's).
    ("redis://host/0?client_name=a@b", "redis://host/0?client_name=a@b"),
])
def test_a_redis_url_is_shown_without_its_password(url, shown):
    """Finding 16 of issue 23: a password in REDIS_URL was printed."""
    assert masked_url(url) == shown
    # What was masked is known for masked when read back (up.json): never tried as it is.
    assert is_masked(shown) == (shown != url)


def test_the_stream_stores_url_is_logged_without_its_password(monkeypatch, caplog):
    """A review's finding: JOBCAST_STREAM_URL was logged at INFO with its password."""
    monkeypatch.setattr(store, "connect", lambda url, retry_for: object())
    monkeypatch.setattr(store, "_clients", {})  # this test's client, kept by no other
    config = Settings(redis_url="redis://localhost:6379/0",
                      stream_url="redis://:hunter2@streams.example:6379/1")
    with caplog.at_level(logging.INFO, logger=store.__name__):
        stream_redis(config)
    assert "streams.example" in caplog.text and "hunter2" not in caplog.text


def test_a_reader_client_reaches_the_same_redis_with_its_settings_and_a_pool_of_its_own(
        redis_server):
    web = redis_client(redis_server.url, pooled=True, socket_keepalive=True,
                       health_check_interval=30)
    reader = reader_client(web)
    pool = reader.connection_pool
    assert pool is not web.connection_pool
    assert pool.connection_kwargs["health_check_interval"] == 30
    assert pool.connection_kwargs["socket_keepalive"] is True
    name = f"reader-{uuid.uuid4().hex}"
    with reader.pubsub() as pubsub:
        pubsub.subscribe(name)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        web.publish(name, "hello")
        assert pubsub.get_message(timeout=5)["data"] == b"hello"


@pytest.mark.parametrize("url", ["unix:///run/redis.sock", "UNIX:///run/redis.sock"])
def test_a_unix_socket_client_is_given_no_tcp_keepalive_whatever_the_schemes_case(url):
    """redis-py's Unix-socket connection refuses TCP's keepalive option: every command raised
    TypeError (tests/test_system.py runs a real server on a socket)."""
    client = redis_client(url, pooled=True, socket_keepalive=True)
    assert "socket_keepalive" not in client.connection_pool.connection_kwargs


def test_a_reader_client_of_a_sentinel_primary_asks_the_same_sentinels_for_it():
    # No Sentinel is dialled: building the pool connects to nothing.
    sentinels = Sentinel([("127.0.0.1", 1)])
    web = sentinels.master_for("jobs", db=2, password="pw")
    pool = reader_client(web).connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool is not web.connection_pool
    assert (pool.service_name, pool.sentinel_manager, pool.is_master) == ("jobs", sentinels, True)
    assert pool.connection_class is web.connection_pool.connection_class
    assert pool.connection_kwargs["connection_pool"] is pool.proxy  # follows its own primary
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "pw")


def test_a_cluster_that_is_not_formed_is_a_redis_error_naming_it_not_a_traceback(monkeypatch):
    """A review's finding: redis-py raises RedisClusterException (no RedisError) for a node
    whose cluster has no slots yet, and the CLI, which answers an unreachable Redis with one
    line and exit 3, crashed with a traceback."""
    from redis.exceptions import RedisClusterException, RedisError

    def unformed(url, **options):
        """What redis-py raises for a node before ``redis-cli --cluster create``."""
        raise RedisClusterException("All slots are not covered after query all startup_nodes.")

    monkeypatch.setattr(store.RedisCluster, "from_url", unformed)
    with pytest.raises(RedisError, match="not usable: All slots are not covered") as caught:
        store.connect("redis://:s3cret@127.0.0.1:7000/0", cluster=True)
    assert "s3cret" not in str(caught.value)


def test_a_sentinel_that_finds_no_primary_is_told_in_one_short_line_ending_with_the_cause():
    """An operator review's finding: redis-py's message put the repr of its whole Sentinel
    client (about 1,300 characters) before the cause, a wrong Sentinel password."""
    sentinel = Sentinel([("127.0.0.1", free_port())], socket_timeout=0.5)
    with pytest.raises(MasterNotFoundError) as caught:
        sentinel.discover_master("jobcast")
    text = error_text(caught.value)
    assert text.startswith("No master found for 'jobcast'; the last Sentinel asked: ")
    assert "Connection refused" in text and "<redis." not in text and len(text) < 200
    assert error_text(RedisConnectionError("Error 111 connecting")) == "Error 111 connecting"


def test_a_redis_that_wants_a_password_and_got_none_is_said_in_words(redis_server, tmp_path):
    """A CLI user's review: a REDIS_URL without the password a Redis requires was answered
    "HELLO must be called with the client already authenticated, otherwise the HELLO AUTH …"
    (redis-py's RESP3 handshake), which never says "password"."""
    from jobcast.launcher.redisserver import RedisServer

    server = RedisServer(data_dir=tmp_path, password="s3cret").start()
    try:
        with pytest.raises(RedisError) as caught:
            redis_client(server.url.replace(":s3cret@", ""), single=True).ping()
        assert error_text(caught.value) == store.NO_PASSWORD
    finally:
        server.stop()


def test_a_job_writer_gives_up_on_an_unanswered_command_after_the_command_timeout_not_rq_s(
        redis_server):
    """A failover review's finding: a job's writer copied RQ's connection settings, whose
    socket timeout RQ raises to 25 s for a `jobcast worker`, so its values stalled 25–28 s on
    a Sentinel primary that froze, where the replica was promoted in about 4."""
    from redis import Redis

    from jobcast.core.store import COMMAND_TIMEOUT, writer_client

    rq_client = Redis.from_url(redis_server.url, socket_timeout=25)
    writer = writer_client(rq_client, retry_for=15)
    kwargs = writer.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == COMMAND_TIMEOUT
    writer.close()
    rq_client.close()


def test_a_forked_child_s_writer_dials_its_own_connection_and_neither_process_gets_the_other_s_replies(
        redis):
    """A code review's finding: a job's writer keeps one connection, which redis-py's fork check
    (in the pool) never saw; a child forked by the job (a ``multiprocessing`` worker logging
    values) used its parent's socket, and the parent read the child's replies as its own."""
    import os

    key = f"test:fork:{uuid.uuid4().hex}"
    redis.set(key, "parent's")
    writer = store.writer_client(redis, retry_for=5)
    assert writer.get(key) == b"parent's"
    parent_client_id = writer.client_id()
    pid = os.fork()
    if pid == 0:  # the child: exits 0 only if every reply was its own
        try:
            ok = writer.client_id() != parent_client_id and all(
                writer.echo(f"child {n}") == f"child {n}".encode() for n in range(300))
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    try:
        replies = [writer.get(key) for _ in range(300)]
    finally:
        _, status = os.waitpid(pid, 0)
    assert replies == [b"parent's"] * 300
    assert os.waitstatus_to_exitcode(status) == 0, "the child got a reply of its parent's"
    assert writer.client_id() == parent_client_id  # the parent kept its own connection
    writer.close()
