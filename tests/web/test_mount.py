"""jobcast.init_app: Jobcast mounted under a prefix in another Flask app (real Redis, Flask's
test client), and the check of gunicorn's worker class."""

from __future__ import annotations

import logging
import re

import pytest
from flask import Flask, url_for

import jobcast
from jobcast.core.settings import Settings
from jobcast.web import services
from jobcast.web.gunicorn_check import UnsuitableWorker, check_worker_class
from jobcast.web.pages import static_digest


@pytest.fixture
def host(config):
    """A user's own app, with a page and an error page of its own, and Jobcast mounted."""
    app = Flask("host")

    @app.get("/")
    def home():
        return "host home"

    app.config["TESTING"] = True
    jobcast.init_app(app, url_prefix="/tools/jobcast/", config=config)
    yield app
    services.stop(app.extensions["jobcast"])


@pytest.fixture
def make_host():
    """Host apps with Jobcast mounted by the test: their services (started at their first
    request) stop with the test."""
    apps: list[Flask] = []

    def make() -> Flask:
        """A new host app, for the test to mount Jobcast in."""
        apps.append(Flask("host"))
        return apps[-1]

    yield make
    for app in apps:
        if "jobcast" in app.extensions:
            services.stop(app.extensions["jobcast"])


def test_mounted_pages_api_and_assets_all_live_under_the_prefix(host, job_id):
    client = host.test_client()
    assert client.get("/").text == "host home"
    html = client.get(f"/tools/jobcast/jobs/{job_id}").text
    urls = re.findall(r'(?:src|href|data-events|data-status-url)="([^"]+)"', html)
    assert urls and all(u.startswith("/tools/jobcast/") for u in urls), urls
    for asset in (u for u in urls if "/static/" in u):
        assert client.get(asset).status_code == 200, asset
    info = client.get(f"/tools/jobcast/api/jobs/{job_id}").json
    assert info["urls"]["page"] == f"/tools/jobcast/jobs/{job_id}"
    assert info["urls"]["events"] == f"/tools/jobcast/jobs/{job_id}/events"
    home = client.get("/tools/jobcast/").text
    assert 'action="/tools/jobcast/api/jobs"' in home


def test_the_openapi_document_under_a_prefix_names_it_as_its_server(host, job_id):
    """An embedding review's finding: under init_app's prefix the document had no `servers`,
    so its paths (/api/jobs...) were called at the root of the host app, and got 404."""
    client = host.test_client()
    doc = client.get("/tools/jobcast/api/openapi.json").json
    [server] = doc["servers"]
    assert server == {"url": "/tools/jobcast"}
    assert "/api/jobs/{job_id}" in doc["paths"]
    assert client.get(server["url"] + f"/api/jobs/{job_id}").status_code == 200


def test_host_app_links_to_a_job_with_url_for(host):
    with host.test_request_context():
        assert url_for("jobcast.job_page", job_id="abc-1") == "/tools/jobcast/jobs/abc-1"
        assert url_for("jobcast.sse_stream", job_id="abc-1") == "/tools/jobcast/jobs/abc-1/events"
        # jobcast.js names its digest, as on Jobcast's own pages (test_browser_shared.py)
        assert url_for("jobcast.static", filename="jobcast.js") == (
            f"/tools/jobcast/static/jobcast.js?v={static_digest('jobcast.js')}")
        assert url_for("jobcast.static", filename="frame.css") == "/tools/jobcast/static/frame.css"
        assert url_for("static", filename="jobcast.js") == "/static/jobcast.js"  # the host's own


def test_jobcast_errors_stay_json_and_do_not_change_the_host_apps_errors(host):
    client = host.test_client()
    r = client.get("/tools/jobcast/jobs/no.pe")
    assert r.status_code == 400 and r.json["field"] == "job_id"
    r = client.get("/nothing-here")
    assert r.status_code == 404 and not r.is_json  # the host's own (HTML) 404


def test_init_app_refuses_a_root_prefix_and_a_second_mount(config, host):
    with pytest.raises(ValueError):
        jobcast.init_app(Flask("other"), url_prefix="/", config=config)
    with pytest.raises(RuntimeError):
        jobcast.init_app(host, url_prefix="/again", config=config)


def test_init_app_refuses_a_client_that_decodes_responses_by_name_not_a_500_per_request(
        config, redis_server):
    """A review's finding: ``init_app(app, redis=Redis(..., decode_responses=True))`` mounted,
    then every request under the prefix answered 500 ('str' object has no attribute
    'decode')."""
    from redis import Redis

    client = Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        jobcast.init_app(Flask("decoding"), config=config, redis=client)
    client.close()


def fake_worker(module: str, name: str, threads: int = 1):
    """An object whose class descends from the named gunicorn worker class (never started)."""
    import importlib

    base = getattr(importlib.import_module(module), name)
    worker = object.__new__(type("Worker", (base,), {}))
    worker.cfg = type("Cfg", (), {"threads": threads})()
    return worker


def test_sync_and_single_thread_workers_are_refused_with_the_fix():
    for worker in (fake_worker("gunicorn.workers.sync", "SyncWorker"),
                   fake_worker("gunicorn.workers.gthread", "ThreadWorker", threads=1)):
        with pytest.raises(UnsuitableWorker, match="--worker-class gevent"):
            check_worker_class(worker)


def test_gevent_worker_passes_and_gthread_warns_of_its_limit(caplog):
    assert check_worker_class(fake_worker("gunicorn.workers.ggevent", "GeventWorker")) == "Worker"
    with caplog.at_level(logging.WARNING, logger="jobcast.web.gunicorn_check"):
        check_worker_class(fake_worker("gunicorn.workers.gthread", "ThreadWorker", threads=8))
    assert "at most 8 streams per process" in caplog.text and "gevent" in caplog.text


def test_outside_gunicorn_there_is_nothing_to_check():
    assert check_worker_class() is None


def test_private_mode_under_a_prefix_logs_in_and_returns_under_the_prefix(config, job_id,
                                                                         make_host):
    app = make_host()
    jobcast.init_app(app, url_prefix="/tools/jobcast",
                     config=Settings(redis_url=config.redis_url, token="s3cret"))
    client = app.test_client()
    page = client.get(f"/tools/jobcast/jobs/{job_id}")
    assert page.status_code == 401
    assert 'action="/tools/jobcast/login"' in page.text
    assert f'name="next" value="/tools/jobcast/jobs/{job_id}"' in page.text
    r = client.post("/tools/jobcast/login", data={"token": "s3cret", "next": f"/tools/jobcast/jobs/{job_id}"})
    assert r.status_code == 303 and r.headers["Location"] == f"/tools/jobcast/jobs/{job_id}"
    assert client.get(f"/tools/jobcast/jobs/{job_id}").status_code == 200
    # The cookie belongs to the prefix: the host app's own pages never receive it (finding 19
    # of issue 23), and logging out clears that same cookie.
    assert "Path=/tools/jobcast;" in r.headers["Set-Cookie"]
    out = client.post("/tools/jobcast/logout")
    assert out.headers["Location"] == "/tools/jobcast/login"
    assert "Path=/tools/jobcast;" in out.headers["Set-Cookie"]
    assert client.get(f"/tools/jobcast/jobs/{job_id}").status_code == 401
    # Logging in from the form with no page to return to (after Log out, say) lands on
    # Jobcast's home page under the prefix, not the host app's root (a review's finding).
    form = client.get("/tools/jobcast/login")
    assert 'name="next" value="/tools/jobcast/"' in form.text
    for target in (None, "", "//evil.example/", "/a\nb"):
        data = {"token": "s3cret"} if target is None else {"token": "s3cret", "next": target}
        r = client.post("/tools/jobcast/login", data=data)
        assert r.status_code == 303 and r.headers["Location"] == "/tools/jobcast/", target


def test_a_new_view_link_under_a_prefix_carries_the_prefix(config, job_id, make_host):
    """Finding 19 of issue 23: /api/jobs/<id>/link answered URLs without the prefix (404s)."""
    app = make_host()
    jobcast.init_app(app, url_prefix="/tools/jobcast",
                     config=Settings(redis_url=config.redis_url, token="s3cret"))
    client = app.test_client()
    r = client.get(f"/tools/jobcast/api/jobs/{job_id}/link", headers={"Authorization": "Bearer s3cret"})
    urls = r.json["urls"]
    assert all(u.startswith("/tools/jobcast/") for u in urls.values()), urls
    assert client.get(urls["status"]).status_code == 200, "the link opens the job under the prefix"
