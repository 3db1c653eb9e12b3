"""The broker's pub/sub reader (jobcast.web.subscriber), on a real redis-server: redis-py dials
and sends, hiredis parses, and a burst that came together is taken without another read."""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from jobcast.core.store import reader_client, redis_client
from jobcast.launcher.redisserver import RedisServer
from jobcast.web.subscriber import HEALTH_CHECK_MESSAGE, Subscriber
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


def name() -> str:
    """A channel of the test's own."""
    return f"sub-{uuid.uuid4().hex}"


def readable(sub: Subscriber) -> bool:
    """Whether the subscriber's socket holds bytes it has not read."""
    return bool(select.select([sub._sock], [], [], 0)[0])


def its_client(redis, sub: Subscriber) -> dict:
    """The subscriber's connection as Redis lists it (by its address)."""
    host, port = sub._sock.getsockname()[:2]
    return next(c for c in redis.client_list() if c["addr"] == f"{host}:{port}")


def test_a_subscriber_hears_its_confirmation_then_a_publication(redis_server):
    web = redis_client(redis_server.url)
    ch = name()
    with Subscriber(reader_client(web)) as sub:
        sub.subscribe(ch)
        assert sub.get_message(timeout=5) == ("subscribe", ch.encode(), 1)
        web.publish(ch, "hello")
        assert sub.get_message(timeout=5) == ("message", ch.encode(), b"hello")
        assert sub.get_message(timeout=0.05) is None  # nothing more came
        sub.unsubscribe(ch)
        assert sub.get_message(timeout=5) == ("unsubscribe", ch.encode(), 0)


def test_asking_for_more_takes_what_came_with_the_last_read_and_never_reads_the_socket(
        redis_server):
    web = redis_client(redis_server.url)
    ch = name()
    with Subscriber(reader_client(web)) as sub:
        sub.subscribe(ch)
        assert sub.get_message(timeout=5)[0] == "subscribe"
        with web.pipeline(transaction=True) as tx:  # one command: Redis writes them together
            for i in range(3):
                tx.publish(ch, f"v{i}")
            tx.execute()
        wait_for(lambda: readable(sub), what="the three publications")
        assert sub.get_message(timeout=0) is None  # arrived, but not read: no read is made
        assert sub.get_message(timeout=5)[2] == b"v0"
        assert [sub.get_message(timeout=0)[2] for _ in range(2)] == [b"v1", b"v2"]
        assert sub.get_message(timeout=0) is None


def test_a_subscriber_sends_the_clients_health_check_and_swallows_its_answer(redis_server):
    web = redis_client(redis_server.url, health_check_interval=1)
    ch = name()
    with Subscriber(reader_client(web)) as sub:
        sub.subscribe(ch)
        assert sub.get_message(timeout=5)[0] == "subscribe"

        def pinged() -> bool:
            """The subscriber's connection's last command was the health check's PING."""
            assert sub.get_message(timeout=0.2) is None  # the pong is no message
            return its_client(web, sub)["cmd"] == "ping"

        wait_for(pinged, timeout=10, what="a health check")
        for _ in range(3):  # answered every time: the connection is not taken for dead
            assert sub.get_message(timeout=0.6) is None
        web.publish(ch, "after")
        assert sub.get_message(timeout=5) == ("message", ch.encode(), b"after")


def test_a_health_check_left_unanswered_says_the_connection_is_dead(tmp_path):
    # A frozen server (or a cut path) still takes the writes: only the missing answer tells.
    server = RedisServer(data_dir=tmp_path).start()
    try:
        web = redis_client(server.url, health_check_interval=1)
        with Subscriber(reader_client(web)) as sub:
            sub.subscribe(name())
            assert sub.get_message(timeout=5)[0] == "subscribe"
            web.execute_command("CLIENT", "PAUSE", 10000, "ALL")  # answers nobody for 10 s
            started = time.monotonic()
            with pytest.raises(RedisConnectionError, match="health check"):
                wait_for(lambda: sub.get_message(timeout=0.5), timeout=8, what="the error")
            assert time.monotonic() - started < 3  # a PING, and one interval without its answer
    finally:
        server.stop()


def test_a_reader_busy_past_the_health_checks_deadline_reads_its_answer_before_judging(
        redis_server):
    # The answer came, but the reader was busy elsewhere (a long burst) and had not read it:
    # the connection is alive, and must not be torn down and every job resynced for nothing.
    web = redis_client(redis_server.url, health_check_interval=1)
    with Subscriber(reader_client(web)) as sub:
        sub.subscribe(name())
        assert sub.get_message(timeout=5)[0] == "subscribe"
        with sub._lock:  # a PING goes out as a read would send it, and nothing reads yet
            sub._connect().send_command("PING", HEALTH_CHECK_MESSAGE, check_health=False)
            sub._unanswered, sub._next_check = True, time.monotonic() + 1
        wait_for(lambda: readable(sub), what="the answer, unread")
        wait_for(lambda: time.monotonic() >= sub._next_check, what="the answer's deadline")
        assert sub.get_message(timeout=0.5) is None  # no error: the answer is read first


def test_a_closed_subscriber_dials_no_new_connection_for_a_late_command(redis_server):
    # The broker's control loop may send a SUBSCRIBE just as the reader closes the
    # connection: a new one, subscribed and read by nobody, would fill Redis's buffers.
    web = redis_client(redis_server.url)
    sub = Subscriber(reader_client(web))
    sub.subscribe(name())
    assert sub.get_message(timeout=5)[0] == "subscribe"
    sub.close()
    with pytest.raises(RedisConnectionError):
        sub.subscribe(name())
    assert sub.connection is None


def test_a_connection_killed_by_redis_raises_rather_than_going_quiet(redis_server):
    web = redis_client(redis_server.url)
    with Subscriber(reader_client(web)) as sub:
        sub.subscribe(name())
        assert sub.get_message(timeout=5)[0] == "subscribe"
        web.client_kill_filter(_id=its_client(web, sub)["id"])
        with pytest.raises((RedisConnectionError, OSError)):
            wait_for(lambda: sub.get_message(timeout=0.5), what="the error")


def test_a_connection_a_failed_send_dropped_raises_rather_than_reading_a_new_one(redis_server):
    # redis-py disconnects a connection whose send fails, and its next command would dial a new
    # socket subscribed to nothing: the reader must learn of it and subscribe again.
    web = redis_client(redis_server.url)
    with Subscriber(reader_client(web)) as sub:
        sub.subscribe(name())
        assert sub.get_message(timeout=5)[0] == "subscribe"
        sub.connection.disconnect()
        sub.subscribe(name())  # redis-py connects again by itself for the send
        with pytest.raises(RedisConnectionError):
            sub.get_message(timeout=1)


GREEN_READER = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, greenlet
    from jobcast.core.store import reader_client, redis_client
    from jobcast.web.subscriber import Subscriber

    web = redis_client(sys.argv[1], pooled=True)
    sub = Subscriber(reader_client(web))
    sub.subscribe(sys.argv[2])
    assert sub.get_message(timeout=5)[0] == "subscribe"

    def turns(call):
        switches = []
        greenlet.settrace(lambda event, args: switches.append(event))
        try:
            result = call()
        finally:
            greenlet.settrace(None)
        return result, len(switches)

    idle, idle_turns = turns(lambda: sub.get_message(timeout=0))
    web.publish(sys.argv[2], "v")
    got, got_turns = turns(lambda: sub.get_message(timeout=5))
    more, more_turns = turns(lambda: sub.get_message(timeout=0))
    print(idle, idle_turns, got[2].decode(), got_turns, more, more_turns)
""")


def test_under_gevent_a_message_costs_one_wait_and_asking_for_more_none(redis_server):
    # Each turn of the loop runs whatever else is ready (newcomers being admitted) before the
    # announcement reaches the relay.
    out = subprocess.run([sys.executable, "-c", GREEN_READER, redis_server.url, name()],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    idle, idle_turns, got, got_turns, more, more_turns = out.stdout.split()
    assert (idle, idle_turns) == ("None", "0")
    assert got == "v" and int(got_turns) <= 2  # one wait: to the hub and back
    assert (more, more_turns) == ("None", "0")
