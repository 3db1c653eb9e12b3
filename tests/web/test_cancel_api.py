"""The cancel endpoint's clear answers: 409 for an ended job (writing nothing), 404, 400, 401."""

from __future__ import annotations

import uuid

import pytest
from rq import Queue

from jobcast.core.joblog import JobLog
from jobcast.core.settings import Settings


def new_job(redis) -> JobLog:
    log = JobLog(redis, uuid.uuid4().hex)
    log.create("sqrt", {"n": 3}, 3)
    return log


def test_cancel_writes_one_cancelled_entry_that_never_names_the_clients_address(client, redis):
    """Every viewer of the job reads its cancelled entry: it says "api", and only the reply to
    the client that cancelled names that client's address."""
    log = new_job(redis)
    r = client.post(f"/api/jobs/{log.job_id}/cancel", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert r.status_code == 200 and r.json["status"] == "cancelled"
    assert (r.json["by"], r.json["client"]) == ("api", "10.1.2.3")
    last = list(log.entries())[-1]
    assert (last.kind, last.data["by"], last.seq) == ("cancelled", "api", r.json["seq"])
    assert last.data["ts"] > 0
    assert b"10.1.2.3" not in b"".join(e.raw for e in log.entries())
    info = client.get(f"/api/jobs/{log.job_id}")
    assert info.json["status"] == "cancelled" and info.json["ended_at"] and info.json["cancelled_by"] == "api"
    assert b"10.1.2.3" not in info.data


@pytest.mark.parametrize("ending", ["finished", "failed", "cancelled"])
def test_cancelling_an_ended_job_answers_409_with_its_status_and_writes_nothing(client, redis, ending):
    log = new_job(redis)
    log.started("w", 1)
    {"finished": log.finished, "failed": lambda: log.failed("boom"),
     "cancelled": lambda: log.cancelled("someone")}[ending]()
    before = [e.raw for e in log.entries()]
    r = client.post(f"/api/jobs/{log.job_id}/cancel")
    assert r.status_code == 409 and r.json["status"] == ending and r.json["error"] == "conflict"
    assert [e.raw for e in log.entries()] == before


def test_a_second_cancel_answers_409(client, redis):
    log = new_job(redis)
    assert client.post(f"/api/jobs/{log.job_id}/cancel").status_code == 200
    r = client.post(f"/api/jobs/{log.job_id}/cancel")
    assert r.status_code == 409 and r.json["status"] == "cancelled"
    assert [e.kind for e in log.entries()] == ["queued", "cancelled"]


def test_cancel_of_an_unknown_job_is_404_and_of_a_malformed_id_400(client):
    assert client.post(f"/api/jobs/{uuid.uuid4().hex}/cancel").status_code == 404
    r = client.post("/api/jobs/no.pe/cancel")  # "." is outside RQ's id alphabet
    assert r.status_code == 400 and r.json["field"] == "job_id"


def test_cancel_needs_the_bearer_token_when_one_is_set(redis, redis_server, make_app):
    cfg = Settings(redis_url=redis_server.url, token="s3cret")
    client = make_app({"JOBCAST": cfg, "TESTING": True}).test_client()
    log = new_job(redis)
    assert client.post(f"/api/jobs/{log.job_id}/cancel").status_code == 401
    bad = client.post(f"/api/jobs/{log.job_id}/cancel", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 403 and bad.json["reason"] == "bad_token"
    assert [e.kind for e in log.entries()] == ["queued"]
    ok = client.post(f"/api/jobs/{log.job_id}/cancel", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_a_plain_rq_job_of_another_queue_is_neither_opened_nor_cancelled(client, redis):
    """Finding 7 of issue 23: a cancel of a plain RQ job queued on another application's queue
    answered 200 and RQ marked it CANCELED; opening its id listed it with its function name."""
    job = Queue(f"billing-{uuid.uuid4().hex[:8]}", connection=redis).enqueue(
        "tests.rq_jobs.emit_lines", 3)
    for path in (f"/api/jobs/{job.id}", f"/jobs/{job.id}", f"/jobs/{job.id}/stream"):
        assert client.get(path).status_code == 404, path
    assert client.post(f"/api/jobs/{job.id}/cancel").status_code == 404
    assert job.id not in [j["id"] for j in client.get("/api/jobs").json["jobs"]]
    assert job.get_status(refresh=True) == "queued"
    # A log that a hooked worker of that queue wrote does not make it Jobcast's to cancel.
    JobLog(redis, job.id).ensure(job.description, job.origin)
    assert client.post(f"/api/jobs/{job.id}/cancel").status_code == 404
    assert [e.kind for e in JobLog(redis, job.id).entries()] == ["queued"]
    assert job.get_status(refresh=True) == "queued"


def test_the_jobs_of_the_queues_named_in_jobcast_queues_are_opened_and_cancelled(
        config, make_app, redis):
    mine = f"mine-{uuid.uuid4().hex[:8]}"
    cfg = config.model_copy(update={"queues": f"jobcast, {mine}"})
    client = make_app({"JOBCAST": cfg, "TESTING": True}).test_client()
    job = Queue(mine, connection=redis).enqueue("tests.rq_jobs.emit_lines", 3)
    assert client.get(f"/api/jobs/{job.id}").json["status"] == "queued"
    assert client.post(f"/api/jobs/{job.id}/cancel").status_code == 200
    assert job.get_status(refresh=True) == "canceled"


def test_jobcast_cancels_the_jobs_it_started_whatever_queues_it_is_given(config, make_app, redis):
    """A review's finding: the README's mount, ``Settings(queues="default")``, left Jobcast
    unable to cancel the jobs its own form and ``POST /api/jobs`` put on JOBCAST_QUEUE: 404
    "no job with id", though the job's status answered 200."""
    cfg = config.model_copy(update={"queues": "default"})
    client = make_app({"JOBCAST": cfg, "TESTING": True}).test_client()
    created = client.post("/api/jobs", json={"task": "sqrt", "params": {"n": 3}})
    assert created.status_code == 201
    job_id = created.json["id"]
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    assert client.get(f"/api/jobs/{job_id}").json["status"] == "cancelled"
