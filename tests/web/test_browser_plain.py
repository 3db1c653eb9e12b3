"""The plain page (plain.js) in a real headless Chromium: how it ends, when it stops, and how
long it waits before it tries again. The text stream's answers are played by the test where
the case needs one the server gives only in a race (a stream cut by a restart) or under load
(a 503); everything else is the real web."""

from __future__ import annotations

import time

from jobcast.core.joblog import JobLog
from tests.support.browser import PLAIN_DONE, assert_page_clean, plain_list, plain_notes, watch
from tests.support.jobs import running_job

STREAM = "**/stream?start=*"
"""The plain page's reads of the text stream."""


def finished_job(redis, values: int) -> JobLog:
    """A job that logged ``values`` values (``v0``...) and finished."""
    log = running_job(redis)
    for i in range(values):
        log.value(i, f"v{i}")
    log.finished()
    return log


def test_a_stream_that_ends_before_the_jobs_last_values_is_read_again_before_done(context, web,
                                                                                  redis):
    """A review's finding: a stream ended cleanly by a restart, while the job's last values
    were still on their way to the web, showed "Done" without them: the status already said
    finished. The page reads on from where it stands while the job has values it lacks."""
    log = finished_job(redis, 5)
    asked = []

    def cut_short(route):
        """The first read ends after two values; the next ones are the server's."""
        asked.append(route.request.url)
        if len(asked) > 1:
            route.continue_()
            return
        route.fulfill(status=200, body="v0\nv1\n",
                      headers={"Content-Type": "text/plain; charset=utf-8",
                               "Jobcast-Epoch": log.head().epoch})

    pg = watch(context.new_page())
    pg.route(STREAM, cut_short)
    pg.goto(f"{web.url}/jobs/{log.job_id}/plain")
    pg.wait_for_function(PLAIN_DONE, timeout=10000)
    assert plain_list(pg) == [[i, f"v{i}"] for i in range(5)]
    assert "start=2" in asked[1]
    assert_page_clean(pg)


def test_a_refused_stream_says_why_and_is_not_asked_again(context, web, redis):
    """A review's finding: any answer but 404 was retried every few seconds, forever, under
    "reconnecting…": an expired link or an ended session never said so."""
    log = finished_job(redis, 1)
    asked = []

    def refuse(route):
        """The view link has expired."""
        asked.append(route.request.url)
        route.fulfill(status=403, json={"error": "forbidden", "reason": "expired",
                                        "message": "the view link has expired"})

    pg = watch(context.new_page())
    pg.clock.install()  # the page's timers run when the test says: its retries, if any
    pg.route(STREAM, refuse)
    pg.goto(f"{web.url}/jobs/{log.job_id}/plain")
    stopped = "Stopped: the view link has expired"
    pg.wait_for_function(f"() => document.getElementById('latest').textContent === '{stopped}'",
                         timeout=10000)
    assert pg.locator("#status").text_content() == stopped  # (role=status: screen readers)
    # A minute of the page's time: a page that retried would have asked again (its backoff
    # is at most 10 s), and its retry's answer would say "reconnecting…" no more.
    pg.clock.run_for(60_000)
    pg.evaluate("() => fetch(location.href).then(r => r.text())")  # the routes had their turn
    assert len(asked) == 1, asked
    assert pg.locator("#latest").text_content() == stopped


def test_a_busy_server_is_asked_again_no_sooner_than_its_retry_after(context, web, redis):
    """A review's finding: the page came back after a fixed 500 ms whatever the server said,
    with every other page of a restarted server at the same instant."""
    log = finished_job(redis, 3)
    asked = []

    def busy_once(route):
        """The process holds all the streams it may, once."""
        asked.append(time.monotonic())
        if len(asked) > 1:
            route.continue_()
            return
        route.fulfill(status=503, headers={"Retry-After": "2"},
                      json={"error": "service_unavailable", "message": "too many streams"})

    pg = watch(context.new_page())
    pg.route(STREAM, busy_once)
    pg.goto(f"{web.url}/jobs/{log.job_id}/plain")
    pg.wait_for_function(PLAIN_DONE, timeout=15000)
    assert plain_list(pg) == [[i, f"v{i}"] for i in range(3)]
    assert asked[1] - asked[0] >= 2.0


def test_a_long_jobs_plain_page_keeps_its_newest_values_and_says_the_earlier_are_not_shown(
        context, web, redis):
    """A review's finding: the list held an item per value, a million for a job of a million
    values. It keeps the newest 10,000 to 11,000, and says how many it no longer shows."""
    log = finished_job(redis, 12000)
    pg = watch(context.new_page())
    pg.goto(f"{web.url}/jobs/{log.job_id}/plain")
    pg.wait_for_function(PLAIN_DONE, timeout=60000)
    shown = plain_list(pg)
    assert 10000 <= len(shown) <= 11000 and shown[-1] == [11999, "v11999"]
    assert [index for index, _ in shown] == list(range(12000 - len(shown), 12000))
    assert plain_notes(pg) == [f"{12000 - len(shown):,} earlier values are not shown here "
                               "(the raw text stream has every one)"]
