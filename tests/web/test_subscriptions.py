"""Per-job subscriptions: a web process hears only the jobs its viewers watch.

A real gunicorn (one worker, so one broker) on the session's real Redis; Redis itself says who
subscribes to what (``PUBSUB NUMSUB``). Viewers are raw HTTP/1.0 connections to the text
stream, whose body is one line per value.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections import Counter

import httpx
import pytest
from redis import Redis

from jobcast.launcher.redisserver import RedisServer
from tests.support.jobs import running_job
from tests.support.services import WebServer
from tests.support.wait import wait_for
from jobcast.web.broker import LINGER, Broker, JobSubscription, Shard
from jobcast.core.keys import channel


class TextViewer:
    """A raw connection reading one job's text stream."""

    def __init__(self, port: int, job_id: str):
        """Connect, send the request and wait for the response headers."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET /jobs/{job_id}/stream HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before the headers"
            self.data += chunk
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"), head

    def lines(self, n: int) -> list[str]:
        """Read until ``n`` lines have arrived; return them."""
        while self.data.count(b"\n") < n:
            chunk = self.sock.recv(65536)
            assert chunk, f"stream ended after {self.data!r}"
            self.data += chunk
        return self.data.decode().splitlines()[:n]

    def close(self) -> None:
        """Leave."""
        self.sock.close()


@pytest.fixture(scope="module")
def one_hub(redis_server, logs_dir):
    """A gunicorn with one worker process: one broker, so one subscriber per watched job."""
    server = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-subscriptions.log",
                       JOBCAST_HEARTBEAT="1").start()
    yield server
    server.stop()


def numsub(redis, job_id: str) -> int:
    """How many connections subscribe to the job's channel, as Redis counts them."""
    return dict(redis.pubsub_numsub(channel(job_id)))[channel(job_id).encode()]


def test_a_process_subscribes_to_a_jobs_channel_only_while_it_has_viewers_of_it(redis, one_hub):
    watched, unwatched = running_job(redis), running_job(redis)
    assert numsub(redis, watched.job_id) == 0
    viewers = [TextViewer(one_hub.port, watched.job_id) for _ in range(20)]
    try:
        # Twenty viewers in one process: one subscription, and none for the other job.
        wait_for(lambda: numsub(redis, watched.job_id) == 1, what="the watched job's subscription")
        assert numsub(redis, unwatched.job_id) == 0
        assert redis.execute_command("PUBSUB", "NUMPAT") == 0  # no pattern subscription at all
        for i in range(5):
            watched.value(i, i * 10)
            unwatched.value(i, i)  # announced to nobody: no process subscribes to it
        assert all(v.lines(5) == ["0", "10", "20", "30", "40"] for v in viewers)
        assert numsub(redis, watched.job_id) == 1 and numsub(redis, unwatched.job_id) == 0
    finally:
        for v in viewers:
            v.close()
    # After the last viewer left, the subscription lingers a little, then ends.
    wait_for(lambda: numsub(redis, watched.job_id) == 0, LINGER + 10,
             what="the subscription to end after the linger")


def test_a_viewer_that_reconnects_within_the_linger_finds_the_subscription_live(redis, one_hub):
    log = running_job(redis)
    first = TextViewer(one_hub.port, log.job_id)
    wait_for(lambda: numsub(redis, log.job_id) == 1, what="the job's subscription")
    log.value(0, "a")
    assert first.lines(1) == ["a"]
    first.close()
    second = TextViewer(one_hub.port, log.job_id)  # back at once: the subscription lingered
    try:
        assert numsub(redis, log.job_id) == 1
        log.value(1, "b")
        log.finished()
        assert second.lines(2) == ["a", "b"]
    finally:
        second.close()
    wait_for(lambda: numsub(redis, log.job_id) == 0, LINGER + 10, what="the linger to end")


def test_viewers_of_many_new_jobs_at_once_each_get_their_own_jobs_values(redis, one_hub):
    logs = [running_job(redis) for _ in range(30)]
    viewers = [TextViewer(one_hub.port, log.job_id) for log in logs]
    try:
        wait_for(lambda: all(numsub(redis, log.job_id) == 1 for log in logs),
                 what="a subscription per job")
        for n, log in enumerate(logs):
            log.value(0, n)
            log.finished()
        assert [v.lines(1) for v in viewers] == [[str(n)] for n in range(30)]
    finally:
        for v in viewers:
            v.close()


def test_a_storm_of_newcomers_to_many_jobs_is_subscribed_in_a_few_batched_commands(tmp_path):
    with RedisServer(data_dir=tmp_path) as server:
        redis = Redis.from_url(server.url)
        channels = Broker(redis, poll=0.1)
        channels.start()
        try:
            assert channels.wait_ready(10)
            jobs = [uuid.uuid4().hex for _ in range(200)]
            for job_id in jobs:
                channels.subscribe(job_id)
            assert all(channels.wait_subscribed(job_id, 10) for job_id in jobs)
            counts = dict(redis.pubsub_numsub(*[channel(j) for j in jobs]))
            assert set(counts.values()) == {1}
            # The anchor, then the storm: one SUBSCRIBE for all that asked at once (a second
            # if the control loop woke in the middle of it).
            calls = redis.info("commandstats")["cmdstat_subscribe"]["calls"]
            assert calls <= 3, calls
        finally:
            channels.stop(5)
            redis.close()


def test_a_job_whose_delivery_fails_touches_neither_other_jobs_nor_the_subscription(tmp_path):
    # Finding 1 of issue 23: an error while handing one job's entries over was taken for a lost
    # Redis connection: every job in the process was resubscribed and re-read.
    from jobcast.web.frames import TEXT, Transport
    from jobcast.web.relay import Relay
    from jobcast.web.viewer import QueueSink, Viewer

    def explode(entry):
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    broken = Transport("broken", "text/plain", explode, b"", b"", False)
    with RedisServer(data_dir=tmp_path) as server:
        redis = Redis.from_url(server.url)
        bad, good = running_job(redis), running_job(redis)
        relay = Relay(Broker(redis, poll=0.1), heartbeat=30, green=False)
        try:
            assert relay.wait_ready(10)
            sinks = {}
            for log, transport in ((bad, broken), (good, TEXT)):
                viewer = Viewer(log.job_id, QueueSink(1 << 20), transport, cursor=2,
                                resources=(relay.lease(log.job_id),))
                sinks[log.job_id] = viewer.sink
                relay.hold(viewer)
            wait_for(lambda: relay.viewers() == 2 and not any(
                v.slow for vs in relay._jobs.values() for v in vs), what="both viewers held")
            assert all(relay.broker.wait_subscribed(log.job_id, 10) for log in (bad, good))
            subscribes = redis.info("commandstats")["cmdstat_subscribe"]["calls"]
            for i in range(3):
                bad.value(i, i)
                good.value(i, i)
            got = bytearray()

            def good_values_came() -> bool:
                """Take what the good job's sink has; True once its three lines came."""
                got.extend(sinks[good.job_id].get(0.1) or b"")
                return got.count(b"\n") >= 3

            wait_for(good_values_came, 10, what="the good job's three values")
            assert got == b"0\n1\n2\n"
            assert all(sh.live.is_set() for sh in relay.broker.shards())
            assert relay.broker.state(good.job_id).name == "LIVE"
            # Nothing was resubscribed (a lost connection's recovery would SUBSCRIBE again).
            assert redis.info("commandstats")["cmdstat_subscribe"]["calls"] == subscribes
        finally:
            relay.stop(5)
            redis.close()


def test_a_job_subscribed_while_the_broker_looks_at_its_subscriptions_never_stops_it(redis):
    # Under a threaded server a request subscribes from its own thread while the broker's
    # control thread looks for lingering subscriptions: the dict must not change under that
    # look (it would end the thread, and no subscription would ever be sent again).
    broker = Broker(redis)
    broker._flush = lambda: None  # nothing is sent: only the look is under test
    looking, subscribed = threading.Event(), threading.Event()

    class Looked(JobSubscription):
        """A subscription that gives a request its chance while it is being looked at."""

        @property
        def idle_since(self):
            looking.set()
            subscribed.wait(0.5)
            return None

        @idle_since.setter
        def idle_since(self, value):
            pass

    broker._subs["a"] = Looked("a", channel("a"))

    def request():
        looking.wait(10)
        broker.subscribe("b")
        subscribed.set()

    viewer = threading.Thread(target=request)
    viewer.start()
    control = threading.Thread(target=broker._control, daemon=True)
    control.start()
    try:
        viewer.join(10)
        assert subscribed.is_set() and "b" in broker._subs
        looking.clear()
        assert looking.wait(5), "the broker never looked at its subscriptions again"
        assert control.is_alive()
    finally:
        broker._stop.set()
        broker._kick.set()
        control.join(5)


class Recorder:
    """A shard's pub/sub connection that records the commands, in the order Redis would get
    them, in ``sent``."""

    def __init__(self, sent: list[tuple[str, str]]):
        self.sent = sent

    def subscribe(self, *names):
        self.sent.extend(("subscribe", n) for n in names)

    def unsubscribe(self, *names):
        self.sent.extend(("unsubscribe", n) for n in names)


def recorded_broker(redis) -> tuple[Broker, Shard, list[tuple[str, str]]]:
    """A broker with one shard and no reader thread (driven by the test), whose commands are
    recorded in the returned list."""
    broker = Broker(redis)
    sent: list[tuple[str, str]] = []
    sh = broker._shards["redis"] = Shard("redis", redis, False)
    sh.pubsub = Recorder(sent)
    return broker, sh, sent


def test_a_viewer_arriving_while_an_unwanted_confirmation_is_handled_stays_subscribed(redis):
    # Under a threaded server: the broker's reader finds a confirmation nobody wants (redis-py
    # resubscribed a job after its last viewer left) while a request subscribes the job again.
    # Its UNSUBSCRIBE must reach Redis before the new SUBSCRIBE: after it, the job would be
    # confirmed live and yet unsubscribed, and its viewers would hear nothing more.
    broker, sh, sent = recorded_broker(redis)
    name = channel("a")
    others: list[threading.Thread] = []

    def request():
        """A viewer of job a arrives, and the control loop sends what it queued."""
        broker.subscribe("a")
        broker._flush()

    class Meanwhile(set):
        """The reader's mark that an UNSUBSCRIBE is on its way: the request runs just then."""

        def add(self, job_id):
            super().add(job_id)
            other = threading.Thread(target=request)
            others.append(other)
            other.start()
            other.join(0.3)  # it may have to wait for the reader's lock

    sh.leaving = Meanwhile()
    reader = threading.Thread(target=broker._on_control, args=(sh, "subscribe", name))
    reader.start()
    reader.join(10)
    others[0].join(10)
    broker._flush()  # the control loop's next round
    assert sent == [("unsubscribe", name), ("subscribe", name)]


def test_an_unwanted_confirmation_of_a_job_already_leaving_sends_no_second_unsubscribe(redis):
    """A review's finding: the late confirmation of a SUBSCRIBE whose job's UNSUBSCRIBE was
    already out queued a second one; its confirmation then read as Redis dropping the job,
    and every viewer of a job subscribed again since was resynced for nothing. And a failed
    UNSUBSCRIBE left its job awaiting a confirmation that never comes, so a later real drop
    was taken for it."""
    broker, sh, sent = recorded_broker(redis)
    sh.leaving.add("a")                                   # its UNSUBSCRIBE went out
    broker._on_control(sh, "subscribe", channel("a"))     # a late confirmation
    broker._on_control(sh, "subscribe", channel("b"))     # unwanted, twice
    broker._on_control(sh, "subscribe", channel("b"))
    broker._flush()
    assert sent == [("unsubscribe", channel("b"))]

    class Broken(Recorder):
        """A connection that fails to send."""

        def unsubscribe(self, *names):
            raise ConnectionError("gone")

    sh.pubsub = Broken(sent)
    broker._on_control(sh, "subscribe", channel("c"))
    broker._flush()
    assert "c" not in sh.leaving


@pytest.mark.slow
def test_a_redis_outage_counts_one_reconnect_and_the_log_says_when_it_is_live_again(
        tmp_path, logs_dir):
    """An operator review's finding: jobcast_hub_reconnects_total counted every failed try to
    connect again (10 for one outage of 2 s), and no line said when the subscription was back."""
    redis_server = RedisServer(data_dir=tmp_path / "redis").start()
    log_path = logs_dir / "web-outage.log"
    web = WebServer(redis_server.url, workers=1, log_path=log_path).start()

    def reconnects() -> float:
        """The counter, as /metrics shows it."""
        for line in httpx.get(web.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("jobcast_hub_reconnects_total "):
                return float(line.split()[1])
        return 0.0

    try:
        before = reconnects()
        redis_server.stop()
        # Tries at 0.1, 0.2, 0.4, 0.8 s... fail while Redis is away.
        wait_for(lambda: log_path.read_text().count("lost Redis subscription") >= 4, 10,
                 what="the broker to try again a few times")
        redis_server.start()
        wait_for(lambda: httpx.get(web.url + "/readyz", timeout=10).status_code == 200, 20,
                 what="the web to be ready again")
        assert reconnects() - before == 1
        assert log_path.read_text().count("subscription on redis is live again") == 1
    finally:
        web.stop()
        redis_server.stop()


class FailingRelay:
    """A broker handler whose ``on_lost`` and/or ``on_resync`` raise (``failing``), counting
    every call, and which keeps the seqs published to it."""

    def __init__(self, failing: set[str]):
        self.failing = failing
        self.calls: Counter[str] = Counter()
        self.seqs: list[int] = []

    def on_publications(self, batches):
        for entries in batches.values():
            self.seqs.extend(e.seq for e in entries)

    def _told(self, what: str) -> None:
        self.calls[what] += 1
        if what in self.failing:
            raise RuntimeError(f"{what} failed")

    def on_resync(self, job_ids):
        self._told("on_resync")

    def on_lost(self, job_ids):
        self._told("on_lost")


@pytest.mark.parametrize("failing", [{"on_lost"}, {"on_resync"}, {"on_lost", "on_resync"}])
def test_a_relay_failing_when_told_of_a_loss_leaves_the_broker_reading_after_one_reconnect(
        tmp_path, failing):
    """A code review's finding: the handler's on_lost ran unguarded on the reader's error path
    (its failure ended the reader for good: never ready again), and its on_resync inside the
    reader's loop (its failure read as one more lost connection, and so on at every
    reconnect). Only on_publications was guarded."""
    with RedisServer(data_dir=tmp_path) as server:
        redis = Redis.from_url(server.url)
        relay = FailingRelay(failing)
        broker = Broker(redis, poll=0.1, max_backoff=0.2)
        broker.start(relay)
        try:
            assert broker.wait_ready(10)
            log = running_job(redis)
            broker.subscribe(log.job_id)
            assert broker.wait_subscribed(log.job_id, 10)
            assert redis.client_kill_filter(_type="pubsub") == 1
            wait_for(lambda: relay.calls["on_lost"], 10, what="the broker to see the loss")
            wait_for(lambda: broker.ready and broker.subscribed(log.job_id), 10,
                     what="the broker reading its job again")
            log.value(0, 0)
            wait_for(lambda: relay.seqs, 10, what="a value published after the reconnect")
            assert relay.calls == {"on_lost": 1, "on_resync": 1}
        finally:
            broker.stop(5)
            redis.close()
