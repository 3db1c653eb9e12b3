"""One stream per browser, however many tabs (jobcast.js), in a real headless Chromium against
a real gunicorn and Redis.

Jobs are written straight to their logs by a thread of the test (a value every 0.1 s each, no
RQ worker), so a dozen run at once on two cores. What the server holds is read from its own
gauge of open stream connections (``jobcast_streams`` on /metrics): Playwright does not see a
SharedWorker's requests.

The LAN browser opens the server as http://jobcast.test:<port> (mapped to 127.0.0.1): plain
HTTP to a host name is not a secure context, so it has no Web Locks; the SharedWorker is what
shares the stream there. The locks fallback is tested on 127.0.0.1 (a secure context).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
import uuid

import httpx
import pytest

from jobcast.core.joblog import JobLog
from jobcast.web.pages import static_digest
from tests.support.browser import DONE, LAN_HOST, LIVE_VALUE, assert_page_clean, watch
from tests.support.services import WebServer
from tests.support.wait import wait_for
from tests.support.streams import Sampler, Writer, open_streams


pytestmark = pytest.mark.slow  # gunicorns and Chromiums of its own


@pytest.fixture(scope="module")
def server(redis_server, logs_dir):
    """A gunicorn of this module's own (two processes, quick heartbeats); jobs written by the
    tests have no RQ worker, so the watchdog is told not to fail them as orphans."""
    web = WebServer(redis_server.url, workers=2, log_path=logs_dir / "web-shared.log",
                    JOBCAST_HEARTBEAT="1", JOBCAST_ORPHAN_TIMEOUT="3600",
                    JOBCAST_ALLOWED_HOSTS=LAN_HOST).start()  # a server without a token
    yield web
    web.stop()


def texts(pg) -> list[str]:
    """The values a job page shows, in order."""
    return pg.evaluate("window.jobcastPage().values")


def stats(pg) -> dict:
    return pg.evaluate("Jobcast.stats()")


def no_polls(requests: list[str]) -> None:
    """No page read the job list or a job's status (GET /api/jobs?…, /api/jobs/<id>)."""
    polls = [u for u in requests if re.search(r"/api/jobs(\?|/[^/?]+(\?|$))", u)]
    assert polls == [], f"the pages polled: {polls[:5]}"


def test_twelve_job_tabs_and_the_home_page_on_plain_http_share_one_stream_connection(
        lan_browser, server, redis):
    base = f"http://{LAN_HOST}:{server.port}"
    wait_for(lambda: open_streams(server.url) == 0, 10, what="no stream left by another test")
    writer = Writer(redis, 12)
    sampler = Sampler(server.url)
    ctx = lan_browser.new_context()
    requests: list[str] = []
    ctx.on("request", lambda r: requests.append(r.url))
    try:
        home = watch(ctx.new_page())
        home.goto(base)
        assert home.evaluate("[window.isSecureContext, typeof navigator.locks]") == [False, "undefined"]
        tabs, took = [], []
        for job_id in writer.ids:
            pg = watch(ctx.new_page())
            t0 = time.monotonic()
            pg.goto(f"{base}/jobs/{job_id}")
            pg.wait_for_function(LIVE_VALUE, timeout=5000)
            took.append(time.monotonic() - t0)
            tabs.append(pg)
        print(f"12 job tabs: live with a value after {min(took):.2f}-{max(took):.2f} s")
        assert {stats(pg)["mode"] for pg in (home, *tabs)} == {"worker"}
        # Every tab goes on showing new values, over one connection for the whole browser.
        settled = time.monotonic() + 1.0
        counts = [len(texts(pg)) for pg in tabs]
        for pg, count in zip(tabs, counts):
            pg.wait_for_function(f"() => window.jobcastPage().values.length >= {count + 10}", timeout=5000)
        wait_for(lambda: sampler.samples[-1][0] > settled + 2, 5, what="two seconds of samples")
        shared = stats(home)
        assert sorted(shared["jobs"]) == sorted(writer.ids) and shared["list"], shared
        assert sampler.most(settled) == 1, sampler.samples[-30:]
        for job_id in writer.ids:
            home.locator(f"#jobs tr[data-id='{job_id}']").wait_for(timeout=5000)

        writer.finish()
        for pg, job_id in zip(tabs, writer.ids):
            pg.wait_for_function(DONE, timeout=15000)
            page = pg.evaluate("window.jobcastPage()")
            assert page["values"] == writer.written[job_id], "every value once, in order"
            assert page["duplicates"] == 0 and page["gaps"] == 0
        home.wait_for_function(
            "ids => ids.every(id => document.querySelector(`#jobs tr[data-id='${id}']`).dataset.status === 'finished')",
            arg=writer.ids, timeout=10000)
        # The whole time, one connection at most: each change of the set of jobs closes the
        # stream before opening the next, and the server frees a closed one as soon as its
        # close arrives (not at the next heartbeat). Which of the two the server reads first
        # is the network's choice, so a sample may catch a hand-over midway, never more.
        print(f"open stream connections: at most {sampler.most()} while 13 tabs opened "
              f"({sampler.most_held()} for half a second), {sampler.most(settled)} once "
              f"open; the worker opened {stats(home)['connections']}")
        assert sampler.most_held() == 1 and sampler.most() <= 2, sampler.samples
        no_polls(requests)
        for pg in (home, *tabs):
            assert_page_clean(pg)
    finally:
        sampler.close()
        writer.finish()
        ctx.close()


def open_job(ctx, base: str, job_id: str):
    pg = watch(ctx.new_page())
    pg.goto(f"{base}/jobs/{job_id}")
    pg.wait_for_function(LIVE_VALUE, timeout=5000)
    return pg


@pytest.mark.parametrize("share", ["worker", "locks"])
def test_closing_the_tab_that_holds_the_connection_loses_and_repeats_no_value(
        share, browser, lan_browser, server, redis):
    # The worker on plain HTTP to a LAN host (no Web Locks there); the locks fallback where
    # it exists (127.0.0.1 is a secure context).
    base = f"http://{LAN_HOST}:{server.port}" if share == "worker" else server.url
    ctx = (lan_browser if share == "worker" else browser).new_context()
    ctx.add_init_script(f"window.JobcastConfig = {{share: '{share}'}}")
    wait_for(lambda: open_streams(server.url) == 0, 10, what="no stream left by another test")
    writer = Writer(redis, 2)
    sampler = Sampler(server.url)
    try:
        a, b = writer.ids
        tabs = [open_job(ctx, base, job_id) for job_id in (a, a, b)]
        assert [stats(pg)["mode"] for pg in tabs] == [share] * 3
        holder = tabs[0]                                # opened the worker, or took the lock
        if share == "locks":
            assert [stats(pg)["leader"] for pg in tabs] == [True, False, False]
        connections = stats(tabs[1])["connections"]
        rest = tabs[1:]
        counts = [len(texts(pg)) for pg in rest]
        holder.close()
        closed = time.monotonic()
        wait_for(lambda: all(len(texts(pg)) > n for pg, n in zip(rest, counts)), 5, 0.02,
                 what="new values in the other tabs")
        handed = time.monotonic() - closed
        print(f"{share}: the other tabs had a new value {handed:.2f} s after the holder closed")
        if share == "locks":
            assert [stats(pg)["leader"] for pg in rest] == [True, False]
        else:
            # The worker lives on with the other tabs: the same connection, no new one; and
            # it forgot the closed tab (its goodbye: no Web Locks on plain HTTP).
            assert stats(rest[0])["connections"] == connections
            wait_for(lambda: stats(rest[0])["tabs"] == 2, 5, what="the worker to forget the tab")
        after = time.monotonic() + 1.0
        wait_for(lambda: sampler.samples[-1][0] > after + 1, 5, what="a second of samples")
        assert sampler.most(after) == 1, sampler.samples[-20:]
        writer.finish()
        for pg, job_id in zip(rest, (a, b)):
            pg.wait_for_function(DONE, timeout=15000)
            page = pg.evaluate("window.jobcastPage()")
            assert page["values"] == writer.written[job_id], "every value once, in order"
            assert page["gaps"] == 0
            assert_page_clean(pg)
    finally:
        sampler.close()
        writer.finish()
        ctx.close()


# Collect a set of jobs' values on a page through Jobcast.watch (the page's own jobcast.js).
WATCH = """ids => {
    window.got = window.got || {}; window.handles = window.handles || {};
    for (const id of ids) {
        window.got[id] = [];
        window.handles[id] = Jobcast.watch(id, {onValue: (v, e) => window.got[id].push(e.v),
                                                onEnd: e => { window.got[id].end = e.kind; }});
    }
}"""


def got(pg, job_id: str) -> list[str]:
    return pg.evaluate("id => window.got[id]", job_id)


@pytest.mark.parametrize("share", ["auto", "none"])  # the worker, and one stream per tab
def test_a_job_added_to_and_removed_from_a_watch_set_gets_every_value_once(share, browser, server,
                                                                             redis):
    writer = Writer(redis, 2)
    ctx = browser.new_context()
    ctx.add_init_script(f"window.JobcastConfig = {{share: '{share}'}}")
    try:
        a, b = writer.ids
        pg = watch(ctx.new_page())
        pg.goto(server.url)                             # the home page: its job list, and jobcast.js
        pg.evaluate(WATCH, [a])
        assert stats(pg)["mode"] == ("worker" if share == "auto" else "none")
        pg.wait_for_function("id => window.got[id].length >= 5", arg=a)
        pg.evaluate(WATCH, [b])                         # added: the stream now carries both
        pg.wait_for_function("id => window.got[id].length >= 5", arg=b)
        wait_for(lambda: sorted(stats(pg)["jobs"]) == sorted([a, b]), 5, what="both jobs in the stream")
        pg.evaluate("id => window.handles[id].close()", a)  # removed: b goes on alone
        wait_for(lambda: stats(pg)["jobs"] == [b], 5, what="a gone from the stream")
        kept = len(got(pg, a))
        count = len(got(pg, b))
        pg.wait_for_function(f"id => window.got[id].length >= {count + 10}", arg=b)
        writer.finish()
        pg.wait_for_function("id => window.got[id].end === 'finished'", arg=b, timeout=10000)
        assert got(pg, b) == writer.written[b], "every value of b once, in order"
        assert got(pg, a) == writer.written[a][:kept] and len(got(pg, a)) == kept, \
            "a's values up to its removal, and none after"
        assert stats(pg)["gaps"] == 0 and stats(pg)["list"], stats(pg)
        assert_page_clean(pg)
    finally:
        writer.finish()
        ctx.close()


@pytest.mark.parametrize("bad", ["bad id!", "", "x" * 129])
def test_a_malformed_job_id_ends_its_own_watch_and_no_other_tabs(bad, browser, server, redis):
    """An embedding review's finding: `Jobcast.watch("bad id!")` (or "", or an RQ id over 128
    characters) in one tab put it on the shared stream, which the server refused whole (400):
    every job every tab of the browser watched ended "refused", for good."""
    writer = Writer(redis, 1)
    ctx = browser.new_context()
    try:
        [a] = writer.ids
        first, second = watch(ctx.new_page()), watch(ctx.new_page())
        for pg in (first, second):
            pg.goto(server.url)
        first.evaluate(WATCH, [a])
        first.wait_for_function("id => window.got[id].length >= 3", arg=a)
        second.evaluate(WATCH, [bad])
        second.wait_for_function("id => window.got[id].end === 'refused'", arg=bad)
        count = len(got(first, a))
        first.wait_for_function(f"id => window.got[id].length >= {count + 5}", arg=a)
        writer.finish()
        first.wait_for_function("id => window.got[id].end === 'finished'", arg=a, timeout=10000)
        assert got(first, a) == writer.written[a]
        assert_page_clean(first)
    finally:
        writer.finish()
        ctx.close()


@pytest.mark.parametrize("share", ["auto", "none"])  # the worker, and one stream per tab
def test_a_job_watched_again_after_it_ended_on_a_stream_still_open_gets_its_log_again(
        share, browser, server, redis):
    """A review's finding: the home page's list kept the stream open after a watched job ended
    on it. Watched again (a reload of its tab, its link followed from the list), the job was
    put on that stream, which had already ended it and would send nothing more: the watch said
    live and stayed empty."""
    jlog = JobLog(redis, uuid.uuid4().hex)
    jlog.create("done", {}, None)
    jlog.started("w", 1)
    for i in range(3):
        jlog.value(i, f"v{i}")
    jlog.finished()
    ctx = browser.new_context()
    ctx.add_init_script(f"window.JobcastConfig = {{share: '{share}'}}")
    try:
        pg = watch(ctx.new_page())
        pg.goto(server.url)                             # the home page: the list keeps a stream
        for _ in range(2):
            pg.evaluate(WATCH, [jlog.job_id])
            pg.wait_for_function("id => window.got[id].end === 'finished'", arg=jlog.job_id,
                                 timeout=10000)
            assert got(pg, jlog.job_id) == ["v0", "v1", "v2"]
            pg.evaluate("id => window.handles[id].close()", jlog.job_id)
        assert stats(pg)["list"], stats(pg)
        assert_page_clean(pg)
    finally:
        ctx.close()


def test_a_multi_job_stream_resumes_exactly_for_every_job_after_a_web_restart(
        browser, redis_server, redis, logs_dir):
    web = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-shared-restart.log",
                    JOBCAST_HEARTBEAT="1", JOBCAST_ORPHAN_TIMEOUT="3600").start()
    writer = Writer(redis, 3)
    ctx = browser.new_context()
    try:
        pg = watch(ctx.new_page())
        pg.goto(web.url)
        pg.evaluate(WATCH, writer.ids)
        for job_id in writer.ids:
            pg.wait_for_function("id => window.got[id].length >= 5", arg=job_id)
        web.stop(signal.SIGQUIT)                        # abrupt: writes may break off midway
        pg.wait_for_function("() => Jobcast.stats().state === 'reconnecting'", timeout=10000)
        restarted = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-shared-restart.log",
                              JOBCAST_HEARTBEAT="1", JOBCAST_ORPHAN_TIMEOUT="3600")
        restarted.port = web.port
        web = restarted.start()
        pg.wait_for_function("() => Jobcast.stats().state === 'live'", timeout=40000)
        counts = {job_id: len(got(pg, job_id)) for job_id in writer.ids}
        for job_id in writer.ids:
            pg.wait_for_function(f"id => window.got[id].length >= {counts[job_id] + 5}", arg=job_id)
        writer.finish()
        for job_id in writer.ids:
            pg.wait_for_function("id => window.got[id].end === 'finished'", arg=job_id, timeout=10000)
            assert got(pg, job_id) == writer.written[job_id], "every value once, in order"
        shared = stats(pg)
        assert shared["reconnects"] >= 1 and shared["gaps"] == 0, shared
        assert_page_clean(pg)
    finally:
        writer.finish()
        ctx.close()
        web.stop()


def test_tabs_whose_shared_worker_is_gone_join_a_new_one_and_lose_no_value(
        lan_browser, server, redis):
    """A review's finding: a tab the worker no longer served (dropped while the tab was
    frozen, or a worker that crashed) never noticed: its pings went nowhere, and it showed
    "live" with no values. A tab now hears a pong to each ping, and joins a worker again when
    none comes. The worker is ended here through the DevTools protocol, as a crash would."""
    ctx = lan_browser.new_context()
    ctx.add_init_script("window.JobcastConfig = {share: 'worker'}")
    writer = Writer(redis, 1)
    try:
        (job_id,) = writer.ids
        base = f"http://{LAN_HOST}:{server.port}"
        tabs = [open_job(ctx, base, job_id) for _ in range(2)]
        assert [stats(pg)["mode"] for pg in tabs] == ["worker"] * 2
        cdp = lan_browser.new_browser_cdp_session()
        workers = [t for t in cdp.send("Target.getTargets")["targetInfos"]
                   if t["type"] == "shared_worker"]
        assert len(workers) == 1, workers
        cdp.send("Target.closeTarget", {"targetId": workers[0]["targetId"]})
        wait_for(lambda: not any(t["type"] == "shared_worker"
                                 for t in cdp.send("Target.getTargets")["targetInfos"]),
                 10, what="the worker to end")
        counts = [len(texts(pg)) for pg in tabs]
        # Within a ping (20 s) and its answer's wait (3 s), each tab has joined a new worker.
        wait_for(lambda: all(len(texts(pg)) > n + 2 for pg, n in zip(tabs, counts)), 40, 0.2,
                 what="new values in every tab")
        writer.finish()
        for pg in tabs:
            pg.wait_for_function(DONE, timeout=15000)
            page = pg.evaluate("window.jobcastPage()")
            assert page["values"] == writer.written[job_id], "every value once, in order"
            assert_page_clean(pg)
    finally:
        writer.finish()
        ctx.close()


def test_a_stream_refused_as_full_comes_back_no_sooner_than_retry_after_says(browser, server,
                                                                             redis):
    """A review's finding: a 429 or 503 (this client's streams, or the process's, all taken)
    says when to come back (Retry-After), and jobcast.js came back after its own backoff,
    a second or two."""
    ctx = browser.new_context()
    ctx.add_init_script("window.JobcastConfig = {share: 'none'}")  # the page's own requests
    writer = Writer(redis, 1)
    asked: list[float] = []

    def full(route) -> None:
        """The server's answer to a client over its streams."""
        asked.append(time.monotonic())
        if len(asked) > 3:
            route.continue_()
            return
        route.fulfill(status=429, headers={"Retry-After": "4"}, content_type="application/json",
                      body='{"error": "too_many_streams", "message": "over 3 streams"}')

    try:
        ctx.route(re.compile(r".*/events\?.*"), full)
        (job_id,) = writer.ids
        pg = watch(ctx.new_page())
        pg.goto(f"{server.url}/jobs/{job_id}")
        pg.wait_for_function(LIVE_VALUE, timeout=30000)
        # The stream, refused, and the request that reads why (EventSource does not say);
        # then nothing until Retry-After has passed.
        assert len(asked) >= 3 and asked[2] - asked[1] >= 4.0, [t - asked[0] for t in asked]
        writer.finish()
        pg.wait_for_function(DONE, timeout=15000)
        assert pg.evaluate("window.jobcastPage()")["values"] == writer.written[job_id]
    finally:
        writer.finish()
        ctx.close()


@contextlib.contextmanager
def played_job_page(browser, server, job: str, answers: list[str]):
    """A job page (its own tab, no SharedWorker) whose streams the test plays: the k-th request
    of /events gets ``answers[k]`` (the last one again after that). Yields the page once it
    says Done, and the URLs asked."""
    asked: list[str] = []

    def played(route) -> None:
        """The next answer, as the relay would write it."""
        asked.append(route.request.url)
        body = answers[min(len(asked), len(answers)) - 1]
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    ctx = browser.new_context()
    ctx.add_init_script("window.JobcastConfig = {share: 'none'}")
    try:
        ctx.route(re.compile(r".*/events\?.*"), played)
        pg = watch(ctx.new_page())
        pg.goto(f"{server.url}/jobs/{job}")
        pg.wait_for_function(DONE, timeout=10000)
        yield pg, asked
    finally:
        ctx.close()


def test_a_trimmed_event_mid_stream_goes_on_at_the_first_entry_kept_with_no_reconnect(browser,
                                                                                     server, redis):
    """The relay now says ``trimmed`` mid-stream (a capped log outran a slow connection): a
    page's watch takes it, and the next entry, past the gap, is not taken for a lost one (a
    gap would reconnect, and meet the same gap again). The stream is played by the test."""
    job = uuid.uuid4().hex
    JobLog(redis, job).create("sqrt", {}, None)      # the page's (its stream is the test's)

    def event(kind: str, data: dict) -> str:
        """One event of a multi-job stream."""
        return f"event: {kind}\ndata: {json.dumps({'job': job, **data})}\n\n"

    def entry(kind: str, seq: int, **data) -> str:
        """One entry of the job's log (a value's text is its index)."""
        if kind == "value":
            data.update(i=seq - 3, v=str(seq - 3), j=seq - 3)
        return event(kind, {"seq": seq, "ep": "E1", "kind": kind, "ts": 1.0, **data})

    body = ("retry: 60000\n\n" + f'event: hello\ndata: {{"jobs":["{job}"],"list":false}}\n\n'
            + entry("queued", 1, task="sqrt", params={}, n=None)
            + entry("started", 2, worker="w", attempt=1)
            + "".join(entry("value", seq) for seq in (3, 4, 5))
            + event("trimmed", {"after": 5, "first_seq": 10, "lost": 4, "first_value": 7})
            + "".join(entry("value", seq) for seq in (10, 11))
            + entry("finished", 12))
    with played_job_page(browser, server, job, [body]) as (pg, asked):
        page = pg.evaluate("window.jobcastPage()")
        assert page["values"] == ["0", "1", "2", "7", "8"] and page["gaps"] == 0, page
        assert "values #3 to #6 are no longer kept (4)" in pg.inner_text("body")
        assert stats(pg)["gaps"] == 0 and len(asked) == 1, (stats(pg), asked)


def test_a_connection_that_begins_past_the_cursor_untold_is_read_again_not_passed_over(browser,
                                                                                       server,
                                                                                       redis):
    """CI once saw one job of a hundred on a page miss its first six values (the server's side
    of it is not found). The page's side: a fresh connection took any first entry past the
    cursor for a log that starts later, in silence. Only a ``trimmed`` says that; any other
    jump is a gap, read again. The stream is played by the test: the first answer begins at
    seq 6, the second is whole."""
    job = uuid.uuid4().hex
    JobLog(redis, job).create("sqrt", {}, None)      # the page's (its stream is the test's)

    def entry(kind: str, seq: int, **data) -> str:
        """One entry of the job's log in a multi-job stream (a value's text is its index)."""
        if kind == "value":
            data.update(i=seq - 3, v=str(seq - 3), j=seq - 3)
        body = {"job": job, "seq": seq, "ep": "E1", "kind": kind, "ts": 1.0, **data}
        return f"id: x:{seq}~E1\nevent: {kind}\ndata: {json.dumps(body)}\n\n"

    hello = "retry: 100\n\n" + f'event: hello\ndata: {{"jobs":["{job}"],"list":false}}\n\n'
    head = entry("queued", 1, task="sqrt", params={}, n=None) + entry("started", 2, worker="w",
                                                                        attempt=1)
    tail = "".join(entry("value", seq) for seq in (6, 7)) + entry("finished", 8)
    whole = head + "".join(entry("value", seq) for seq in (3, 4, 5)) + tail
    # First a stream that begins at seq 6; then, asked again, the log as it is.
    with played_job_page(browser, server, job, [hello + tail, hello + whole]) as (pg, asked):
        page = pg.evaluate("window.jobcastPage()")
        assert page["values"] == ["0", "1", "2", "3", "4"], page
        assert stats(pg)["gaps"] >= 1 and len(asked) == 2, (stats(pg), asked)
        assert asked[1] == asked[0]  # read again from where it was: the start


# An EventSource the test plays event by event, whose connections stay open (a played HTTP
# answer ends, and its end reconnects the page on its own).
FAKE_EVENT_SOURCE = """
window.__es = [];
window.EventSource = class extends EventTarget {
    constructor(url) { super(); this.url = url; this.readyState = 0; window.__es.push(this); }
    close() { this.readyState = 2; }
    play(type, data) { this.dispatchEvent(new MessageEvent(type, {data: JSON.stringify(data)})); }
};
"""


def test_a_gap_followed_by_more_entries_on_the_same_connection_reconnects_at_once(browser, server,
                                                                                 redis):
    """A review's finding: each entry after a gap, on the connection that had it, was a gap
    too, and each called for a reconnect as a new failure would: the wait before it grew with
    every entry, and a job that kept writing froze on the page (still "live") until it
    stopped. The gap now reads the lane again once, at once."""
    job = uuid.uuid4().hex
    JobLog(redis, job).create("sqrt", {}, None)      # the page's (its streams are the test's)
    ctx = browser.new_context()
    ctx.add_init_script("window.JobcastConfig = {share: 'none'}")
    ctx.add_init_script(FAKE_EVENT_SOURCE)
    try:
        pg = watch(ctx.new_page())
        pg.goto(f"{server.url}/jobs/{job}")
        pg.wait_for_function("() => window.__es.length === 1", timeout=10000)
        pg.evaluate("""job => {
            const es = window.__es[0];
            const entry = (kind, seq, extra) => es.play(kind, Object.assign(
                {job: job, seq: seq, ep: "E1", kind: kind, ts: 1.0}, extra));
            es.play("hello", {jobs: [job], list: false, retry: 1000});
            entry("queued", 1, {task: "sqrt", params: {}, n: null});
            entry("started", 2, {worker: "w", attempt: 1});
            for (let seq = 3; seq < 5; seq++) { entry("value", seq, {i: seq - 3, v: String(seq - 3)}); }
            // Seqs 5 to 7 never come on this connection; what follows does, at once and then
            // one every 200 ms.
            for (let seq = 8; seq < 20; seq++) { entry("value", seq, {i: seq - 3, v: String(seq - 3)}); }
            let seq = 20;
            window.__more = setInterval(() => { entry("value", seq, {i: seq - 3, v: String(seq - 3)}); seq++; }, 200);
        }""", job)
        pg.wait_for_function("() => window.__es.length >= 2", timeout=3000)
        again = pg.evaluate("() => decodeURIComponent(window.__es[1].url)")
        assert f"job={job}:4~E1" in again, again  # read again from its cursor: seq 4
        assert stats(pg)["gaps"] >= 1
        pg.evaluate("() => clearInterval(window.__more)")
    finally:
        ctx.close()


@contextlib.contextmanager
def bare_page(browser, server):
    """A bare page of the server's (CSP bypassed) with jobcast.js loaded, sharing nothing
    (its manager in the page), its EventSource played by the test (FAKE_EVENT_SOURCE)."""
    ctx = browser.new_context(bypass_csp=True)
    ctx.add_init_script("window.JobcastConfig = {share: 'none'}")
    ctx.add_init_script(FAKE_EVENT_SOURCE)
    try:
        pg = watch(ctx.new_page())
        pg.goto(f"{server.url}/healthz")
        pg.add_script_tag(url=f"{server.url}/static/jobcast.js")
        yield pg
    finally:
        ctx.close()


def test_a_watch_back_in_an_older_epoch_than_the_stream_is_reset_there_and_the_others_are_not(
        browser, server, redis):
    """A review's finding: a client joining the manager with a position in an older incarnation
    of the log (a tab frozen while a failover reset the others; a page resuming a saved
    position) was taken as having everything when its seq was no lower than the manager's, and
    the new incarnation's entries at those seqs were dropped as ones it had, in silence. The
    manager now resets it to the point where both incarnations agree, which it saw: the reset
    that moved the stream. The watch already in the new incarnation is not reset again. The
    stream is played by the test: E1 to seq 7, a reset to E2 after seq 5, E2 to seq 9."""
    job = uuid.uuid4().hex
    with bare_page(browser, server) as pg:
        pg.evaluate("""job => {
            const seen = (name) => {
                const got = window[name] = {values: [], resets: []};
                return {onValue: (v, e) => got.values.push([e.seq, e.ep, v]),
                        onReset: (r) => got.resets.push(r.after)};
            };
            window.__first = Jobcast.watch(job, seen("first"));
        }""", job)
        pg.wait_for_function("() => window.__es.length === 1", timeout=10000)
        pg.evaluate("""job => {
            const es = window.__es[0];
            const entry = (seq, ep, extra) => es.play(extra ? extra.kind : "value", Object.assign(
                {job: job, seq: seq, ep: ep, kind: "value", ts: 1.0, i: seq - 3,
                 v: ep + "-" + (seq - 3)}, extra || {}));
            es.play("hello", {jobs: [job], list: false, retry: 1000});
            entry(1, "E1", {kind: "queued", task: "sqrt", params: {}, n: null});
            entry(2, "E1", {kind: "started", worker: "w", attempt: 1});
            for (let seq = 3; seq <= 7; seq++) { entry(seq, "E1"); }
            es.play("reset", {job: job, epoch: "E2", after: 5, values: 3, reason: "lost",
                              was: {seq: 7, epoch: "E1"}});
            for (let seq = 6; seq <= 9; seq++) { entry(seq, "E2"); }
        }""", job)
        pg.wait_for_function("() => window.first.values.length === 9", timeout=5000)
        # Back at seq 9 of E1 (no lower than the stream's 9 of E2), as a tab that slept
        # through the failover would be.
        pg.evaluate("""job => {
            const got = window.second = {values: [], resets: []};
            window.__second = Jobcast.watch(job, {after: 9, epoch: "E1",
                onValue: (v, e) => got.values.push([e.seq, e.ep, v]),
                onReset: (r) => got.resets.push(r.after)});
        }""", job)
        pg.wait_for_function("() => window.second.values.length === 4", timeout=5000)
        first, second = pg.evaluate("[window.first, window.second]")
        assert second["resets"] == [5], second
        assert second["values"] == [[seq, "E2", f"E2-{seq - 3}"] for seq in (6, 7, 8, 9)], second
        assert first["resets"] == [5], first      # its own, once: not the second's again
        assert [v[2] for v in first["values"]] == ["E1-0", "E1-1", "E1-2", "E1-3", "E1-4",
                                                   "E2-3", "E2-4", "E2-5", "E2-6"], first
        assert pg.evaluate("window.__es.length") == 1  # served by the manager, not read again


def test_a_whole_log_asked_for_while_a_tail_is_on_its_way_is_not_passed_over_by_that_tail(
        browser, server):
    """A review's finding: a watch of the whole log joining a job whose connection was opened
    for a tail (a job page at its tail, another page from the start) reconnects for the whole
    log; but the tail and the entries the old connection still brought meanwhile were taken,
    and moved the manager's cursor: the new connection asked from there, and the second watch
    never had the history. What a connection asked anew still brings is now dropped. The
    streams are played by the test."""
    job = uuid.uuid4().hex
    with bare_page(browser, server) as pg:
        pg.evaluate("""job => {
            window.got = {tail: [], whole: []};
            Jobcast.watch(job, {tail: 2, onValue: (v, e) => window.got.tail.push(e.seq)});
        }""", job)
        pg.wait_for_function("() => window.__es.length === 1", timeout=10000)
        assert f"job={job}~2" in pg.evaluate("() => decodeURIComponent(window.__es[0].url)")
        pg.evaluate("""async job => {
            const entry = (es, seq, extra) => es.play(extra ? extra.kind : "value", Object.assign(
                {job: job, seq: seq, ep: "E1", kind: "value", ts: 1.0, i: seq - 3,
                 v: String(seq - 3)}, extra || {}));
            window.entry = entry;
            Jobcast.watch(job, {onValue: (v, e) => window.got.whole.push(e.seq)});
            await new Promise(resolve => setTimeout(resolve, 0));   // the manager has it
            // The tail the first connection was opened for comes now, before it is replaced.
            const es = window.__es[0];
            es.play("hello", {jobs: [job], list: false, retry: 1000});
            es.play("tail", {job: job, tail: 2, after: 5, skipped: 3});
            entry(es, 6);
            entry(es, 7);
        }""", job)
        pg.wait_for_function("() => window.__es.length === 2", timeout=5000)
        again = pg.evaluate("() => decodeURIComponent(window.__es[1].url)")
        assert again.endswith(f"job={job}"), again    # the whole log: no tail, no cursor
        pg.evaluate("""job => {
            const es = window.__es[1];
            es.play("hello", {jobs: [job], list: false, retry: 1000});
            window.entry(es, 1, {kind: "queued", task: "sqrt", params: {}, n: null});
            window.entry(es, 2, {kind: "started", worker: "w", attempt: 1});
            for (let seq = 3; seq <= 8; seq++) { window.entry(es, seq); }
        }""", job)
        pg.wait_for_function("() => window.got.whole.length === 6", timeout=5000)
        # (once the job's status has said where the log stands: a read of its own)
        pg.wait_for_function("() => window.got.tail.length >= 2", timeout=5000)
        got = pg.evaluate("window.got")
        assert got["whole"] == [3, 4, 5, 6, 7, 8], got
        # Its own tail of the whole log (it was given more, and held back what a tail would
        # not show: test_a_tail_watch_beside_a_whole_log_watch_of_the_same_job_gets_only_its_tail).
        assert got["tail"] == [7, 8], got


def test_a_bigger_job_list_asked_for_while_items_still_come_gets_its_snapshot(browser, server):
    """A review's finding: a page asking for a bigger job list (or a new one, on a list
    resumed without a snapshot) makes the manager ask for a new snapshot; but the items the
    old connection still brought meanwhile set the list's cursor, the new connection asked
    from there, and no snapshot came: the new list stayed empty. What the old connection
    brings of a list asked for anew is now dropped. The streams are played by the test."""
    with bare_page(browser, server) as pg:
        pg.evaluate("""() => {
            window.snapshots = {small: [], big: []};
            Jobcast.list({limit: 10, onSnapshot: (jobs, seq) => window.snapshots.small.push(seq)});
        }""")
        pg.wait_for_function("() => window.__es.length === 1", timeout=10000)
        row = {"id": "a" * 32, "task": "sqrt", "status": "running", "last_seq": 5}
        pg.evaluate("""row => {
            const es = window.__es[0];
            es.play("hello", {jobs: [], list: true, retry: 1000});
            es.play("snapshot", {seq: 5, epoch: "F1", jobs: [row]});
        }""", row)
        pg.wait_for_function("() => window.snapshots.small.length === 1", timeout=5000)
        pg.evaluate("""async () => {
            Jobcast.list({limit: 20, onSnapshot: (jobs, seq) => window.snapshots.big.push(seq)});
            await new Promise(resolve => setTimeout(resolve, 0));   // the manager has it
            window.__es[0].play("job", {seq: 6, ep: "F1", job: "a".repeat(32), jseq: 6,
                                        change: "progress", values: 3, ts: 2.0});
        }""")
        pg.wait_for_function("() => window.__es.length === 2", timeout=5000)
        again = pg.evaluate("() => decodeURIComponent(window.__es[1].url)")
        assert again.endswith("list=20"), again      # a snapshot: no cursor
        pg.evaluate("""row => {
            const es = window.__es[1];
            es.play("hello", {jobs: [], list: true, retry: 1000});
            es.play("snapshot", {seq: 6, epoch: "F1", jobs: [row]});
        }""", row)
        pg.wait_for_function("() => window.snapshots.big.length === 1", timeout=5000)
        assert pg.evaluate("window.snapshots") == {"small": [5, 6], "big": [6]}


def test_a_tail_served_after_a_mid_stream_trim_counts_the_values_the_trim_passed_over(browser,
                                                                                    server):
    """A review's finding: the manager's count of a job's values did not move with a
    ``trimmed`` mid-stream, so a tail served to a watch joining right after (nothing in the
    ring yet) said too few values came before it (job.js then numbers and notes them wrong).
    The stream is played by the test: values 0-2, then a trim to value 7 at seq 10."""
    job = uuid.uuid4().hex
    with bare_page(browser, server) as pg:
        pg.evaluate("""job => {
            window.got = {whole: [], tails: []};
            Jobcast.watch(job, {onValue: (v, e) => window.got.whole.push(e.i)});
        }""", job)
        pg.wait_for_function("() => window.__es.length === 1", timeout=10000)
        pg.evaluate("""job => {
            const es = window.__es[0];
            const entry = (seq, extra) => es.play(extra ? extra.kind : "value", Object.assign(
                {job: job, seq: seq, ep: "E1", kind: "value", ts: 1.0, i: seq - 3,
                 v: String(seq - 3)}, extra || {}));
            es.play("hello", {jobs: [job], list: false, retry: 1000});
            entry(1, {kind: "queued", task: "sqrt", params: {}, n: null});
            entry(2, {kind: "started", worker: "w", attempt: 1});
            for (let seq = 3; seq <= 5; seq++) { entry(seq); }
            es.play("trimmed", {job: job, after: 5, first_seq: 10, lost: 4, first_value: 7});
        }""", job)
        pg.wait_for_function("() => window.got.whole.length === 3", timeout=5000)
        pg.evaluate("""job => Jobcast.watch(job, {tail: 2,
            onTail: (t) => window.got.tails.push([t.after, t.skipped])})""", job)
        pg.wait_for_function("() => window.got.tails.length === 1", timeout=5000)
        assert pg.evaluate("window.got.tails") == [[9, 7]]


def test_pages_name_their_jobcast_js_by_its_digest_and_its_tabs_share_the_worker_of_that_version(
        lan_browser, server, redis):
    """Pages load jobcast.js?v=<its digest>, and the script's version carries the digest. The
    version names the SharedWorker the tabs share (its URL and name), so after a deploy that
    changed the file new tabs start a worker of the new code rather than joining the old one
    still running for tabs opened before. The worker reads the version from its URL and says
    it in its hello; a page refuses a worker of another version, so tabs that share one here
    show that both ends agree."""
    base = f"http://{LAN_HOST}:{server.port}"
    digest = static_digest("jobcast.js")
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    assert f'src="/static/jobcast.js?v={digest}"' in httpx.get(f"{server.url}/").text
    wait_for(lambda: open_streams(server.url) == 0, 10, what="no stream left by another test")
    writer = Writer(redis, 1)
    job_id = writer.ids[0]
    ctx = lan_browser.new_context()
    try:
        tabs = [open_job(ctx, base, job_id) for _ in range(2)]
        assert [pg.evaluate("[Jobcast.version, Jobcast.stats().mode]") for pg in tabs] == [
            [f"1-{digest}", "worker"]] * 2
        wait_for(lambda: open_streams(server.url) == 1, 5, what="two tabs on one worker's stream")
        writer.finish()
        for pg in tabs:
            pg.wait_for_function(DONE, timeout=15000)
            assert pg.evaluate("window.jobcastPage().values") == writer.written[job_id]
            assert_page_clean(pg)
    finally:
        writer.finish()
        ctx.close()


TAIL_AND_WHOLE = """([job, tail]) => {
    const seen = (w) => ({values: [], tails: [], end: null,
        onValue: (v, e) => w.values.push(e.v), onTail: (t) => w.tails.push([t.after, t.skipped]),
        onEnd: (e) => { w.end = e.kind; }});
    window.got = window.got || {};
    const w = window.got[tail === null ? 'whole' : 'tail'] = {values: [], tails: [], end: null};
    const o = seen(w);
    Jobcast.watch(job, tail === null ? o : Object.assign(o, {tail: tail}));
}"""


@pytest.mark.parametrize("where", ["two tabs", "one page"])
def test_a_tail_watch_beside_a_whole_log_watch_of_the_same_job_gets_only_its_tail(
        browser, server, redis, where):
    """A many-jobs review's finding: a watch of a job's last 5 values, made while another of
    the browser's watches of the job asked for its whole log (another tab, or the same page),
    was given the whole log, and no onTail: the browser reads a job once, and that read was
    the whole log's."""
    jlog = JobLog(redis, uuid.uuid4().hex)
    jlog.create("done", {}, None)
    jlog.started("w", 1)            # seqs 1 and 2; value i is seq i + 3
    for i in range(100):
        jlog.value(i, f"v{i}")
    jlog.finished()
    ctx = browser.new_context()
    try:
        pages = [watch(ctx.new_page()) for _ in range(2 if where == "two tabs" else 1)]
        for pg in pages:
            pg.goto(server.url)
        if where == "two tabs":
            pages[0].evaluate(TAIL_AND_WHOLE, [jlog.job_id, None])
            pages[1].evaluate(TAIL_AND_WHOLE, [jlog.job_id, 5])
            whole, tail = pages
        else:
            pages[0].evaluate(f"job => {{ ({TAIL_AND_WHOLE})([job, null]); "
                              f"({TAIL_AND_WHOLE})([job, 5]); }}", jlog.job_id)
            whole = tail = pages[0]
        whole.wait_for_function("() => window.got.whole.end !== null", timeout=15000)
        tail.wait_for_function("() => window.got.tail.end !== null", timeout=15000)
        assert whole.evaluate("window.got.whole.values") == [f"v{i}" for i in range(100)]
        got = tail.evaluate("window.got.tail")
        assert got == {"values": [f"v{i}" for i in range(95, 100)], "tails": [[97, 95]],
                       "end": "finished"}, got
        for pg in pages:
            assert_page_clean(pg)
    finally:
        ctx.close()


def test_a_tail_watch_given_a_whole_trimmed_log_still_begins_with_its_tail(browser, server):
    """The whole log, asked for by a watch beside it, may begin with a ``trimmed`` event (a
    capped log): the tail watch must still hold back what its tail would not show, and not
    take the trim's position for a position of its own. The stream is played by the test:
    a trim to seq 10 (value 7), then values 7-12."""
    job = uuid.uuid4().hex
    with bare_page(browser, server) as pg:
        pg.evaluate("""job => {
            window.got = {whole: [], tail: [], tails: []};
            Jobcast.watch(job, {onValue: (v, e) => window.got.whole.push(e.i)});
            Jobcast.watch(job, {tail: 2, onValue: (v, e) => window.got.tail.push(e.i),
                                onTail: (t) => window.got.tails.push([t.after, t.skipped])});
        }""", job)
        pg.wait_for_function("() => window.__es.length === 1", timeout=10000)
        assert pg.evaluate("() => decodeURIComponent(window.__es[0].url)").endswith(f"job={job}")
        pg.evaluate("""job => {
            const es = window.__es[0];
            es.play("hello", {jobs: [job], list: false, retry: 1000});
            es.play("trimmed", {job: job, after: 0, first_seq: 10, lost: 7, first_value: 7});
            for (let seq = 10; seq <= 15; seq++) {
                es.play("value", {job: job, seq: seq, ep: "E1", kind: "value", ts: 1.0,
                                  i: seq - 3, v: String(seq - 3)});
            }
        }""", job)
        pg.wait_for_function("() => window.got.whole.length === 6", timeout=5000)
        # (once the job's status has said where the log stands: a read of its own)
        pg.wait_for_function("() => window.got.tails.length === 1", timeout=5000)
        got = pg.evaluate("window.got")
        assert got == {"whole": [7, 8, 9, 10, 11, 12], "tail": [11, 12], "tails": [[13, 11]]}, got
