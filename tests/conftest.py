"""Fixtures: a real redis-server, real gunicorn (gevent) and real RQ worker processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from redis import Redis

from jobcast.core.joblog import JobLog
from jobcast.core.settings import Settings
from jobcast.core.wait import wait_until
from jobcast.launcher.redisserver import RedisServer, free_port

# The helpers in tests/support/ assert as test modules do: show their failures in full.
pytest.register_assert_rewrite("tests.support")

from tests.support.clock import FakeClock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JOBCAST = [sys.executable, "-m", "jobcast"]


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition", sleep: Callable[[float], object] = time.sleep):
    """Poll ``condition`` until it returns something truthy (the product's one wait loop);
    fail the test after ``timeout`` seconds."""
    try:
        return wait_until(condition, timeout, interval, what, sleep)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


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

        def ready() -> bool:
            """True once /readyz answers 200."""
            assert self.proc.poll() is None, "gunicorn exited early"
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 30, what="gunicorn /readyz")
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


# -- the fast tier: `make test-fast` runs `pytest -m "not slow"` ---------------------------------
# A test is slow when it starts real service processes or a browser: gunicorn, RQ workers,
# Chromium, Docker, a Redis Cluster, `jobcast up`. A real redis-server (the session's) is not
# slow. The rule, read by pytest_collection_modifyitems below:
#  1. every test under SLOW_PATHS (end to end through and through), and
#  2. every test that needs, directly or through other fixtures, one of SERVICE_FIXTURES
#     (pytest lists a test's whole fixture closure in item.fixturenames). A fixture is named
#     under the folder or module that defines it, as it is visible only there.
# A test that starts such a process in its own body is marked by hand: @pytest.mark.slow.
# WebServer, Workers, start_rq_worker and the browser fixture refuse to run for a test that
# is not marked slow, so a test the rule misses fails instead of slowing the fast tier.
SLOW_PATHS = (
    "tests/bench/", "tests/chaos/", "tests/cluster/",
    "tests/test_compose.py", "tests/test_examples.py", "tests/test_packaging.py",
    "tests/test_system.py",
    "tests/web/test_security.py",  # private-mode gunicorns, one started in a test's body
)
SERVICE_FIXTURES = {
    "tests/": {"web", "workers", "browser", "lane"},  # and so http, page, context, proxy...
    "tests/test_tail.py": {"capped_job", "capped_web"},
    "tests/launcher/test_up.py": {"up"},
    "tests/web/": {"private"},
    "tests/web/test_fuzz.py": {"server"},
    "tests/web/test_handover.py": {"stoppable"},
    "tests/web/test_limits.py": {"guarded"},
    "tests/web/test_openapi.py": {"fuzzed"},
    "tests/web/test_subscriptions.py": {"one_hub"},
    "tests/worker/test_emit.py": {"rq_worker"},
}


def is_slow(path: str, fixturenames) -> bool:
    """The rule above, for a test in ``path`` (relative to the repository) that needs
    ``fixturenames``."""
    if path.startswith(SLOW_PATHS):
        return True
    return any(path.startswith(where) and not names.isdisjoint(fixturenames)
               for where, names in SERVICE_FIXTURES.items())


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the slow tests (see SLOW_PATHS)."""
    for item in items:
        path = Path(str(item.path)).resolve().relative_to(ROOT).as_posix()
        if is_slow(path, item.fixturenames):
            item.add_marker(pytest.mark.slow)


_running: list[pytest.Item] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Remember the test being set up: fixtures that start services check its mark."""
    _running[:] = [item]


def require_slow(what: str) -> None:
    """Fail the current test if it starts ``what`` without being marked slow."""
    item = _running[0] if _running else None
    if item is not None and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} starts {what} but is not marked slow: add its fixture to "
                    "SERVICE_FIXTURES in tests/conftest.py, or mark it @pytest.mark.slow",
                    pytrace=False)


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session."""
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server) -> Iterator[Redis]:
    """A client of the session's Redis (shared: tests use fresh job ids, never FLUSHALL)."""
    client = Redis.from_url(redis_server.url)
    yield client
    client.close()


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


@pytest.fixture
def config(redis_server) -> Settings:
    """A Settings pointing at the session's Redis."""
    return Settings(redis_url=redis_server.url)


@pytest.fixture
def make_app():
    """Create Jobcast apps (``create_app(test_config)``) whose background services, started at
    their first request, stop when the test ends."""
    from jobcast.web import services
    from jobcast.web.app import create_app

    apps = []

    def make(test_config: dict | None = None):
        """A new app; its services stop at the end of the test."""
        app = create_app(test_config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        services.stop(app.extensions["jobcast"])


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    """Where the service processes write their logs (shown on failure by path)."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def web(redis_server, logs_dir) -> Iterator[WebServer]:
    """A real gunicorn with two gevent workers and quick heartbeats, for the session; it adopts
    and cancels the jobs of every queue."""
    # Every queue is Jobcast's here (JOBCAST_QUEUES): tests watch and cancel the jobs of queues
    # of their own (the lane fixture's, tests/worker/test_emit.py's plain RQ jobs).
    server = WebServer(redis_server.url, workers=2, log_path=logs_dir / "web.log",
                       JOBCAST_HEARTBEAT="1", JOBCAST_QUEUES="*").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def workers(redis_server, logs_dir) -> Iterator[Workers]:
    """Three real RQ worker processes for the session."""
    pool = Workers(redis_server.url, logs_dir)
    pool.start(3)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def lane(redis_server, logs_dir):
    """One worker alone on its own queue, for the module: (config for enqueue, the worker's
    process, its pool)."""
    queue = "lane-" + uuid.uuid4().hex[:8]
    pool = Workers(redis_server.url, logs_dir)
    (proc,) = pool.start(1, JOBCAST_QUEUE=queue)
    yield Settings(redis_url=redis_server.url, queue_name=queue), proc, pool
    pool.stop_all()


@pytest.fixture
def http(web) -> Iterator[httpx.Client]:
    """An HTTP client bound to the session's web server."""
    with httpx.Client(base_url=web.url, timeout=30) as client:
        yield client


def create_job(http: httpx.Client, task: str, **params) -> str:
    """POST a job through the API and return its id."""
    r = http.post("/api/jobs", json={"task": task, "params": params})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def running_job(redis: Redis) -> JobLog:
    """A job with its queued and started entries, written straight to its log."""
    log = JobLog(redis, uuid.uuid4().hex)
    log.create("sqrt", {}, None)
    log.started("test", 1)
    return log


def job_status(http: httpx.Client, job_id: str) -> dict:
    """GET /api/jobs/<id>."""
    return http.get(f"/api/jobs/{job_id}").json()


# Each stream is read on a connection of its own, as curl or a browser tab would: a stream
# that the relay held ends by closing its connection, which a pooled client may reuse.

def stream_lines(http: httpx.Client, job_id: str) -> list[str]:
    """The text stream of a job, read until it ends."""
    with httpx.stream("GET", http.base_url.join(f"/jobs/{job_id}/stream"), timeout=30) as r:
        assert r.status_code == 200
        return list(r.iter_lines())  # returns only when the stream ends, with the job


def sse_events(http: httpx.Client, job_id: str) -> list[dict]:
    """Every SSE event of a job (id, event, data decoded), read with the tests' own parser
    until the stream ends."""
    from tests.support.sse import parse_events

    with httpx.stream("GET", http.base_url.join(f"/jobs/{job_id}/events"), timeout=30) as r:
        assert r.status_code == 200
        return [dict(e._asdict(), data=e.json()) for e in parse_events(r)]


RQ = str(Path(sys.executable).with_name("rq"))


def start_rq_worker(redis_url: str, queue: str, *, cwd: Path = ROOT, log_path: Path | None = None,
                    worker_class: str = "jobcast.Worker", **env: str) -> subprocess.Popen:
    """A real `rq worker` (RQ's own CLI, not Jobcast's) on ``queue``; waits until it registers.
    ``env`` adds environment variables (settings)."""
    from rq import Worker

    require_slow("an rq worker")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([RQ, "worker", "--url", redis_url, "--worker-class", worker_class,
                             "--name", f"rq-{queue}-{os.getpid()}", queue],
                            env=service_env(redis_url, **env), cwd=cwd, stdout=out, stderr=out)
    conn = Redis.from_url(redis_url)

    def registered() -> bool:
        """True once RQ lists the worker."""
        assert proc.poll() is None, f"rq worker exited early (see {log_path})"
        return any(w.name == f"rq-{queue}-{os.getpid()}" for w in Worker.all(connection=conn))

    wait_for(registered, 20, what="rq worker to register")
    return proc


# -- headless Chromium -------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Debian's chromium (the README's test command installs it)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed: run the README's test command (make test)")
    return path


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the module that asks for it. Each module gets its own, so no
    module's pages run in a browser that other modules have worn (tests/web/test_browser.py
    prints the longest main-thread task of a long job's page)."""
    require_slow("Chromium")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def is_csp_violation(text: str) -> bool:
    """Chromium's console message for anything the Content-Security-Policy blocked."""
    return "Content Security Policy" in text


def watch(pg, *, accept_dialogs: bool = False):
    """Record on ``pg`` its dialogs as (type, message), uncaught page errors and CSP violations
    (any frame). Dialogs are dismissed, or accepted with ``accept_dialogs`` (a confirm to say
    yes to, as the Stop button's)."""
    pg.dialogs = []
    pg.errors = []
    pg.csp = []

    def dialog(d) -> None:
        """Remember the dialog, then answer it."""
        pg.dialogs.append((d.type, d.message))
        d.accept() if accept_dialogs else d.dismiss()

    pg.on("dialog", dialog)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.csp.append(m.text) if is_csp_violation(m.text) else None)
    return pg


def assert_page_clean(pg, csp: bool = True) -> None:
    """No uncaught errors in a watched page, and (with ``csp``) no CSP violations."""
    assert pg.errors == [], f"uncaught errors in the page: {pg.errors}"
    if csp:
        assert pg.csp == [], f"Content-Security-Policy violations: {pg.csp}"
