"""The log store's reads of the job index against a real Redis (a database of its own, so the
index holds only this module's jobs)."""

from __future__ import annotations

import uuid

import pytest

from jobcast.core.joblog import JobLog
from jobcast.core.keys import JOBS_INDEX, OPEN_JOBS
from jobcast.core.logstore import LogStore
from jobcast.core.settings import Settings
from tests.support.commands import count_commands
from tests.support.services import own_database

DB = 8


@pytest.fixture
def store(redis_server):
    """A log store on a fresh database, remembering at most 50 jobs."""
    with own_database(redis_server, DB) as (url, redis):
        yield LogStore(redis, Settings(redis_url=url, jobs_index_max=50))


def new_jobs(store: LogStore, n: int) -> list[JobLog]:
    """``n`` queued jobs, created through the store's settings."""
    logs = [store.log(uuid.uuid4().hex) for _ in range(n)]
    for jlog in logs:
        jlog.create("sqrt", {}, None)
    return logs


@pytest.fixture
def sent(store, monkeypatch) -> list[str]:
    """The names of the commands the store's client sends from now on."""
    return count_commands(store.redis, monkeypatch)


def test_a_round_reads_only_the_jobs_still_open_not_every_job_the_index_remembers(store, sent):
    logs = new_jobs(store, 40)
    running = logs[:3]
    running[0].started("w1", 1)
    for jlog in logs[3:]:
        jlog.finished()
    expected = sorted(jlog.job_id for jlog in running)
    assert sorted(job_id for job_id, _ in store.open_jobs()) == expected
    # The ended jobs left the open set (with their ends): the next round reads the three alone.
    sent.clear()
    assert sorted(job_id for job_id, _ in store.open_jobs()) == expected
    assert sent.count("HMGET") == 3
    assert store.redis.zcard(JOBS_INDEX) == 40  # the job list still remembers them all

    running[1].failed("boom")
    assert sorted(job_id for job_id, _ in store.open_jobs()) == sorted(
        [running[0].job_id, running[2].job_id])
    assert store.redis.zcard(OPEN_JOBS) == 2


def test_jobs_opened_before_the_open_set_existed_are_found_by_a_process_first_round(store):
    # Logs written by a version of Jobcast without the set: the index alone has them.
    queued, ended = new_jobs(store, 2)
    ended.finished()
    store.redis.delete(OPEN_JOBS)
    fresh = LogStore(store.redis, store.settings)  # a web process that starts now
    assert fresh.open_jobs() == [(queued.job_id, "")]
    assert [m.decode() for m in store.redis.zrange(OPEN_JOBS, 0, -1)] == [queued.job_id]


def test_the_open_set_keeps_every_open_job_when_the_index_keeps_only_the_newest(store):
    """A review's finding: the open set was capped as the index is, so the oldest jobs of a
    long backlog (the next to run) were hidden from the watchdog, which could never end them."""
    logs = new_jobs(store, 60)  # all queued, over the store's 50
    every = {jlog.job_id for jlog in logs}
    assert {m.decode() for m in store.redis.zrange(JOBS_INDEX, 0, -1)} == {
        jlog.job_id for jlog in logs[10:]}
    assert {m.decode() for m in store.redis.zrange(OPEN_JOBS, 0, -1)} == every
    assert {job_id for job_id, _ in store.open_jobs()} == every
    for jlog in logs[:5]:
        jlog.finished()
    assert {job_id for job_id, _ in store.open_jobs()} == every - {j.job_id for j in logs[:5]}
    assert store.redis.zcard(OPEN_JOBS) == 55  # the ended left it


def test_reading_many_open_jobs_pauses_between_pages(store, monkeypatch):
    import jobcast.core.logstore as logstore
    import jobcast.core.wait as wait

    monkeypatch.setattr(logstore, "PAGE", 10)
    pauses: list[float] = []
    monkeypatch.setattr(wait.time, "sleep", pauses.append)  # the pause between pages
    new_jobs(store, 45)
    assert len(store.open_jobs()) == 45
    # The first round read the index (45 jobs: 5 pages), then the open set (5 more).
    assert pauses == [0] * 8


def test_open_job_states_tell_queued_from_running_with_the_reads_open_jobs_makes(store, sent):
    queued, running, ended = new_jobs(store, 3)
    running.started("w1", 1)
    ended.finished()
    assert sorted(store.open_jobs()) == sorted([(queued.job_id, ""), (running.job_id, "")])
    sent.clear()
    assert sorted(store.open_job_states()) == sorted([(queued.job_id, "", "queued"),
                                                      (running.job_id, "", "running")])
    assert sent.count("HMGET") == 2  # one per open job, as open_jobs() costs


def test_an_ended_job_leaves_the_open_set_with_its_end_with_no_watchdog_round(store):
    """A code review's finding: only the web's watchdog took ended jobs out of the open set,
    so with workers and no web process it grew by every job for good."""
    finished, failed, cancelled, running = new_jobs(store, 4)
    finished.finished()
    failed.failed("boom")
    cancelled.cancelled("api")
    running.started("w", 1)
    assert [i.decode() for i in store.redis.zrange(OPEN_JOBS, 0, -1)] == [running.job_id]


def test_a_job_reopened_while_a_round_drops_it_as_ended_stays_open(store, monkeypatch):
    """A code review's finding: a round read a job ended, the job was reopened (RQ's Repeat, a
    requeue), and the round's removal then took it out of the open set: no watchdog watched it
    again."""
    (job,) = new_jobs(store, 1)
    store.open_jobs()  # (the process's first round seeds the set from the index)
    job.finished()
    store.redis.zadd(OPEN_JOBS, {job.job_id: 1})  # as a round began: still listed, ended
    states = store._states

    def reopened_meanwhile(ids):
        """The states as read, then (the first time) the job reopened before the round
        removes it."""
        read = states(ids)
        if job.position().ended:
            assert job.reopen_as_before()
        return read

    monkeypatch.setattr(store, "_states", reopened_meanwhile)
    first = store.open_job_states()
    monkeypatch.undo()
    assert first == [(job.job_id, "", "queued")]
    assert store.redis.zscore(OPEN_JOBS, job.job_id) is not None
    assert store.open_job_states() == [(job.job_id, "", "queued")]
