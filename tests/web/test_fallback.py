"""A viewer gets history, then live entries, with no gap or duplicate at the seam.

The hub runs in a thread here (in gunicorn it is a greenlet) against a real Redis.
"""

import threading
import uuid

import pytest

from jobcast.joblog import Entry, JobLog
from tests.conftest import wait_for
from web.fallback import HEARTBEAT, follow
from web.hub import OVERFLOW, Hub, Subscription


@pytest.fixture
def hub(redis):
    h = Hub(redis, buffer_size=4, poll=0.1)
    assert h.wait_ready(5)
    yield h
    h.stop(timeout=5)


def new_log(redis) -> JobLog:
    log = JobLog(redis, uuid.uuid4().hex)
    log.create("sqrt", {}, None)
    log.started("test", 1)
    return log


def values(entries):
    return [e.i for e in entries if e is not HEARTBEAT and e.kind == "value"]


def assert_contiguous(entries, first=1):
    seqs = [e.seq for e in entries if e is not HEARTBEAT]
    assert seqs == list(range(first, first + len(seqs)))


def test_history_then_live_has_no_gap_and_no_duplicate(redis, hub):
    log = new_log(redis)
    for i in range(5):
        log.value(i, i)
    got = []
    gen = follow(hub, log, heartbeat=0.2)
    reader = threading.Thread(target=lambda: got.extend(gen))
    reader.start()
    wait_for(lambda: len(values(got)) >= 5, what="history")
    for i in range(5, 40):
        log.value(i, i)
    log.finished()
    reader.join(10)
    assert not reader.is_alive()
    assert values(got) == list(range(40))
    assert_contiguous(got)
    assert got[-1].kind == "finished"


def test_resume_after_a_seq_gives_exactly_the_entries_after_it(redis, hub):
    log = new_log(redis)
    for i in range(10):
        log.value(i, i)
    log.finished()
    got = list(follow(hub, log, after=7, heartbeat=0.2))
    assert [e.seq for e in got] == list(range(8, 14))
    assert values(got) == [5, 6, 7, 8, 9]


def test_resume_at_or_past_the_end_of_a_finished_job_ends_at_once(redis, hub):
    log = new_log(redis)
    log.finished()
    assert list(follow(hub, log, after=3, heartbeat=0.2)) == []
    assert list(follow(hub, log, after=99, heartbeat=0.2)) == []


def test_a_viewer_whose_buffer_overflows_catches_up_from_the_log(redis, hub):
    log = new_log(redis)
    gen = follow(hub, log, heartbeat=5)
    got = [next(gen), next(gen)]  # history: queued, started
    # The viewer stops reading while 200 values arrive; its buffer holds only 4.
    for i in range(200):
        log.value(i, i)
    log.finished()
    wait_for(lambda: hub.messages >= 201, what="hub to see every announcement")
    got.extend(gen)
    assert values(got) == list(range(200))
    assert_contiguous(got)


def test_a_closed_viewer_is_removed_from_the_hub(redis, hub):
    log = new_log(redis)
    gen = follow(hub, log, heartbeat=5)
    next(gen)
    assert hub.viewers(log.job_id) == 1
    gen.close()
    assert hub.viewers(log.job_id) == 0 and hub.viewers() == 0


def test_a_quiet_stream_sends_heartbeats_and_stops_when_the_client_is_gone(redis, hub):
    log = new_log(redis)
    alive = {"yes": True}
    gen = follow(hub, log, heartbeat=0.1, alive=lambda: alive["yes"])
    assert [next(gen).kind, next(gen).kind] == ["queued", "started"]
    assert next(gen) is HEARTBEAT
    alive["yes"] = False
    assert list(gen) == []
    assert hub.viewers() == 0


def test_subscription_buffer_is_bounded():
    class NoHub:
        closing = False

        def unsubscribe(self, sub):
            pass

    sub = Subscription(NoHub(), "x", maxlen=3)
    e = Entry.parse(b'{"seq":1,"kind":"value","i":0,"v":"0"}')
    for _ in range(3):
        sub.put(e)
    assert sub.get(0) == [e, e, e]
    for _ in range(10):
        sub.put(e)
    assert len(sub._queue) == 0
    assert sub.get(0) is OVERFLOW
    assert sub.get(0) == []
