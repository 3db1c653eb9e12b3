"""Fixtures: a real redis-server, real gunicorn (gevent) and real RQ worker processes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from redis import Redis

from jobcast.core.settings import Settings
from jobcast.launcher.redisserver import RedisServer

# The helpers in tests/support/ assert as test modules do: show their failures in full.
pytest.register_assert_rewrite("tests.support")

from tests.support.browser import CHROMIUM_FLAGS, chromium_path, playwright_sync_api  # noqa: E402
from tests.support.clock import FakeClock  # noqa: E402
from tests.support.services import (ROOT, RUNNING, WebServer, Workers,  # noqa: E402
                                    require_slow)

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
    "tests/web/test_frozen_redis.py": {"frozen"},
    "tests/web/test_fuzz.py": {"server"},
    "tests/web/test_handover.py": {"stoppable"},
    "tests/web/test_limits.py": {"guarded"},
    "tests/web/test_openapi.py": {"fuzzed"},
    "tests/web/test_subscriptions.py": {"one_hub"},
    "tests/web/test_write_deadlines.py": {"server"},
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


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Remember the test being set up: fixtures that start services check its mark."""
    RUNNING[:] = [item]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Make a report UTF-8 whatever it caught: pytest-xdist sends reports between processes
    as UTF-8, and a lone surrogate (a log line or a failure naming an undecodable file,
    tests/worker/test_hook.py) would end the whole run with an internal error."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, _utf8(text)) for title, text in report.sections]
    if report.longrepr is not None:
        text = str(report.longrepr)
        utf8 = _utf8(text)
        if utf8 != text:  # (else the failure keeps its own form)
            report.longrepr = utf8


def _utf8(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode written as a backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


@pytest.fixture
def config(redis_server) -> Settings:
    """A Settings pointing at the session's Redis."""
    return Settings(redis_url=redis_server.url)


@pytest.fixture
def idle_queue(redis_server) -> Settings:
    """A Settings whose queue is the test's own and no worker takes from, for a job that must
    stay queued: the session's :func:`workers`, once a test of the process has started them,
    take whatever lands on the default queue."""
    return Settings(redis_url=redis_server.url, queue_name="idle-" + uuid.uuid4().hex[:8])


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


# -- headless Chromium -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the module that asks for it. Each module gets its own, so no
    module's pages run in a browser that other modules have worn (tests/web/test_browser.py
    prints the longest main-thread task of a long job's page)."""
    require_slow("Chromium")
    playwright_api = playwright_sync_api()
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


