"""The job page in real headless Chromium: the Stop button, a 1,000,000-value job opened at
its tail, "load earlier values", and a trimmed history that the page says out loud."""

from __future__ import annotations

import math
import time
import uuid

import pytest
from redis import Redis

import tests.tasks  # noqa: F401  (registers the sleepy task in this process)
from jobcast.core.joblog import JobLog
from jobcast.core.keys import meta_key
from jobcast.core.values import encode_value
from jobcast.producer.enqueue import enqueue
from jobcast.worker.chart import Downsample
from tests.support.jobs import create_job
from tests.support.services import WebServer
from tests.support.wait import wait_for
from tests.support.browser import dom, model, playwright_sync_api
from tests.support.loss import retried_after_loss
from tests.support.cancel import (Viewers, assert_cancelled_everywhere, assert_next_job_starts_on,
                                  horse_of, stop_delay, wait_started)

playwright_api = playwright_sync_api()

# The Stop button asks for confirmation: the page fixture (tests/web/conftest.py) says yes, and
# remembers what was asked.
ACCEPT_DIALOGS = True


def stop_from_the_page(page, web, job_id: str) -> None:
    """Open the job's page, press Stop, say yes, and wait for "Cancelled"."""
    page.goto(f"{web.url}/jobs/{job_id}")
    page.wait_for_function("() => window.jobcastPage().connection === 'live'")
    assert page.is_visible("#stop")
    page.dialogs.clear()
    page.click("#stop")
    page.wait_for_function("() => document.getElementById('end').textContent === 'Cancelled'", timeout=5000)
    assert page.dialogs and page.dialogs[0][0] == "confirm"
    assert not page.is_visible("#stop")
    # A review's finding: the focus went to the page's body with the button.
    assert page.evaluate("document.activeElement.id") == "end"


def test_stop_button_cancels_a_queued_and_a_running_job_and_hides_itself(page, http, web, redis, lane):
    cfg, proc, _ = lane
    job_id = enqueue("sleepy", {"n": 3, "interval": 60}, redis=redis, config=cfg)
    started = wait_started(redis, job_id)
    worker = started.data["worker"]
    horse = horse_of(proc.pid, started)
    # A queued job (the only worker is busy) is stopped from its page and never runs.
    queued = enqueue("sqrt", {"n": 3, "interval": 0}, redis=redis, config=cfg)
    queued_viewers = Viewers(web.url, queued)
    stop_from_the_page(page, web, queued)
    assert_cancelled_everywhere(http, redis, queued, queued_viewers, by="api")
    viewers = Viewers(web.url, job_id)
    stop_from_the_page(page, web, job_id)
    # stop_delay waits (with a deadline far below the job's 60 s sleep) for the horse to die.
    delay = stop_delay(redis, job_id, horse)
    print(f"work-horse of {job_id[:8]} stopped {delay * 1000:.0f} ms after the cancel")
    shown = dom(page)
    assert shown["status"] == "cancelled" and model(page)["status"] == "cancelled"
    assert_cancelled_everywhere(http, redis, job_id, viewers, by="api")
    assert_next_job_starts_on(redis, cfg, worker)
    assert [e.kind for e in JobLog(redis, queued).entries()] == ["queued", "cancelled"]
    # A page opened on an ended job has no Stop button at all.
    page.goto(f"{web.url}/jobs/{job_id}")
    page.wait_for_function("() => window.jobcastPage().ended")
    assert not page.is_visible("#stop") and page.text_content("#end") == "Cancelled"


SHOWN = """() => {
    const p = window.jobcastPage(), rows = document.querySelectorAll('#log li');
    return {latest: document.getElementById('latest').textContent, chartPoints: p.chartPoints,
            skipped: p.skipped, values: p.values.length, connection: p.connection, opens: p.opens,
            lastRow: rows.length ? rows[rows.length - 1].dataset.i : null};
}"""


def write_million_value_job(redis: Redis, total: int = 1_000_000, kept: int = 100_000) -> JobLog:
    """The state a worker leaves after logging ``total`` sqrt values with the default cap.

    The log keeps the last ``kept`` values (the worker's XADD MAXLEN has trimmed the rest),
    and the worker's chart snapshot covers all of them. The first values are counted, not
    appended, since the cap would have trimmed them anyway; the kept ones go through the
    same Lua script as the worker's, pipelined.
    """
    log = JobLog(redis, uuid.uuid4().hex, maxlen=kept)
    log.create("sqrt", {"n": total, "interval": 0}, total)
    log.started("test-writer", 1)
    gone = total - kept
    redis.hset(meta_key(log.job_id), mapping={"values": gone, "seq": 2 + gone})
    for lo in range(gone, total, 20_000):
        pipe = redis.pipeline(transaction=False)
        for i in range(lo, min(total, lo + 20_000)):
            text, as_json = encode_value(math.sqrt(i))
            keys, args = log.script_args("value", {"i": i, "v": text}, index=i, value_json=as_json)
            log.script()(keys=keys, args=args, client=pipe)
        pipe.execute()
    series = Downsample()
    for i in range(total):
        series.add(i, math.sqrt(i))
    log.save_chart(series.to_json())
    return log


def test_a_million_value_job_opens_at_its_tail_with_its_latest_value_whole_chart_and_last_values(
        page, web, redis, workers):
    # (Live RQ workers keep the web server's watchdog from failing the job as orphaned.)
    # How fast it opens is measured here (printed), never asserted: the deadline only bounds
    # the wait. The README quotes the printed time.
    log = write_million_value_job(redis)
    latest = "{}".format(math.sqrt(999_999))
    t0 = time.monotonic()
    page.goto(f"{web.url}/jobs/{log.job_id}")
    try:
        page.wait_for_function(
            """latest => {
                const p = window.jobcastPage();
                const rows = document.querySelectorAll('#log li');
                return document.getElementById('latest').textContent === latest && p.chartPoints === 1000000
                    && rows.length > 0 && +rows[rows.length - 1].dataset.i === 999999;
            }""", arg=latest, timeout=30000)
    except playwright_api.TimeoutError:
        pytest.fail(f"the page did not show the job within 30 s: {page.evaluate(SHOWN)}")
    elapsed = time.monotonic() - t0
    state = model(page)
    assert state["skipped"] == 998_000 and len(state["values"]) == 2_000
    shown = dom(page)
    assert shown["chartPoints"] == 1_000_000 and shown["chartBuckets"] <= 2048
    assert shown["progressText"].startswith("1,000,000 of 1,000,000")
    # Live entries still arrive after the tailed start.
    page.wait_for_function("() => window.jobcastPage().connection === 'live'")
    log.finished()
    page.wait_for_function("() => document.getElementById('end').textContent === 'Done'", timeout=5000)
    # "Load earlier values" prepends the values before the window, in order.
    page.click("#log-earlier")
    page.wait_for_function("() => window.jobcastPage().values.length === 4000")
    assert model(page)["indices"][:3] == [996_000, 996_001, 996_002]
    print(f"1,000,000-value job page: latest value, chart and log tail in {elapsed:.2f} s")


def test_page_of_a_trimmed_log_says_how_many_values_are_no_longer_kept(page, redis_server, logs_dir, redis,
                                                                       workers):
    # Web and writer share the cap, as every service shares JOBCAST_LOG_MAXLEN.
    web = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-capped-page.log",
                    JOBCAST_LOG_MAXLEN="50").start()
    try:
        log = JobLog(redis, uuid.uuid4().hex, maxlen=50)
        log.create("sqrt", {"n": 300}, 300)
        log.started("test-writer", 1)
        for i in range(300):
            log.value(i, math.sqrt(i))
        log.finished()
        first = next(e.i for e in log.entries() if e.kind == "value")
        assert first > 0
        page.goto(f"{web.url}/jobs/{log.job_id}")
        page.wait_for_function("() => document.getElementById('end').textContent === 'Done'")
        assert page.text_content("#notice") == f"{first:,} earlier values are no longer kept"
        assert model(page)["indices"] == list(range(first, 300))
    finally:
        web.stop()


def test_page_of_a_trimmed_log_draws_the_whole_jobs_chart_from_the_workers_snapshot(
        page, http, web, redis, workers):
    """A review's finding: the README says the chart covers the whole job, but a page opened
    on a trimmed log drew only the values the log still had (300 of 1,500)."""
    job_id = create_job(http, "sqrt", n=300, interval=0)
    wait_for(lambda: JobLog(redis, job_id).status() == "finished", 30, what="the job to end")
    log = JobLog(redis, job_id)
    redis.xtrim(log.keys.log, maxlen=50, approximate=False)
    page.goto(f"{web.url}/jobs/{job_id}")
    page.wait_for_function("() => document.getElementById('end').textContent === 'Done'")
    page.wait_for_function("() => window.jobcastPage().chartPoints === 300", timeout=10000)


def test_after_a_reset_the_chart_draws_the_new_values_below_its_loaded_snapshots_end(
        page, web, redis, workers):
    """A review's finding: a page opened at its tail loads the worker's chart snapshot, and
    draws live values only past the snapshot's end; a reset truncated the chart but kept that
    end, so the values that replaced the lost ones were never drawn."""
    # Over 10,000 values: the page opens at its tail (the last 2,000) and loads the chart.
    log = write_million_value_job(redis, total=10_050, kept=10_050)
    writer = JobLog(redis, log.job_id)
    writer.begin()
    page.goto(f"{web.url}/jobs/{log.job_id}")
    page.wait_for_function("() => window.jobcastPage().connection === 'live' && "
                           "window.jobcastPage().chartPoints === 10050", timeout=15000)
    # A failover loses values 10040..10049 (seqs 10043..10052); the retry writes three again.
    retry = retried_after_loss(log, writer, keep=2 + 10_040, index=10_050)
    for i in range(10_040, 10_043):
        retry.value(i, 1e9)
    retry.finished()
    page.wait_for_function("() => document.getElementById('end').textContent === 'Done'",
                           timeout=15000)
    state = page.evaluate("() => ({resets: window.jobcastPage().resets, "
                          "points: window.jobcastPage().chartPoints})")
    assert state == {"resets": 1, "points": 10_043}
