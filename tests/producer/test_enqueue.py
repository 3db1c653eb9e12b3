"""Enqueueing: parameters checked (and capped) before anything reaches Redis, the log opened
before the job is queued, and the RQ job configured from the settings.

Refusals run on fakeredis (nothing may be written at all); accepted jobs on the session's
real Redis, on a queue of their own that no worker takes. A job that RQ refuses has its log
ended at once.
"""

from __future__ import annotations

import uuid

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue
from rq.job import Job

from jobcast.core.joblog import JobLog
from jobcast.core.registry import ParamError, UnknownTask
from jobcast.core.settings import Settings
from jobcast.producer.enqueue import check_caps, enqueue


def settings(**overrides) -> Settings:
    """Settings with a private queue, ``overrides`` winning."""
    return Settings(**{"queue_name": f"unit-{uuid.uuid4().hex}", **overrides})


def test_enqueue_opens_the_log_with_a_queued_entry_and_queues_the_runner(redis, idle_queue):
    job_id = enqueue("sqrt", {"n": 5}, redis=redis, config=idle_queue)
    entries = list(JobLog(redis, job_id).entries())
    assert [e.kind for e in entries] == ["queued"]
    assert entries[0].data["task"] == "sqrt"
    assert entries[0].data["params"] == {"n": 5, "interval": 1.0}, "defaults are filled in"
    assert entries[0].data["n"] == 5
    queue = Queue(idle_queue.queue_name, connection=redis)
    assert queue.job_ids == [job_id]
    job = Job.fetch(job_id, connection=redis)
    assert job.func_name == "jobcast.worker.runner.run_task"
    assert job.args == ("sqrt", {"n": 5, "interval": 1.0})
    assert job.description == "jobcast sqrt"
    assert job.retries_left == idle_queue.job_retries
    assert job.result_ttl == idle_queue.log_ttl and job.failure_ttl == idle_queue.log_ttl


def test_each_job_gets_a_new_hex_id(redis, idle_queue):
    ids = {enqueue("sqrt", {"n": 1}, redis=redis, config=idle_queue) for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_task_of_known_duration_gets_a_timeout_of_twice_that_plus_a_minute(redis, idle_queue):
    long_job = enqueue("sqrt", {"n": 3600, "interval": 1}, redis=redis, config=idle_queue)
    short_job = enqueue("sqrt", {"n": 3, "interval": 0}, redis=redis, config=idle_queue)
    assert Job.fetch(long_job, connection=redis).timeout == 3600 * 2 + 60
    assert Job.fetch(short_job, connection=redis).timeout == idle_queue.job_timeout


def test_zero_retries_queues_the_job_without_a_retry_policy(redis, redis_server):
    cfg = settings(redis_url=redis_server.url, job_retries=0)
    job_id = enqueue("sqrt", {"n": 1}, redis=redis, config=cfg)
    assert not Job.fetch(job_id, connection=redis).retries_left


def test_an_unknown_task_is_refused_before_anything_reaches_redis():
    fake = fakeredis.FakeRedis()
    with pytest.raises(UnknownTask):
        enqueue("no-such-task", {}, redis=fake, config=settings())
    assert fake.dbsize() == 0


def test_bad_params_are_refused_naming_the_field_before_anything_reaches_redis():
    fake = fakeredis.FakeRedis()
    with pytest.raises(ParamError) as caught:
        enqueue("sqrt", {"n": -1}, redis=fake, config=settings())
    assert [e["field"] for e in caught.value.errors] == ["params.n"]
    assert fake.dbsize() == 0


def test_strict_params_refuse_a_string_for_a_number_and_lax_ones_take_it(redis, idle_queue):
    fake = fakeredis.FakeRedis()
    with pytest.raises(ParamError):
        enqueue("sqrt", {"n": "3"}, redis=fake, config=settings())
    assert fake.dbsize() == 0
    job_id = enqueue("sqrt", {"n": "3"}, redis=redis, config=idle_queue, strict=False)
    assert Job.fetch(job_id, connection=redis).args == ("sqrt", {"n": 3, "interval": 1.0})


def test_a_param_over_its_cap_is_refused_naming_the_field_and_the_cap():
    fake = fakeredis.FakeRedis()
    with pytest.raises(ParamError) as caught:
        enqueue("sqrt", {"n": 11}, redis=fake, config=settings(param_caps="n=10"))
    assert caught.value.errors == [{"field": "params.n", "message": "11 is over this server's cap of 10"}]
    assert fake.dbsize() == 0


def test_a_param_over_the_tasks_own_bound_too_is_told_this_servers_lower_cap():
    """A review's finding: ``n`` over 1,000,000 (sqrt's own bound) was told that bound, though
    this server's cap of 100,000 is what holds, and what ``/api/tasks`` publishes."""
    fake = fakeredis.FakeRedis()
    for value in (2_000_000, 10**26):
        with pytest.raises(ParamError) as caught:
            enqueue("sqrt", {"n": value}, redis=fake, config=settings(param_caps="n=100000"))
        assert caught.value.errors == [
            {"field": "params.n", "message": f"{value} is over this server's cap of 100000"}]
    with pytest.raises(ParamError) as caught:  # a cap over the task's own bound: the bound holds
        enqueue("sqrt", {"n": 2_000_000}, redis=fake, config=settings(param_caps="n=5000000"))
    assert "less than or equal to 1000000" in caught.value.errors[0]["message"]
    assert fake.dbsize() == 0


def test_a_per_task_cap_wins_over_the_cap_of_every_task():
    caps = settings(param_caps="n=10,sqrt.n=100")
    check_caps("sqrt", {"n": 50}, caps)  # within sqrt's own cap
    with pytest.raises(ParamError):
        check_caps("pi", {"n": 50}, caps)
    check_caps("sqrt", {"n": 100, "label": "x" * 1000}, caps)  # only numbers are capped


@pytest.mark.parametrize("task, params, what", [
    ("sqrt", {"n": 100_000, "interval": 3600}, "would run for 360,000,000 s"),
    ("pi", {"samples": 100_000_000, "batch": 1}, "would yield 100,000,000 values"),
    ("clock", {"rate": 1000, "duration": 3600}, "would yield 3,600,000 values"),
])
def test_a_job_over_the_bounds_on_values_or_duration_is_refused_naming_params(task, params, what):
    """Finding 8 of issue 23: sqrt n=100000 interval=3600 was queued with an RQ timeout of 22.8
    years, pi samples=1e8 batch=1 with 1e8 values: each parameter within its cap."""
    fake = fakeredis.FakeRedis()
    with pytest.raises(ParamError) as caught:
        enqueue(task, params, redis=fake, config=settings())
    assert caught.value.errors[0]["field"] == "params" and what in str(caught.value)
    assert fake.dbsize() == 0


def test_both_bounds_are_checked_together_and_reported_together():
    cfg = settings(job_max_values=10, job_max_duration=60)
    with pytest.raises(ParamError) as caught:
        enqueue("sqrt", {"n": 11, "interval": 10}, redis=fakeredis.FakeRedis(), config=cfg)
    messages = [e["message"] for e in caught.value.errors]
    assert len(messages) == 2 and "JOBCAST_JOB_MAX_VALUES" in messages[0]
    assert "JOBCAST_JOB_MAX_DURATION" in messages[1]


def test_the_rq_timeout_never_exceeds_the_bound_on_duration(redis, redis_server):
    cfg = settings(redis_url=redis_server.url, job_max_duration=5000, job_timeout=9000)
    near = enqueue("sqrt", {"n": 4000, "interval": 1}, redis=redis, config=cfg)
    unknown = enqueue("pi", {"samples": 10}, redis=redis, config=cfg)
    assert Job.fetch(near, connection=redis).timeout == 5000
    assert Job.fetch(unknown, connection=redis).timeout == 5000


def test_a_job_rq_refuses_has_its_log_failed_at_once_and_the_error_still_propagates(
        redis, idle_queue, monkeypatch):
    """A review's finding: the log was opened, RQ's Redis refused the job, the API answered an
    error, and the log said "queued" forever (no worker would ever take the job)."""
    refused = RedisConnectionError("Error 111 connecting to redis://:hunter2@10.0.0.5:6379/0. "
                              "Connection refused.")
    created: list[str] = []
    create = JobLog.create

    def remember(self: JobLog, *args, **kwargs) -> int:
        """Create the log, and note the job's id (enqueue() returns none when it raises)."""
        created.append(self.job_id)
        return create(self, *args, **kwargs)

    def refuse(*args, **kwargs):
        """RQ's Redis is down."""
        raise refused

    monkeypatch.setattr(JobLog, "create", remember)
    monkeypatch.setattr(Queue, "enqueue", refuse)
    with pytest.raises(RedisConnectionError) as caught:
        enqueue("sqrt", {"n": 5}, redis=redis, config=idle_queue)
    assert caught.value is refused  # the API maps it as before (503, Redis unreachable)
    jlog = JobLog(redis, created[0])
    assert jlog.status() == "failed"
    reason = list(jlog.entries())[-1].data["reason"]
    assert reason == "could not be queued: ConnectionError: Error 111 connecting to <url> " \
                     "Connection refused."
    assert "hunter2" not in reason and jlog.info().reason == reason


def test_when_the_log_cannot_be_ended_either_rqs_error_propagates_and_a_warning_says_so(
        redis, idle_queue, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        """RQ's Redis is down."""
        raise RedisConnectionError("RQ's Redis is down")

    def unwritable(self: JobLog, reason: str) -> int:
        """The stream store is down too."""
        raise RedisConnectionError("the stream store is down")

    monkeypatch.setattr(Queue, "enqueue", refuse)
    monkeypatch.setattr(JobLog, "failed", unwritable)
    with pytest.raises(RedisConnectionError, match="RQ's Redis is down"):
        enqueue("sqrt", {"n": 5}, redis=redis, config=idle_queue)
    warnings = [r for r in caplog.records if r.name == "jobcast.producer.enqueue"]
    assert [r.levelname for r in warnings] == ["WARNING"]
    assert "could not be ended: the stream store is down" in warnings[0].getMessage()


def test_enqueue_and_cancel_given_no_client_share_one_connection_of_the_process(tmp_path):
    """A code review's finding: each call given no client made a client and a pool of its own,
    and dialed Redis afresh: an app enqueueing in a loop opened a connection per job."""
    from redis import Redis

    from jobcast.launcher.redisserver import RedisServer
    from jobcast.producer.cancel import cancel

    with RedisServer(data_dir=tmp_path) as server:
        config = Settings(redis_url=server.url, queue_name=f"idle-{uuid.uuid4().hex[:8]}")
        watch = Redis.from_url(server.url)
        before = watch.info("stats")["total_connections_received"]
        ids = [enqueue("sqrt", {"n": 2}, config=config) for _ in range(5)]
        cancel(ids[0], "cli", config=config)
        assert watch.info("stats")["total_connections_received"] - before == 1
        assert JobLog(watch, ids[0]).status() == "cancelled"
        watch.close()
