"""examples/ run as-is: the Flask app under real gunicorn (gevent, then sync), RQ's own
`rq worker -w jobcast.Worker`, a real Redis, and the live page in headless Chromium."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from redis import Redis

from jobcast.core.joblog import JobLog
from jobcast.launcher.redisserver import free_port
from tests.support.browser import DONE, assert_page_clean, watch
from tests.support.wait import wait_for
from tests.support.services import (ROOT, own_database, service_env, start_rq_worker,
                                    stop_process, wait_answers)


EXAMPLES = ROOT / "examples"
DB = 14  # the example's own database (see example_db)


class ExampleApp:
    """gunicorn serving examples/app.py with the given worker class."""

    def __init__(self, redis_url: str, worker_class: str, log_path: Path, *extra: str):
        """Start it (without waiting); ``extra`` are more gunicorn arguments."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class", worker_class,
             "--bind", f"127.0.0.1:{self.port}",
             # gunicorn's control socket is one path per user, shared with other test servers.
             "--no-control-socket", *extra, "app:app"],
            cwd=EXAMPLES, env=service_env(redis_url), stdout=open(log_path, "ab"),
            stderr=subprocess.STDOUT)

    def wait_ready(self) -> "ExampleApp":
        """Wait until the app's own home page answers."""
        wait_answers(self.proc, self.url + "/", self.log_path.read_text)
        return self


@pytest.fixture(scope="module")
def example_db(redis_server) -> Iterator[tuple[str, Redis]]:
    """A database of the module's own for the example and its worker (URL, client): the
    session's workers, which a test of this process may have started, take Jobcast's queue of
    the session's database, and would run the example's jobs in its worker's stead."""
    with own_database(redis_server, DB) as (url, client):
        yield url, client


@pytest.fixture(scope="module")
def rq_worker(example_db, logs_dir):
    """`rq worker -w jobcast.Worker default jobcast` in examples/, as its README says: RQ's
    default queue, and Jobcast's own (its form's jobs)."""
    worker = start_rq_worker(example_db[0], "default jobcast", cwd=EXAMPLES,
                             log_path=logs_dir / "example-worker.log")
    yield worker
    stop_process(worker)


# gunicorn's own gevent worker (streams follow in their request's greenlet), and Jobcast's
# gevent worker whose streams hand their connection to the relay.
@pytest.fixture(scope="module", params=["gevent", "jobcast.StreamWorker"])
def example(request, example_db, logs_dir, rq_worker) -> Iterator[ExampleApp]:
    """The example app under a gevent worker class."""
    app = ExampleApp(example_db[0], request.param,
                     logs_dir / f"example-{request.param}.log").wait_ready()
    yield app
    stop_process(app.proc)


@pytest.fixture
def page(browser):
    pg = watch(browser.new_page())
    yield pg
    pg.close()
    assert_page_clean(pg, csp=False)


def test_example_app_under_gevent_serves_a_live_page_for_a_plain_rq_job(example, page):
    page.goto(example.url + "/")
    page.click("button")  # the app enqueues jobs.squares with Queue.enqueue and redirects
    page.wait_for_url("**/jobcast/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    # Live: values arrive while the job runs (20 values over about 5 s), then "Done".
    # (A function, not an expression: the page's CSP forbids evaluating strings.)
    page.wait_for_function("() => { const m = window.jobcastPage(); "
                           "return m.values.length > 0 && !m.ended; }", timeout=15000)
    page.wait_for_function(DONE, timeout=30000)
    m = page.evaluate("window.jobcastPage()")
    assert m["values"] == [str(i * i) for i in range(20)] and m["n"] == 20
    assert m["duplicates"] == 0 and m["gaps"] == 0 and m["status"] == "finished"
    assert page.text_content("#worker").startswith("rq-default-")
    # The job list under the prefix links to the job under the prefix too (its script builds it).
    page.goto(example.url + "/jobcast/")
    link = page.wait_for_selector(f"tr[data-id='{job_id}'] a")
    assert link.get_attribute("href") == f"/jobcast/jobs/{job_id}"
    status = httpx.get(f"{example.url}/jobcast/api/jobs/{job_id}").json()
    assert status["urls"]["stream"] == f"/jobcast/jobs/{job_id}/stream"
    assert httpx.get(example.url + status["urls"]["stream"]).text.splitlines() == [str(i * i) for i in range(20)]


def test_example_app_runs_and_cancels_a_job_of_jobcasts_own_api(example):
    """A review's finding: with the README's mount (``Settings(queues=queue.name)``) and its
    worker command, a job of Jobcast's own form sat on a queue no worker read, and a cancel of
    it answered 404."""
    base = f"{example.url}/jobcast"
    created = httpx.post(f"{base}/api/jobs", json={"task": "sqrt",
                                                   "params": {"n": 400, "interval": 0.05}})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    wait_for(lambda: httpx.get(f"{base}/api/jobs/{job_id}").json()["progress"]["i"] > 0, 30,
             what="the example's worker to run the job")
    assert httpx.get(f"{base}/api/jobs/{job_id}").json()["worker"].startswith("rq-default-")
    assert httpx.post(f"{base}/api/jobs/{job_id}/cancel").status_code == 200
    wait_for(lambda: httpx.get(f"{base}/api/jobs/{job_id}").json()["status"] == "cancelled", 30,
             what="the job to be cancelled")


def test_example_app_answers_a_queued_jobs_text_stream_with_its_headers_before_any_value(
        example, example_db):
    """A review's finding: under gunicorn's own gevent worker the text stream (which has no
    preamble) sent nothing, headers included, until the job's first value: a proxy's read
    timeout, or a fetch() waiting on its response, could give up on a job that was queued."""
    jlog = JobLog(example_db[1], uuid.uuid4().hex)
    jlog.create("waits", {}, None)
    with httpx.stream("GET", f"{example.url}/jobcast/jobs/{jlog.job_id}/stream",
                      timeout=httpx.Timeout(10, read=5)) as r:
        assert r.status_code == 200 and r.headers["Jobcast-Epoch"] == jlog.position().epoch
        lines = r.iter_lines()
        jlog.started("w", 1)
        jlog.value(0, "first")
        assert next(lines) == "first"
        jlog.finished()
        assert list(lines) == []


@pytest.mark.parametrize("preload", [False, True])
def test_example_app_under_gunicorns_gevent_worker_ends_its_streams_at_once_on_sigterm(
        redis_server, redis, logs_dir, preload):
    """Under gunicorn's own gevent worker (an app mounted with init_app) a SIGTERM ends each
    stream at once with its goodbye (``retry:``), rather than hold the worker until gunicorn's
    graceful timeout (30 s) cuts it. With --preload too (a review's finding: the handler was
    installed as the app was made, in gunicorn's master, so never in the worker)."""
    app = ExampleApp(redis_server.url, "gevent", logs_dir / "example-gevent-sigterm.log",
                     *(["--preload"] if preload else []))
    app.wait_ready()
    jlog = JobLog(redis, uuid.uuid4().hex)
    jlog.create("waits", {}, None)
    try:
        with httpx.stream("GET", f"{app.url}/jobcast/jobs/{jlog.job_id}/events",
                          timeout=httpx.Timeout(10, read=60)) as r:
            assert r.status_code == 200
            chunks = r.iter_bytes()
            got = b""
            while b"event: queued" not in got:  # its history: the relay holds it
                got += next(chunks)
            stopping = time.monotonic()
            app.proc.send_signal(signal.SIGTERM)
            for chunk in chunks:
                got += chunk
            took = time.monotonic() - stopping
        assert took < 10, f"the stream ended {took:.1f} s after the SIGTERM"
        assert re.search(rb"\nretry: \d+\n\n$", got), got  # its goodbye: come back soon
        assert app.proc.wait(30) == 0
    finally:
        stop_process(app.proc)


def test_example_app_under_the_sync_worker_refuses_to_start_and_names_the_fix(redis_server, logs_dir):
    app = ExampleApp(redis_server.url, "sync", logs_dir / "example-sync.log")
    try:
        code = app.proc.wait(30)
    finally:
        stop_process(app.proc)
    out = app.log_path.read_text()
    assert code != 0, out
    assert "UnsuitableWorker: Jobcast cannot stream from gunicorn's SyncWorker" in out
    assert "--worker-class gevent" in out


def test_example_app_preloaded_under_gevent_answers_many_first_requests_at_once(redis_server,
                                                                               logs_dir):
    """A Flask maintainer's review: with --preload, Jobcast's start lock was made in gunicorn's
    master before gevent patched threading: a real lock. The first request's greenlet held it
    while starting the services' threads (a switch), the next ones waited on it, and the
    worker hung until gunicorn killed it (0 of 30 answered)."""
    import concurrent.futures
    import socket

    app = ExampleApp(redis_server.url, "gevent", logs_dir / "example-gevent-preload.log",
                     "--preload", "--workers", "1")
    try:
        def listening() -> bool:
            """gunicorn's master listens (its worker may not be up yet)."""
            try:
                socket.create_connection(("127.0.0.1", app.port), 0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, 30, what="gunicorn to listen")

        def get(_: int) -> int:
            """One of the worker's first requests to Jobcast."""
            return httpx.get(f"{app.url}/jobcast/api/jobs", timeout=20).status_code

        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            assert list(pool.map(get, range(30))) == [200] * 30
    finally:
        stop_process(app.proc)


def test_example_app_preloaded_under_the_sync_worker_answers_streams_503_naming_the_fix(
        redis_server, logs_dir):
    # --preload builds the app in gunicorn's master, before any worker exists: the check
    # runs again in the worker when the first stream starts its hub.
    app = ExampleApp(redis_server.url, "sync", logs_dir / "example-sync-preload.log", "--preload")
    try:
        app.wait_ready()
        job_id = httpx.post(app.url + "/squares").headers["location"].rsplit("/", 1)[1]
        r = httpx.get(f"{app.url}/jobcast/jobs/{job_id}/stream", timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "unsuitable_worker"
        assert "--worker-class gevent" in r.json()["message"]
    finally:
        stop_process(app.proc)
