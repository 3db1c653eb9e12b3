"""Under any server but Jobcast's worker class, a viewer is a bounded queue that the relay
fills and the request's generator drains: history, then live entries, with no gap or duplicate.

The relay and its broker run in threads here (in gunicorn's gevent worker they are greenlets)
against a real Redis; each viewer is drained by :func:`jobcast.web.admission.drain`, the very
generator a WSGI server iterates.
"""

import threading

import pytest

from jobcast.core.joblog import JobLog
from jobcast.web.admission import drain
from jobcast.web.broker import Broker
from jobcast.web.frames import SSE, TEXT
from jobcast.web.relay import Relay
from jobcast.web.viewer import QueueSink, Viewer
from tests.support.jobs import running_job
from tests.support.metrics import metric_value
from tests.support.wait import wait_for
from tests.support.sse import id_seq, parse_events


@pytest.fixture
def relay(redis):
    r = Relay(Broker(redis, poll=0.1), heartbeat=0.2, green=False)
    assert r.wait_ready(5)
    yield r
    r.stop(timeout=5)


def follow(relay: Relay, log: JobLog, after: int = 0, transport=SSE, *, buffer: int = 1 << 20,
           alive=None):
    """A viewer of ``log`` as admission makes one (subscription leased, then drained)."""
    viewer = Viewer(log.job_id, QueueSink(buffer, alive), transport, cursor=after,
                    resources=(relay.lease(log.job_id),))
    return viewer, drain(relay, viewer, b"")


def ids(data: bytes) -> list[int]:
    """The SSE ids in ``data``."""
    return [id_seq(line[4:]) for line in data.decode().split("\n") if line.startswith("id: ")]


def values(data: bytes) -> list[int]:
    """The value indices in SSE ``data``."""
    return [int(line.split('"i":')[1].split(",")[0]) for line in data.decode().split("\n")
            if line.startswith("data: ") and '"kind":"value"' in line]


class Reader:
    """A client reading a drained stream in a thread."""

    def __init__(self, body):
        self.data = b""
        self.error: Exception | None = None  # how the body ended, if it raised (a cut)
        self.thread = threading.Thread(target=self._read, args=(body,), daemon=True)
        self.thread.start()

    def _read(self, body):
        try:
            for chunk in body:
                self.data += chunk
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc


def test_history_then_live_has_no_gap_and_no_duplicate(redis, relay):
    log = running_job(redis)
    for i in range(5):
        log.value(i, i)
    _viewer, body = follow(relay, log)
    reader = Reader(body)
    wait_for(lambda: len(values(reader.data)) >= 5, what="history")
    for i in range(5, 40):
        log.value(i, i)
    log.finished()
    reader.thread.join(10)
    assert not reader.thread.is_alive()
    assert values(reader.data) == list(range(40))
    assert ids(reader.data) == list(range(1, 44))
    assert b"event: finished" in reader.data.rsplit(b"id: ", 1)[1]


def test_resume_after_a_seq_gives_exactly_the_entries_after_it(redis, relay):
    log = running_job(redis)
    for i in range(10):
        log.value(i, i)
    log.finished()
    _viewer, body = follow(relay, log, after=7)
    data = b"".join(body)
    assert ids(data) == list(range(8, 14))
    assert values(data) == [5, 6, 7, 8, 9]


def test_resume_at_or_past_the_end_of_a_finished_job_ends_at_once(redis, relay):
    log = running_job(redis)
    log.finished()
    epoch = log.head().epoch
    assert b"".join(follow(relay, log, after=3)[1]) == b""
    # Past the end: the log is not what the viewer was sent; it is told so, once, and ends.
    [reset] = parse_events(b"".join(follow(relay, log, after=99)[1]))
    assert (reset.event, reset.id, reset.json()["reason"]) == ("reset", f"3:{epoch}", "past_end")
    assert log.head().epoch == epoch  # an ended log gets no new epoch: nothing more is written


def test_a_viewer_whose_buffer_overflows_catches_up_from_the_log(redis, relay):
    log = running_job(redis)
    viewer, body = follow(relay, log, buffer=256)
    # The preamble, then the history (queued, started), once the relay holds the viewer.
    first = next(body) + next(body)
    # Live: its first catch-up (the history) is over, so the values below come by the relay.
    wait_for(lambda: relay.viewers(log.job_id) == 1 and not viewer.slow,
             what="the viewer to be live")
    slow = metric_value("jobcast_catchups_total", reason="slow")
    # The viewer stops reading while 200 values arrive; its buffer holds only 256 bytes.
    for i in range(200):
        log.value(i, i)
    log.finished()
    wait_for(lambda: relay.broker.messages >= 201, what="the broker to see every announcement")
    data = first + b"".join(body)
    assert values(data) == list(range(200))
    assert ids(data) == list(range(1, 204))
    # The buffer did overflow, and the viewer read the log to catch up.
    assert metric_value("jobcast_catchups_total", reason="slow") > slow


def test_a_closed_viewer_is_removed_from_the_relay(redis, relay):
    log = running_job(redis)
    _viewer, body = follow(relay, log)
    assert next(body) == b""  # the preamble, held back by nothing: the server sends headers
    next(body)  # the history, once the relay holds the viewer
    assert relay.viewers(log.job_id) == 1
    body.close()
    assert relay.viewers(log.job_id) == 0 and relay.viewers() == 0


def test_a_quiet_stream_sends_heartbeats_and_stops_when_the_client_is_gone(redis, relay):
    log = running_job(redis)
    alive = {"yes": True}
    _viewer, body = follow(relay, log, alive=lambda: alive["yes"])
    reader = Reader(body)
    wait_for(lambda: ids(reader.data) == [1, 2], what="history")
    wait_for(lambda: b": heartbeat\n\n" in reader.data, what="a heartbeat")
    alive["yes"] = False
    reader.thread.join(10)
    assert not reader.thread.is_alive()
    assert relay.viewers() == 0


def test_the_text_stream_sends_one_line_per_value_through_the_queue(redis, relay):
    log = running_job(redis)
    log.value(0, "a")
    log.value(1, "b")
    log.finished()
    assert b"".join(follow(relay, log, transport=TEXT)[1]) == b"a\nb\n"


def test_a_full_queue_sink_takes_what_fits_then_nothing_and_refuses_once_closed():
    sink = QueueSink(limit=10)
    assert sink.send(b"12345") == 5
    assert sink.send(b"6789abcdef") == 5  # what fits
    assert sink.send(b"x") == 0           # full: the relay takes the viewer off the fast path
    assert sink.get(0) == b"123456789a"
    assert sink.send(b"x") == 1
    sink.close()
    assert sink.get(0) == b"x" and sink.get(0) is None
    with pytest.raises(OSError):
        sink.send(b"y")


def test_several_jobs_share_one_queue_and_each_entry_comes_once(redis, relay):
    from jobcast.web.events import digest, job_sse
    from jobcast.web.viewer import Connection

    a, b = running_job(redis), running_job(redis)
    conn = Connection(None, digest([a.job_id, b.job_id]))
    leases = [relay.lease(a.job_id), relay.lease(b.job_id)]
    for log, lease in zip((a, b), leases):
        viewer = Viewer(log.job_id, None, job_sse(log.job_id), resources=(lease,))
        conn.add(viewer)
    conn.attach(QueueSink(1 << 20))
    body = drain(relay, conn.viewers[-1], b"", hold=lambda: relay.hold_connection(conn),
                 release=lambda: [relay.release(v, "closed") for v in conn.viewers])
    reader = Reader(body)
    wait_for(lambda: reader.data.count(b"event: started") == 2, what="both histories")
    for i in range(10):
        a.value(i, i)
        b.value(i, i)
    a.finished()
    b.finished()
    reader.thread.join(10)
    assert not reader.thread.is_alive()
    data = reader.data.decode()
    for log in (a, b):
        assert data.count(f'"job":"{log.job_id}"') == 13
    epochs = a.head().epoch, b.head().epoch
    assert data.rstrip().endswith(f"id: {conn.digest.decode()}:13~{epochs[0]}.13~{epochs[1]}")


def test_a_stream_a_catch_up_gives_up_on_is_cut_not_ended(redis, relay, monkeypatch):
    """A review's finding: under a server without Jobcast's worker class, a catch-up that gave
    up (Redis down too long, or a bug) let the body end as if the job had ended, so the
    client had no reason to resume."""
    log = running_job(redis)

    def broken(*args, **kwargs):
        """A read that fails in a way nobody expected."""
        raise ValueError("a bug")

    monkeypatch.setattr(relay.broker, "history", broken)
    viewer, body = follow(relay, log)
    with pytest.raises(BrokenPipeError):
        for _ in body:
            pass
    assert viewer.closed



def test_a_text_stream_still_catching_up_when_the_server_stops_is_cut_not_ended(redis, relay,
                                                                                monkeypatch):
    """A review's finding: a stopping server cut the text streams it was writing, but closed
    the queue of one still reading its history, and the body ended as the job's end does."""
    log = running_job(redis)
    reading, stopped = threading.Event(), threading.Event()
    history = relay.broker.history

    def slow(*args, **kwargs):
        """A history read that lasts until the server has stopped."""
        reading.set()
        stopped.wait(5)
        return history(*args, **kwargs)

    monkeypatch.setattr(relay.broker, "history", slow)
    viewer, body = follow(relay, log, transport=TEXT)
    assert next(body) == b""
    reader = Reader(body)
    assert reading.wait(5) and viewer.slow
    relay.shutdown()
    stopped.set()
    reader.thread.join(10)
    assert isinstance(reader.error, BrokenPipeError) and viewer.closed
