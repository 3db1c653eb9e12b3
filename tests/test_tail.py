"""Joining at the tail (?tail=N) and trimmed history, through real gunicorn and Redis.

The trimmed-history tests run a real 300-value job on a worker whose log keeps 50 entries,
watched through a web server with the same JOBCAST_LOG_MAXLEN (every service shares it).
The tail tests write the log through the workers' own write path (JobLog), so the test
decides exactly which values are history and which arrive live.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import uuid

import httpx
import pytest
from redis import Redis

from jobcast.core.joblog import JobLog
from jobcast.core.settings import Settings
from jobcast.producer.enqueue import enqueue
from tests.support.services import JOBCAST, ROOT, WebServer, Workers, service_env
from tests.support.wait import wait_for
from tests.support.sse import Event, parse_events


@pytest.fixture(scope="module")
def capped_job(redis_server, logs_dir):
    """A finished 300-value sqrt job whose worker kept only ~50 log entries; its first kept seq."""
    redis = Redis.from_url(redis_server.url)
    queue = "capped-" + uuid.uuid4().hex[:8]
    pool = Workers(redis_server.url, logs_dir)
    pool.start(1, JOBCAST_QUEUE=queue, JOBCAST_LOG_MAXLEN="50")
    try:
        cfg = Settings(redis_url=redis_server.url, queue_name=queue, log_maxlen=50)
        job_id = enqueue("sqrt", {"n": 300, "interval": 0}, redis=redis, config=cfg)
        wait_for(lambda: JobLog(redis, job_id).status() == "finished", 30, what="300-value job")
    finally:
        pool.stop_all()
    first = list(JobLog(redis, job_id).entries())[0]
    assert first.seq > 6  # the cap really trimmed the early entries
    return job_id, first


@pytest.fixture(scope="module")
def capped_web(redis_server, logs_dir):
    """gunicorn configured like the capped worker: JOBCAST_LOG_MAXLEN=50."""
    server = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-capped.log",
                       JOBCAST_HEARTBEAT="1", JOBCAST_LOG_MAXLEN="50").start()
    yield server
    server.stop()


def sse(base: str, job_id: str, query: str = "", headers=None, stop=None, into=None) -> list[Event]:
    """Every SSE event of one connection (up to ``stop(events)`` being true), as they come
    appended to ``into`` when given."""
    events = into if into is not None else []
    with httpx.Client(base_url=base, timeout=30) as c, \
            c.stream("GET", f"/jobs/{job_id}/events{query}", headers=headers or {}) as r:
        assert r.status_code == 200
        for ev in parse_events(r):
            events.append(ev)
            if stop and stop(events):
                break
    return events


def test_sse_resume_from_a_trimmed_position_starts_with_one_trimmed_event(capped_web, redis, capped_job):
    web, (job_id, first) = capped_web, capped_job
    events = sse(web.url, job_id, headers={"Last-Event-ID": "5"})
    assert [e.event for e in events].count("trimmed") == 1
    assert events[0].event == "trimmed" and events[0].id is None
    data = json.loads(events[0].data)
    assert data["after"] == 5 and data["first_seq"] == first.seq and data["lost"] == first.seq - 6
    entries = events[1:]
    seqs = [e.seq for e in entries]
    assert seqs == list(range(first.seq, seqs[-1] + 1)) and entries[-1].event == "finished"
    values = [json.loads(e.data) for e in entries if e.event == "value"]
    assert [v["i"] for v in values] == list(range(values[0]["i"], 300))
    assert data["first_value"] == values[0]["i"]


def test_a_fresh_viewer_of_a_trimmed_log_is_told_too(capped_web, capped_job):
    web, (job_id, first) = capped_web, capped_job
    http = httpx.Client(base_url=web.url, timeout=30)
    events = sse(web.url, job_id)
    assert events[0].event == "trimmed"
    assert json.loads(events[0].data)["after"] == 0
    info = http.get(f"/api/jobs/{job_id}").json()
    assert info["first_seq"] == first.seq
    assert info["first_value"] == json.loads(events[0].data)["first_value"]


def test_text_and_html_streams_name_the_first_value_kept(capped_web, capped_job):
    web, (job_id, _) = capped_web, capped_job
    http = httpx.Client(base_url=web.url, timeout=30)
    first_value = http.get(f"/api/jobs/{job_id}").json()["first_value"]
    r = httpx.get(f"{web.url}/jobs/{job_id}/stream", timeout=30)
    assert r.headers["Jobcast-First-Value"] == str(first_value)
    assert r.text == "".join("{}\n".format(math.sqrt(i)) for i in range(first_value, 300))
    html = httpx.get(f"{web.url}/jobs/{job_id}/frame", timeout=30)
    assert html.headers["Jobcast-First-Value"] == str(first_value)
    assert f"{first_value:,} earlier values are no longer kept" in html.text
    assert f"<p>{first_value}: " in html.text and f"<p>{first_value - 1}: " not in html.text


@pytest.fixture
def long_job(redis, workers):
    """A running job with 10,000 values logged; the test writes the live ones.

    (Live RQ workers keep the web server's watchdog from failing it as orphaned.)"""
    log = JobLog(redis, uuid.uuid4().hex)
    log.create("sqrt", {"n": 10_003}, 10_003)
    log.started("test-writer", 1)
    for i in range(10_000):
        log.value(i, math.sqrt(i))
    return log


def sse_in_thread(base: str, job_id: str, query: str):
    """Read SSE in a thread; the returned list fills as events arrive."""
    events: list = []
    t = threading.Thread(target=sse, args=(base, job_id, query), kwargs={"into": events}, daemon=True)
    t.start()
    return t, events


def test_tail_5_of_10000_values_gives_the_last_5_then_the_live_ones(web, redis, long_job):
    log = long_job
    t_sse, events = sse_in_thread(web.url, log.job_id, "?tail=5")
    text_lines: list[str] = []

    headers: dict = {}

    def text():
        with httpx.stream("GET", f"{web.url}/jobs/{log.job_id}/stream?tail=5", timeout=30) as r:
            headers.update(r.headers)
            for line in r.iter_lines():
                text_lines.append(line)

    t_text = threading.Thread(target=text, daemon=True)
    t_text.start()
    wait_for(lambda: len([e for e in events if e.event == "value"]) >= 5, 10, what="the tail")
    wait_for(lambda: len(text_lines) >= 5, 10, what="the text stream's tail")
    for i in range(10_000, 10_003):
        log.value(i, math.sqrt(i))
    log.finished()
    t_sse.join(10)
    t_text.join(10)
    assert headers["jobcast-first-value"] == "9995"
    assert events[0].event == "tail"
    head = json.loads(events[0].data)
    assert head["tail"] == 5 and head["skipped"] == 9995
    values = [json.loads(e.data)["i"] for e in events if e.event == "value"]
    assert values == list(range(9995, 10_003))
    seqs = [e.seq for e in events[1:]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # true seqs, no gap
    assert seqs[0] == 9995 + 3  # queued, started, then value i has seq i + 3
    assert text_lines == ["{}".format(math.sqrt(i)) for i in range(9995, 10_003)]


def test_reconnect_with_last_event_id_after_a_tailed_start_is_exact(web, redis, long_job):
    log = long_job
    first = sse(web.url, log.job_id, "?tail=5", stop=lambda evs: len(evs) >= 3)
    assert [e.event for e in first] == ["tail", "value", "value"]
    last_id = first[-1].id
    log.value(10_000, 100.0)
    log.finished()
    # EventSource keeps the URL (with ?tail=5) and adds Last-Event-ID: the id wins.
    rest = sse(web.url, log.job_id, "?tail=5", headers={"Last-Event-ID": last_id})
    assert all(e.event != "tail" for e in rest)
    seqs = [e.seq for e in first[1:] + rest]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert [json.loads(e.data).get("i") for e in rest] == [9997, 9998, 9999, 10_000, None]


def test_tail_0_is_live_only(web, redis, long_job):
    log = long_job
    t, events = sse_in_thread(web.url, log.job_id, "?tail=0")
    wait_for(lambda: events, 10, what="tail event")
    log.value(10_000, 100.0)
    log.finished()
    t.join(10)
    assert json.loads(events[0].data)["skipped"] == 10_000
    assert [e.event for e in events] == ["tail", "value", "finished"]


def test_bad_tail_is_400(http, long_job):
    r = http.get(f"/jobs/{long_job.job_id}/events?tail=-1")
    assert r.status_code == 400 and r.json()["field"] == "tail"


def follow(web, redis_server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*JOBCAST, "follow", *args, "--url", web.url, "--no-progress"], cwd=ROOT,
                          env=service_env(redis_server.url), capture_output=True, text=True, timeout=60)


def test_follow_says_how_many_values_are_no_longer_kept_then_prints_the_rest(capped_web, redis_server,
                                                                             capped_job):
    web, (job_id, _) = capped_web, capped_job
    http = httpx.Client(base_url=web.url, timeout=30)
    first_value = http.get(f"/api/jobs/{job_id}").json()["first_value"]
    out = follow(web, redis_server, job_id)
    assert out.returncode == 0, out.stderr
    assert f"{first_value:,} earlier values are no longer kept" in out.stderr
    assert out.stdout.splitlines() == ["{}".format(math.sqrt(i)) for i in range(first_value, 300)]


def test_follow_tail_prints_only_the_last_values(web, redis_server, long_job):
    long_job.finished()
    out = follow(web, redis_server, long_job.job_id, "--tail", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["{}".format(math.sqrt(i)) for i in range(9997, 10_000)]
    assert "skipping 9,997 earlier values" in out.stderr


@pytest.mark.parametrize("ended", [False, True])
def test_late_viewers_of_a_log_longer_than_a_read_page_get_all_of_it_at_once(web, redis, workers, ended):
    # The relay reads the log 500 entries at a time; a page that stops short of the log's
    # end must not pass for the job's newest entries (viewers then waited for nothing).
    log = JobLog(redis, uuid.uuid4().hex)
    log.create("sqrt", {}, None)
    log.started("test-writer", 1)
    for i in range(1_200):
        log.value(i, i)
    if ended:
        log.finished()
    last = 1_202 + ended
    for after in (100, 0):
        with httpx.Client(base_url=web.url, timeout=5) as c, \
                c.stream("GET", f"/jobs/{log.job_id}/events?after={after}") as r:
            seqs = []
            for ev in parse_events(r):
                seqs.append(ev.seq)
                if seqs[-1] == last:
                    break
        assert seqs == list(range(after + 1, last + 1))
