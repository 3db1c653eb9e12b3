"""GET /metrics: Prometheus text, merged across gunicorn's worker processes."""

from __future__ import annotations

import threading
import uuid

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from jobcast.core.joblog import JobLog
from jobcast.web.metrics import Tally
from tests.support.metrics import metric_value
from tests.support.wait import wait_for


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


def job_viewers(web, job_id: str) -> int:
    """The job's viewers on every web process, as the API reports them."""
    return httpx.get(f"{web.url}/api/jobs/{job_id}", timeout=10).json()["viewers"]


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
    # Per-job counts are the API's (``viewers``, all processes), never a Prometheus label.
    wait_for(lambda: job_viewers(web, jlog.job_id) == n, 15, what="all viewers counted")
    # Each process publishes its per-stream counts within a heartbeat round (about a second).
    def all_viewers():
        """The scrape once it counts every viewer."""
        s = scrape(web)
        return s if value(s, "jobcast_viewers") >= n else None

    during = wait_for(all_viewers, 5, what="every process's viewers on /metrics")

    for i in range(3):
        jlog.value(i, i * 10)
    jlog.finished()
    for t in threads:
        t.join(30)
    assert all(b == b"0\n10\n20\n" for b in bodies.values()) and len(bodies) == n

    def settled():
        """The scrape once every viewer is gone and each process has published its ends."""
        if job_viewers(web, jlog.job_id) != 0:
            return None
        s = scrape(web)
        ended = (value(s, "jobcast_disconnects_total", reason="job_ended")
                 - value(before, "jobcast_disconnects_total", reason="job_ended"))
        return s if ended >= n else None

    after = wait_for(settled, 15, what="viewers gone")
    # No series is labelled by job: label values must not grow with every job ever watched.
    assert not any(k[0] == "jobcast_job_viewers" for k in during) and not any(
        jlog.job_id in dict(k[1]).values() for k in (*before, *during, *after))
    assert value(after, "jobcast_values_relayed_total") - value(before, "jobcast_values_relayed_total") >= 3 * n
    assert (value(after, "jobcast_disconnects_total", reason="job_ended")
            - value(before, "jobcast_disconnects_total", reason="job_ended")) >= n
    assert (value(after, "jobcast_catchups_total", reason="history")
            - value(before, "jobcast_catchups_total", reason="history")) >= n
    assert value(after, "jobcast_hub_lag_seconds_count") > value(before, "jobcast_hub_lag_seconds_count")
    # Each of the job's 4 entries was announced to every process that had a viewer (a
    # review's finding: the counter was never incremented).
    assert (value(after, "jobcast_hub_announcements_total")
            - value(before, "jobcast_hub_announcements_total")) >= 4


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
    # (The API's count of other processes' viewers is a few seconds old, so wait on the
    # exact disconnect counter first.)
    def freed():
        s = scrape(web)
        gone = sum(value(s, "jobcast_disconnects_total", reason=r) - value(before, "jobcast_disconnects_total", reason=r)
                   for r in ("closed", "client_gone"))
        return s if gone >= 1 else None

    after = wait_for(freed, 10, what="vanished viewer freed")
    assert value(after, "jobcast_heartbeats_total") > value(before, "jobcast_heartbeats_total")
    wait_for(lambda: job_viewers(web, jlog.job_id) == 0, 15, what="vanished viewer uncounted")
    jlog.finished()


def test_jobs_by_state_and_stream_refusals_by_reason_are_bounded_series(web, http):
    r = http.post("/api/jobs", json={"task": "sqrt", "params": {"n": 1, "interval": 0}})
    assert r.status_code == 201
    samples = scrape(web)
    states = {dict(k[1])["state"] for k in samples if k[0] == "jobcast_jobs"}
    assert states == {"queued", "started", "deferred", "scheduled", "finished", "failed", "canceled"}
    assert ("jobcast_cancellations_total", ()) in samples
    # Refusals count by a fixed set of reasons (the 429/503 caps, the 401/403 of private mode;
    # tests/web/test_security.py and test_limits.py count real ones): a bad request is none.
    # ("0" * 31 + "x" is a well-formed RQ id now, so a "." makes it malformed.)
    def refusals(scraped: dict) -> dict:
        """The refusal counters of a scrape, by reason."""
        return {dict(k[1]).get("reason"): v for k, v in scraped.items()
                if k[0] == "jobcast_stream_refusals_total"}

    assert http.get(f"/jobs/{'0' * 31}.x/stream").status_code == 400
    after = refusals(scrape(web))
    assert after == refusals(samples)
    assert set(after) <= {"per_client", "per_process", "unauthorized", "forbidden"}


def test_a_refusal_of_an_unknown_reason_is_counted_as_other_never_as_a_new_series():
    """The reason label stays bounded whatever a caller passes."""
    from jobcast.web import metrics

    before = metric_value("jobcast_stream_refusals_total", reason="other")
    metrics.stream_refused("a reason made up by a caller")
    assert metric_value("jobcast_stream_refusals_total", reason="other") == before + 1
    assert "a reason made up by a caller" not in {
        s.labels.get("reason") for m in metrics.STREAM_REFUSALS.collect() for s in m.samples}


def test_a_tally_publishes_each_event_once_summed_per_metric_and_label():
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["reason"], registry=registry)
    gauge = Gauge("g", "g", registry=registry)
    tally = Tally()
    for reason in ("gap", "gap", "slow"):
        tally.add(counter, reason)
    tally.add(gauge)
    tally.add(gauge)
    tally.add(gauge, amount=-1)
    assert registry.get_sample_value("g") == 0  # nothing before it is published
    tally.publish()
    assert registry.get_sample_value("c_total", {"reason": "gap"}) == 2
    assert registry.get_sample_value("c_total", {"reason": "slow"}) == 1
    assert registry.get_sample_value("g") == 1
    tally.add(gauge, amount=-1)
    tally.publish()
    tally.publish()  # nothing new: nothing counted twice
    assert registry.get_sample_value("g") == 0
    assert registry.get_sample_value("c_total", {"reason": "gap"}) == 2


def test_a_tally_published_from_several_threads_loses_and_doubles_nothing():
    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    tally = Tally()
    adders = [threading.Thread(target=lambda: [tally.add(counter) for _ in range(20_000)])
              for _ in range(4)]
    stop = threading.Event()

    def publisher():
        """Publish over and over while the adders run."""
        while not stop.is_set():
            tally.publish()

    publishers = [threading.Thread(target=publisher) for _ in range(2)]
    for t in adders + publishers:
        t.start()
    for t in adders:
        t.join()
    stop.set()
    for t in publishers:
        t.join()
    tally.publish()
    assert registry.get_sample_value("c_total") == 80_000
