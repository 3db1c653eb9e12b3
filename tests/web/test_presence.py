"""Presence: each process publishes its viewer counts; readers add up the fresh ones.

On a database of the session's redis-server of its own (the hashes' TTLs and pipelines are
Redis's), emptied before and after each test: the job names are the tests' own."""

from __future__ import annotations

import pytest

from tests.support.services import own_database
from tests.support.wait import wait_for
from jobcast.core.feed import FEED
from jobcast.core.joblog import JobLog
from jobcast.core.logstore import LogStore
from jobcast.core.settings import Settings
from jobcast.web.presence import PAGE, REFRESH_AFTER, STALE_AFTER, Presence, total_viewers


class FakeHub:
    """The two things presence asks of a hub."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def jobs(self) -> list[str]:
        return list(self.counts)

    def viewers(self, job_id: str) -> int:
        return self.counts[job_id]


@pytest.fixture
def r(redis_server):
    """Database 13 of the session's Redis, empty."""
    with own_database(redis_server, 13) as (_url, client):
        yield client


def viewers_key(job_id: str) -> str:
    """The job's hash of per-process viewer counts (a single Redis's key)."""
    from jobcast.core.keys import job_keys

    return job_keys(None, job_id).viewers


def test_counts_of_every_process_are_added_up_while_fresh(r):
    logs = LogStore(r, Settings())
    a, b = Presence(logs, FakeHub({"job1": 3, "job2": 1})), Presence(logs, FakeHub({"job1": 2}))
    a.name, b.name = "host:1", "host:2"
    a.publish(now=1000.0)
    b.publish(now=1000.0)
    assert total_viewers(JobLog(r, "job1"), now=1001.0) == 5
    assert total_viewers(JobLog(r, "job2"), now=1001.0) == 1
    # A process that stopped refreshing (it died) no longer counts.
    a.publish(now=1000.0 + STALE_AFTER)
    assert total_viewers(JobLog(r, "job1"), now=1000.0 + STALE_AFTER + 1) == 3


def test_a_job_nobody_watches_any_more_loses_this_process_field(r):
    hub = FakeHub({"job1": 1})
    p = Presence(LogStore(r, Settings()), hub)
    p.publish(now=10.0)
    assert r.hexists(viewers_key("job1"), p.name)
    hub.counts = {}
    p.publish(now=11.0)
    assert not r.hexists(viewers_key("job1"), p.name)
    assert total_viewers(JobLog(r, "job1"), now=12.0) == 0


def test_the_hash_expires_when_no_process_refreshes_it(r):
    Presence(LogStore(r, Settings()), FakeHub({"job1": 1})).publish(now=10.0)
    assert 0 < r.ttl(viewers_key("job1")) <= STALE_AFTER * 2


def test_stop_ends_the_publishing_thread(r):
    p = Presence(LogStore(r, Settings()), FakeHub({"job1": 1}), interval=0.05)
    p.start()
    wait_for(lambda: r.exists(viewers_key("job1")), timeout=5, what="a first publication")
    p.stop()
    wait_for(lambda: not p._thread.is_alive(), timeout=5, what="the presence thread to end")


def test_the_job_list_watched_beside_a_job_publishes_that_job_and_no_feed_hash(r):
    # The relay holds the home page's job list under the feed's name, which is no job id.
    p = Presence(LogStore(r, Settings()), FakeHub({FEED: 4, "job1": 2}))
    p.publish(now=10.0)
    assert total_viewers(JobLog(r, "job1"), now=11.0) == 2
    assert p.published == {"job1"}


def stamp_of(r, job_id: str, process: str) -> float:
    """When ``process`` last wrote its count of ``job_id``."""
    return float(r.hget(viewers_key(job_id), process).decode().split()[1])


def test_a_round_writes_the_counts_that_changed_and_refreshes_the_others_before_they_go_stale(r):
    hub = FakeHub({"job1": 1, "job2": 2})
    p = Presence(LogStore(r, Settings()), hub)
    p.publish(now=100.0)
    hub.counts["job1"] = 3
    p.publish(now=103.0)
    assert stamp_of(r, "job1", p.name) == 103.0  # changed: written
    assert stamp_of(r, "job2", p.name) == 100.0  # unchanged: left as it was
    assert total_viewers(JobLog(r, "job1"), now=104.0) == 3
    p.publish(now=100.0 + REFRESH_AFTER)
    assert stamp_of(r, "job2", p.name) == 100.0 + REFRESH_AFTER  # refreshed, long before stale
    assert REFRESH_AFTER * 2 < STALE_AFTER


def test_a_round_of_many_jobs_gives_the_loop_a_turn_between_pages(r, monkeypatch):
    import jobcast.core.wait as wait

    turns: list[float] = []
    monkeypatch.setattr(wait.time, "sleep", turns.append)  # the pause between pages
    jobs = {f"job{k}": 1 for k in range(10 * PAGE)}
    p = Presence(LogStore(r, Settings()), FakeHub(jobs))
    p.publish(now=10.0)
    assert turns == [0] * 9  # ten pipelines, a turn between two
    assert all(total_viewers(JobLog(r, job_id), now=11.0) == 1 for job_id in jobs)
