"""Failovers, for real: a primary, a replica and three Sentinels (redis-server and
redis-server --sentinel processes), and `jobcast up` with REDIS_URL=redis+sentinel://….

- A failover to a complete replica loses nothing: the viewers get every value once and no
  reset, and everything (web, workers, RQ, `jobcast status`) follows the new primary.
- A failover that loses entries (made deterministic: replication is cut off on the primary,
  some values are appended, then the primary is killed) resets each viewer that had seen them
  exactly once; no id it saw is reused with another value; the job is retried and its log is
  consistent (no seq reused inside one epoch).
- A stream store restarted empty (no persistence) mid-job: viewers are told (a reset, or 404
  when the job is gone), never left waiting or fed reused ids.
- WAIT after a terminal entry: acknowledged by the replica, or given up after the setting.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from jobcast.core.joblog import JobLog
from jobcast.core.settings import Settings
from jobcast.core.store import redis_client
from jobcast.launcher.redisserver import RedisServer, free_port
from jobcast.producer.enqueue import enqueue
from tests.support.chaos import SSEViewer, TextViewer
from tests.support.jobs import create_job
from tests.support.services import JOBCAST, ROOT, service_env
from tests.support.wait import wait_for
from tests.support.sentinel import LocalSentinelGroup

pytestmark = pytest.mark.chaos


class Up:
    """`jobcast up --no-demo` on an existing Redis (REDIS_URL), its output in files."""

    def __init__(self, tmp: Path, redis_url: str, workers: int = 1, **env: str):
        """Start it and wait until it says it runs."""
        self.port = free_port()
        self.env = service_env(redis_url, XDG_DATA_HOME=str(tmp), JOBCAST_HEARTBEAT="1", **env)
        self.out = tmp / "up.out"
        self.proc = subprocess.Popen(
            [*JOBCAST, "up", "--port", str(self.port), "--no-demo", "--workers", str(workers)],
            env=self.env, cwd=ROOT, stdout=open(self.out, "wb"), stderr=subprocess.STDOUT)

        def running() -> bool:
            """True once it printed that it runs."""
            assert self.proc.poll() is None, f"jobcast up exited:\n{self.out.read_text()}"
            return "Press Ctrl-C" in self.out.read_text()

        wait_for(running, 60, interval=0.1, what="jobcast up")
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        """Base URL of its web server."""
        return f"http://127.0.0.1:{self.port}"

    def status(self, job_id: str) -> dict:
        """The job's status from the API."""
        return self.http.get(f"/api/jobs/{job_id}").json()

    def stop(self) -> None:
        """Ctrl-C, as a person would."""
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def group(tmp_path) -> Iterator[LocalSentinelGroup]:
    """A fresh primary, replica and three Sentinels."""
    with LocalSentinelGroup(tmp_path / "sentinel") as g:
        yield g


@pytest.fixture
def up(tmp_path, group) -> Iterator[Up]:
    """`jobcast up` (one web process, one RQ worker) on the group, through its Sentinels."""
    stack = Up(tmp_path, group.url)
    yield stack
    stack.stop()


def watch(stack: Up, n: int, interval: float) -> tuple[str, SSEViewer, TextViewer]:
    """A sqrt job of ``n`` values, an SSE viewer and a text viewer on it."""
    job_id = create_job(stack.http, "sqrt", n=n, interval=interval)
    sse, text = SSEViewer(stack.url, job_id, deadline=60), TextViewer(stack.url, job_id, 60)
    sse.start()
    text.start()
    return job_id, sse, text


def values_shown(viewer: SSEViewer) -> list[int]:
    """The values an SSE viewer ends up showing: a reset drops those from its ``values`` on."""
    shown: list[int] = []
    for e in viewer.events:
        if e["event"] == "reset":
            del shown[json.loads(e["data"])["values"]:]
        elif e["event"] == "value":
            shown.append(json.loads(e["data"])["i"])
    return shown


def assert_no_id_reused(viewer: SSEViewer) -> None:
    """Every id the viewer got names one entry: never two different ones."""
    seen: dict[str, str] = {}
    for e in viewer.events:
        if e["event"] != "reset":
            assert seen.setdefault(e["id"], e["data"]) == e["data"], f"id {e['id']} reused"


def sqrt_texts(n: int) -> list[str]:
    """What the text stream shows of a sqrt job of n values."""
    return ["{}".format(math.sqrt(i)) for i in range(n)]


def test_a_failover_to_a_complete_replica_loses_nothing_and_resets_no_one(group, up):
    job_id, sse, text = watch(up, 60, 0.2)
    wait_for(lambda: up.status(job_id)["progress"]["i"] >= 20, 30, what="value 20")
    # The replica has every write the primary took (no append is in flight for long at 0.2 s
    # a value); then the primary dies.
    wait_for(group.in_sync, 5, interval=0.005, what="the replica to catch up")
    killed = time.monotonic()
    group.kill_primary()
    promoted = group.wait_promoted()
    wait_for(lambda: up.status(job_id)["status"] == "finished", 40, interval=0.2,
             what="the job to finish on the new primary")
    for viewer in (sse, text):
        viewer.join(20)
    assert values_shown(sse) == list(range(60)) and sse.values() == list(range(60))
    assert not [e for e in sse.events if e["event"] == "reset"] and not text.resets
    assert len({e["id"].partition(":")[2] for e in sse.events}) == 1  # one epoch throughout
    assert [e["event"] for e in sse.terminal()] == ["finished"]
    assert text.lines == sqrt_texts(60)
    # Everything follows the new primary: a new job streams exactly, `jobcast status` answers.
    after = create_job(up.http, "sqrt", n=10, interval=0.02)
    with httpx.stream("GET", f"{up.url}/jobs/{after}/stream", timeout=30) as r:
        assert list(r.iter_lines()) == sqrt_texts(10)
    status = subprocess.run([*JOBCAST, "status"], env=up.env, cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert status.returncode == 0 and "queue jobcast:" in status.stdout, status.stdout
    print(f"\nfailover: promoted {promoted:.1f}s after the kill; the job finished "
          f"{time.monotonic() - killed:.1f}s after it")


@pytest.mark.parametrize("woken", ["after the job", "while it runs"])
def test_a_primary_that_freezes_is_failed_over_and_the_running_job_goes_on_never_retried(
        tmp_path, group, woken):
    """A failover review's findings. With the primary frozen (a hung host, `docker compose
    pause`), the worker's heartbeats waited on it for RQ's socket timeout (25 s), past the
    job's execution TTL (15 s): the watchdog, already on the promoted replica, took the job
    for abandoned and retried it beside itself, and it ended failed. Then, with the heartbeats
    mended: an idle worker's dequeue, woken by the old primary (which takes itself for the
    primary until the Sentinels turn it into a replica), ran RQ's cleanup of abandoned jobs on
    its stale registries, and took the job it queued again there. A frozen primary's process
    stays up, so its port still answers a connect, as a hung host's does."""
    up = Up(tmp_path, group.url, workers=2)
    try:
        job_id, sse, text = watch(up, 120, 0.2)
        wait_for(lambda: up.status(job_id)["progress"]["i"] >= 10, 30, what="value 10")
        wait_for(group.in_sync, 5, interval=0.005, what="the replica to catch up")
        port = group.primary_port
        frozen = group.procs.pop(port)  # (not asked its role: the ask would wait on it)
        frozen.send_signal(signal.SIGSTOP)
        try:
            group.wait_promoted()
            assert up.status(job_id)["status"] == "running"
            if woken == "while it runs":
                shown = up.status(job_id)["progress"]["i"]
                wait_for(lambda: up.status(job_id)["progress"]["i"] >= shown + 25, 30,
                         interval=0.2, what="five seconds of values on the new primary")
                frozen.send_signal(signal.SIGCONT)
            wait_for(lambda: up.status(job_id)["status"] == "finished", 60, interval=0.2,
                     what="the job to finish on the new primary")
            for viewer in (sse, text):
                viewer.join(20)
        finally:
            frozen.send_signal(signal.SIGCONT)
            group.procs[port] = frozen  # stopped with the others
        kinds = [e["event"] for e in sse.events]
        assert "retrying" not in kinds and kinds.count("started") == 1, kinds
        assert values_shown(sse) == list(range(120)) and sse.values() == list(range(120))
        assert not [e for e in sse.events if e["event"] == "reset"] and not text.resets
        assert text.lines == sqrt_texts(120)
    finally:
        up.stop()


def test_with_no_replica_to_promote_readyz_answers_503_within_its_command_timeout(group, up):
    """A failover review's finding: with the primary and its replica both frozen (nothing to
    promote), /readyz took 15–30 s to answer: its PING went through the Sentinel client's
    15 s of retries. A probe now tries once, and says 503 within the command timeout."""
    from jobcast.core.store import COMMAND_TIMEOUT

    assert up.http.get("/readyz").status_code == 200
    nodes = [group.procs[group.primary_port], group.procs[group.replica_port]]
    for node in nodes:
        node.send_signal(signal.SIGSTOP)
    try:
        # The client's timeout is the deadline: a probe that hangs fails the test.
        with httpx.Client(base_url=up.url, timeout=2 * COMMAND_TIMEOUT + 2) as http:
            assert http.get("/readyz").status_code == 503
    finally:
        for node in nodes:
            node.send_signal(signal.SIGCONT)
    wait_for(lambda: up.http.get("/readyz").status_code == 200, 30, what="ready again")


def test_with_a_stream_store_behind_sentinel_and_nothing_to_promote_readyz_answers_503_in_time(
        group, redis_server, logs_dir):
    """A Flask maintainer's review: /readyz pinged a stream store of its own (JOBCAST_STREAM_URL)
    through the web's pooled client, which rides out 15 s of failover: with nothing to promote
    it took 15-30 s to say so. It tries once now, as its PING of REDIS_URL does."""
    from jobcast.core.store import COMMAND_TIMEOUT
    from tests.support.services import WebServer

    web = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-sentinel-streams.log",
                    JOBCAST_STREAM_URL=group.url).start()
    nodes = [group.procs[group.primary_port], group.procs[group.replica_port]]
    try:
        with httpx.Client(base_url=web.url, timeout=COMMAND_TIMEOUT + 2) as http:
            assert http.get("/readyz").status_code == 200
            for node in nodes:
                node.send_signal(signal.SIGSTOP)
            try:
                # The client's timeout is the deadline: a probe that outlasts it fails the test.
                assert http.get("/readyz").status_code == 503
            finally:
                for node in nodes:
                    node.send_signal(signal.SIGCONT)
    finally:
        web.stop()


def test_a_failover_that_loses_entries_resets_each_viewer_once_and_reuses_no_id(group, up):
    job_id, sse, text = watch(up, 60, 0.2)
    wait_for(lambda: up.status(job_id)["progress"]["i"] >= 20, 30, what="value 20")
    group.block_replication()  # from here on the primary's writes never reach the replica
    blocked_at = up.status(job_id)["progress"]["i"]
    wait_for(lambda: len(sse.values()) >= blocked_at + 5, 10, interval=0.02,
             what="the viewer to see values the replica will never have")
    group.kill_primary()
    group.wait_promoted()
    wait_for(lambda: up.status(job_id)["status"] == "finished", 45, interval=0.2,
             what="the job, retried, to finish")
    for viewer in (sse, text):
        viewer.join(20)
    resets = [json.loads(e["data"]) for e in sse.events if e["event"] == "reset"]
    assert len(resets) == 1 and resets[0]["reason"] in ("lost", "past_end"), resets
    assert resets[0]["values"] < len(sse.values())
    assert values_shown(sse) == list(range(60))
    assert_no_id_reused(sse)
    assert [e["event"] for e in sse.terminal()] == ["finished"]
    assert len(text.resets) == 1 and text.lines == sqrt_texts(60)
    # The log: seqs 1..N without a gap, each value once, one ending; its epochs in order: the
    # first, the one the loss began (its "retrying"), the retry's own from its start.
    log = JobLog(redis_client(group.url), job_id)
    entries = list(log.entries())
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert [e.i for e in entries if e.kind == "value"] == list(range(60))
    epochs = [e.ep for e in entries]
    assert len(set(epochs)) == 3 and epochs == sorted(epochs, key=epochs.index)
    assert [e.kind for e in entries if e.terminal] == ["finished"] and entries[-1].terminal
    assert [era.epoch for era in log.head().eras] == list(dict.fromkeys(epochs))
    # A resume from before the boundary in the first epoch goes on without a reset.
    boundary = log.head().eras[1].first_seq
    print(f"\nlossy failover: viewer had {len(sse.values())} values; reset {resets[0]}; the "
          f"second epoch begins at seq {boundary}")
    with httpx.stream("GET", f"{up.url}/jobs/{job_id}/events", timeout=30,
                      headers={"Last-Event-ID": f"{boundary - 1}:{epochs[0]}"}) as r:
        first = next(line for line in r.iter_lines() if line.startswith("event:"))
    assert first != "event: reset"


@pytest.mark.parametrize("retries", [2, 0], ids=["retried", "no-retry"])
def test_a_stream_store_restarted_empty_tells_its_viewers(tmp_path, retries):
    queue = RedisServer(data_dir=tmp_path / "queue").start()
    streams = RedisServer(data_dir=tmp_path / "streams").start()  # no persistence at all
    stack = Up(tmp_path, queue.url, JOBCAST_STREAM_URL=streams.url)
    try:
        config = Settings(redis_url=queue.url, stream_url=streams.url, job_retries=retries)
        job_id = enqueue("sqrt", {"n": 40, "interval": 0.1}, config=config)
        sse, text = SSEViewer(stack.url, job_id, deadline=40), TextViewer(stack.url, job_id, 40)
        sse.start()
        text.start()
        wait_for(lambda: len(sse.values()) >= 10, 30, what="value 10")
        streams.proc.kill()
        streams.proc.wait()
        streams.start()  # on the same port, empty
        for viewer in (sse, text):
            viewer.join(45)
            assert not viewer.is_alive(), "a viewer was left waiting"
        assert_no_id_reused(sse)
        resets = [json.loads(e["data"]) for e in sse.events if e["event"] == "reset"]
        if retries:
            assert [(r["reason"], r["after"]) for r in resets] == [("unknown_epoch", 0)]
            assert values_shown(sse) == list(range(40))
            assert [e["event"] for e in sse.terminal()] == ["finished"]
            assert len(text.resets) == 1 and text.lines == sqrt_texts(40)
        else:
            # Gone (404), or told of the new log the web opened for the pending job, and then
            # of its failure: never silence, never a reused id.
            assert (sse.error is not None and "no job" in str(sse.error)) or (
                len(resets) == 1 and [e["event"] for e in sse.terminal()] == ["failed"])
            assert text.gone or len(text.resets) == 1
        print(f"\nstore restarted empty (retries={retries}): SSE resets {resets}, error "
              f"{sse.error}; text resets {text.resets}, gone {text.gone}")
    finally:
        stack.stop()
        streams.stop()
        queue.stop()


def test_a_writers_own_connection_through_sentinel_is_made_once_and_kept(group):
    # The client master_for builds owns its pool: dropped, it closed the pool, and with it the
    # connection just made for the writer, whose first value then dialled again.
    client = redis_client(group.url, single=True)
    conn = client.connection
    gc.collect()
    assert conn._sock is not None
    assert client.ping() and client.connection is conn
    client.close()


def test_a_terminal_entry_waits_for_the_replica_or_for_the_setting(group, caplog):
    redis = redis_client(group.url)
    replica = group.client(group.replica_port)
    durable = JobLog(redis, "durable-job", terminal_replicas=1, terminal_wait_ms=2000)
    durable.create("sqrt", {}, None)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jobcast.core.joblog"):
        durable.finished()
    took = time.monotonic() - started
    print(f"finished() with a replica's acknowledgement took {took * 1000:.0f} ms")
    # Once finished() returns, the replica has the entry: a failover now keeps the ending.
    # Its WAIT was answered by the replica, not timed out (that would warn).
    assert replica.hget(durable.keys.meta, "status") == b"finished"
    assert "replica(s) within" not in caplog.text, caplog.text
    group.block_replication()
    late = JobLog(redis, "late-job", terminal_replicas=1, terminal_wait_ms=300)
    late.create("sqrt", {}, None)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jobcast.core.joblog"):
        assert late.finished() > 0  # the job is never held up by a replica
    assert 0.29 <= time.monotonic() - started < 2.0
    assert "reached 0 of 1 replica(s) within 300 ms" in caplog.text
    assert replica.hget(late.keys.meta, "status") is None


class Recorder:
    """A broker handler that keeps what it is told."""

    def __init__(self):
        """Nothing told yet."""
        self.published: list[int] = []
        self.resynced: list[str] = []

    def on_publications(self, batches: dict) -> None:
        """Keep the seqs (one job here)."""
        self.published += [e.seq for entries in batches.values() for e in entries]

    def on_resync(self, job_ids: list[str]) -> None:
        """Keep the jobs resynced."""
        self.resynced += job_ids

    def on_lost(self, job_ids: list[str]) -> None:
        """Nothing to keep."""


def test_the_hub_follows_a_failover_and_resyncs_its_jobs(group):
    from jobcast.web.broker import Broker

    redis = redis_client(group.url, pooled=True)
    broker, handler = Broker(redis, poll=0.2), Recorder()
    broker.start(handler)
    try:
        log = JobLog(redis, "hub-failover")
        log.create("sqrt", {}, None)
        broker.subscribe(log.job_id)
        assert broker.wait_subscribed(log.job_id, 10)
        log.started("w", 1)
        wait_for(lambda: handler.published == [2], what="the first announcement")
        group.kill_primary()
        group.wait_promoted()
        # redis-py reconnects to the promoted replica and subscribes again by itself, with no
        # error reaching the reader: the second confirmation is how the broker learns of it.
        wait_for(lambda: handler.resynced == [log.job_id], 20, what="the job's resync")
        log.value(0, "after")
        wait_for(lambda: handler.published == [2, 3], 10, what="an announcement of the new primary")
    finally:
        broker.stop(5)
