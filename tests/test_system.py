"""End to end through real processes: redis-server, gunicorn (gevent) and RQ workers."""

from __future__ import annotations

import json
import math
import socket
import threading

import httpx
import psutil
import pytest

from tests.support.jobs import create_job, job_status, running_job
from tests.support.services import WebServer
from tests.support.wait import wait_for
from tests.support.sse import Event, parse_events


def sqrt_lines(n: int) -> str:
    return "".join("{}\n".format(math.sqrt(i)) for i in range(n))


def read_stream(base: str, job_id: str, timeout: float = 60) -> str:
    with httpx.Client(base_url=base, timeout=timeout) as c:
        r = c.get(f"/jobs/{job_id}/stream")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        return r.text


def test_sqrt_stream_is_exactly_the_original_lines_then_ends(http, web, workers):
    job_id = create_job(http, "sqrt", n=20, interval=0.05)
    assert read_stream(web.url, job_id) == sqrt_lines(20)
    assert job_status(http, job_id)["status"] == "finished"
    # A late viewer of the finished job replays the same lines from the log.
    assert read_stream(web.url, job_id) == sqrt_lines(20)


def test_fifty_viewers_some_joining_mid_job_see_the_identical_sequence(http, web, workers):
    # 4 s of values: the second half must join while it still runs, on a loaded machine too
    job_id = create_job(http, "sqrt", n=40, interval=0.1)
    results: dict[int, str] = {}

    def viewer(k: int) -> None:
        results[k] = read_stream(web.url, job_id)

    threads = [threading.Thread(target=viewer, args=(k,)) for k in range(50)]
    for t in threads[:25]:
        t.start()
    # The other half joins once the job is well under way.
    wait_for(lambda: job_status(http, job_id)["progress"]["i"] >= 15, 30, what="job under way")
    assert job_status(http, job_id)["status"] == "running"
    for t in threads[25:]:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 50
    assert all(text == sqrt_lines(40) for text in results.values())


def sse_events(base: str, job_id: str, headers=None, stop_after_seq: int | None = None,
               query: str = "") -> list[Event]:
    events = []
    with httpx.Client(base_url=base, timeout=60) as c:
        with c.stream("GET", f"/jobs/{job_id}/events{query}", headers=headers or {}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for ev in parse_events(r):
                events.append(ev)
                if stop_after_seq is not None and ev.seq >= stop_after_seq:
                    break  # drop the connection mid-job
    return events


def test_sse_resumes_from_last_event_id_with_exactly_the_rest(http, web, workers):
    job_id = create_job(http, "sqrt", n=30, interval=0.1)  # still running when resumed
    first = sse_events(web.url, job_id, stop_after_seq=12)
    last_id = first[-1].id
    assert job_status(http, job_id)["status"] != "finished"
    rest = sse_events(web.url, job_id, headers={"Last-Event-ID": last_id})
    seqs = [e.seq for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))
    values = [json.loads(e.data) for e in first + rest if e.event == "value"]
    assert [v["i"] for v in values] == list(range(30))
    assert [v["v"] for v in values] == ["{}".format(math.sqrt(i)) for i in range(30)]
    assert [e.event for e in first[:2]] == ["queued", "started"]
    assert rest[-1].event == "finished"
    # ?after=N is the same as Last-Event-ID; after the terminal entry there is nothing left.
    assert [e.seq for e in sse_events(web.url, job_id, query="?after=20")] == seqs[20:]
    assert httpx.get(f"{web.url}/jobs/{job_id}/events?after={seqs[-1]}").status_code == 204


def test_six_jobs_on_three_workers_all_finish_and_more_than_one_worker_runs_them(http, workers):
    ids = [create_job(http, "sqrt", n=8, interval=0.1) for _ in range(6)]
    wait_for(lambda: all(job_status(http, j)["status"] == "finished" for j in ids), 60,
             interval=0.2, what="all six jobs to finish")
    ran_on = {job_status(http, j)["worker"] for j in ids}
    assert len(ran_on) >= 2, ran_on


def test_frame_streams_escaped_html_after_a_stylesheet(http, web, workers):
    job_id = create_job(http, "html", n=3)
    with httpx.Client(base_url=web.url, timeout=30) as c:
        with c.stream("GET", f"/jobs/{job_id}/frame") as r:
            assert r.headers["content-type"].startswith("text/html")
            chunks = list(r.iter_text())
    body = "".join(chunks)
    assert '<link rel="stylesheet"' in chunks[0]
    assert "<p>0: &lt;/p&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;</p>" in body
    assert "<script>" not in body and "<img" not in body and "<svg" not in body
    assert body.count("<p>") == 3 and 'class="end">Done' in body


def test_a_failing_task_ends_every_stream_with_one_failed_event(http, web, workers):
    job_id = create_job(http, "boom", after=2)
    events = sse_events(web.url, job_id)
    kinds = [e.event for e in events]
    assert kinds.count("failed") == 1 and kinds[-1] == "failed"
    assert "RuntimeError: boom after 2 values" in events[-1].data
    assert [json.loads(e.data)["i"] for e in events if e.event == "value"] == [0, 1]
    assert kinds.count("retrying") == 2  # default JOBCAST_JOB_RETRIES=2
    assert read_stream(web.url, job_id) == "0\n1\n"
    info = job_status(http, job_id)
    assert info["status"] == "failed" and info["reason"].startswith("RuntimeError")


@pytest.mark.parametrize("task", ["flaky", "flaky_resumable"])
def test_a_retried_job_logs_each_value_once(http, web, workers, task):
    job_id = create_job(http, task, n=12, fail_at=5)
    events = sse_events(web.url, job_id)
    kinds = [e.event for e in events]
    assert kinds.count("started") == 2 and kinds.count("retrying") == 1 and kinds[-1] == "finished"
    assert [json.loads(e.data)["i"] for e in events if e.event == "value"] == list(range(12))
    assert read_stream(web.url, job_id) == "".join(f"{i}\n" for i in range(12))


def test_one_redis_subscription_per_web_process_however_many_viewers(http, web, workers, redis,
                                                                   redis_server):
    job_id = create_job(http, "sqrt", n=400, interval=0.05)
    stop = threading.Event()
    opened = []

    def viewer():
        with httpx.Client(base_url=web.url, timeout=60) as c:
            with c.stream("GET", f"/jobs/{job_id}/events") as r:
                for line in r.iter_lines():
                    if line.startswith("id:") and not opened.count(threading.get_ident()):
                        opened.append(threading.get_ident())
                    if stop.is_set():
                        break

    threads = [threading.Thread(target=viewer) for _ in range(40)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(opened) == 40, 30, what="40 viewers streaming")
        # Redis clients that belong to this gunicorn's worker processes (other tests' apps
        # may be subscribed too): each has exactly one pub/sub connection, which carries the
        # channels of the jobs watched there.
        ports = {c.laddr.port for p in psutil.Process(web.proc.pid).children()
                 for c in p.net_connections(kind="tcp") if c.raddr and c.raddr.port == redis_server.port}
        ours = [c for c in redis.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]
        subscribers = [c for c in ours if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]
        assert len(subscribers) == web.workers, subscribers
        assert len(ours) < 40, "Redis connections grew with the viewers"
        # Each process counts its own viewers; the API adds them up across processes.
        wait_for(lambda: job_status(http, job_id)["viewers"] == 40, 15, what="40 viewers counted")
    finally:
        stop.set()
        # Not left running on a session worker: the later tests of this process want three.
        http.post(f"/api/jobs/{job_id}/cancel")
        for t in threads:
            t.join(30)


def test_a_vanished_viewer_is_freed_after_a_heartbeat(redis_server, logs_dir, workers):
    # One gunicorn worker, so the viewer count that /api/jobs reports is the whole server's.
    server = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-single.log",
                       JOBCAST_HEARTBEAT="1").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            job_id = create_job(http, "sqrt", n=1000, interval=1.0)
            try:
                for path in ("stream", "events", "frame"):
                    sock = socket.create_connection(("127.0.0.1", server.port))
                    sock.sendall(f"GET /jobs/{job_id}/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                    wait_for(lambda: job_status(http, job_id)["viewers_here"] == 1, 10,
                             what="viewer attached")
                    sock.close()
                    wait_for(lambda: job_status(http, job_id)["viewers_here"] == 0, 10,
                             what=f"{path} viewer freed")
            finally:
                # A 17-minute job must not keep a session worker from the later tests.
                http.post(f"/api/jobs/{job_id}/cancel")
    finally:
        server.stop()


def test_a_value_that_is_not_ascii_reaches_every_transport_whole_as_utf_8(http, redis):
    """Values are stored as UTF-8, not escaped (jobcast.core.values): each stream carries them
    as the job wrote them, the chunked ones framed by their bytes."""
    log = running_job(redis)
    texts = ["漢字 é \U0001F600", "<b>ü</b>" * 300]
    for i, text in enumerate(texts):
        log.value(i, text)
    log.finished()
    streamed = {}
    for path in ("stream", "events", "frame"):
        with http.stream("GET", f"/jobs/{log.job_id}/{path}") as r:
            assert r.status_code == 200
            streamed[path] = r.read().decode()  # a chunk's size counted wrong would not parse
    assert streamed["stream"] == "".join(t + "\n" for t in texts)
    events = [json.loads(e.data) for e in parse_events(streamed["events"].encode())
              if e.event == "value"]
    assert [(e["v"], e["j"]) for e in events] == [(t, t) for t in texts]
    assert "漢字 é \U0001F600" in streamed["frame"] and "&lt;b&gt;ü&lt;/b&gt;" in streamed["frame"]
    assert [v["v"] for v in http.get(f"/api/jobs/{log.job_id}/values").json()["values"]] == texts


def test_a_relayed_stream_says_connection_close_so_a_pooled_client_goes_on_with_a_new_one(http, redis):
    log = running_job(redis)
    log.value(0, 0.0)
    log.finished()
    for path in ("stream", "events", "frame"):
        with http.stream("GET", f"/jobs/{log.job_id}/{path}") as r:
            assert r.status_code == 200 and r.headers["connection"] == "close"
            body = r.read()
        assert b"0.0" in body
        # The relay closed the connection at the end; the client knew not to reuse it.
        assert http.get("/healthz").status_code == 200


def test_each_run_of_a_repeated_rq_job_reaches_its_viewers_and_a_resume_is_told_of_the_new_run(
        http, web, workers, redis):
    """RQ's ``Repeat`` runs a job again under its id. A viewer of the first run gets it whole,
    with its end; the next run opens the job's log anew, so a viewer who resumes from the first
    run's last id is told by one ``reset`` (the log was re-created) and gets the next run's
    entries, and a new viewer sees the last run's values (before, they were dropped)."""
    from rq import Queue, Repeat

    from jobcast.core.joblog import JobLog
    from tests.rq_jobs import emit_lines

    job = Queue("jobcast", connection=redis).enqueue(emit_lines, 4, 0.25,
                                                      repeat=Repeat(times=1))
    first = sse_events(web.url, job.id)
    assert [e.event for e in first] == ["queued", "started", "value", "value", "value", "value",
                                        "finished"]

    def second_run_ended() -> bool:
        job.refresh()
        return (job.get_status() == "finished" and job.repeats_left == 0
                and JobLog(redis, job.id).status() == "finished")

    wait_for(second_run_ended, 30, what="the second run's end")
    resumed = sse_events(web.url, job.id, headers={"Last-Event-ID": first[-1].id})
    assert [e.event for e in resumed] == ["reset", "queued", "started", "value", "value",
                                          "value", "value", "finished"]
    assert json.loads(resumed[0].data)["reason"] == "unknown_epoch"
    assert [e.seq for e in resumed[1:]] == list(range(1, 8))
    assert resumed[1].id.split(":")[1] != first[-1].id.split(":")[1]
    assert read_stream(web.url, job.id) == "".join(f"line {i}\n" for i in range(4))


def test_redis_over_a_unix_socket_serves_the_web_and_the_workers(tmp_path, logs_dir):
    """A review's finding: with ``REDIS_URL=unix://…`` every web request answered 500 (the
    web's pool asked for TCP keepalive, which redis-py's Unix-socket connection refuses)."""
    import subprocess

    from jobcast.launcher.redisserver import find_redis_server
    from tests.support.services import Workers, stop_process

    sock = tmp_path / "redis.sock"
    server = subprocess.Popen([find_redis_server(), "--port", "0", "--unixsocket", str(sock),
                               "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    web = workers = None
    try:
        wait_for(sock.exists, 10, what="redis-server's socket")
        url = f"unix://{sock}?db=0"
        workers = Workers(url, logs_dir)
        workers.start(1)
        web = WebServer(url, log_path=logs_dir / "web-unix.log").start()
        with httpx.Client(base_url=web.url, timeout=30) as c:
            job_id = create_job(c, "sqrt", n=5, interval=0.01)
            assert read_stream(web.url, job_id) == sqrt_lines(5)
            assert c.get(f"/api/jobs/{job_id}").json()["status"] == "finished"
    finally:
        if web:
            web.stop()
        if workers:
            workers.stop_all()
        stop_process(server)
