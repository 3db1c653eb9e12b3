"""Fixtures: a real local Redis Cluster of three primaries, and Jobcast's streams on it.

RQ's queue stays on the session's plain redis-server (RQ does not support Cluster); web
processes and workers get ``JOBCAST_STREAM_URL`` pointing at one node of the cluster, and a
queue of their own, so the session's other workers never take these jobs.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from tests.support.cluster import LocalCluster
from tests.support.services import WebServer, Workers

QUEUE = "jobcast-cluster"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """A local three-primary Redis Cluster for the module."""
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    with local:
        yield local


@pytest.fixture(scope="module")
def streams(cluster) -> Iterator[RedisCluster]:
    """A RedisCluster client of the cluster."""
    client = RedisCluster.from_url(cluster.url)
    yield client
    client.close()


def cluster_env(cluster: LocalCluster, **extra: str) -> dict[str, str]:
    """Settings for services whose streams live on ``cluster``."""
    return {"JOBCAST_STREAM_URL": cluster.url, "JOBCAST_QUEUE": QUEUE, **extra}


@pytest.fixture(scope="module")
def cluster_webs(redis_server, cluster, logs_dir) -> Iterator[list[WebServer]]:
    """Two web servers (one gunicorn worker each) with their streams on the cluster."""
    servers = []
    try:
        for n in range(2):
            servers.append(WebServer(redis_server.url, workers=1,
                                     log_path=logs_dir / f"web-cluster-{n}.log",
                                     **cluster_env(cluster, JOBCAST_HEARTBEAT="1")).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def cluster_workers(redis_server, cluster, logs_dir) -> Iterator[Workers]:
    """Two real RQ workers: the queue on the plain Redis, the logs on the cluster."""
    pool = Workers(redis_server.url, logs_dir)
    try:
        pool.start(2, **cluster_env(cluster))
        yield pool
    finally:
        pool.stop_all()
