"""The stream store: where job logs live (JOBCAST_STREAM_URL) and how their keys are named.

A single Redis keeps the plain key names; on a Redis Cluster one job's keys and channel share
a hash tag (one slot), so the append script stays atomic.
"""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot

from jobcast.core.joblog import (InvalidJobId, JobLog, channel, job_id_from_channel, job_keys, log_key,
                           meta_key)
from jobcast.core.settings import Settings
from jobcast.core.store import (cluster_enabled, is_cluster, masked_url, separate, stream_redis,
                                stream_url)


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


@pytest.mark.parametrize("job_id", [uuid.uuid4().hex, str(uuid.uuid4()), "nightly_report-2026"])
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
])
def test_a_redis_url_is_shown_without_its_password(url, shown):
    """Finding 16 of issue 23: a password in REDIS_URL was printed."""
    assert masked_url(url) == shown
