"""Fixtures: a real local Redis Cluster of three primaries, and Jobcast's streams on it.

RQ's queue stays on the session's plain redis-server (RQ does not support Cluster); web
processes and workers get ``JOBCAST_STREAM_URL`` pointing at one node of the cluster, and a
queue of their own, so the session's other workers never take these jobs.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from redis import Redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from producer.redisproc import find_redis_server, free_port
from tests.conftest import WebServer, Workers, wait_for

QUEUE = "jobcast-cluster"


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    while True:
        port = free_port(random.randrange(20000, 50000))
        if port < 55535 and free_port(port + 10000) == port + 10000:
            return port


class LocalCluster:
    """Three redis-server processes in cluster mode (AOF on), joined with redis-cli."""

    def __init__(self, base: Path, primaries: int = 3):
        """Pick free ports and a directory per node; :meth:`start` runs them."""
        self.base = base
        self.ports = [cluster_port() for _ in range(primaries)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.binary = find_redis_server()

    @property
    def url(self) -> str:
        """The redis:// URL of the first node (any node would do)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        """Start (or restart, keeping its nodes.conf and AOF) the node on ``port``."""
        data = self.base / str(port)
        data.mkdir(parents=True, exist_ok=True)
        log = open(data / "redis.log", "ab")
        self.procs[port] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "5000", "--appendonly", "yes", "--save", "",
             "--dir", str(data)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.ping(port), 10, what=f"redis node {port}")

    def ping(self, port: int) -> bool:
        """True when the node on ``port`` answers."""
        client = Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except RedisError:
            return False
        finally:
            client.close()

    def state_ok(self) -> bool:
        """True when every node says ``cluster_state:ok``."""
        for port in self.ports:
            client = Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
            try:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
            except RedisError:
                return False
            finally:
                client.close()
        return True

    def start(self) -> "LocalCluster":
        """Start the nodes, create the cluster, and wait until it is ok."""
        for port in self.ports:
            self.start_node(port)
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_for(self.state_ok, 30, interval=0.1, what="cluster_state:ok")
        return self

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def owner(self, key: str) -> int:
        """The port of the primary that owns ``key``'s slot."""
        client = Redis(port=self.ports[0])
        try:
            slot = key_slot(key.encode())
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        finally:
            client.close()
        raise LookupError(f"no node owns the slot of {key}")

    def node(self, port: int) -> Redis:
        """A plain client of one node."""
        return Redis(port=port)

    def stop(self) -> None:
        """Stop every node."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def which_redis_cli() -> bool:
    """True when redis-cli (which creates the cluster) is on PATH."""
    import shutil

    return shutil.which("redis-cli") is not None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """A local three-primary Redis Cluster for the module."""
    if not which_redis_cli():
        pytest.skip("redis-cli is needed to create a Redis Cluster")
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        local.start()
        yield local
    finally:
        local.stop()


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
