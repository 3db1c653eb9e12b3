"""Fixtures of the web tests: an app and its test client, a job that stays queued, a
private-mode gunicorn, a second Chromium that takes the server for a LAN host, and a browser
context and page."""

from __future__ import annotations

import pytest

from jobcast.producer.enqueue import enqueue
from tests.support.browser import CHROMIUM_FLAGS, LAN_HOST, assert_page_clean, chromium_path, watch
from tests.support.services import WebServer


@pytest.fixture
def app(idle_queue, make_app):
    """A public app on the session's Redis, in testing mode (its services start at its first
    request, and stop with the test). Its queue is one no worker takes from: a job it queues
    stays queued (the session's workers take the default queue's)."""
    return make_app({"JOBCAST": idle_queue, "TESTING": True})


@pytest.fixture
def client(app):
    """A test client of :func:`app` (a module may define its own, as test_auth.py does)."""
    return app.test_client()


@pytest.fixture
def job_id(idle_queue, redis) -> str:
    """A job that stays queued (sqrt of 7 values, on the queue no worker takes)."""
    return enqueue("sqrt", {"n": 7, "interval": 0.5}, redis=redis, config=idle_queue)


@pytest.fixture(scope="module")
def private(request, redis_server, logs_dir):
    """A gunicorn of the module's own with the module's TOKEN, hence in private read mode:
    reading a job needs the token or a view link for that job. The module's PRIVATE_ENV, if
    any, adds settings."""
    module = request.module
    name = module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    server = WebServer(redis_server.url, workers=1, log_path=logs_dir / f"web-{name}-private.log",
                       JOBCAST_TOKEN=module.TOKEN, **getattr(module, "PRIVATE_ENV", {})).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lan_browser(browser):
    """A second Chromium of the module's Playwright that finds ``LAN_HOST`` at 127.0.0.1: the
    server as a LAN host on plain HTTP, an origin Chromium does not take for a secure one (as
    it takes localhost)."""
    b = browser.browser_type.launch(
        executable_path=chromium_path(), headless=True,
        args=[*CHROMIUM_FLAGS, f"--host-resolver-rules=MAP {LAN_HOST} 127.0.0.1"])
    yield b
    b.close()


@pytest.fixture
def context(browser):
    """A fresh browser context (its own cookies and storage) in the module's Chromium."""
    ctx = browser.new_context()
    yield ctx
    ctx.close()


@pytest.fixture
def page(request, context):
    """A watched page of ``context``: the test fails on an uncaught error or a CSP violation in
    it. Dialogs are dismissed, or accepted if the module sets ACCEPT_DIALOGS."""
    pg = watch(context.new_page(), accept_dialogs=getattr(request.module, "ACCEPT_DIALOGS", False))
    yield pg
    assert_page_clean(pg)
