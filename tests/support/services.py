"""The real services tests start: gunicorn serving Jobcast, `jobcast worker` and `rq worker`
processes, their environment, and a Redis database of a test's own.

Each refuses to start for a test that is not marked slow (:func:`require_slow`): `make
test-fast` must never start one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import psutil
import pytest
from redis import Redis

from jobcast.launcher.redisserver import RedisServer, free_port
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
JOBCAST = [sys.executable, "-m", "jobcast"]
RQ = str(Path(sys.executable).with_name("rq"))

RUNNING: list = []
"""The test being set up (tests/conftest.py's hook keeps it): what :func:`require_slow` checks."""


def require_slow(what: str) -> None:
    """Fail the current test if it starts ``what`` without being marked slow."""
    item = RUNNING[0] if RUNNING else None
    if item is not None and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} starts {what} but is not marked slow: add its fixture to "
                    "SERVICE_FIXTURES in tests/conftest.py, or mark it @pytest.mark.slow",
                    pytrace=False)


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Environment for a Jobcast child process: test tasks loaded, repo importable."""
    env = dict(os.environ, REDIS_URL=redis_url, JOBCAST_TASKS="tests.tasks", PYTHONUNBUFFERED="1",
               # The suite creates jobs from one address far faster than a person: no rate
               # limit unless a test sets one (tests/web/test_api.py tests the limit).
               JOBCAST_CREATE_RATE="0")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal ``proc`` and reap it, killing it if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_at_once(proc: psutil.Process) -> None:
    """SIGKILL a process and everything under it at once, as a crashed container would.

    Each is stopped first, the parent before its children are listed. Killed one by one, an
    RQ worker that outlives its work-horse by a moment sees it die and fails the job itself
    ("Work-horse terminated unexpectedly"), which is not the crash these tests play; and a
    stopped parent cannot reap a child killed before it.
    """
    family = [proc]
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(signal.SIGSTOP)
        family += proc.children(recursive=True)
    for p in family[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGSTOP)
    for p in reversed(family):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def wait_answers(proc: subprocess.Popen, url: str, exited: str | Callable[[], str],
                 timeout: float = 30) -> None:
    """Wait until GET ``url`` answers 200; fail with ``exited`` (or what it returns, read
    then) if ``proc`` ends first."""
    def answers() -> bool:
        """True once ``url`` answers 200."""
        assert proc.poll() is None, exited() if callable(exited) else exited
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout, what=url)


class WebServer:
    """A real gunicorn serving Jobcast on a free port."""

    def __init__(self, redis_url: str, workers: int = 1, log_path: Path | None = None, **env: str):
        """Configure; :meth:`start` launches it."""
        self.port = free_port()
        self.redis_url = redis_url
        self.workers = workers
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WebServer":
        """Start gunicorn and wait for /readyz."""
        require_slow("gunicorn")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [*JOBCAST, "web", "--bind", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers)],
            env=service_env(self.redis_url, **self.env), cwd=ROOT, stdout=out, stderr=out)

        wait_answers(self.proc, self.url + "/readyz", "gunicorn exited early")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop gunicorn."""
        if self.proc:
            stop_process(self.proc, sig)


class Workers:
    """A set of real `jobcast worker` processes."""

    def __init__(self, redis_url: str, log_dir: Path | None = None):
        """No workers yet; :meth:`start` adds them."""
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, n: int = 1, **env: str) -> list[subprocess.Popen]:
        """Start ``n`` more workers and wait until each has registered with RQ."""
        from rq import Worker

        require_slow("RQ workers")
        started = []
        for _ in range(n):
            out = subprocess.DEVNULL
            if self.log_dir:
                out = open(self.log_dir / f"worker-{len(self.procs)}.log", "ab")
            proc = subprocess.Popen([*JOBCAST, "worker"], env=service_env(self.redis_url, **env),
                                    cwd=ROOT, stdout=out, stderr=out)
            self.procs.append(proc)
            started.append(proc)
        conn = Redis.from_url(self.redis_url)
        names = {f".{p.pid}" for p in started}
        wait_for(lambda: names <= {"." + w.name.rsplit(".", 1)[-1] for w in Worker.all(connection=conn)},
                 20, what="workers to register")
        return started

    def stop_all(self) -> None:
        """Stop every worker with RQ's cold shutdown, which also kills a running work-horse
        (a worker SIGKILLed mid-job would leave its horse running on)."""
        for _ in range(2):
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            # RQ ignores a second signal that comes within a second of the first.
            time.sleep(1.2)
        for proc in self.procs:
            stop_process(proc, signal.SIGTERM, 20)
        self.procs.clear()


def start_rq_worker(redis_url: str, queue: str, *, cwd: Path = ROOT, log_path: Path | None = None,
                    worker_class: str = "jobcast.Worker", options: tuple[str, ...] = (),
                    **env: str) -> subprocess.Popen:
    """A real `rq worker` (RQ's own CLI, not Jobcast's) on ``queue`` (several: separated by
    spaces, as on its command line; it is named after the first); waits until it registers.
    ``options`` go on its command line (``--job-monitoring-interval 1``); ``env`` adds
    environment variables (settings)."""
    from rq import Worker

    require_slow("an rq worker")
    queues = queue.split()
    name = f"rq-{queues[0]}-{os.getpid()}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([RQ, "worker", "--url", redis_url, "--worker-class", worker_class,
                             "--name", name, *options, *queues],
                            env=service_env(redis_url, **env), cwd=cwd, stdout=out, stderr=out)
    conn = Redis.from_url(redis_url)

    def registered() -> bool:
        """True once RQ lists the worker."""
        assert proc.poll() is None, f"rq worker exited early (see {log_path})"
        return any(w.name == name for w in Worker.all(connection=conn))

    wait_for(registered, 20, what="rq worker to register")
    return proc


@contextlib.contextmanager
def own_database(redis_server: RedisServer, db: int) -> Iterator[tuple[str, Redis]]:
    """The URL of database ``db`` of the session's Redis and a client of it, emptied before
    and after: for tests that read what is global to a database (the job index)."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    client = Redis.from_url(url)
    client.flushdb()
    try:
        yield url, client
    finally:
        client.flushdb()
        client.close()
