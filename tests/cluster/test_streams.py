"""Job streams on a real three-primary Redis Cluster (``JOBCAST_STREAM_URL``).

RQ's queue stays on the session's plain redis-server; real RQ workers write the logs to the
cluster, real gunicorn processes relay them, and sharded pub/sub (``SSUBSCRIBE``) wakes them.
"""

from __future__ import annotations

import json
import math
import threading
import uuid

import httpx
import pytest
from redis.crc import key_slot

from jobcast.core.joblog import JobExists, JobLog
from jobcast.core.keys import JOBS_INDEX, OPEN_JOBS, channel, log_key, meta_key
from tests.support.cluster import LocalCluster
from tests.support.jobs import create_job, job_status
from tests.support.wait import wait_for
from tests.support.sse import id_seq, parse_events
from jobcast.core.logstore import LogStore
from jobcast.core.settings import Settings
from jobcast.web.broker import LINGER


def sqrt_lines(n: int) -> str:
    return "".join("{}\n".format(math.sqrt(i)) for i in range(n))


def sse_events(base: str, job_id: str, headers=None, stop_after_seq: int | None = None,
               opened: threading.Event | None = None) -> list[dict]:
    """The job's SSE events, to the end or up to ``stop_after_seq`` (then hang up)."""
    events = []
    with httpx.Client(base_url=base, timeout=60) as c:
        with c.stream("GET", f"/jobs/{job_id}/events", headers=headers or {}) as r:
            assert r.status_code == 200
            if opened is not None:
                opened.set()
            for ev in parse_events(r):
                events.append(ev)
                if stop_after_seq is not None and ev.seq >= stop_after_seq:
                    break
    return events


def shardnumsub(cluster: LocalCluster, job_id: str) -> int:
    """Subscribers of the job's shard channel, as the node that owns it counts them."""
    name = channel(job_id, tagged=True)
    node = cluster.node(cluster.owner(name))
    try:
        return dict(_pairs(node.execute_command("PUBSUB", "SHARDNUMSUB", name)))[name.encode()]
    finally:
        node.close()


def _pairs(flat: list) -> list[tuple]:
    """[a, 1, b, 2] as [(a, 1), (b, 2)]."""
    return list(zip(flat[::2], flat[1::2]))


def metric(base: str, name: str) -> float:
    """One unlabelled sample of the web server's /metrics."""
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_sqrt_job_streams_exactly_with_its_log_on_the_cluster(cluster, streams, redis,
                                                                cluster_webs, cluster_workers):
    web = cluster_webs[0]
    with httpx.Client(base_url=web.url, timeout=30) as http:
        job_id = create_job(http, "sqrt", n=20, interval=0.02)
        with http.stream("GET", f"/jobs/{job_id}/stream") as r:
            assert r.status_code == 200
            text = "".join(r.iter_text())
        assert text == sqrt_lines(20)
        assert job_status(http, job_id)["status"] == "finished"
    # The log and metadata are on the cluster, under one hash tag; none on the queue's Redis.
    assert streams.exists(log_key(job_id, tagged=True), meta_key(job_id, tagged=True)) == 2
    assert redis.exists(log_key(job_id), meta_key(job_id)) == 0
    assert streams.xlen(log_key(job_id, tagged=True)) == 23  # queued, started, 20, finished


def test_fifty_viewers_over_two_web_processes_get_the_identical_sequence(cluster_webs,
                                                                         cluster_workers):
    with httpx.Client(base_url=cluster_webs[0].url, timeout=30) as http:
        job_id = create_job(http, "sqrt", n=30, interval=0.05)
    results: dict[int, list[dict]] = {}

    def viewer(k: int) -> None:
        results[k] = sse_events(cluster_webs[k % 2].url, job_id)

    threads = [threading.Thread(target=viewer, args=(k,)) for k in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 50
    sequences = {tuple((e.id, e.event, e.data) for e in events)
                 for events in results.values()}
    assert len(sequences) == 1
    (events,) = sequences
    assert [id_seq(i) for i, _, _ in events] == list(range(1, 34))
    values = [json.loads(d) for _, kind, d in events if kind == "value"]
    assert [v["v"] for v in values] == ["{}".format(math.sqrt(i)) for i in range(30)]


def test_a_viewer_moved_to_the_other_web_process_resumes_exactly(cluster_webs, cluster_workers):
    first_web, second_web = cluster_webs
    with httpx.Client(base_url=first_web.url, timeout=30) as http:
        job_id = create_job(http, "sqrt", n=30, interval=0.1)  # still running when resumed
        first = sse_events(first_web.url, job_id, stop_after_seq=12)
        assert job_status(http, job_id)["status"] != "finished"
    rest = sse_events(second_web.url, job_id, headers={"Last-Event-ID": first[-1].id})
    seqs = [e.seq for e in first + rest]
    assert seqs == list(range(1, 34))
    assert [json.loads(e.data)["i"] for e in first + rest if e.event == "value"] == \
        list(range(30))
    assert rest[-1].event == "finished"


def test_the_job_list_shows_the_jobs_on_the_cluster_newest_first(cluster_webs, cluster_workers):
    with httpx.Client(base_url=cluster_webs[1].url, timeout=30) as http:
        ids = [create_job(http, "sqrt", n=2, interval=0.01) for _ in range(3)]
        listed = [job["id"] for job in http.get("/api/jobs").json()["jobs"]]
        assert listed[:3] == ids[::-1]
        wait_for(lambda: all(job_status(http, j)["status"] == "finished" for j in ids), 30,
                 what="the three jobs to finish")
        jobs = {job["id"]: job for job in http.get("/api/jobs").json()["jobs"]}
        assert all(jobs[j]["status"] == "finished" and jobs[j]["progress"]["i"] == 2 for j in ids)
        assert http.get("/").status_code == 200


def test_a_process_subscribes_to_a_shard_channel_only_while_it_has_viewers(cluster, cluster_webs,
                                                                            cluster_workers):
    web = cluster_webs[0]
    with httpx.Client(base_url=web.url, timeout=30) as http:
        watched = create_job(http, "sqrt", n=40, interval=0.05)
        unwatched = create_job(http, "sqrt", n=40, interval=0.05)
    assert shardnumsub(cluster, watched) == 0
    opened = [threading.Event() for _ in range(5)]
    results: list[list[dict]] = []
    threads = [threading.Thread(target=lambda o=o: results.append(sse_events(web.url, watched,
                                                                           opened=o)))
               for o in opened]
    for t in threads:
        t.start()
    wait_for(lambda: all(o.is_set() for o in opened), 30, what="five viewers streaming")
    # Five viewers in one process: one shard subscription; none for the other job.
    assert shardnumsub(cluster, watched) == 1
    assert shardnumsub(cluster, unwatched) == 0
    # The process's viewer counts reach the cluster too (web/presence.py).
    wait_for(lambda: httpx.get(f"{web.url}/api/jobs/{watched}").json()["viewers"] == 5, 15,
             what="five viewers counted")
    for t in threads:
        t.join(60)
    assert len(results) == 5 and all(len(r) == 43 for r in results)
    wait_for(lambda: shardnumsub(cluster, watched) == 0, LINGER + 10,
             what="the shard subscription to end after the linger")


def test_restarting_the_primary_that_owns_a_watched_jobs_slot_loses_no_value(cluster, cluster_webs,
                                                                             cluster_workers):
    web = cluster_webs[1]
    with httpx.Client(base_url=web.url, timeout=30) as http:
        job_id = create_job(http, "sqrt", n=40, interval=0.05)
        port = cluster.owner(channel(job_id, tagged=True))
        events: list[dict] = []
        done = threading.Event()

        def viewer() -> None:
            try:
                with httpx.Client(base_url=web.url, timeout=120) as c:
                    with c.stream("GET", f"/jobs/{job_id}/events") as r:
                        for ev in parse_events(r):
                            events.append(ev)
            finally:
                done.set()

        reader = threading.Thread(target=viewer)
        reader.start()
        wait_for(lambda: sum(e.event == "value" for e in events) >= 5, 30,
                 what="the viewer to get a few values")
        reconnects = metric(web.url, "jobcast_hub_reconnects_total")
        cluster.kill(port)
        # The web process notices: its shard connection broke.
        wait_for(lambda: metric(web.url, "jobcast_hub_reconnects_total") > reconnects, 30,
                 what="the hub to lose its shard subscription")
        cluster.start_node(port)  # same port, same nodes.conf and AOF
        cluster.wait_ok()
        assert done.wait(90), "the stream did not end"
        reader.join(5)
        assert job_status(http, job_id)["status"] == "finished"
    seqs = [e.seq for e in events if e.id is not None]
    assert seqs == list(range(1, len(seqs) + 1))
    values = [json.loads(e.data) for e in events if e.event == "value"]
    assert [v["i"] for v in values] == list(range(40))
    assert [v["v"] for v in values] == ["{}".format(math.sqrt(i)) for i in range(40)]
    assert events[-1].event == "finished"
    # Restarted with its AOF: the same incarnation of the log, no reset.
    assert {e.epoch for e in events if e.id is not None} == {events[-1].epoch}


def test_a_watched_jobs_slot_resharded_to_another_primary_loses_no_value(cluster, cluster_webs,
                                                                          cluster_workers):
    web = cluster_webs[0]
    with httpx.Client(base_url=web.url, timeout=30) as http:
        job_id = create_job(http, "sqrt", n=40, interval=0.05)
        name = channel(job_id, tagged=True)
        events: list[dict] = []
        reader = threading.Thread(target=lambda: events.extend(sse_events(web.url, job_id)))
        reader.start()
        wait_for(lambda: shardnumsub(cluster, job_id) == 1, 30, what="the shard subscription")
        wait_for(lambda: job_status(http, job_id)["progress"]["i"] >= 5, 30, what="a few values")
        old = cluster.owner(name)
        new = next(p for p in cluster.ports if p != old)
        cluster.move_slot(key_slot(name.encode()), new)
        # Redis ends the subscription on the old owner; the hub subscribes on the new one.
        wait_for(lambda: shardnumsub(cluster, job_id) == 1 and cluster.owner(name) == new, 30,
                 what="the subscription on the slot's new owner")
        reader.join(60)
        assert job_status(http, job_id)["status"] == "finished"
    assert [e.seq for e in events] == list(range(1, 44))
    values = [json.loads(e.data) for e in events if e.event == "value"]
    assert [v["v"] for v in values] == ["{}".format(math.sqrt(i)) for i in range(40)]
    # MIGRATE carried the log's hash, its epoch with it: no reset across the reshard.
    assert len({e.epoch for e in events}) == 1 and events[-1].epoch is not None


def test_on_the_cluster_the_append_script_logs_and_announces_with_spublish_and_indexes_once(
        cluster, streams):
    log = JobLog(streams, uuid.uuid4().hex)
    node = cluster.node(cluster.owner(channel(log.job_id, tagged=True)))
    pubsub = node.pubsub()
    try:
        pubsub.ssubscribe(channel(log.job_id, tagged=True))
        wait_for(lambda: pubsub.get_message(timeout=0.1), what="the ssubscribe confirmation")
        assert log.create("sqrt", {}, 2) == 1 and log.started("w", 1) == 2
        assert log.value(0, 1.5) == 3 and log.value(0, 1.5) == -3  # a repeated value is refused
        created = streams.zscore(JOBS_INDEX, log.job_id)
        with pytest.raises(JobExists):
            log.create("sqrt", {}, 2)
        assert streams.zscore(JOBS_INDEX, log.job_id) == created  # it keeps its place
        got = []
        wait_for(lambda: got.extend(m for m in [pubsub.get_message(timeout=0.1)] if m) or
                 len(got) >= 3, what="three shard announcements")
        assert [m["type"] for m in got] == ["smessage"] * 3
        assert [json.loads(m["data"])["seq"] for m in got] == [1, 2, 3]
        assert [e.seq for e in log.entries()] == [1, 2, 3]
        assert LogStore(streams, Settings()).recent(1000)[0].id == log.job_id
    finally:
        pubsub.close()
        node.close()


def test_on_the_cluster_a_job_listed_before_its_metadata_exists_stays_in_the_job_list(
        streams, monkeypatch):
    """A review's finding: on a Cluster the index is written a round trip before the append
    script creates the job's metadata, and a listing in between dropped the id for good."""
    store = LogStore(streams, Settings())
    log = JobLog(streams, uuid.uuid4().hex)
    write = JobLog._write

    def listed_first(self, *args, **kwargs):
        """A home page lists the jobs just before the job's queued entry is written."""
        store.recent(1000)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(JobLog, "_write", listed_first)
    assert log.create("sqrt", {}, 2) == 1
    monkeypatch.undo()
    assert log.job_id in [job.id for job in store.recent(1000)]
    # A new run of the id moves it to its new creation time, as on a single Redis.
    first = streams.zscore(JOBS_INDEX, log.job_id)
    log.finished()
    assert log.reopen("sqrt", {}, 2)
    assert streams.zscore(JOBS_INDEX, log.job_id) > first


def test_on_the_cluster_a_created_job_is_open_until_it_ends(streams):
    store = LogStore(streams, Settings())
    log = store.log(uuid.uuid4().hex)
    log.create("sqrt", {}, 1)
    assert streams.zscore(OPEN_JOBS, log.job_id) is not None
    assert (log.job_id, "") in store.open_jobs()
    log.finished()
    assert log.job_id not in {job_id for job_id, _ in store.open_jobs()}
    assert streams.zscore(OPEN_JOBS, log.job_id) is None  # the round dropped it


def test_on_the_cluster_a_job_run_again_reopens_its_log_in_one_script_and_is_open_again(streams):
    """The earlier run's keys give way to the new run's on the job's own slot (the index keys
    live elsewhere, and are written around the script as at creation)."""
    store = LogStore(streams, Settings())
    log = store.log(uuid.uuid4().hex)
    log.create("sqrt", {}, 1)
    log.started("w", 1)
    log.value(0, 1.0)
    log.finished()
    assert log.reopen("sqrt", {"n": 2}, 2)
    assert [(e.seq, e.kind) for e in log.entries()] == [(1, "queued")]
    assert log.info().params == {"n": 2} and streams.ttl(log.keys.meta) == -1
    assert (log.job_id, "") in store.open_jobs()


def test_a_shard_reader_pings_its_node_as_a_single_redis_reader_does(cluster):
    """A review's finding: the Cluster client had no health check, so neither had the pub/sub
    readers made from its nodes' settings; a primary whose host vanished without a FIN left its
    shard taken for live, its viewers fed only by the quiet check, until TCP's keepalive (about
    two hours)."""
    from jobcast.core.store import connect
    from jobcast.web.broker import Broker
    from jobcast.web.subscriber import Subscriber

    streams = connect(cluster.url, cluster=True)  # as the web connects to a Cluster
    reader = Subscriber(Broker(streams)._node_client(streams.get_primaries()[0]))
    try:
        reader._connect()
        assert reader._interval > 0
    finally:
        reader.close()
        streams.close()


def test_a_stream_url_naming_several_nodes_serves_and_runs_jobs_while_the_first_is_down(
        redis_server, cluster, logs_dir):
    """A Cluster operator's finding: with the one node ``JOBCAST_STREAM_URL`` named down (its
    replica promoted, the Cluster healthy), every work-horse failed to connect and a web
    process could not start. The URL may now name several nodes: clients start from whichever
    answers."""
    from jobcast.launcher.redisserver import free_port
    from tests.support.services import WebServer, Workers

    url = f"redis://127.0.0.1:{free_port()},127.0.0.1:{cluster.ports[1]}/0"  # the first: down
    env = {"JOBCAST_STREAM_URL": url, "JOBCAST_QUEUE": f"nodes-{uuid.uuid4().hex[:8]}"}
    web = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-cluster-nodes.log",
                    **env).start()
    pool = Workers(redis_server.url, logs_dir)
    try:
        pool.start(1, **env)
        with httpx.Client(base_url=web.url, timeout=30) as http:
            job_id = create_job(http, "sqrt", n=5, interval=0.02)
            with http.stream("GET", f"/jobs/{job_id}/stream") as r:
                assert r.status_code == 200
                text = "".join(r.iter_text())
            assert job_status(http, job_id)["status"] == "finished"
        assert text == sqrt_lines(5)
    finally:
        pool.stop_all()
        web.stop()
