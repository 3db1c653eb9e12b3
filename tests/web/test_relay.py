"""The relay writes each entry once, in order, to every held connection, however it joins.

Each test holds one end of a socket pair in a :class:`jobcast.web.relay.Relay` backed by the
session's real Redis, plays the broker's publications by calling :meth:`Relay.deliver` with
entries read back from the job's log, and reads the other end as a client would. gevent's
loop runs in the test thread: the relay's catch-up greenlets run while the test waits with
:func:`green_wait`. Time is the test's: the relay reads an injected clock.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid

import gevent
import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobcast.core.epoch import Era, LogReset
from jobcast.core.joblog import Entry, JobLog
from tests.support.jobs import running_job
from tests.support.metrics import metric_value
from tests.support.wait import wait_for
from jobcast.web.frames import HTML, SSE, TEXT
from jobcast.web.broker import Broker
from jobcast.web.recent import RecentEntries
from jobcast.web.relay import Relay
from jobcast.web.viewer import SocketSink, Viewer
from tests.support.loss import lose
from tests.support.sse import id_seq, parse_events


def green_wait(condition, timeout: float = 10.0, what: str = "condition"):
    """Run gevent's loop until ``condition()`` is truthy, or fail after ``timeout`` s."""
    return wait_for(condition, timeout, 0.005, what, sleep=gevent.sleep)


def write(log: JobLog, start: int, stop: int, size: int = 0) -> list[Entry]:
    """Log values ``start..stop-1`` (padded to ``size`` characters); return their entries."""
    seqs = [log.value(i, str(i).ljust(size, "x") if size else i) for i in range(start, stop)]
    entries, _ = log.read(seqs[0] - 1, len(seqs))
    return entries


class Client:
    """The far end of a held connection, read by a thread into one buffer."""

    def __init__(self, sock: socket.socket, read: bool = True):
        """Read ``sock`` in the background unless ``read`` is False (a frozen client)."""
        self.sock = sock
        self.data = bytearray()
        self.eof = False
        self.size, self.pause = 65536, 0.0  # a slow reader takes size bytes, then pauses
        self.released: list[bool] = []  # the relay released the stream's slot
        self._thread = threading.Thread(target=self._read, daemon=True)
        if read:
            self.start()

    def start(self) -> None:
        """Start reading (a frozen client thaws)."""
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(self.size)
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                return
            self.data += chunk
            if self.pause:
                time.sleep(self.pause)

    def sse_ids(self) -> list[int]:
        """The ids of the SSE events read so far."""
        return [id_seq(line[4:]) for line in bytes(self.data).decode().split("\n")
                if line.startswith("id: ")]


class PlayedBroker(Broker):
    """The broker's reads, on a real Redis; its subscriptions are played by the test (every
    job counts as subscribed, and publications come from :meth:`Relay.deliver`)."""

    def subscribed(self, job_id: str) -> bool:
        """Every job is."""
        return True


@pytest.fixture
def relay(redis, clock):
    """A relay with a short heartbeat, on the session's Redis, reading the test's clock."""
    return Relay(PlayedBroker(redis), heartbeat=0.2, clock=clock, green=True)


def socket_ends(rcvbuf: int | None, read: bool) -> tuple[socket.socket, Client]:
    """A connected pair: the relay's non-blocking end, and the client's (its buffers shrunk to
    ``rcvbuf`` bytes, to make a slow reader)."""
    server, client = socket.socketpair()
    if rcvbuf:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    server.setblocking(False)
    return server, Client(client, read)


def stalled_ends() -> tuple[socket.socket, Client]:
    """:func:`socket_ends` whose client reads nothing and whose buffers are full already: the
    next write to the relay's end waits (a stalled client)."""
    server, client = socket_ends(4096, read=False)
    try:
        while True:
            server.send(b"x" * 4096)
    except BlockingIOError:
        return server, client


def held(relay: Relay, log: JobLog, transport=SSE, *, cursor: int = 0, epoch: str | None = None,
         chunked: bool = False, rcvbuf: int | None = None,
         read: bool = True) -> tuple[Viewer, Client]:
    """Hold a new viewer of ``log``'s job from ``cursor`` of ``epoch``; return it and its
    client end."""
    server, far = socket_ends(rcvbuf, read)
    viewer = Viewer(log.job_id, SocketSink(server), transport, chunked=chunked, cursor=cursor,
                    epoch=epoch, on_close=lambda: far.released.append(True))
    relay.hold(viewer)
    return viewer, far


def test_a_new_viewer_gets_history_then_live_entries_once_and_in_order(redis, relay):
    log = running_job(redis)
    write(log, 0, 5)
    viewer, client = held(relay, log)
    assert viewer.slow  # reading its history
    # Entries logged and announced while it reads its history: skipped live, read from the log.
    relay.deliver(log.job_id, write(log, 5, 8))
    green_wait(lambda: not viewer.slow, what="catch-up")
    for i in range(8, 20):
        assert relay.deliver(log.job_id, write(log, i, i + 1)) == 1  # the fast path
    log.finished()
    relay.deliver(log.job_id, log.read(21, 10)[0])
    green_wait(lambda: client.eof, what="end of stream")
    assert client.sse_ids() == list(range(1, 24))  # queued, started, 20 values, finished
    assert viewer.closed and client.released


class RecordingSocket:
    """A held socket that notes, in a list shared by all of them, when it is written to.

    A held connection's goes in place of its sink's socket (``sink.sock = ...``), not into a
    new sink: the sink's read watcher must be the one stopped when it closes the socket (libev
    aborts the process when a watcher's descriptor is closed under it).
    """

    def __init__(self, sock: socket.socket, name: int, order: list[int]):
        """Wrap ``sock``; writes append ``name`` to ``order``."""
        self.sock, self.name, self.order = sock, name, order

    def send(self, data) -> int:
        """Write like the socket, and note it."""
        self.order.append(self.name)
        return self.sock.send(data)

    def __getattr__(self, attr):
        """Everything else is the socket's."""
        return getattr(self.sock, attr)


def test_the_fast_path_writes_viewers_in_the_order_they_arrived(redis, relay):
    # First come, first served, for every value: and a benchmark's probes, spread over the
    # connect order, then sample the whole of each burst.
    log = running_job(redis)
    order: list[int] = []
    viewers, clients = [], []
    for name in range(40):
        server, client = socket.socketpair()
        server.setblocking(False)
        clients.append(Client(client))
        viewer = Viewer(log.job_id, SocketSink(RecordingSocket(server, name, order)), SSE,
                        chunked=False, cursor=0)
        relay.hold(viewer)
        viewers.append(viewer)
    green_wait(lambda: not any(v.slow for v in viewers), what="catch-up")
    for v in viewers[5:30:3]:  # leavers do not disturb the order of the others
        relay.release(v, "client_gone")
    staying = [n for n, v in enumerate(viewers) if not v.closed]
    for i in range(3):
        order.clear()
        assert relay.deliver(log.job_id, write(log, i, i + 1)) == len(staying)
        assert order == staying


def test_a_viewer_whose_socket_fills_up_catches_up_from_the_log_and_rejoins(redis, relay):
    log = running_job(redis)
    viewer, client = held(relay, log, cursor=2, rcvbuf=4096, read=False)
    green_wait(lambda: not viewer.slow, what="first catch-up")
    went_slow = False
    for i in range(300):  # 300 values of 1 KB into a 4 KiB buffer that nobody reads
        relay.deliver(log.job_id, write(log, i, i + 1, size=1000))
        went_slow = went_slow or viewer.slow
    assert went_slow
    client.start()  # the client reads again
    green_wait(lambda: not viewer.slow, what="rejoin")
    relay.deliver(log.job_id, write(log, 300, 301))
    log.finished()
    relay.deliver(log.job_id, log.read(303, 10)[0])
    green_wait(lambda: client.eof, what="end of stream")
    assert client.sse_ids() == list(range(3, 305))


def test_a_gap_in_live_entries_is_filled_from_the_log(redis, relay):
    log = running_job(redis)
    viewer, client = held(relay, log, TEXT, cursor=2)
    green_wait(lambda: not viewer.slow, what="history")
    entries = write(log, 0, 3)
    relay.deliver(log.job_id, entries[2:])  # the announcements of values 0 and 1 were lost
    green_wait(lambda: not viewer.slow and viewer.cursor == entries[2].seq, what="gap filled")
    green_wait(lambda: client.data == b"0\n1\n2\n", what="values")


def test_chunked_stream_frames_each_batch_and_ends_with_the_last_chunk(redis, relay):
    log = running_job(redis)
    viewer, client = held(relay, log, TEXT, cursor=2, chunked=True)
    green_wait(lambda: not viewer.slow, what="history")
    relay.deliver(log.job_id, write(log, 0, 2))
    log.finished()
    relay.deliver(log.job_id, log.read(4, 10)[0])
    green_wait(lambda: client.eof, what="end of stream")
    assert bytes(client.data) == b"4\r\n0\n1\n\r\n0\r\n\r\n"


def test_html_frames_are_escaped(redis, relay):
    log = running_job(redis)
    log.value(0, "<script>alert(1)</script>")
    log.finished()
    _viewer, client = held(relay, log, HTML)
    green_wait(lambda: client.eof, what="end of stream")
    assert bytes(client.data) == (b"<p>0: &lt;script&gt;alert(1)&lt;/script&gt;</p>\n"
                                  b'<p class="end">Done</p>\n')


def test_a_quiet_stream_gets_heartbeats_and_a_gone_client_is_freed(redis, relay, clock):
    log = running_job(redis)
    viewer, client = held(relay, log, cursor=2)
    green_wait(lambda: not viewer.slow, what="history")
    clock.advance(0.25)
    relay.tick()
    green_wait(lambda: b": heartbeat\n\n" in client.data, what="heartbeat")
    client.sock.shutdown(socket.SHUT_RDWR)  # the client goes away (FIN)
    clock.advance(0.25)
    relay.tick()
    assert viewer.closed and client.released and relay.viewers(log.job_id) == 0


def test_an_announcement_lost_on_a_quiet_job_is_found_by_the_heartbeat(redis, relay, clock):
    log = running_job(redis)
    viewer, client = held(relay, log, TEXT, cursor=2)
    green_wait(lambda: not viewer.slow, what="history")
    log.value(0, "lost")  # logged, but never delivered: its announcement was lost
    clock.advance(0.25)
    relay.tick()
    green_wait(lambda: client.data == b"lost\n", what="the lost value")


def test_an_announcement_lost_while_memory_holds_the_job_is_found_by_the_heartbeat(
        redis, relay, clock):
    """A review's finding: with the job's newest entries in memory, the heartbeat's catch-up
    took memory for the log and went back to waiting, so a lost end hung the stream."""
    log = running_job(redis)
    viewer, client = held(relay, log, SSE, cursor=0)
    green_wait(lambda: not viewer.slow, what="history")
    relay.deliver(log.job_id, write(log, 0, 1))  # a live entry: memory now ends at seq 3
    green_wait(lambda: client.sse_ids() == [1, 2, 3], what="the live value")
    log.finished()  # logged (seq 4), but its announcement was lost
    clock.advance(0.25)
    relay.tick()
    green_wait(lambda: client.eof, what="the lost end, and the end of the stream")
    assert client.sse_ids() == [1, 2, 3, 4] and viewer.closed


def ended_in_memory(redis, relay: Relay) -> JobLog:
    """A job that has ended (its terminal entry is seq 23), still watched (a viewer that stops
    reading keeps it so), its newest entries in memory."""
    log = running_job(redis)
    stuck, _ = held(relay, log, rcvbuf=4096, read=False)
    green_wait(lambda: not stuck.slow, what="first viewer's history")
    for i in range(20):
        relay.deliver(log.job_id, write(log, i, i + 1, size=1000))
    log.finished()
    relay.deliver(log.job_id, log.read(22, 10)[0])
    assert stuck.slow and not stuck.closed
    assert relay.recent.last(log.job_id).terminal and relay.recent.last(log.job_id).seq == 23
    return log


def test_a_text_viewer_at_the_end_of_a_job_memory_holds_gets_the_end_of_its_body(redis, relay):
    """A review's finding: a viewer whose position is the job's end (a text ``?tail=0`` of an
    ended job) went back to waiting for entries that never come."""
    log = ended_in_memory(redis, relay)
    viewer, client = held(relay, log, TEXT, cursor=23, chunked=True)
    green_wait(lambda: client.eof, what="the end of the body")
    assert bytes(client.data) == b"0\r\n\r\n" and viewer.closed


@pytest.mark.parametrize("cursor, body", [
    (23, b"HEAD"),  # it has everything: the head, and the end of the body
    (22, b"HEAD"),  # it lacks only the end, which writes no text: still the end of the body
])
def test_a_text_newcomer_taken_at_once_at_a_jobs_end_gets_the_end_of_its_body(redis, relay,
                                                                                cursor, body):
    """A review's finding: taken at once from memory, such a text stream got its head, then
    was closed without its last chunk (or not closed at all)."""
    log = ended_in_memory(redis, relay)
    server, far = socket_ends(None, True)
    viewer = Viewer(log.job_id, SocketSink(server), TEXT, chunked=True, cursor=cursor)
    assert relay.hold_now(viewer, b"HEAD")
    green_wait(lambda: far.eof, what="the end of the body")
    assert bytes(far.data) == body + b"0\r\n\r\n" and viewer.closed


def test_every_viewer_waiting_on_redis_gets_heartbeats_not_only_the_one_reading(redis, relay,
                                                                                 monkeypatch):
    """A review's finding: while Redis was down, the viewer whose read was retrying held its
    job's read, and the others of the job waited on it with no heartbeat at all."""
    log = running_job(redis)
    relay.broker.redis = Redis(port=1, retry=Retry(NoBackoff(), 0))  # Redis is down
    monkeypatch.setattr(relay, "sleep", lambda seconds: gevent.sleep(5 * seconds))
    viewers = [held(relay, log, SSE, cursor=2) for _ in range(3)]
    try:
        green_wait(lambda: all(b": heartbeat" in bytes(client.data) for _, client in viewers),
                   3, what="a heartbeat to every viewer")
        assert not any(viewer.closed for viewer, _ in viewers)
    finally:
        relay.stop(timeout=5)  # their catch-ups would otherwise wait on Redis for good


def test_shutdown_tells_each_sse_client_its_own_time_to_come_back_and_closes(redis, relay):
    # Each connection is told its own retry: (issue 21), so a restart does not bring every
    # client back at the same instant; the goodbye repeats it.
    log = running_job(redis)
    viewer, client = held(relay, log, cursor=2, chunked=True)
    viewer.retry = 1234
    green_wait(lambda: not viewer.slow, what="history")
    relay.shutdown()
    green_wait(lambda: client.eof, what="closed")
    assert bytes(client.data) == b"D\r\nretry: 1234\n\n\r\n0\r\n\r\n"
    assert client.released


def test_shutdown_refreshes_each_html_stream_after_its_own_time_and_says_so(redis, relay):
    # A review's finding: the HTML stream just ended, and an iframe of it stopped for good,
    # saying nothing. It is refreshed (every value again, then the live ones), each stream
    # after its own time, as each SSE client is told its own retry.
    log = running_job(redis)
    viewer, client = held(relay, log, HTML, cursor=2)
    viewer.retry = 1234
    green_wait(lambda: not viewer.slow, what="history")
    relay.shutdown()
    green_wait(lambda: client.eof, what="closed")
    # (The refresh is for a browser without scripts: the stream's own script loads it again
    # once the server answers, tests/web/test_browser_resume.py.)
    assert bytes(client.data) == (b'<p class="note">The server is restarting: this list comes back '
                                  b'in a moment.</p>\n<noscript><meta http-equiv="refresh" '
                                  b'content="1.234"></noscript>\n')
    assert client.released


def test_shutdown_cuts_a_text_stream_so_its_reader_does_not_take_it_for_the_jobs_end(redis, relay):
    """A review's finding: the text stream, which has no goodbye, got its last chunk, the end
    a finished job's stream gets: a reader took a restart for the end and stopped. Cut without
    it, the stream says it broke, and its reader resumes (``?start=``)."""
    log = running_job(redis)
    viewer, client = held(relay, log, TEXT, cursor=2, chunked=True)
    green_wait(lambda: not viewer.slow, what="history")
    relay.deliver(log.job_id, write(log, 0, 2))
    green_wait(lambda: client.data.endswith(b"1\n\r\n"), what="the values")
    relay.shutdown()
    green_wait(lambda: client.eof, what="closed")
    assert bytes(client.data) == b"4\r\n0\n1\n\r\n"  # the values, and no last chunk
    assert client.released


def entry(seq: int, kind: str = "value") -> Entry:
    """A log entry with this seq (a value whose index is seq - 1)."""
    if kind == "value":
        return Entry.parse('{"seq":%d,"kind":"value","ts":1.0,"i":%d,"v":"%d","j":%d}'
                           % (seq, seq - 1, seq - 1, seq - 1))
    return Entry.parse('{"seq":%d,"kind":"%s","ts":1.0}' % (seq, kind))


def run(first: int, last: int) -> list[Entry]:
    """Entries ``first..last``."""
    return [entry(s) for s in range(first, last + 1)]


def test_recent_entries_join_reads_and_live_batches_into_one_exact_run():
    recent = RecentEntries(maxlen=100)
    recent.add_live("j", run(6, 7))            # the hub's first batch
    recent.add_read("j", run(1, 5), recent.reading("j"))  # a newcomer read the log before it
    assert [e.seq for e in recent.after("j", 0)] == list(range(1, 8))
    assert [e.seq for e in recent.after("j", 4)] == [5, 6, 7]
    assert recent.is_current("j", 7) and not recent.is_current("j", 6)
    recent.add_live("j", run(10, 11))          # 8 and 9 were never seen: start again from 10
    assert recent.after("j", 0) == [] and [e.seq for e in recent.after("j", 9)] == [10, 11]


def test_recent_entries_take_a_read_whose_newest_entries_differ_for_the_log_as_it_is_now():
    """A review's finding: memory compared a read with what it held at their oldest shared
    entry only. A lossy failover loses a suffix (here seqs 9 and 10, then written again in a
    new epoch), so the two agreed there, and memory kept the lost entries in the union, for
    the next newcomer to be served."""
    def of(epoch: str, seqs: range) -> list[Entry]:
        """Entries of these seqs, in ``epoch``."""
        return [Entry.parse('{"seq":%d,"ep":"%s","kind":"value","ts":1.0,"i":%d,"v":"x","j":0}'
                            % (seq, epoch, seq - 3)) for seq in seqs]

    recent = RecentEntries(maxlen=100)
    mark = recent.reading("j")
    recent.add_live("j", of("E1", range(5, 11)))                      # live: E1 5..10
    recent.add_read("j", of("E1", range(5, 9)) + of("E2", range(9, 13)), mark)
    assert [(e.seq, e.ep) for e in recent.after("j", 4, "E2")] == \
        [(s, "E1") for s in range(5, 9)] + [(s, "E2") for s in range(9, 13)]


def test_recent_entries_are_never_current_past_what_the_hub_dispatched_or_across_subscriptions():
    recent = RecentEntries(maxlen=100)
    mark = recent.reading("j")
    recent.add_read("j", run(1, 3), mark)
    assert recent.is_current("j", 3)
    recent.lost(["j"])                         # the job's subscription was lost
    assert recent.after("j", 0) == [] and not recent.is_current("j", 3)
    recent.add_read("j", run(1, 3), mark)      # a read that began before: not trusted
    assert recent.after("j", 0) == []


def test_recent_entries_take_no_read_that_began_before_its_job_was_forgotten():
    # The job's last viewer left during the read: no live batch will follow what it found,
    # so keeping it would make a stale position look current to the next newcomer.
    recent = RecentEntries(maxlen=100)
    mark = recent.reading("j")
    recent.forget("j")
    recent.add_read("j", run(1, 3), mark)
    assert recent.last("j") is None and not recent.is_current("j", 3)
    recent.add_read("j", run(1, 3), recent.reading("j"))  # a read begun since: kept
    assert recent.last("j").seq == 3


def test_a_log_read_whose_viewer_left_meanwhile_leaves_nothing_stale_for_the_next(redis, relay,
                                                                                  monkeypatch):
    # The job's only viewer leaves while its catch-up reads the log; the job then goes on and
    # ends. What that read found must not become this process's idea of where the job stands.
    log = running_job(redis)
    write(log, 0, 3)
    real = relay.broker.history

    def slow_history(job_id, after, count):
        result = real(job_id, after, count)
        gevent.sleep(0.05)  # the round trip, during which the client leaves
        return result

    monkeypatch.setattr(relay.broker, "history", slow_history)
    server, _ = socket_ends(None, True)
    viewer = Viewer(log.job_id, SocketSink(server), SSE, epoch=log.head().epoch)
    relay.hold(viewer)
    green_wait(lambda: log.job_id in relay.catchup._reading, what="the history read")
    relay.release(viewer, "client_gone")
    write(log, 3, 5)
    log.finished()
    green_wait(lambda: log.job_id not in relay.catchup._reading, what="the read to land")
    assert relay.position(log.job_id) == (True, log.head().seq, log.head().epoch)


def test_recent_entries_keep_only_the_newest_per_job():
    recent = RecentEntries(maxlen=3)
    recent.add_live("j", run(1, 5))
    assert [e.seq for e in recent.after("j", 2)] == [3, 4, 5] and recent.after("j", 1) == []


def test_newcomers_to_a_watched_job_are_served_from_memory_without_redis(redis, relay):
    log = running_job(redis)
    first, first_client = held(relay, log)
    green_wait(lambda: not first.slow, what="first viewer's history")
    relay.deliver(log.job_id, write(log, 0, 3))
    relay.broker.redis = Redis(port=1)  # from here on any Redis read would fail
    second, second_client = held(relay, log)
    green_wait(lambda: not second.slow, what="second viewer from memory")
    assert relay.position(log.job_id) == (False, 5, log.head().epoch)
    green_wait(lambda: second_client.sse_ids() == first_client.sse_ids() == [1, 2, 3, 4, 5],
               what="the same entries at both")


def watched_in_memory(redis, relay: Relay, values: int = 3) -> tuple[JobLog, Viewer, Client]:
    """A running job with ``values`` values, watched by one viewer, its newest entries kept in
    memory; then any Redis read of the relay fails (so memory must serve)."""
    log = running_job(redis)
    first, first_client = held(relay, log)
    green_wait(lambda: not first.slow, what="first viewer's history")
    relay.deliver(log.job_id, write(log, 0, values))
    relay.broker.redis = Redis(port=1)
    return log, first, first_client


def taken_now(relay: Relay, log: JobLog, head: bytes, *, cursor: int, rcvbuf: int | None = None,
              epoch: str | None = None) -> tuple[bool, Viewer, Client]:
    """:meth:`Relay.hold_now` of a new SSE viewer of ``log`` from ``cursor``, with ``head``."""
    server, far = socket_ends(rcvbuf, True)
    viewer = Viewer(log.job_id, SocketSink(server), SSE, cursor=cursor, epoch=epoch,
                    on_close=lambda: far.released.append(True))
    return relay.hold_now(viewer, head), viewer, far


def test_a_newcomer_whose_history_is_in_memory_gets_it_with_its_head_and_no_catch_up(redis,
                                                                                      relay):
    log, first, first_client = watched_in_memory(redis, relay)
    taken, viewer, client = taken_now(relay, log, b"HEAD\n\n", cursor=2)
    # On the fast path as it returns: no catch-up was started, nothing is left to write.
    assert taken and not viewer.slow and not relay.catchup.catching and viewer.cursor == 5
    assert viewer.values == 3  # values 0..2: counted from memory, for a trim to come
    green_wait(lambda: client.sse_ids() == [3, 4, 5], what="its history")
    assert bytes(client.data).startswith(b"HEAD\n\nid: ")  # the head first, then the history
    for i in range(3, 6):
        assert relay.deliver(log.job_id, write(log, i, i + 1)) == 2  # both on the fast path
    log.finished()
    relay.deliver(log.job_id, log.read(8, 10)[0])
    green_wait(lambda: client.eof and first_client.eof, what="end of both streams")
    assert client.sse_ids() == list(range(3, 10)) and viewer.closed and client.released
    assert first_client.sse_ids() == list(range(1, 10))


def test_a_newcomer_memory_cannot_serve_is_declined_with_nothing_sent_or_held(redis, relay):
    log, _, _ = watched_in_memory(redis, relay)
    relay.recent._tails[log.job_id][:2] = []  # memory now begins after seq 3
    for cursor in (0, 1, 9):  # before what memory keeps, or past the log's end
        taken, viewer, client = taken_now(relay, log, b"HEAD\n\n", cursor=cursor)
        assert not taken and viewer.state.value == "new" and not viewer.slow
        assert relay.viewers(log.job_id) == 1  # only the first viewer
        viewer.sink.sock.close()
        green_wait(lambda: client.eof, what="closed")
        assert bytes(client.data) == b""
    other = running_job(redis)  # a job nobody here watches: nothing in memory
    assert not taken_now(relay, other, b"HEAD\n\n", cursor=0)[0]


def test_a_newcomer_at_the_newest_entry_gets_just_its_head_and_the_next_value_once(redis, relay):
    log, _, _ = watched_in_memory(redis, relay)
    taken, viewer, client = taken_now(relay, log, b"HEAD\n\n", cursor=5)
    assert taken and not viewer.slow
    relay.deliver(log.job_id, write(log, 3, 4))
    green_wait(lambda: client.sse_ids() == [6], what="the next value")
    assert bytes(client.data).startswith(b"HEAD\n\nid: ")


def test_a_newcomer_whose_socket_takes_part_of_its_head_and_history_gets_the_rest(redis, relay):
    log, _, _ = watched_in_memory(redis, relay)
    head = b": " + b"x" * 300_000 + b"\n\n"  # more than the socket takes at once
    taken, viewer, client = taken_now(relay, log, head, cursor=2, rcvbuf=4096)
    assert taken and viewer.slow  # its catch-up writes the rest, then reads memory again
    relay.deliver(log.job_id, write(log, 3, 5))  # skipped live, found by the catch-up
    green_wait(lambda: not viewer.slow, what="rejoin")
    relay.deliver(log.job_id, write(log, 5, 6))
    green_wait(lambda: client.sse_ids() == [3, 4, 5, 6, 7, 8], what="every entry once")
    assert bytes(client.data).startswith(head)


def test_a_newcomer_to_a_job_that_ended_in_memory_gets_its_end_and_is_freed(redis, relay):
    log = ended_in_memory(redis, relay)
    relay.broker.redis = Redis(port=1)
    taken, viewer, client = taken_now(relay, log, b"HEAD\n\n", cursor=20)
    assert taken and viewer.closed and client.released
    green_wait(lambda: client.eof, what="end of stream")
    assert client.sse_ids() == [21, 22, 23]


def test_a_raw_text_stream_ends_by_closing_even_though_the_end_writes_nothing(redis, relay):
    log = running_job(redis)
    viewer, client = held(relay, log, TEXT, cursor=2)
    green_wait(lambda: not viewer.slow, what="history")
    relay.deliver(log.job_id, write(log, 0, 1))
    log.finished()
    relay.deliver(log.job_id, log.read(3, 10)[0])  # the terminal entry alone: no text line
    green_wait(lambda: client.eof, what="end of stream")
    assert bytes(client.data) == b"0\n" and viewer.closed


def test_a_viewer_that_never_reads_is_dropped_after_the_write_timeout(redis):
    # Finding 2: a client with a small receive buffer that never reads was held forever, its
    # first catch-up waiting in the request's greenlet; enough of them starved the process.
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_timeout=0.3, green=True)
    log = running_job(redis)
    for i in range(200):
        log.value(i, "x" * 1000)
    before = metric_value("jobcast_disconnects_total", reason="write_timeout")
    viewer, client = held(relay, log, rcvbuf=4096, read=False)
    green_wait(lambda: viewer.closed, 10, what="the frozen viewer to be dropped")
    assert client.released and relay.viewers(log.job_id) == 0
    assert metric_value("jobcast_disconnects_total", reason="write_timeout") == before + 1


class TurningBroker(PlayedBroker):
    """Reads that give the loop a turn, as a real (monkey-patched) Redis read does;
    ``reading_last_seqs`` is set once a read of the last seqs (a heartbeat's) is under way."""

    reading_last_seqs = False

    def history(self, job_id, after, count):
        """The log after ``after``, once the loop has had a turn."""
        result = super().history(job_id, after, count)
        gevent.sleep(0.05)
        return result

    def last_seqs(self, job_ids):
        """The jobs' last seqs, once the loop has had a turn."""
        self.reading_last_seqs = True
        result = super().last_seqs(job_ids)
        gevent.sleep(0.05)
        return result


def test_a_job_whose_last_viewer_leaves_during_a_read_is_forgotten_whole(redis, clock):
    """A review's finding: a history read or a heartbeat's read that outlived the job's last
    viewer wrote the job back into the relay's per-job state, for the life of the process."""
    relay = Relay(TurningBroker(redis), heartbeat=0.2, clock=clock, green=True)
    log = running_job(redis)
    write(log, 0, 5)
    viewer, _ = held(relay, log, epoch=relay.broker.head(log.job_id).epoch)
    green_wait(lambda: log.job_id in relay.catchup._reading, what="its history read to be under way")
    relay.release(viewer, "client_gone")
    green_wait(lambda: viewer not in relay.catchup.catching, what="its catch-up to end")
    assert relay.viewers(log.job_id) == 0
    assert log.job_id not in relay.catchup._entry_size and log.job_id not in relay._last_delivery
    other, _ = held(relay, log, cursor=7)
    green_wait(lambda: not other.slow, what="history")
    clock.advance(0.25)
    ticking = gevent.spawn(relay.tick)
    green_wait(lambda: relay.broker.reading_last_seqs,
               what="the heartbeat's read of the last seqs to be under way")
    relay.release(other, "client_gone")
    ticking.join()
    assert log.job_id not in relay._last_delivery and log.job_id not in relay.catchup._entry_size


def test_a_text_viewer_that_sends_a_stray_byte_and_closes_is_freed(redis, relay, clock):
    # Finding 12: the liveness check peeked at the unread byte and took the client for alive.
    log = running_job(redis)
    viewer, client = held(relay, log, TEXT, cursor=2)
    green_wait(lambda: not viewer.slow, what="history")
    client.sock.send(b"x")
    client.sock.shutdown(socket.SHUT_WR)
    clock.advance(0.25)
    relay.tick()
    assert viewer.closed and relay.viewers(log.job_id) == 0


def test_text_and_html_viewers_of_a_job_that_only_prints_get_heartbeats_and_are_freed_when_gone(
        redis, relay, clock):
    """A review's finding: every batch made the job look busy, though the lines a job prints
    write nothing to the text and HTML streams; their clients that had left were never freed,
    and an HTML stream behind a proxy got no heartbeat to keep it open."""
    log = running_job(redis)
    html, html_client = held(relay, log, HTML, cursor=2)
    gone, gone_client = held(relay, log, TEXT, cursor=2)
    sse, sse_client = held(relay, log, SSE, cursor=2)
    green_wait(lambda: not (html.slow or gone.slow or sse.slow), what="history")
    gone_client.sock.shutdown(socket.SHUT_RDWR)  # the client went away
    for k in range(3):                      # a line a third of a heartbeat apart, no value
        clock.advance(0.07)
        log.append_many([("log", {"stream": "stdout", "line": f"working {k}"}, clock())])
        relay.deliver(log.job_id, log.read(2 + k, 1)[0])
        relay.tick()
    assert gone.closed and relay.viewers(log.job_id) == 2
    green_wait(lambda: b"<!-- -->" in html_client.data, what="the HTML heartbeat")
    assert not html.closed and b"heartbeat" not in sse_client.data  # SSE showed the lines


def test_the_memory_kept_for_newcomers_is_capped_in_bytes():
    # Finding 4: the relay's cache of framed entries was capped in count, not in bytes.
    recent = RecentEntries(maxlen=100, max_bytes=10_000, framed_bytes=30_000)
    big = [Entry.parse('{"seq":%d,"kind":"value","ts":1.0,"i":%d,"v":"%s","j":null}'
                       % (s, s - 1, "x" * 3000)) for s in range(1, 21)]
    recent.add_live("j", big)
    kept = recent.after("j", 17)
    assert 0 < sum(len(e.raw) for e in recent._tails["j"]) <= 10_000 and kept[-1].seq == 20
    for cursor in range(17, 20):
        recent.framed_after("j", cursor, SSE)
        recent.framed_after("j", cursor, TEXT)
    assert recent._framed_size <= 30_000


def test_a_catch_up_of_a_job_of_large_entries_reads_fewer_entries_at_a_time(redis, relay):
    # Finding 4: 20 viewers at different ?after= of a job of large values each read 500 of them.
    log = running_job(redis)
    write(log, 0, 40, size=60_000)
    viewer, client = held(relay, log)
    green_wait(lambda: client.sse_ids()[-1:] == [42], what="the whole history")
    assert relay.catchup._page(log.job_id) < 20  # about 1 MiB a read, not 500 entries


# -- several jobs over one connection ------------------------------------------------------------

def held_connection(relay: Relay, logs: list[JobLog], *, rcvbuf: int | None = None,
                    read: bool = True):
    """Hold one multi-job stream of ``logs``' jobs; return its connection and client end."""
    from jobcast.web.events import digest, job_sse
    from jobcast.web.viewer import Connection

    server, far = socket_ends(rcvbuf, read)
    conn = Connection(None, digest([log.job_id for log in logs]),
                      resources=(type("Slot", (), {"release": lambda s: far.released.append(1)})(),))
    for log in logs:
        conn.add(Viewer(log.job_id, None, job_sse(log.job_id), cursor=0))
    conn.attach(SocketSink(server))
    relay.hold_connection(conn)
    return conn, far


def job_events(data: bytes) -> list[tuple[str, int]]:
    """(job, seq) of every entry event in a multi-job stream."""
    import json

    return [(d["job"], d["seq"]) for d in (json.loads(line[6:]) for line in
            bytes(data).decode().split("\n") if line.startswith("data: "))]


def has_read(client, job_id: str, seq: int) -> bool:
    """Whether ``client`` has read a whole multi-job stream up to ``job_id``'s entry ``seq``."""
    data = bytes(client.data)
    return data.endswith(b"\n\n") and job_events(data)[-1:] == [(job_id, seq)]


def finish_and_read(relay: Relay, client, logs: list[JobLog]) -> dict[str, list[int]]:
    """Finish every job and deliver its end; once the stream has ended (and no event ever
    carried two jobs' data), the seqs of each job's events, in the order they came."""
    lasts = [log.head().seq for log in logs]
    for log in logs:
        log.finished()
    for log, last in zip(logs, lasts):
        relay.deliver(log.job_id, log.read(last, 10)[0])
    green_wait(lambda: client.eof, what="the end of the stream")
    blocks = bytes(client.data).decode().split("\n\n")
    assert all(block.count("data: ") <= 1 for block in blocks)
    got = job_events(client.data)
    return {log.job_id: [s for j, s in got if j == log.job_id] for log in logs}


def test_one_connection_carries_several_jobs_each_entry_once_with_every_cursor_after_it(redis,
                                                                                      relay):
    a, b = running_job(redis), running_job(redis)
    write(a, 0, 3)
    conn, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="both histories")
    for i in range(3, 6):
        relay.deliver(a.job_id, write(a, i, i + 1))
        relay.deliver(b.job_id, write(b, i - 3, i - 2))
    a.finished()
    relay.deliver(a.job_id, a.read(8, 10)[0])
    b.finished()
    relay.deliver(b.job_id, b.read(5, 10)[0])
    green_wait(lambda: client.eof, what="the end of the stream")
    got = job_events(client.data)
    assert [s for j, s in got if j == a.job_id] == list(range(1, 10))
    assert [s for j, s in got if j == b.job_id] == list(range(1, 7))
    ids = [line[4:] for line in bytes(client.data).decode().split("\n") if line.startswith("id: ")]
    epochs = a.head().epoch, b.head().epoch
    assert ids[-1] == f"{conn.digest.decode()}:9~{epochs[0]}.6~{epochs[1]}" and client.released


def test_a_multi_job_stream_is_freed_as_its_client_closes_it_not_at_a_later_write(redis):
    """A page that changes its set of jobs closes its stream and opens the next at once: the
    closed one must not count until a write finds it gone (here the next heartbeat, 30 s)."""
    relay = Relay(PlayedBroker(redis), heartbeat=30, green=True)
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="both histories")
    assert relay.viewers() == 2 and not client.released
    client.sock.shutdown(socket.SHUT_RDWR)  # (its reader thread may hold the socket a moment)
    client.sock.close()
    green_wait(lambda: client.released, 2, what="the stream's slot given back")
    assert relay.viewers() == 0 and all(v.closed for v in conn.viewers)


def test_a_multi_job_connection_frames_each_batch_once_per_job_for_every_connection(redis, relay):
    from jobcast.web.events import job_sse

    log = running_job(redis)
    conns = [held_connection(relay, [log])[0] for _ in range(20)]
    green_wait(lambda: not any(v.slow for c in conns for v in c.viewers), what="histories")
    transport = job_sse(log.job_id)
    calls = []
    real = transport.frames
    object.__setattr__(transport, "frames", lambda entries, start=0: calls.append(1) or real(entries))
    try:
        assert relay.deliver(log.job_id, write(log, 0, 1)) == 20
    finally:
        object.__delattr__(transport, "frames")
    assert calls == [1]


def test_a_slow_multi_job_connection_never_interleaves_two_jobs_in_one_event(redis, relay):
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b], rcvbuf=4096, read=False)
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="histories")
    for i in range(100):
        relay.deliver(a.job_id, write(a, i, i + 1, size=500))
        relay.deliver(b.job_id, write(b, i, i + 1, size=500))
    client.start()
    seqs = finish_and_read(relay, client, [a, b])
    assert seqs[a.job_id] == list(range(1, 104)) and seqs[b.job_id] == list(range(1, 104))



@pytest.mark.parametrize("delay, writes", [(0.05, 1), (0.0, 2)])
def test_jobs_announced_one_after_the_other_reach_a_multi_job_stream_in_one_write(
        redis, clock, delay, writes):
    # A producer writes its jobs one by one, so each is its own announcement; within the
    # write delay they become one send per connection (one wake-up of its client, one id).
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=delay, clock=clock, green=True)
    a, b = running_job(redis), running_job(redis)
    conns = [held_connection(relay, [a, b]) for _ in range(3)]
    green_wait(lambda: not any(v.slow for c, _ in conns for v in c.viewers), what="histories")
    order: list[int] = []
    for n, (conn, _) in enumerate(conns):
        conn.sink.sock = RecordingSocket(conn.sink.sock, n, order)
    relay.on_publications({a.job_id: write(a, 0, 1)})
    relay.on_publications({b.job_id: write(b, 0, 1)})
    green_wait(lambda: len(order) == writes * 3, what="the writes")
    gevent.sleep(max(delay * 2, 0.1))  # nothing more comes
    assert sorted(order) == sorted(list(range(3)) * writes)
    epochs = a.head().epoch, b.head().epoch
    for conn, client in conns:
        green_wait(lambda: job_events(client.data)[-2:] == [(a.job_id, 3), (b.job_id, 3)],
                   what="both values")
        ids = [line[4:] for line in bytes(client.data).decode().split("\n")
               if line.startswith("id: ")]
        assert ids[-1] == f"{conn.digest.decode()}:3~{epochs[0]}.3~{epochs[1]}"


def green_sleep_until(when: float) -> None:
    """Run gevent's loop until ``time.monotonic()`` reaches ``when`` (never earlier: a
    ``gevent.sleep`` counts from the loop's clock, which may lag behind)."""
    while (left := when - time.monotonic()) > 0:
        gevent.sleep(left)


def test_a_job_announced_past_the_delay_while_others_still_come_joins_their_write(redis, clock):
    # A producer's jobs are announced a millisecond or two apart, and one that missed the
    # write would cost every stream a second one: the window stays open while announcements
    # keep coming (until none has come for half the delay). Here: 2 s of delay, b announced
    # at 1.5 s, c at 2.05 s (past the delay), all three in one write. The window then stays
    # open until 2.5 s: each announcement has 0.45 s to spare, however late a sleep wakes.
    delay = 2.0
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=delay, clock=clock, green=True)
    a, b, c = running_job(redis), running_job(redis), running_job(redis)
    conns = [held_connection(relay, [a, b, c]) for _ in range(3)]
    green_wait(lambda: not any(v.slow for c, _ in conns for v in c.viewers), what="histories")
    order: list[int] = []
    for n, (conn, _) in enumerate(conns):
        conn.sink.sock = RecordingSocket(conn.sink.sock, n, order)
    first = write(a, 0, 1)
    began = time.monotonic()  # the window opens at a's announcement, just after
    relay.on_publications({a.job_id: first})
    green_sleep_until(began + 0.75 * delay)
    relay.on_publications({b.job_id: write(b, 0, 1)})
    green_sleep_until(began + 1.025 * delay)
    # Past the delay (its timer, due before this sleep's, has fired), and nothing written:
    # b came less than half the delay ago.
    assert order == []
    relay.on_publications({c.job_id: write(c, 0, 1)})
    green_wait(lambda: len(order) == 3, what="the writes")
    gevent.sleep(0.5)  # nothing more comes
    assert sorted(order) == [0, 1, 2]
    for conn, client in conns:  # (each client reads in a thread of its own)
        green_wait(lambda: job_events(client.data)[-3:] == [(a.job_id, 3), (b.job_id, 3),
                                                              (c.job_id, 3)],
                   what="the three values")


def test_a_write_goes_out_once_every_job_of_every_gathering_stream_has_come(redis, clock):
    # Nothing more is awaited then: the window (30 s here) does not hold it back. A stream
    # still missing one of its jobs holds it open for all: one write per window.
    relay = Relay(PlayedBroker(redis), heartbeat=60, write_delay=30.0, clock=clock, green=True)
    a, b, c = running_job(redis), running_job(redis), running_job(redis)
    (ab, ab_client) = held_connection(relay, [a, b])
    (ac, ac_client) = held_connection(relay, [a, c])
    green_wait(lambda: not any(v.slow for v in (*ab.viewers, *ac.viewers)), what="histories")
    order: list[int] = []
    for n, conn in enumerate((ab, ac)):
        conn.sink.sock = RecordingSocket(conn.sink.sock, n, order)
    relay.on_publications({a.job_id: write(a, 0, 1)})
    relay.on_publications({b.job_id: write(b, 0, 1)})
    gevent.sleep(0.2)
    assert order == []  # a and c's stream still waits for c
    relay.on_publications({c.job_id: write(c, 0, 1)})
    green_wait(lambda: sorted(order) == [0, 1], 5, what="both writes, long before the window")
    # (written: read by the clients' threads as soon as they run)
    green_wait(lambda: has_read(ab_client, b.job_id, 3) and has_read(ac_client, c.job_id, 3),
               what="both streams' reads")
    assert job_events(ab_client.data)[-2:] == [(a.job_id, 3), (b.job_id, 3)]
    assert job_events(ac_client.data)[-2:] == [(a.job_id, 3), (c.job_id, 3)]
    # In step now, the two a-and-b streams of a cohort are written as soon as both have come.
    other, other_client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in other.viewers), what="its history")
    relay.on_publications({a.job_id: write(a, 1, 2)})
    relay.on_publications({b.job_id: write(b, 1, 2)})
    relay.on_publications({c.job_id: write(c, 1, 2)})
    for client in (ab_client, other_client):
        green_wait(lambda: job_events(client.data)[-2:] == [(a.job_id, 4), (b.job_id, 4)], 5,
                   what="the second values")


def test_announcements_that_never_stop_are_written_at_twice_the_delay(redis, clock):
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=0.2, clock=clock, green=True)
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="histories")
    for i in range(12):  # 0.6 s of announcements, 0.05 s apart: never half the delay apart
        relay.on_publications({a.job_id: write(a, i, i + 1)})
        gevent.sleep(0.05)
    assert (a.job_id, 3) in job_events(client.data)  # written by 0.4 s, while they still came
    green_wait(lambda: job_events(client.data)[-1:] == [(a.job_id, 14)], what="the last value")



def paused_write(redis, clock, monkeypatch, logs: list[JobLog], meanwhile):
    """Six multi-job streams of ``logs``, whose gathered write gives the loop a turn every two
    streams (FLUSH_SLICE); ``meanwhile(relay)`` is spawned as the second stream is written, and
    so runs in the first turn. Returns the relay, the streams and the order of their writes."""
    from jobcast.web import relay as relay_module

    monkeypatch.setattr(relay_module, "FLUSH_SLICE", 2)
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=0.05, clock=clock, green=True)
    conns = [held_connection(relay, logs) for _ in range(6)]
    green_wait(lambda: not any(v.slow for c, _ in conns for v in c.viewers), what="histories")
    order: list[int] = []
    for n, (conn, _) in enumerate(conns):
        conn.sink.sock = RecordingSocket(conn.sink.sock, n, order)
    second = conns[1][0].sink.sock
    original = second.send

    def second_written(data):
        gevent.spawn(meanwhile, relay)
        return original(data)

    second.send = second_written
    return relay, conns, order


def test_a_job_announced_during_a_gathered_write_joins_the_writes_not_made_yet(redis, clock,
                                                                               monkeypatch):
    # 1,000 sends take 10-20 ms: a job announced meanwhile must not wait for all of them and
    # then cost every connection a second write. b's announcement, which comes after the first
    # two connections were written, joins the writes of the other four.
    a, b = running_job(redis), running_job(redis)
    relay, conns, order = paused_write(
        redis, clock, monkeypatch, [a, b],
        lambda relay: relay.on_publications({b.job_id: b_entries}))
    b_entries = write(b, 0, 1)  # after the histories: only its announcement brings it
    relay.on_publications({a.job_id: write(a, 0, 1)})
    green_wait(lambda: len(order) >= 8, what="the writes")
    gevent.sleep(0.1)  # nothing more comes
    assert order == [0, 1, 2, 3, 4, 5, 0, 1]
    for conn, client in conns:
        green_wait(lambda: job_events(client.data)[-2:] == [(a.job_id, 3), (b.job_id, 3)],
                   what="both values")


def test_a_shutdown_during_a_gathered_write_finishes_it_before_every_goodbye(redis, clock,
                                                                            monkeypatch):
    # The process stops while a gathered write waits for its next turn: the connections not
    # written yet still get their values, then their goodbye, like the others.
    log = running_job(redis)
    relay, conns, _ = paused_write(redis, clock, monkeypatch, [log], Relay.shutdown)
    for n, (conn, _) in enumerate(conns):
        conn.retry = 1000 + n
    relay.on_publications({log.job_id: write(log, 0, 1)})
    for n, (conn, client) in enumerate(conns):
        green_wait(lambda: client.eof, what=f"connection {n} closed")
        assert job_events(client.data)[-1] == (log.job_id, 3)
        assert bytes(client.data).endswith(b"retry: %d\n\n" % (1000 + n) + conn.checkpoint())


def test_a_viewer_that_falls_behind_while_its_connection_gathers_a_write_loses_no_byte(redis,
                                                                                        clock):
    # A resync sends a viewer to the log while its connection holds a gathered write that
    # this viewer was to make; the write then meets a full socket. Its rest must still go out,
    # whole, before the catch-up.
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=0.05, clock=clock, green=True)
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b], rcvbuf=4096, read=False)
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="histories")
    relay.on_publications({a.job_id: write(a, 0, 20, size=2000)})
    relay.on_publications({b.job_id: write(b, 0, 1)})  # b's viewer is the write's writer
    write(b, 1, 2)  # not announced: b's viewer finds it in the log, and waits to write it
    relay.on_resync([b.job_id])
    green_wait(lambda: not conn.parts, what="the gathered write to go out")
    client.start()
    seqs = finish_and_read(relay, client, [a, b])
    assert seqs[a.job_id] == list(range(1, 24)) and seqs[b.job_id] == list(range(1, 6))


def ids_never_ahead(conn, data: bytes, logs: list[JobLog]) -> int:
    """Check that every id of a multi-job stream names, for each job, only entries that came
    before it (a client resuming from it would skip any other); returns how many ids."""
    seen = {log.job_id: 0 for log in logs}
    ids = 0
    for block in parse_events(bytes(data), all_blocks=True):
        if block.data:
            entry = block.json()
            seen[entry["job"]] = max(seen[entry["job"]], entry["seq"])
        if block.id:
            cursors = block.id.partition(":")[2].split(".")
            named = {v.job_id: int(c.partition("~")[0]) for v, c in zip(conn.viewers, cursors)}
            assert all(named[j] <= seen[j] for j in seen), (block.id, seen)
            ids += 1
    return ids


def test_an_id_never_names_entries_a_catch_up_has_not_written_yet(redis, clock):
    # a's viewer catches up (its entries read, its write waiting for the connection) while
    # b's value is gathered: b's write ends with every job's cursor, and must not name a's
    # entries before they are out (a client resuming from it would never get them).
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=0.05, clock=clock, green=True)
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="histories")
    write(a, 0, 3)                      # not announced: a's catch-up finds them in the log
    relay.on_resync([a.job_id])         # a's catch-up runs at the next switch
    relay.on_publications({b.job_id: write(b, 0, 1)})  # the connection is b's for write_delay
    green_wait(lambda: len(job_events(client.data)) >= 8, what="a's three values, b's one")
    seqs = finish_and_read(relay, client, [a, b])
    assert seqs[a.job_id] == list(range(1, 7)) and seqs[b.job_id] == list(range(1, 5))
    assert ids_never_ahead(conn, client.data, [a, b]) >= 4


def test_a_batch_a_multi_job_stream_partly_has_writes_only_the_entries_after_its_cursor(redis,
                                                                                        relay):
    # A catch-up can rejoin ahead of announcements still on their way (it read the log after
    # they were written): the batch that then comes overlaps what the stream already has.
    log = running_job(redis)
    write(log, 0, 3)                              # seqs 3..5, read as history
    conn, client = held_connection(relay, [log])
    green_wait(lambda: conn.viewers[0].cursor == 5 and not conn.viewers[0].slow,
               what="the history")
    write(log, 3, 4)                              # seq 6
    relay.deliver(log.job_id, log.read(3, 10)[0])  # announced late: seqs 4..6
    assert finish_and_read(relay, client, [log])[log.job_id] == list(range(1, 8))


def test_a_write_that_fails_to_frame_leaves_the_connection_free_for_its_other_jobs(redis, relay):
    from jobcast.web.events import job_sse

    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="histories")
    transport = job_sse(a.job_id)

    def broken(entries, start=0):
        raise ValueError("a framing bug")

    object.__setattr__(transport, "frames", broken)
    try:
        relay.on_publications({a.job_id: write(a, 0, 1)})  # logged, and a's viewer goes on
    finally:
        object.__delattr__(transport, "frames")
    relay.deliver(b.job_id, write(b, 0, 1))
    green_wait(lambda: (b.job_id, 3) in job_events(client.data), what="b's value")


def test_a_job_a_multi_job_stream_gives_up_on_cuts_the_whole_stream(redis, clock):
    """A review's finding: when one job's catch-up gave up (here: it could not write for the
    write timeout), only that job left the stream, which went on with the others and never
    told the client it had lost one."""
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_timeout=0.3, clock=clock, green=True)
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b])
    va, vb = conn.viewers
    green_wait(lambda: not va.slow and not vb.slow, what="history")
    b.value(0, 0)  # logged, but its announcement was lost: b's catch-up must write it
    relay.recent.lost([b.job_id])
    conn.lock.acquire()  # meanwhile something else writes to the connection, for too long
    relay._catch_up(vb, b"", "quiet")
    green_wait(lambda: vb.closed, what="b's catch-up to give up")
    conn.lock.release()
    green_wait(lambda: client.eof, what="the stream to be cut")
    assert conn.closed and va.closed
    assert not bytes(client.data).endswith(b"0\r\n\r\n")  # cut, not ended


def test_a_job_waiting_for_another_jobs_long_write_to_a_client_that_reads_is_not_cut(
        redis, clock):
    """A review's finding: a job of a multi-job stream that waited for the connection longer
    than the write timeout, while another job's catch-up wrote a long page to a client that
    reads slowly but reads, was taken for a client that reads nothing: the stream was cut,
    and every reconnect met the same page."""
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_timeout=0.3, clock=clock, green=True)
    a, b = running_job(redis), running_job(redis)
    write(a, 0, 20, size=4000)                      # a's history: about 80 KB
    conn, client = held_connection(relay, [a, b], rcvbuf=4096, read=False)
    va, vb = conn.viewers
    green_wait(lambda: relay.catchup.catching and conn.lock.locked(), what="a's catch-up writing")
    b.value(0, 0)  # logged, its announcement lost: b's catch-up must write it, after a's page
    relay.recent.lost([b.job_id])

    # It reads 4 KB every 50 ms: about 1 s for a's history, three write timeouts.
    client.size, client.pause = 4096, 0.05
    client.start()
    try:
        relay._catch_up(vb, b"", "quiet")
        green_wait(lambda: has_read(client, b.job_id, 3) or client.eof, timeout=30,
                   what="b's value, after a's page")
        assert not conn.closed and not client.eof
        got = job_events(client.data)
        assert [s for j, s in got if j == a.job_id][-1] == 22 and (b.job_id, 3) in got
    finally:
        client.sock.shutdown(socket.SHUT_RDWR)  # the reader's recv returns: it ends
        client._thread.join(10)


def test_a_partial_gathered_write_whose_client_then_leaves_ends_every_job_of_it(redis, clock):
    # The rest of a partial write goes to the writer's catch-up, with the connection's lock;
    # the client then leaves. The lock is given back once (a threaded server's lock raises on
    # a second release, which would leave the viewer held for good).
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_timeout=10, clock=clock, green=False)
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b], rcvbuf=4096, read=False)
    wait_for(lambda: not any(v.slow for v in conn.viewers), 10, 0.01, "histories")
    relay.deliver(a.job_id, write(a, 0, 20, size=2000))  # far more than the buffers take
    wait_for(lambda: conn.viewers[0] in relay.catchup.catching, 10, 0.01, "the rest to a catch-up")
    client.sock.close()
    wait_for(lambda: relay.viewers(a.job_id) == 0, 10, 0.01, "a's viewer ended")
    assert not conn.lock.locked()


def test_threads_a_partial_write_just_as_a_catch_up_ends_loses_nothing(redis, clock, monkeypatch):
    """A review's finding (threaded servers): a catch-up thread back on the fast path stayed
    in _catching until its thread ended; a write that went out partly in that gap handed its
    rest to a catch-up that was never started, and the rest was dropped."""
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_timeout=10, clock=clock, green=False)
    log = running_job(redis)
    back, delivered = threading.Event(), threading.Event()
    read_until_current = relay.catchup._read_until_current

    def ends_late(v):
        """The catch-up, which ends only once the test has delivered (the gap, held open)."""
        reason = read_until_current(v)
        if reason is None and not back.is_set():
            back.set()
            delivered.wait(10)
        return reason

    monkeypatch.setattr(relay.catchup, "_read_until_current", ends_late)
    server, client = socket_ends(4096, read=False)
    viewer = Viewer(log.job_id, SocketSink(server, green=False), SSE, cursor=0)
    relay.hold(viewer)
    wait_for(back.is_set, 10, 0.01, "the catch-up back on the fast path")
    relay.deliver(log.job_id, write(log, 0, 20, size=2000))  # far more than the buffers take
    delivered.set()
    client.start()
    log.finished()
    relay.deliver(log.job_id, log.read(22, 10)[0])
    wait_for(lambda: client.eof, 10, 0.01, "the end of the stream")
    assert client.sse_ids() == list(range(1, 24))


def test_threads_two_catch_ups_of_a_job_at_once_both_get_its_history_and_neither_is_cut(
        redis, clock, monkeypatch):
    """A review's finding (threaded servers): two catch-ups of one job could both find no read
    under way and both start one; the first to end forgot the second's, whose own end then
    failed, and its stream was cut."""
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_timeout=10, clock=clock, green=False)
    log = running_job(redis)
    both = threading.Barrier(2, timeout=1)
    reading = relay.recent.reading

    def together(job_id):
        """Note a read of the job, once both catch-ups are here (if both can be)."""
        with contextlib.suppress(threading.BrokenBarrierError):
            both.wait()
        return reading(job_id)

    monkeypatch.setattr(relay.recent, "reading", together)
    viewers = []
    for _ in range(2):
        server, client = socket_ends(None, True)
        viewers.append((Viewer(log.job_id, SocketSink(server, green=False), SSE, cursor=0),
                        client))
    for viewer, _ in viewers:
        relay.hold(viewer)
    for viewer, client in viewers:
        wait_for(lambda: not viewer.slow and client.sse_ids() == [1, 2], 10, 0.01, "its history")
        assert not viewer.closed


def test_threads_two_admissions_asking_a_jobs_position_at_once_both_get_it(redis, clock,
                                                                           monkeypatch):
    """The same race in :meth:`Relay.position` (threaded servers): the second admission's end
    of its read raised KeyError, and its request failed."""
    from jobcast.web import relay as relay_module

    relay = Relay(PlayedBroker(redis), heartbeat=5, clock=clock, green=False)
    log = running_job(redis)
    both = threading.Barrier(2, timeout=1)
    flights = []

    class Together(relay_module._Flight):
        """A read in flight, begun once both admissions are here if both begin one (the
        race); the second finds the first's and waits for it instead (the barrier breaks)."""

        def __init__(self):
            flights.append(self)
            with contextlib.suppress(threading.BrokenBarrierError):
                both.wait()
            super().__init__()
            self.done = Waited()

    class Waited(threading.Event):
        """The flight's end, which notes that a second admission waits for it."""

        def wait(self, timeout: float | None = None) -> bool:
            """Note the waiter, then wait."""
            waiting.set()
            return super().wait(timeout)

    waiting = threading.Event()
    read = relay.broker.position

    def position_once_the_other_waits(job_id: str):
        """The broker's read, once the other admission waits for it (at most 2 s): on a
        loaded machine the first read could otherwise end before the second admission
        looked, and the second would rightly begin a read of its own."""
        waiting.wait(2)
        return read(job_id)

    monkeypatch.setattr(relay_module, "_Flight", Together)
    monkeypatch.setattr(relay.broker, "position", position_once_the_other_waits)
    answers, errors = [], []

    def admit() -> None:
        """Ask the job's position, as an admission does."""
        try:
            answers.append(relay.position(log.job_id))
        except Exception as exc:  # noqa: BLE001  (what the request would have failed with)
            errors.append(exc)

    threads = [threading.Thread(target=admit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and [a.seq for a in answers] == [2, 2]
    assert len(flights) == 1  # one read for both


def test_a_streams_jobs_missing_or_ended_at_its_position_are_not_held(redis, relay):
    """A review's finding: they are in the connection (closed) for its checkpoint, and
    hold_connection held them again, counted as viewers of a job that may not exist."""
    from jobcast.web.events import digest, job_sse
    from jobcast.web.viewer import Connection, ViewerState

    log, gone = running_job(redis), uuid.uuid4().hex
    server, client = socket_ends(None, True)
    conn = Connection(None, digest([log.job_id, gone]))
    conn.add(Viewer(log.job_id, None, job_sse(log.job_id), cursor=0))
    missing = Viewer(gone, None, job_sse(gone), cursor=0)
    missing.state, missing.done = ViewerState.CLOSED, True
    conn.add(missing)
    conn.attach(SocketSink(server))
    relay.hold_connection(conn)
    assert relay.viewers(gone) == 0 and missing.state is ViewerState.CLOSED
    green_wait(lambda: not conn.viewers[0].slow, what="the other job's history")
    assert relay.viewers(log.job_id) == 1


def test_a_shutdown_ends_the_catch_up_it_starts_itself(redis, clock):
    # Shutdown writes what was gathered; a write that goes out partly hands its rest to a
    # catch-up, which shutdown then stops before it ever ran: its viewer (and the
    # connection's slot) must still be given back.
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=0.05, clock=clock, green=True)
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b], rcvbuf=4096, read=False)
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="histories")
    relay.on_publications({a.job_id: write(a, 0, 20, size=2000)})  # gathered, not written
    relay.shutdown()
    green_wait(lambda: relay.viewers() == 0 and client.released, what="every viewer ended")
    assert conn.closed and not relay.catchup.catching


class PartialHeartbeat(RecordingSocket):
    """A held socket that takes only the first 3 bytes of the first heartbeat written to it."""

    def send(self, data) -> int:
        """Write like the socket, but only part of the first heartbeat."""
        if bytes(data[:2]) == b": " and not self.order:
            self.order.append(self.name)
            return self.sock.send(data[:3])
        return self.sock.send(data)


def test_a_heartbeat_of_a_multi_job_stream_goes_out_whole_while_one_of_its_jobs_catches_up(
        redis, relay, clock):
    # A quiet connection gets one heartbeat, written through one of its jobs. If that write is
    # partial, the rest goes to that job's catch-up: not to one already running, which would
    # drop it and leave half a comment line to swallow the next event's first line.
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="histories")
    written: list[int] = []
    conn.sink.sock = PartialHeartbeat(conn.sink.sock, 0, written)
    write(a, 0, 1)                   # not announced: a's catch-up finds it in the log
    relay.on_resync([a.job_id])      # a's catch-up is spawned: it runs at the next switch
    clock.advance(relay.heartbeat)
    relay.tick()                     # the connection is quiet: one heartbeat
    assert written == [0]
    seqs = finish_and_read(relay, client, [a, b])
    assert seqs[a.job_id] == list(range(1, 5)) and seqs[b.job_id] == list(range(1, 4))
    events = list(parse_events(bytes(client.data)))
    assert len(events) == 7 and all(e.event == e.json()["kind"] for e in events)


# -- another incarnation of the log (jobcast.core.epoch) ---------------------------------------

def failover(log: JobLog, writer: JobLog, keep: int) -> None:
    """A failover that keeps only seqs up to ``keep``; the writer notices at its next value
    (a new epoch), and RQ's retry writes ``retrying`` into it."""
    lose(log, keep)
    with pytest.raises(LogReset):
        writer.value(99, "after the failover")
    JobLog(log.redis, log.job_id).retrying("the job's log was reset")


def watched(redis, relay: Relay, transport=SSE, *, values: int = 5, chunked: bool = False):
    """A job whose writer began it, a viewer holding it, and ``values`` values delivered (seqs
    3 on): (log, its first epoch, the writer, the viewer, its client)."""
    log = running_job(redis)
    writer = JobLog(redis, log.job_id)
    writer.begin()
    viewer, client = held(relay, log, transport, chunked=chunked)
    green_wait(lambda: not viewer.slow, what="history")
    relay.deliver(log.job_id, write(writer, 0, values))
    return log, log.head().epoch, writer, viewer, client


def entry_ids(data: bytes) -> list[tuple[str, str]]:
    """(event, id) of every event of an SSE stream."""
    return [(e.event, e.id) for e in parse_events(bytes(data))]


def test_a_viewer_of_a_log_that_lost_entries_is_reset_once_and_never_sees_an_id_reused(redis,
                                                                                        relay):
    log, first, writer, viewer, client = watched(redis, relay)  # seqs 3..7
    failover(log, writer, keep=5)                              # values 0..2 survived
    retry = JobLog(redis, log.job_id)
    assert retry.begin()[1] == 3
    retry.started("w2", 2)
    for i in range(3, 6):
        retry.value(i, i)
    retry.finished()
    relay.deliver(log.job_id, log.read(5, 100)[0])             # announced: seqs 6..11, again
    green_wait(lambda: client.eof, what="the end of the stream")
    # The epoch the refused value began (no entry of its own), its "retrying"'s (written by
    # RQ's failure path, which did not begin the log), and the retry's own, from its start.
    _refused, second, third = [era.epoch for era in log.head().eras[1:]]
    events = list(parse_events(bytes(client.data)))
    [reset] = [e for e in events if e.event == "reset"]
    assert reset.json() == {"epoch": reset.json()["epoch"], "after": 5, "values": 3,
                            "reason": "lost", "was": {"seq": 7, "epoch": first}}
    assert reset.id == f"5:{reset.json()['epoch']}" and reset.json()["epoch"] in (second, third)
    k = events.index(reset)
    assert [e.id for e in events[:k]] == [f"{s}:{first}" for s in range(1, 8)]
    assert [e.id for e in events[k + 1:]] == [f"6:{second}"] + [f"{s}:{third}" for s in range(7, 12)]
    assert [e.json()["i"] for e in events[k + 1:] if e.event == "value"] == [3, 4, 5]


@pytest.mark.parametrize("writer", ["a cancel", "a retry's start"])
def test_viewers_go_on_into_an_epoch_begun_right_after_their_position_without_a_log_read(
        redis, relay, monkeypatch, writer):
    """A cancel (whose writer did not begin the log) and a retry's start begin an epoch: every
    viewer took the catch-up path and read the log, a thousand reads for a job watched by a
    thousand. The entry that begins it names the epoch before it: a viewer whose position is
    just before it goes on; one that missed the entry before catches up from memory, which
    keeps both epochs' entries, again with no read."""
    log, first, _writer, viewer, client = watched(redis, relay)     # seqs 3..7
    behind, behind_client = held(relay, log, cursor=6, epoch=first)
    green_wait(lambda: not behind.slow, what="the second viewer's catch-up")
    behind.cursor = 6                    # as if seq 7 were still on its way to it
    reads = []
    history = relay.broker.history
    monkeypatch.setattr(relay.broker, "history", lambda *a: reads.append(a[1]) or history(*a))
    if writer == "a cancel":
        JobLog(redis, log.job_id).cancelled("someone")
    else:
        JobLog(redis, log.job_id).started("w2", 2)
    [entry] = log.read(7, 10)[0]
    assert entry.ep != first and entry.data["pe"] == first
    relay.deliver(log.job_id, [entry])
    assert not viewer.slow and reads == [] and viewer.epoch == entry.ep  # the fast path wrote it
    green_wait(lambda: entry_ids(client.data)[-1] == (entry.kind, f"8:{entry.ep}"),
               what="the new epoch's entry")
    green_wait(lambda: entry_ids(behind_client.data)[-1] == (entry.kind, f"8:{entry.ep}"),
               what="the viewer behind, from memory")
    assert reads == []
    assert [i for _, i in entry_ids(behind_client.data)][-2:] == [f"7:{first}", f"8:{entry.ep}"]


def test_a_log_found_behind_a_quiet_viewer_begins_a_new_epoch_and_resets_it(redis, relay, clock):
    log, first, writer, viewer, client = watched(redis, relay)  # seqs 3..7
    lose(log, keep=5)                                          # the writer is silent (dead?)
    clock.advance(0.25)
    relay.tick()
    green_wait(lambda: b"event: reset" in client.data, what="the reset")
    head = log.head()
    assert head.epoch != first and head.eras[-1] == Era(head.epoch, 6, 3)
    assert entry_ids(client.data)[-1] == ("reset", f"5:{head.epoch}")
    with pytest.raises(LogReset):                              # its writer would be retried
        writer.value(5, 5)
    relay.deliver(log.job_id, write(JobLog(redis, log.job_id), 3, 4))
    green_wait(lambda: entry_ids(client.data)[-1] == ("value", f"6:{head.epoch}"),
               what="the new incarnation's first value")
    assert not viewer.closed


def test_a_viewer_reset_back_before_what_was_announced_to_it_goes_back_to_the_fast_path(
        redis, relay, clock, monkeypatch):
    """A review's finding: a viewer catching up notes the seqs announced meanwhile (missed);
    reset back before them by a lossy failover, it waited for those seqs, which the log no
    longer had: it read the log again and again, at once, until a writer passed them."""
    log, first, writer, viewer, client = watched(redis, relay)  # seqs 3..7
    lose(log, keep=5)                                          # the writer is silent (dead?)
    reads = []
    history = relay.broker.history

    def read(*args):
        """The log's read; during the first, seq 7 is announced (before the loss reached
        this process), as the fast path notes it for a viewer catching up."""
        if not reads:
            viewer.missed = 7
        reads.append(args[1])
        return history(*args)

    monkeypatch.setattr(relay.broker, "history", read)
    clock.advance(0.25)
    relay.tick()
    green_wait(lambda: b"event: reset" in client.data, what="the reset")
    green_wait(lambda: not viewer.slow, what="the fast path")
    assert len(reads) <= 3, f"{len(reads)} reads of the log"
    relay.deliver(log.job_id, write(JobLog(redis, log.job_id), 3, 4))
    green_wait(lambda: entry_ids(client.data)[-1][0] == "value", what="the next value")


def test_a_reset_written_to_a_stalled_client_does_not_hold_its_jobs_other_newcomers(redis,
                                                                                    relay):
    """A review's finding: the reset was written while its viewer still held the job's read,
    so the job's other newcomers waited on that write, up to the write timeout (30 s)."""
    log = running_job(redis)
    first = log.head().epoch
    server, stalled = stalled_ends()
    # A position past the log's end (its entries were lost): it gets a reset it cannot take.
    past_end = Viewer(log.job_id, SocketSink(server), SSE, cursor=50, epoch=first)
    relay.hold(past_end)
    green_wait(lambda: log.head().epoch != first, what="the new epoch of the reset")
    newcomer, client = held(relay, log)
    green_wait(lambda: not newcomer.slow and len(entry_ids(client.data)) == 2, 5,
               what="the other newcomer's history")
    assert [i for _, i in entry_ids(client.data)] == [f"1:{first}", f"2:{first}"]
    assert not past_end.closed  # its write still waits on its client


def test_a_stalled_client_waiting_on_redis_does_not_hold_its_jobs_other_viewers_once_it_is_back(
        redis, clock, monkeypatch):
    """A review's finding: while Redis was down, the viewer whose read failed wrote its
    heartbeat (and slept) still holding its job's read; a stalled client's heartbeat then held
    the job's other viewers for the write timeout after Redis came back."""
    relay = Relay(PlayedBroker(redis), heartbeat=0.2, write_timeout=20, clock=clock, green=True)
    log = running_job(redis)
    relay.broker.redis = Redis(port=1, retry=Retry(NoBackoff(), 0))  # Redis is down
    failed = []
    history = relay.broker.history

    def noted(*args):
        """The broker's read, noted when it fails."""
        try:
            return history(*args)
        except Exception:
            failed.append(1)
            raise

    monkeypatch.setattr(relay.broker, "history", noted)
    server, _ = stalled_ends()
    stalled = Viewer(log.job_id, SocketSink(server), SSE, cursor=2)
    try:
        relay.hold(stalled)
        green_wait(lambda: failed, what="the stalled viewer's read to fail")
        relay.broker.redis = redis  # Redis is back
        newcomer, client = held(relay, log)
        green_wait(lambda: not newcomer.slow and len(client.sse_ids()) == 2, 5,
                   what="the other viewer's history")
        assert client.sse_ids() == [1, 2] and not stalled.closed
    finally:
        relay.stop(timeout=5)


def test_a_resume_into_a_surviving_prefix_of_an_older_epoch_just_goes_on(redis, relay):
    log = running_job(redis)
    first = log.head().epoch
    writer = JobLog(redis, log.job_id)
    writer.begin()
    write(writer, 0, 5)
    failover(log, writer, keep=5)                              # the new epoch begins at seq 6
    # The epoch is the viewer's from the start: set after hold(), its catch-up could already
    # have read the log without it.
    viewer, client = held(relay, log, cursor=4, epoch=first)
    green_wait(lambda: not viewer.slow and len(entry_ids(client.data)) == 2, what="catching up")
    assert [i for _, i in entry_ids(client.data)] == [f"5:{first}", f"6:{log.head().epoch}"]
    assert viewer.epoch == log.head().epoch


def test_a_text_stream_that_cannot_say_reset_is_cut_without_its_end(redis, relay):
    log, _, writer, viewer, client = watched(redis, relay, TEXT, values=3, chunked=True)
    failover(log, writer, keep=3)
    relay.deliver(log.job_id, log.read(3, 10)[0])
    green_wait(lambda: client.eof, what="the cut")
    assert not bytes(client.data).endswith(b"0\r\n\r\n") and viewer.closed


def trimmed_under(redis, maxlen: int = 10, values: int = 300) -> tuple[JobLog, int]:
    """A running job of ``values`` values (seqs 3 on) whose capped log Redis has trimmed (in
    whole nodes of entries); the log and the seq of its first entry still kept."""
    log = JobLog(redis, uuid.uuid4().hex, maxlen=maxlen)
    log.create("sqrt", {}, None)
    log.started("test", 1)
    write(log, 0, values)
    return log, next(iter(log.entries())).seq


def test_a_viewer_whose_position_was_trimmed_while_it_caught_up_is_told_then_goes_on(redis,
                                                                                     relay):
    """A review's finding: a viewer that fell behind (a slow client) past what a capped log
    keeps went on from the first entry kept, and was never told what it had missed."""
    log, first = trimmed_under(redis)
    assert first > 10
    viewer, client = held(relay, log, SSE, cursor=5)
    green_wait(lambda: not viewer.slow and client.sse_ids()[-1:] == [302], what="catching up")
    events = list(parse_events(bytes(client.data)))
    assert events[0].event == "trimmed" and events[0].id is None
    assert events[0].json() == {"after": 5, "first_seq": first, "lost": first - 6,
                                "first_value": first - 3}
    assert [id_seq(e.id) for e in events[1:]] == list(range(first, 303))


def test_an_html_stream_whose_position_was_trimmed_says_so_in_a_line_and_goes_on(redis, relay):
    log, first = trimmed_under(redis)
    viewer, client = held(relay, log, HTML, cursor=5)
    green_wait(lambda: not viewer.slow and b"<p>299: " in bytes(client.data), what="catching up")
    lines = bytes(client.data).decode().splitlines()
    assert lines[0] == ('<p class="note">Values this page had not shown yet are no longer kept: '
                        f'it goes on from value {first - 3:,}</p>')
    assert lines[1].startswith(f"<p>{first - 3}: ") and len(lines) == 1 + 303 - first


def test_a_text_stream_whose_position_was_trimmed_is_cut_to_be_told_when_it_resumes(redis,
                                                                                    relay):
    log, _ = trimmed_under(redis)
    viewer, client = held(relay, log, TEXT, cursor=5, chunked=True)
    green_wait(lambda: client.eof, what="the cut")
    assert bytes(client.data) == b"" and viewer.closed


def printed_then_trimmed(redis, before: int = 3, lines: int = 300, after: int = 4) -> JobLog:
    """A running job of a capped log (MAXLEN ~ 10) that logged ``before`` values, printed
    ``lines`` lines (Redis trims the values away), then logged ``after`` more values."""
    log = JobLog(redis, uuid.uuid4().hex, maxlen=10)
    log.create("sqrt", {}, None)
    log.started("test", 1)
    if before:
        write(log, 0, before)
    for k in range(0, lines, 50):
        log.append_many([("log", {"stream": "stdout", "text": f"line {k}", "attempt": 1}, 1.0)]
                        * 50)
    if after:
        write(log, before, before + after)
    return log


@pytest.mark.parametrize("transport", [TEXT, HTML])
def test_a_text_or_html_stream_that_lost_only_lines_to_a_trim_just_goes_on(redis, relay,
                                                                           transport):
    """A review's finding: a slow text or HTML viewer of a job that prints a lot was told, or
    cut, when a capped log trimmed the lines after its position, though it shows no line and
    had every value: a plain ``curl`` of the text stream just ended, without the job's end."""
    log = printed_then_trimmed(redis, before=0)
    viewer, client = held(relay, log, transport, chunked=True)  # from the start: 0 values
    green_wait(lambda: not viewer.slow and b"3" in bytes(client.data), what="catching up")
    assert not client.eof and not viewer.closed
    body = bytes(client.data).decode()
    assert "no longer kept" not in body
    for i in range(4):
        assert (f"<p>{i}: " if transport is HTML else f"\n{i}\n") in "\n" + body, body
    assert viewer.values == 4


def test_a_stream_that_lost_values_to_a_trim_is_still_told_with_lines_around_them(redis,
                                                                                  relay):
    log = printed_then_trimmed(redis, before=3)
    viewer, client = held(relay, log, HTML)
    green_wait(lambda: not viewer.slow and b"<p>6: " in bytes(client.data), what="catching up")
    assert viewer.values == 7  # counted from where the log goes on: values 3 to 6
    assert bytes(client.data).startswith(
        b'<p class="note">Values this page had not shown yet are no longer kept: it goes on '
        b"from value 3</p>")
    text, text_client = held(relay, log, TEXT, chunked=True)
    green_wait(lambda: text_client.eof, what="the cut")
    assert bytes(text_client.data) == b"" and text.closed


def test_a_trim_that_left_only_lines_still_tells_a_viewer_which_values_it_lost(redis, relay):
    """A review's finding: a viewer caught up past a trim that left only lines (no value
    read) was told entries were lost but not which values (``first_value`` null), and an
    HTML page could not say where its values go on. The first entry kept now says it."""
    log = printed_then_trimmed(redis, before=3, after=0)
    viewer, client = held(relay, log, SSE, cursor=2)
    green_wait(lambda: not viewer.slow and b"event: trimmed" in bytes(client.data),
               what="catching up")
    [trim] = [e for e in parse_events(bytes(client.data)) if e.event == "trimmed"]
    assert trim.json()["first_value"] == 3 and trim.json()["lost"] > 3, trim.json()
    html, html_client = held(relay, log, HTML, cursor=2)
    green_wait(lambda: not html.slow and b"no longer kept" in bytes(html_client.data),
               what="the HTML stream's line")
    assert bytes(html_client.data).startswith(
        b'<p class="note">Values this page had not shown yet are no longer kept: it goes on '
        b"from value 3</p>")


def test_a_viewer_leaving_the_fast_path_learns_its_count_of_values_from_memory(redis, relay):
    """The fast path does not count a viewer's values (one more store per viewer and burst);
    a viewer that leaves it is counted from the relay's memory, which holds its position."""
    log = running_job(redis)
    write(log, 0, 3)
    viewer, client = held(relay, log, TEXT)
    green_wait(lambda: not viewer.slow, what="history")
    assert viewer.values == 3
    relay.deliver(log.job_id, write(log, 3, 6))                # the fast path: not counted
    assert viewer.values == 3 and viewer.cursor == log.head().seq
    relay._catch_up(viewer, b"", "quiet")
    assert viewer.values == 6
    green_wait(lambda: not viewer.slow, what="back on the fast path")


def test_a_text_viewer_of_a_job_printing_more_than_memory_keeps_is_not_cut_for_lines(
        redis, relay):
    """A review's finding: a viewer whose values came on the fast path, then more lines than
    the relay's memory keeps, left the fast path with no count (memory kept no value), and
    was cut when the capped log trimmed nothing but lines."""
    log = running_job(redis)
    write(log, 0, 3)
    viewer, client = held(relay, log, TEXT, chunked=True)
    green_wait(lambda: not viewer.slow, what="history")
    relay.deliver(log.job_id, write(log, 3, 6))                 # the fast path: not counted
    line = ("log", {"stream": "stdout", "text": "x", "attempt": 1}, 1.0)
    for _ in range(12):                                         # 600 lines, all delivered
        seq = log.head().seq
        log.append_many([line] * 50)
        relay.deliver(log.job_id, log.read(seq, 50)[0])
    log.append_many([line] * 50)                                # not delivered: it is slow
    redis.xtrim(log.keys.log, maxlen=10, approximate=False)     # a cap trims all but lines
    relay._catch_up(viewer, b"", "slow")
    assert viewer.values == 6
    green_wait(lambda: not viewer.slow, what="back on the fast path")
    relay.deliver(log.job_id, write(log, 6, 7))
    green_wait(lambda: b"\n6\n" in bytes(client.data), what="value 6")
    assert not client.eof and not viewer.closed


def test_the_relays_memory_counts_the_values_up_to_a_seq_it_keeps():
    recent = RecentEntries(maxlen=100)
    entries = [Entry.parse(b'{"seq":%d,"ep":"E","kind":"%s"%s}'
                           % (seq, kind, b',"i":%d,"v":1' % i if kind == b"value" else b""))
               for seq, kind, i in [(5, b"value", 2), (6, b"log", 0), (7, b"log", 0),
                                    (8, b"value", 3), (9, b"log", 0)]]
    recent.add_read("j", entries, recent.reading("j"))
    assert [recent.values_through("j", seq, "E") for seq in (5, 6, 7, 8, 9)] == [3, 3, 3, 4, 4]
    assert recent.values_through("j", 4, "E") is None      # before what it keeps
    assert recent.values_through("j", 9, "F") is None      # another incarnation
    assert recent.values_through("k", 9, "E") is None
    # More lines than it keeps: the values before its oldest entry are what it trimmed.
    small = RecentEntries(maxlen=3)
    small.add_read("j", entries, small.reading("j"))       # keeps 7, 8, 9
    small.add_live("j", [Entry.parse(b'{"seq":%d,"ep":"E","kind":"log"}' % seq)
                         for seq in (10, 11, 12)])         # keeps 10, 11, 12
    assert small.values_through("j", 12, "E") == 4
    small.add_live("j", [Entry.parse(b'{"seq":14,"ep":"E","kind":"log"}')])  # a gap: anew
    assert small.values_through("j", 14, "E") is None


def test_an_html_stream_says_the_reset_in_a_line_and_goes_on(redis, relay):
    log, _, writer, viewer, client = watched(redis, relay, HTML, values=3)
    failover(log, writer, keep=3)
    relay.deliver(log.job_id, log.read(3, 10)[0])
    green_wait(lambda: b"reset" in client.data, what="the reset line")
    assert b'<p class="note reset">the job&#39;s log was reset (Redis lost entries): values ' \
           b"from #1 on were replaced</p>" in bytes(client.data) and not viewer.closed


def test_an_html_stream_from_a_start_shows_the_replaced_values_below_it_after_a_reset(redis,
                                                                                       relay):
    """A review's finding: a reset moved the viewer back to the first replaced value, but its
    ``?start=`` stayed, so the replaced values below it were never shown."""
    log = running_job(redis)
    writer = JobLog(redis, log.job_id)
    writer.begin()
    server, client = socket_ends(None, True)
    viewer = Viewer(log.job_id, SocketSink(server), HTML, start=4)
    relay.hold(viewer)
    green_wait(lambda: not viewer.slow, what="history")
    relay.deliver(log.job_id, write(writer, 0, 6))            # values 0..5; shown: 4 and 5
    green_wait(lambda: b"<p>5: 5</p>" in client.data, what="values 4 and 5")
    assert bytes(client.data) == b"<p>4: 4</p>\n<p>5: 5</p>\n"
    failover(log, writer, keep=4)                             # values 0 and 1 survived
    retry = JobLog(redis, log.job_id)
    retry.begin()
    retry.started("w2", 2)
    for i in range(2, 6):
        retry.value(i, f"new {i}")
    relay.deliver(log.job_id, log.read(4, 100)[0])
    green_wait(lambda: b"new 5" in client.data, what="the replaced values")
    after = bytes(client.data).split(b"were replaced</p>\n", 1)[1]
    assert after == b"".join(f"<p>{i}: new {i}</p>\n".encode() for i in range(2, 6))
    assert not viewer.closed


def test_a_log_gone_with_its_store_cuts_the_stream_so_the_client_asks_again(redis, relay, clock):
    log = running_job(redis)
    viewer, client = held(relay, log, SSE, chunked=True)
    green_wait(lambda: not viewer.slow, what="history")
    redis.delete(log.keys.meta, log.keys.log)                  # restarted empty
    clock.advance(0.25)
    relay.tick()
    green_wait(lambda: client.eof, what="the cut")
    assert not bytes(client.data).endswith(b"0\r\n\r\n") and viewer.closed


def test_a_multi_job_stream_resets_one_job_and_its_cursor_says_the_new_epoch(redis, relay):
    a, b = running_job(redis), running_job(redis)
    writer = JobLog(redis, a.job_id)
    writer.begin()
    conn, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="both histories")
    relay.deliver(a.job_id, write(writer, 0, 3))               # a: seqs 3..5
    failover(a, writer, keep=3)
    relay.deliver(a.job_id, a.read(3, 10)[0])
    green_wait(lambda: b"event: reset" in client.data, what="a's reset")

    def cursor() -> list[str]:
        """Every job's position, as the stream's last id says it."""
        ids = [e.id for e in parse_events(bytes(client.data), all_blocks=True) if e.id]
        return ids[-1].split(":")[1].split(".")

    # The reset goes out first, then a's catch-up reads on and writes the entry after it.
    green_wait(lambda: cursor()[0].startswith("4~"), what="a's entry after the reset")
    events = list(parse_events(bytes(client.data), all_blocks=True))
    [reset] = [e for e in events if e.event == "reset"]
    assert reset.json()["job"] == a.job_id and reset.json()["after"] == 3
    assert cursor() == [f"4~{a.head().epoch}", f"2~{b.head().epoch}"]
    assert not any(v.closed for v in conn.viewers)


def test_a_multi_job_streams_cursor_names_the_epoch_a_catch_up_from_memory_went_on_into(
        redis, relay):
    """A review's finding: a job of a multi-job stream catching up from memory across a
    retry's start (a new epoch that goes on from the old one) wrote its cursor as the new
    seq of the old epoch, which a reconnect then took for a loss, and was reset."""
    a, b = running_job(redis), running_job(redis)
    conn, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in conn.viewers), what="both histories")
    first = a.head().epoch
    relay._catch_up(conn.viewers[0], b"", "quiet")   # a's viewer goes to the log (not run yet)
    retry = JobLog(redis, a.job_id)
    retry.started("w2", 2)                           # seq 3, a new epoch (after seq 2 of the first)
    relay.deliver(a.job_id, a.read(2, 10)[0])        # kept in memory; the viewer is catching up
    green_wait(lambda: not conn.viewers[0].slow, what="a's catch-up from memory")
    ids = [e.id for e in parse_events(bytes(client.data), all_blocks=True) if e.id]
    second = a.head().epoch
    assert second != first and ids[-1].split(":")[1].split(".")[0] == f"3~{second}"


def test_recent_entries_never_serve_another_incarnation():
    recent = RecentEntries()
    old = [Entry(s, "value", s, str(s), {}, b"x%d" % s, "E1") for s in (3, 4, 5)]
    new = [Entry(s, "value", s, str(s), {}, b"y%d" % s, "E2") for s in (4, 5)]
    recent.add_live("j", old)
    assert recent.after("j", 3, "E1") == old[1:] and recent.after("j", 3, "E2") == []
    recent.add_live("j", new)                  # seqs going back: another incarnation
    assert recent.after("j", 3, "E2") == new and recent.after("j", 3, "E1") == []
    assert recent.is_current("j", 5, "E2") and not recent.is_current("j", 5, "E1")


# -- streams in step, written as one (Cohort) --------------------------------------------------

def in_step_streams(redis, relay: Relay, n: int, **kwargs):
    """Two running jobs, and ``n`` multi-job streams of them, caught up, then written a value
    of the first (seq 3) on their own, after which they are in step. Returns the logs and the
    streams with their clients."""
    a, b = running_job(redis), running_job(redis)
    held = [held_connection(relay, [a, b], **kwargs) for _ in range(n)]
    green_wait(lambda: not any(v.slow for c, _ in held for v in c.viewers), what="histories")
    relay.deliver(a.job_id, write(a, 0, 1))
    return a, b, held


def end_and_read_all(relay: Relay, held, logs: list[JobLog]) -> list[dict[str, list[int]]]:
    """Finish every job and deliver its end; for each stream, once it has ended, the seqs of
    each job's events in the order they came."""
    lasts = [log.head().seq for log in logs]
    for log, last in zip(logs, lasts):
        log.finished()
        relay.deliver(log.job_id, log.read(last, 10)[0])
    seqs = []
    for conn, client in held:
        green_wait(lambda: client.eof, what="the end of the stream")
        got = job_events(client.data)
        seqs.append({log.job_id: [s for j, s in got if j == log.job_id] for log in logs})
    return seqs


def test_streams_of_the_same_jobs_in_step_are_written_as_one_with_the_same_bytes(redis, relay):
    a, b, held = in_step_streams(redis, relay, 5)
    cohort = held[0][0].cohort
    assert cohort is not None and all(conn.cohort is cohort for conn, _ in held)
    sends, real = [], [conn.sink.sock for conn, _ in held]

    class Spy:
        """A socket that notes what is sent through it."""

        def __init__(self, sock):
            self.sock = sock

        def send(self, data) -> int:
            sends.append(bytes(data))
            return self.sock.send(data)

        def __getattr__(self, attr):
            return getattr(self.sock, attr)

    for conn, _ in held:
        conn.sink.sock = Spy(conn.sink.sock)
    for i in range(1, 4):
        assert relay.deliver(a.job_id, write(a, i, i + 1)) == 5
        assert relay.deliver(b.job_id, write(b, i - 1, i)) == 5
    assert len(sends) == 30 and all(s == sends[k - k % 5] for k, s in enumerate(sends))
    for (conn, _), sock in zip(held, real):
        conn.sink.sock = sock
    for seqs in end_and_read_all(relay, held, [a, b]):
        assert seqs == {a.job_id: list(range(1, 8)), b.job_id: list(range(1, 7))}
    assert all(conn.cohort is None for conn, _ in held)  # the jobs' ends took them out


def test_a_stream_that_cannot_take_its_cohorts_write_leaves_it_and_loses_nothing(redis, relay):
    a, b, held = in_step_streams(redis, relay, 3, rcvbuf=4096, read=False)
    slow = held[1][0]
    held[0][1].start()
    held[2][1].start()
    assert slow.cohort is held[0][0].cohort is not None
    for i in range(1, 60):
        relay.deliver(a.job_id, write(a, i, i + 1, size=500))
        last = write(b, i - 1, i, size=500)
        relay.deliver(b.job_id, last)
        # The other two read each write before the next (their reader threads could lag on a
        # busy machine, and they are the ones that keep up here); the frozen one reads nothing.
        for _, client in (held[0], held[2]):
            green_wait(lambda: has_read(client, b.job_id, last[-1].seq), what="a fast read")
    assert slow.cohort is None and held[0][0].cohort is held[2][0].cohort is not None
    held[1][1].start()
    for seqs in end_and_read_all(relay, held, [a, b]):
        assert seqs == {a.job_id: list(range(1, 64)), b.job_id: list(range(1, 63))}


def test_a_stream_that_leaves_while_its_cohort_gathers_a_write_still_gets_it(redis, clock):
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=0.05, clock=clock, green=True)
    a, b, held = in_step_streams(redis, relay, 3)
    assert held[0][0].cohort is not None
    relay.on_publications({a.job_id: write(a, 1, 2)})      # seq 4: gathered, not written yet
    leaving, client = held[1]
    relay._catch_up(leaving.viewers[1], b"", "quiet")      # b's viewer goes to the log
    assert leaving.cohort is None and held[0][0].cohort is held[2][0].cohort
    green_wait(lambda: job_events(client.data)[-1:] == [(a.job_id, 4)], what="a's value")
    relay.flush_gathered()
    for seqs in end_and_read_all(relay, held, [a, b]):
        assert seqs == {a.job_id: [1, 2, 3, 4, 5], b.job_id: [1, 2, 3]}


def test_a_stream_that_joins_a_cohort_in_the_slice_of_its_write_does_not_get_that_write_twice(
        redis, clock):
    """A review's finding: a stream on its own and a cohort in step with it gathered the same
    entry, the stream first in the list (it had gathered an earlier one before the cohort
    existed). Both writes were made before any was sent; the stream, written, joined the
    cohort, and the cohort's write then went to it as well: the entry twice."""
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=30.0, clock=clock, green=True)
    a, b, held = in_step_streams(redis, relay, 2)
    cohort = held[0][0].cohort
    assert cohort is not None and held[1][0].cohort is cohort
    alone, client = held_connection(relay, [a, b])
    green_wait(lambda: not any(v.slow for v in alone.viewers), what="its history")
    relay.deliver(a.job_id, write(a, 1, 2))   # seq 4, written at once: all three at a's 4
    relay._leave(alone)                        # on its own again, as one back from its log
    assert alone.cohort is None and cohort.in_step(alone)
    relay.on_publications({b.job_id: write(b, 0, 1)})     # b's seq 3: gathered
    assert set(relay._gathered) == {cohort, alone}
    relay._gathered.sort(key=lambda item: item is cohort)  # the stream first, as it came
    relay.flush_gathered()
    green_wait(lambda: job_events(client.data)[-1:] == [(b.job_id, 3)], what="b's value")
    for seqs in end_and_read_all(relay, [*held, (alone, client)], [a, b]):
        assert seqs == {a.job_id: [1, 2, 3, 4, 5], b.job_id: [1, 2, 3, 4]}


def test_a_heartbeat_never_names_entries_its_cohort_has_gathered_and_not_written(redis, clock):
    relay = Relay(PlayedBroker(redis), heartbeat=0.2, write_delay=5.0, clock=clock, green=True)
    a, b, held = in_step_streams(redis, relay, 2)
    assert held[0][0].cohort is not None
    relay.on_publications({a.job_id: write(a, 1, 2)})      # seq 4, gathered for 5 s
    clock.advance(1.0)
    relay.tick()
    relay.flush_gathered()
    for conn, client in held:
        green_wait(lambda: job_events(client.data)[-1:] == [(a.job_id, 4)], what="a's value")
        assert ids_never_ahead(conn, bytes(client.data), [a, b]) >= 2


def test_a_lone_stream_whose_job_goes_to_the_log_is_not_in_a_cohort_while_it_catches_up(redis,
                                                                                       clock):
    relay = Relay(PlayedBroker(redis), heartbeat=5, write_delay=0.05, clock=clock, green=True)
    a, b, held = in_step_streams(redis, relay, 1)
    (conn, client), = held
    assert conn.cohort is not None
    relay.on_publications({a.job_id: write(a, 1, 2)})      # seq 4: gathered, not written yet
    write(b, 0, 2)                                          # not announced: only in the log
    relay._catch_up(conn.viewers[1], b"", "quiet")
    assert conn.cohort is None
    relay.deliver(b.job_id, write(b, 2, 3))                 # seq 5, while b's viewer catches up
    relay.deliver(a.job_id, write(a, 2, 3))
    [seqs] = end_and_read_all(relay, held, [a, b])
    assert seqs == {a.job_id: [1, 2, 3, 4, 5, 6], b.job_id: [1, 2, 3, 4, 5, 6]}


def test_subscriptions_whose_wait_is_cut_short_are_given_back(redis, monkeypatch):
    """A code review's finding: leases were given back only when Redis did not confirm in
    time; a wait cut short otherwise (a GreenletExit as the process stops) kept the jobs
    subscribed with nobody to release them."""
    relay = Relay(Broker(redis), heartbeat=30, green=True)

    def cut_short(job_id: str, timeout: float) -> bool:
        """The waiting greenlet is killed."""
        raise gevent.GreenletExit

    monkeypatch.setattr(relay.broker, "wait_subscribed", cut_short)
    try:
        with pytest.raises(gevent.GreenletExit):
            relay.leases([uuid.uuid4().hex, uuid.uuid4().hex])
        subs = relay.broker._subs.values()
        assert len(subs) == 2 and all(sub.refs == 0 for sub in subs)
    finally:
        relay.stop(5)
