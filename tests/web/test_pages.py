"""The HTML pages as served: the live job page, the moved plain page, the home page's form
built from the task schemas, and assets that are all local (no CDN)."""

from __future__ import annotations

import re
import uuid

import pytest

from jobcast.web.pages import age_text, form_fields


def assets(html: str) -> list[str]:
    return re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)


def test_job_page_is_the_live_page_and_links_to_the_original_views(client, job_id):
    r = client.get(f"/jobs/{job_id}")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    for part in ('id="latest"', '<canvas id="chart"', '<progress id="progress"', 'id="status"',
                 'id="worker"', 'id="elapsed"', 'id="viewers"', 'id="log-view"', 'role="status"'):
        assert part in html, part
    assert f'data-events="/jobs/{job_id}/events"' in html and 'data-n="7"' in html
    assert f'href="/jobs/{job_id}/plain"' in html and f'href="/jobs/{job_id}/framed"' in html
    assert "n=7, interval=0.5" in html and ">0 of 7<" in html


def test_plain_page_moved_to_its_own_path_with_the_original_markup(client, job_id):
    html = client.get(f"/jobs/{job_id}/plain").get_data(as_text=True)
    assert 'id="latest"' in html and '<ul id="output">' in html and "plain.js" in html
    assert f'data-stream="/jobs/{job_id}/stream"' in html
    assert f'href="/jobs/{job_id}"' in html


@pytest.mark.parametrize("path", ["/", "/jobs/{id}", "/jobs/{id}/plain", "/jobs/{id}/framed"])
def test_pages_load_only_local_assets_that_exist(client, job_id, path):
    html = client.get(path.format(id=job_id)).get_data(as_text=True)
    urls = assets(html)
    assert urls and all(u.startswith("/static/") for u in urls), urls
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200, url
        r.close()


@pytest.mark.parametrize("path, status", [("/jobs/no.pe", 400), ("/jobs/" + "0" * 32, 404),
                                          ("/jobs/no.pe/plain", 400), ("/jobs/" + "0" * 32 + "/plain", 404)])
def test_job_pages_reject_malformed_and_unknown_ids(client, path, status):
    assert client.get(path).status_code == status


def test_home_form_fields_come_from_the_task_schemas_with_their_bounds(client, job_id):
    html = client.get("/").get_data(as_text=True)
    assert '<form id="start"' in html
    n = re.search(r'<input id="p-sqrt-n"[^>]*>', html, re.S).group(0)
    # The server's cap (JOBCAST_PARAM_CAPS: n=100000), under the task's own 1,000,000: a
    # review's finding, the form offered values the API refused.
    assert 'type="number"' in n and 'min="0"' in n and 'max="100000"' in n and 'step="1"' in n
    assert 'value="500"' in n and 'aria-describedby="p-sqrt-n-hint"' in n
    assert '<label for="p-sqrt-n">N</label>' in html
    assert "how many values · ≥ 0, ≤ 100,000" in html
    interval = re.search(r'<input id="p-sqrt-interval"[^>]*>', html, re.S).group(0)
    assert 'step="any"' in interval
    # The job list shows status, progress and age from the start, before any script runs.
    row = re.search(rf'<tr data-id="{job_id}".*?</tr>', html, re.S).group(0)
    assert 'data-status="queued"' in row and "0 / 7" in row and " s</time>" in row


def test_form_fields_handle_exclusive_bounds_booleans_enums_and_strings():
    schema = {"properties": {
        "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000, "default": 10.0},
        "loud": {"type": "boolean", "default": True},
        "mode": {"type": "string", "enum": ["a", "b"], "default": "b"},
        "name": {"type": "string", "default": "x", "description": "a label"},
        "odd": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    }}
    fields = {f["name"]: f for f in form_fields(schema)}
    assert fields["rate"]["kind"] == "number" and fields["rate"]["bounds"] == "> 0, ≤ 10,000"
    assert fields["loud"]["kind"] == "boolean" and fields["mode"]["kind"] == "select"
    assert fields["mode"]["options"] == ["a", "b"]
    assert fields["name"]["kind"] == "string" and fields["odd"]["kind"] == "string"


def test_age_text_is_short_and_human():
    assert [age_text(s) for s in (None, 0, 59, 60, 3599, 3600, 86400 * 3)] == \
        ["", "0 s", "59 s", "1 min", "59 min", "1 h", "3 d"]


def test_favicon_answers_no_content(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 204 and "Content-Type" not in r.headers


@pytest.mark.parametrize("path, status", [
    ("/jobs/{unknown}", 404), ("/jobs/{unknown}/plain", 404), ("/jobs/{unknown}/framed", 404),
    # the HTML stream an <iframe> loads (a review's finding: the frame showed the JSON)
    ("/jobs/{unknown}/frame", 404), ("/jobs/%3Cimg%20src=x%3E/frame", 400),
    ("/jobs/%3Cimg%20src=x%3E", 400)])
def test_a_browser_asking_for_a_page_of_no_job_gets_a_page_saying_so(client, path, status):
    """A review's finding: a mistyped or expired link to a job's page showed raw JSON."""
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    r = client.get(path.format(unknown=uuid.uuid4().hex), headers=browser)
    assert r.status_code == status and r.mimetype == "text/html"
    assert ("No such job" if status == 404 else "Not a job") in r.get_data(as_text=True)
    assert "<img" not in r.get_data(as_text=True)
    if path.endswith("/frame"):  # shown in the <iframe> that asked for it, not refused there
        assert r.headers["X-Frame-Options"] == "SAMEORIGIN"
    # An API client (JSON, or any type) still gets the JSON error.
    for accept in ("application/json", "*/*"):
        api = client.get(path.format(unknown=uuid.uuid4().hex), headers={"Accept": accept})
        assert api.status_code == status and api.is_json and api.json["error"]
    # Another 400 of a page (a Host this server does not answer) is no "job's address".
    foreign = client.get(path.format(unknown=uuid.uuid4().hex),
                         headers={**browser, "Host": "evil.example.com"})
    assert foreign.status_code == 400 and foreign.is_json and foreign.json["field"] == "Host"
