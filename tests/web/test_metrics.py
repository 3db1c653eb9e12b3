"""GET /metrics: Prometheus text, merged across gunicorn's worker processes."""

from __future__ import annotations

import threading
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from worker.joblog import JobLog


def scrape(web) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    r = httpx.get(web.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_viewers_values_and_disconnects_across_workers(web, redis):
    jlog = JobLog(redis, uuid.uuid4().hex)
    jlog.create("clock", {}, None)
    jlog.started("test", 1)
    before = scrape(web)
    assert ("jobcast_queue_depth", (("queue", "jobcast"),)) in before
    assert ("jobcast_workers_busy", ()) in before

    # Several viewers: with two gunicorn workers they land on either process, and one scrape
    # (answered by either) must count them all.
    n = 6
    bodies: dict[int, bytes] = {}

    def viewer(k: int) -> None:
        # The text stream sends its headers with the first value, so just read it whole.
        with httpx.Client(base_url=web.url, timeout=30) as c:
            bodies[k] = c.get(f"/jobs/{jlog.job_id}/stream").content

    threads = [threading.Thread(target=viewer, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    wait_for(lambda: value(scrape(web), "jobcast_job_viewers", job=jlog.job_id) == n, 10,
             what="all viewers counted")
    during = scrape(web)
    assert value(during, "jobcast_viewers") >= n

    for i in range(3):
        jlog.value(i, i * 10)
    jlog.finished()
    for t in threads:
        t.join(30)
    assert all(b == b"0\n10\n20\n" for b in bodies.values()) and len(bodies) == n

    def settled():
        s = scrape(web)
        return s if value(s, "jobcast_job_viewers", job=jlog.job_id) == 0 else None

    after = wait_for(settled, 10, what="viewers gone")
    # A job nobody watches any more has no per-job series left.
    assert not any(k[0] == "jobcast_job_viewers" and ("job", jlog.job_id) in k[1] for k in after)
    assert value(after, "jobcast_values_relayed_total") - value(before, "jobcast_values_relayed_total") >= 3 * n
    assert (value(after, "jobcast_disconnects_total", reason="job_ended")
            - value(before, "jobcast_disconnects_total", reason="job_ended")) >= n
    assert (value(after, "jobcast_catchups_total", reason="history")
            - value(before, "jobcast_catchups_total", reason="history")) >= n
    assert value(after, "jobcast_hub_lag_seconds_count") > value(before, "jobcast_hub_lag_seconds_count")
    assert value(after, "jobcast_hub_announcements_total") >= 0


def test_heartbeats_and_vanished_clients_are_counted(web, redis):
    jlog = JobLog(redis, uuid.uuid4().hex)
    jlog.create("clock", {}, None)
    jlog.started("test", 1)
    before = scrape(web)
    # The session's web server beats every second; an SSE viewer gets heartbeat comments.
    with httpx.Client(base_url=web.url, timeout=30) as c:
        with c.stream("GET", f"/jobs/{jlog.job_id}/events") as r:
            for line in r.iter_lines():
                if line == ": heartbeat":
                    break
    # The client closed mid-stream: the server frees the viewer within a heartbeat or two.
    wait_for(lambda: value(scrape(web), "jobcast_job_viewers", job=jlog.job_id) == 0, 10,
             what="vanished viewer freed")
    after = scrape(web)
    assert value(after, "jobcast_heartbeats_total") > value(before, "jobcast_heartbeats_total")
    gone = sum(value(after, "jobcast_disconnects_total", reason=r) - value(before, "jobcast_disconnects_total", reason=r)
               for r in ("closed", "client_gone"))
    assert gone >= 1
    jlog.finished()
