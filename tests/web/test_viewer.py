"""A multi-job stream's gathered write: its bytes, and when streams may share them.

Pure logic: connections without sockets, fed frames by hand, as the relay's fast path does.
"""

from __future__ import annotations

from jobcast.web.events import digest, job_sse
from jobcast.web.frames import LAST_CHUNK, chunk
from jobcast.web.viewer import Connection, Viewer

JOBS = ["a" * 32, "b" * 32]


def stream(cursors: list[int], *, chunked: bool = True) -> Connection:
    """A stream of JOBS whose viewers stand at ``cursors`` (epoch "e")."""
    conn = Connection(None, digest(JOBS))
    for job_id, cursor in zip(JOBS, cursors):
        conn.add(Viewer(job_id, None, job_sse(job_id), cursor=cursor, epoch="e"))
    conn.chunked = chunked
    return conn


def gather(conn: Connection, frames: bytes, cursor: int, end: bool = False) -> None:
    """The first job's ``frames`` join ``conn``'s next write, which moves it to ``cursor``."""
    viewer = conn.viewers[0]
    viewer.cursor = cursor
    viewer.done = end
    conn.gather(viewer, frames, end)


def test_a_gathered_write_is_the_frames_then_every_jobs_cursor_as_one_chunk():
    conn = stream([4, 9])
    gather(conn, b"event: value\ndata: x\n\n", 5)
    data, writer, ended = conn.gathered()
    assert data == chunk(b"event: value\ndata: x\n\nid: %s:5~e.9~e\n\n" % digest(JOBS))
    assert writer is conn.viewers[0] and ended == [] and conn.parts == []


def test_streams_of_the_same_jobs_at_the_same_cursors_share_one_write():
    frames = b"event: value\ndata: x\n\n"
    made: dict = {}
    writes = []
    for _ in range(3):
        conn = stream([4, 9])
        gather(conn, frames, 5)
        writes.append(conn.gathered(made)[0])
    assert writes[0] is writes[1] is writes[2]
    assert len(made) == 1


def test_a_stream_at_another_cursor_gets_its_own_write_in_the_same_burst():
    # The same frames, but its second job stands elsewhere (it caught up on its own): its
    # checkpoint, and so its bytes, differ, and a shared write would resume it wrongly.
    frames = b"event: value\ndata: x\n\n"
    made: dict = {}
    ahead, behind = stream([4, 9]), stream([4, 7])
    for conn in (ahead, behind):
        gather(conn, frames, 5)
    first, second = ahead.gathered(made)[0], behind.gathered(made)[0]
    assert first.endswith(b":5~e.9~e\n\n\r\n") and second.endswith(b":5~e.7~e\n\n\r\n")
    assert second == stream([5, 7]).wire(frames, False)


def test_streams_sent_other_frames_or_framed_otherwise_get_their_own_writes():
    made: dict = {}
    one, other, plain = stream([4, 9]), stream([4, 9]), stream([4, 9], chunked=False)
    gather(one, b"event: value\ndata: 1\n\n", 5)
    gather(other, b"event: value\ndata: 2\n\n", 5)
    gather(plain, b"event: value\ndata: 1\n\n", 5)
    writes = [conn.gathered(made)[0] for conn in (one, other, plain)]
    assert len(set(writes)) == 3 and len(made) == 3
    # The plain one is the same frames and cursor, unchunked: the first is its one chunk.
    assert b"data: 2" in writes[1] and writes[0] == chunk(writes[2])


def test_the_write_that_ends_a_streams_last_job_ends_its_body_and_no_other():
    # Both streams end job a in this write; only the one whose job b is done too ends.
    frames = b"event: end\ndata: x\n\n"
    made: dict = {}
    finished, going_on = stream([4, 9]), stream([4, 9])
    finished.viewers[1].done = True
    for conn in (finished, going_on):
        gather(conn, frames, 5, end=True)
    last, not_last = finished.gathered(made), going_on.gathered(made)
    assert last[0].endswith(LAST_CHUNK) and not not_last[0].endswith(LAST_CHUNK)
    assert last[2] == [finished.viewers[0]] and not_last[2] == [going_on.viewers[0]]


CLOSED_WHILE_WAITING = """
import errno, socket, gevent
from jobcast.web.viewer import SocketSink

ours, theirs = socket.socketpair()
ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
ours.setblocking(False)
try:
    while True:
        ours.send(b"x" * 4096)  # the client reads nothing: the next write waits
except BlockingIOError:
    pass
sink, got = SocketSink(ours), []

def writer():
    try:
        got.append(sink.wait_writable(5))
    except OSError as exc:
        got.append(exc.errno)

waiting = gevent.spawn(writer)
gevent.sleep(0)     # the writer runs until it waits for room
assert sink.waiting is not None
sink.close()        # the stream is cut while that write waits
waiting.join(5)
for _ in range(500):  # the descriptor is closed on a later turn of the loop
    if ours.fileno() == -1:
        break
    gevent.sleep(0.01)
assert got == [errno.EBADF], got
assert ours.fileno() == -1
print("ok")
"""


def test_a_socket_closed_while_a_greenlet_waits_to_write_wakes_it_and_the_process_lives():
    """A review's finding, met in a test: a multi-job stream cut by one job while another
    job's write waited for room closed the descriptor under gevent's write watcher, and libev
    aborted the web process ("I/O watcher with invalid fd"). Run in a process of its own."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CLOSED_WHILE_WAITING], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
