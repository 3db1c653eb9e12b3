"""A local Sentinel group: a primary, a replica and three Sentinels, all real redis-server
processes, for the failover tests.

Both Redis nodes carry the same configuration (so either can be primary after a failover):
the replica authenticates as an ACL user ``repl``, which :meth:`LocalSentinelGroup.block_replication`
switches off on the primary. That, not ``DEBUG SLEEP`` on the replica (which loses nothing: the
replica applies what waits in its socket buffer when it wakes), is what makes a failover lose
the primary's last writes deterministically. ``repl-diskless-sync-delay 0`` makes the first
full sync take milliseconds instead of the default 5 s.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from jobcast.core.wait import wait_until
from jobcast.launcher.redisserver import answers_ping, find_redis_server, free_port

MASTER = "jc"
REPL_USER, REPL_PASSWORD = "repl", "replpw"


class LocalSentinelGroup:
    """``redis-server`` primary and replica, and three ``redis-server --sentinel``, on free
    ports under ``base``; use as a context manager."""

    def __init__(self, base: str | Path, *, down_after_ms: int = 1000, appendonly: bool = False,
                 binary: str | None = None):
        """Pick ports and directories; :meth:`start` runs the processes."""
        self.base = Path(base)
        self.binary = binary or find_redis_server()
        self.down_after_ms = down_after_ms
        self.appendonly = appendonly
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.waiting_for = ""  # what ready() last found missing

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the group (db 0)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def client(self, port: int) -> Redis:
        """A plain client of one node (not through the Sentinels)."""
        return Redis(port=port, socket_connect_timeout=1, socket_timeout=5)

    def _node_conf(self, port: int, replica_of: int | None) -> str:
        """The configuration of a Redis node of the group."""
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {self.base / str(port)}", 'save ""',
                 f"appendonly {'yes' if self.appendonly else 'no'}",
                 "repl-diskless-sync-delay 0",
                 "user default on nopass ~* &* +@all",
                 f"user {REPL_USER} on >{REPL_PASSWORD} +psync +replconf +ping",
                 f"masteruser {REPL_USER}", f"masterauth {REPL_PASSWORD}"]
        if replica_of:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        return "\n".join(lines) + "\n"

    def _sentinel_conf(self, port: int) -> str:
        """The configuration of a Sentinel (rewritten by the Sentinel itself as it runs)."""
        return "\n".join([
            f"port {port}", "bind 127.0.0.1", f"dir {self.base / str(port)}",
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2",
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER} 5000",
            f"sentinel parallel-syncs {MASTER} 1"]) + "\n"

    def _run(self, port: int, conf: str, *extra: str) -> None:
        """Write ``conf`` and start a process on ``port`` with it."""
        data = self.base / str(port)
        data.mkdir(parents=True, exist_ok=True)
        path = data / ("sentinel.conf" if extra else "redis.conf")
        if not path.exists():  # a restarted node keeps what it rewrote
            path.write_text(conf)
        with open(data / "log", "ab") as out:
            self.procs[port] = subprocess.Popen([self.binary, str(path), *extra], stdout=out,
                                                stderr=subprocess.STDOUT)

        def answers() -> bool:
            """True once the process answers PING; RuntimeError if it exited."""
            if self.procs[port].poll() is not None:
                raise RuntimeError(f"redis process on {port} exited (see {data}/log)")
            return answers_ping(port)

        wait_until(answers, 10, what=f"redis process {port} to answer PING")

    def start(self) -> "LocalSentinelGroup":
        """Start the nodes and the Sentinels, and wait until the group is :meth:`ready`."""
        try:
            self._run(self.primary_port, self._node_conf(self.primary_port, None))
            self._run(self.replica_port, self._node_conf(self.replica_port, self.primary_port))
            for port in self.sentinel_ports:
                self._run(port, self._sentinel_conf(port), "--sentinel")
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def roles(self) -> dict[int, str]:
        """Each live node's role (``master`` or ``slave``)."""
        out = {}
        for port in (self.primary_port, self.replica_port):
            if port in self.procs and self.procs[port].poll() is None:
                try:
                    out[port] = self.client(port).execute_command("ROLE")[0].decode()
                except RedisError:
                    pass
        return out

    def ready(self) -> bool:
        """True when the replica is in sync (link up, ``WAIT 1`` acknowledged) and every
        Sentinel knows it as a plain replica and has the quorum; else False, with what is
        still missing in :attr:`waiting_for`."""
        primary, replica = self.client(self.primary_port), self.client(self.replica_port)
        try:
            link = replica.info("replication").get("master_link_status")
            if link != "up":
                self.waiting_for = f"the replica's link (status {link!r})"
                return False
            if primary.execute_command("WAIT", 1, 1000) < 1:
                self.waiting_for = "the replica to acknowledge WAIT 1"
                return False
            for port in self.sentinel_ports:
                sentinel = self.client(port)
                # Exactly "slave": not s_down, not disconnected, not promoted.
                flags = [r.get("flags") for r in sentinel.sentinel_slaves(MASTER)]
                if flags != ["slave"]:
                    self.waiting_for = f"Sentinel {port} to know the replica (flags {flags})"
                    return False
                sentinel.execute_command("SENTINEL", "CKQUORUM", MASTER)
            return True
        except RedisError as exc:
            self.waiting_for = f"an answer without error ({type(exc).__name__}: {exc})"
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until :meth:`ready` (about 2 s here); on a timeout, say what was missing and
        show the end of each process's log. The timeout is long because a Sentinel whose timer
        ran late by more than 2 s (a loaded machine) enters TILT mode, and for 30 s takes no
        instance's down flag off."""
        self.waiting_for = "the first check"
        try:
            wait_until(self.ready, timeout, interval=0.1, what="the sentinel group to be ready")
        except TimeoutError as exc:
            logs = "\n".join(f"--- {port} ---\n{self.log_tail(port)}" for port in self.procs)
            raise TimeoutError(f"{exc}: still waiting for {self.waiting_for}\n{logs}") from None

    def log_tail(self, port: int, lines: int = 15) -> str:
        """The last ``lines`` lines of the log of the process on ``port`` (or why not)."""
        try:
            text = (self.base / str(port) / "log").read_text(errors="replace")
        except OSError as exc:  # the timeout's message must not be lost to this
            return f"(its log cannot be read: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def in_sync(self) -> bool:
        """True when the replica has everything the primary took (equal offsets)."""
        try:
            primary = self.client(self.primary_port).info("replication")
            replica = self.client(self.replica_port).info("replication")
        except RedisError:
            return False
        return (replica.get("master_link_status") == "up"
                and replica.get("slave_repl_offset") == primary.get("master_repl_offset"))

    def kill_primary(self) -> int:
        """SIGKILL the primary; its port."""
        port = self.primary_port
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()
        return port

    def wait_promoted(self, timeout: float = 15.0) -> float:
        """Wait until the replica says it is the primary; swap the roles here; seconds waited."""
        started = time.monotonic()
        wait_until(lambda: self.roles().get(self.replica_port) == "master", timeout, interval=0.05,
                   what="the replica to be promoted")
        self.primary_port, self.replica_port = self.replica_port, self.primary_port
        return time.monotonic() - started

    def block_replication(self) -> None:
        """Cut the replica off the primary (its user switched off, its link killed), so what
        the primary takes from now on is never replicated; wait until the replica sees its
        link down. Keep the window short: Sentinel skips a replica whose link has been down
        longer than ten times ``down-after-milliseconds``."""
        primary = self.client(self.primary_port)
        primary.execute_command("ACL", "SETUSER", REPL_USER, "off")
        primary.execute_command("CLIENT", "KILL", "TYPE", "replica")
        replica = self.client(self.replica_port)
        wait_until(lambda: replica.info("replication").get("master_link_status") == "down", 10,
                   interval=0.02, what="the replica's link to go down")

    def stop(self) -> None:
        """Stop every process and reap it."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()

    def __enter__(self) -> "LocalSentinelGroup":
        """Start on entering the block."""
        return self.start()

    def __exit__(self, *exc) -> None:
        """Stop on leaving the block."""
        self.stop()
