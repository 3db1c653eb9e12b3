"""A local Redis Cluster of several real redis-server processes: for tests and benchmarks."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from jobcast.core.wait import wait_until
from jobcast.launcher.redisserver import answers_ping, find_redis_server, free_port


def cluster_port() -> int:
    """A free port below 55536 whose cluster bus port (10000 higher) is free too."""
    while True:
        port = free_port(random.randrange(20000, 50000))
        if port < 55536 and free_port(port + 10000) == port + 10000:
            return port


class LocalRedisCluster:
    """A Redis Cluster of ``primaries`` local redis-server processes (no replicas, AOF on),
    joined with ``redis-cli --cluster create``: for tests and benchmarks, not production."""

    def __init__(self, base: str | Path, primaries: int = 3, binary: str | None = None,
                 appendonly: bool = True, node_timeout: int = 5000):
        """Pick free ports and a directory per node under ``base``; :meth:`start` runs them."""
        self.base = Path(base)
        self.ports = [cluster_port() for _ in range(primaries)]
        self.binary = binary or find_redis_server()
        self.cli = shutil.which("redis-cli") or str(Path(self.binary).with_name("redis-cli"))
        self.appendonly = appendonly
        self.node_timeout = node_timeout
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """The redis:// URL of the first node (any node leads a client to the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int, timeout: float = 10.0) -> None:
        """Start (or restart, with its nodes.conf and AOF) the node on ``port``."""
        data = self.base / str(port)
        data.mkdir(parents=True, exist_ok=True)
        out = open(data / "redis.log", "ab")
        try:
            self.procs[port] = subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(self.node_timeout),
                 "--appendonly", "yes" if self.appendonly else "no", "--save", "",
                 "--dir", str(data)], stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()

        def answers() -> bool:
            """True once the node answers; RuntimeError if it exited."""
            if self.procs[port].poll() is not None:
                raise RuntimeError(f"redis cluster node {port} exited (see {data}/redis.log)")
            return answers_ping(port)

        wait_until(answers, timeout, what=f"redis cluster node {port} to answer PING")

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

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every node says ``cluster_state:ok``."""
        wait_until(self.state_ok, timeout, interval=0.1, what="cluster_state:ok on every node")

    def start(self) -> "LocalRedisCluster":
        """Start the nodes, join them into one cluster, and wait until it is ok."""
        try:
            for port in self.ports:
                self.start_node(port)
            subprocess.run([self.cli, "--cluster", "create",
                            *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def owner(self, key: str) -> int:
        """The port of the primary that owns ``key``'s slot."""
        from redis.crc import key_slot

        return self.slot_owner(key_slot(key.encode()))

    def slot_owner(self, slot: int) -> int:
        """The port of the primary that owns ``slot``."""
        client = Redis(port=self.ports[0])
        try:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        finally:
            client.close()
        raise LookupError(f"no node owns slot {slot}")

    def move_slot(self, slot: int, to_port: int) -> None:
        """Reshard one slot, keys and all, to the node on ``to_port`` (Redis's own
        IMPORTING / MIGRATING / MIGRATE / SETSLOT NODE sequence)."""
        from_port = self.slot_owner(slot)
        nodes = {port: Redis(port=port) for port in self.ports}
        try:
            src, dst = nodes[from_port], nodes[to_port]
            src_id = src.execute_command("CLUSTER", "MYID").decode()
            dst_id = dst.execute_command("CLUSTER", "MYID").decode()
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            for port in [to_port, from_port, *[p for p in self.ports if p not in (to_port, from_port)]]:
                nodes[port].execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        finally:
            for client in nodes.values():
                client.close()

    def stop(self) -> None:
        """Stop every node and reap it."""
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

    def __enter__(self) -> "LocalRedisCluster":
        """Start on entering the block."""
        return self.start()

    def __exit__(self, *exc) -> None:
        """Stop on leaving the block."""
        self.stop()


class LocalCluster(LocalRedisCluster):
    """The cluster as the tests use it: a plain client of one node, too."""

    def node(self, port: int) -> Redis:
        """A plain client of the node on ``port``."""
        return Redis(port=port)
