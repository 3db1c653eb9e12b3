"""A viewer: one stream the relay writes to, and the two kinds of sink its bytes go into.

Every stream, whatever the server, is a :class:`Viewer` of one job: a transport (text, SSE,
HTML), a cursor (the seq of the last entry written to it, and the epoch of the log's
incarnation it follows) and a sink:

- :class:`SocketSink`: the connection's own OS socket, taken over from gunicorn by Jobcast's
  worker class (:mod:`jobcast.web.handover`). The relay writes to it with non-blocking
  ``send()`` from its own greenlet; the request is over.
- :class:`QueueSink`: a bounded buffer of bytes that the request's WSGI generator drains, under
  any other server (gunicorn's own gevent worker, Flask's dev server). The relay writes to it
  the same bytes, the same way; when it is full, the viewer leaves the fast path and catches
  up from the log, exactly as a socket that would block.

A viewer owns what it holds while it streams, its :class:`Lease` on the job's subscription and
its stream slot, and gives them back once, whoever ends it (:meth:`Viewer.release`).

A stream of several jobs (``GET /events?job=a&job=b``) is a :class:`Connection`: one sink, one
slot, and a viewer per job, each with its own cursor and lease. Every write to it ends with the
cursor of every job (:meth:`Connection.checkpoint`, an SSE ``id:``), so ``Last-Event-ID``
resumes each job exactly; the connection's lock keeps two jobs' bytes from interleaving.
"""

from __future__ import annotations

import enum
import errno
import select
import socket
import threading
from collections import deque
from typing import Callable, Protocol

from jobcast.web.frames import LAST_CHUNK, Transport, chunk


class Sink(Protocol):
    """Where a viewer's bytes go."""

    def send(self, data: bytes) -> int:
        """Take as much of ``data`` as possible without waiting; how much was taken (0 when
        none could be). Raises OSError once the client is gone."""

    def wait_writable(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`send` can take something; False if ``timeout`` passed first."""

    def alive(self) -> bool:
        """False once the client has closed the connection (reads nothing)."""

    def close(self) -> None:
        """End the stream."""

    def abort(self) -> None:
        """End the stream without its end (no last chunk): a cut, which its client sees as a
        broken body, not as the job's end, and resumes from its position."""

    def on_peer_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` as soon as the client closes the connection, where the sink can
        see it (else never: the next write or heartbeat finds the client gone)."""


def drained_alive(sock: socket.socket) -> bool:
    """False once the peer of ``sock`` (non-blocking) has closed or reset the connection.

    The request was read long ago, so anything the client sends now is not for us: it is read
    and dropped, so a stray byte (and then a close) cannot make a gone client look alive.
    """
    try:
        while True:
            data = sock.recv(4096, socket.MSG_DONTWAIT)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


class SocketSink:
    """A connection's OS socket, non-blocking, owned by the relay."""

    __slots__ = ("sock", "green", "watcher", "waiting")

    def __init__(self, sock: socket.socket, *, green: bool = True):
        """Write to ``sock`` (non-blocking); wait for it with gevent when ``green``."""
        self.sock = sock
        self.green = green
        self.watcher = None  # the read watcher of on_peer_close
        self.waiting = None  # the write watcher of a greenlet in wait_writable

    def send(self, data) -> int:
        """One non-blocking ``send()``."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    def wait_writable(self, timeout: float | None = None) -> bool:
        """Wait for room in the socket's send buffer; False after ``timeout`` s without."""
        if self.green:
            from gevent import get_hub
            from gevent.socket import wait

            # gevent's wait_write, with the watcher kept: close() must wake this greenlet
            # before the descriptor goes (see close()).
            io = self.waiting = get_hub().loop.io(self.sock.fileno(), 2)  # 2: writable
            try:
                wait(io, timeout=timeout, timeout_exc=socket.timeout)
            except socket.timeout:
                return False
            finally:
                self.waiting = None
                io.close()
            return True
        return bool(select.select([], [self.sock], [], timeout)[1])

    def send_all(self, data: bytes, timeout: float) -> bool:
        """Write all of ``data``, waiting for room; False once the peer accepted no byte for
        ``timeout`` s. OSError when it is gone."""
        view = memoryview(data)
        while view:
            n = self.send(view)
            if n:
                view = view[n:]
            elif not self.wait_writable(timeout):
                return False
        return True

    def alive(self) -> bool:
        """False once the peer has closed the connection (or reset it)."""
        return drained_alive(self.sock)

    def on_peer_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in a new greenlet) as soon as the peer closes or resets the
        connection, not at the next write or heartbeat: a browser that changes its set of
        jobs closes one stream and opens the next at once, and must not count twice
        meanwhile. Under gevent only (a libev read watcher costs no greenlet while it waits).
        """
        if not self.green or self.watcher is not None:
            return
        import gevent

        watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)  # 1: readable

        def readable() -> None:
            """In the hub: a stray byte is read and dropped (keep watching); a close ends it."""
            if drained_alive(self.sock):
                return
            watcher.stop()
            gevent.spawn(callback)

        self.watcher = watcher
        watcher.start(readable)

    def close(self) -> None:
        """Close the connection (the read watcher first: its descriptor may be reused).

        A greenlet waiting to write to it (another job's write to a multi-job stream that is
        cut) is woken first, with OSError (EBADF), and the descriptor closed only then:
        libev aborts the process at an active watcher of a closed descriptor.
        """
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        waiting = self.waiting
        if waiting is not None and waiting.callback is not None:
            from gevent import get_hub
            from gevent.socket import cancel_wait_ex

            get_hub().cancel_waits_close_and_then([waiting], cancel_wait_ex, self._close_socket)
            return
        self._close_socket()

    def abort(self) -> None:
        """Close the connection: the body ends with no last chunk (the relay writes one only
        to end a stream), so the client sees a cut."""
        self.close()

    def _close_socket(self) -> None:
        """Close the OS socket (once: a second close is a no-op)."""
        try:
            self.sock.close()
        except OSError:
            pass


class QueueSink:
    """A bounded buffer of bytes between the relay and a request's WSGI generator."""

    __slots__ = ("limit", "_alive", "_chunks", "_size", "_cond", "closed", "aborted")

    def __init__(self, limit: int, alive: Callable[[], bool] | None = None):
        """Hold at most ``limit`` bytes; ``alive`` checks the client (default: assume so)."""
        self.limit = limit
        self._alive = alive
        self._chunks: deque[bytes] = deque()
        self._size = 0
        # threading, which gevent's worker patches into greenlet primitives.
        self._cond = threading.Condition(threading.Lock())
        self.closed = False
        self.aborted = False

    def send(self, data) -> int:
        """Buffer what fits of ``data``."""
        with self._cond:
            if self.closed:
                raise BrokenPipeError("the stream has ended")
            room = self.limit - self._size
            if room <= 0:
                return 0
            part = bytes(data[:room]) if len(data) > room else bytes(data)
            self._chunks.append(part)
            self._size += len(part)
            self._cond.notify_all()
            return len(part)

    def wait_writable(self, timeout: float | None = None) -> bool:
        """Wait until the generator has drained the buffer (or it was closed); False after
        ``timeout`` s without."""
        with self._cond:
            return self._cond.wait_for(lambda: self._size < self.limit or self.closed, timeout)

    def alive(self) -> bool:
        """Ask the client check given at creation."""
        return self._alive() if self._alive is not None else True

    def close(self) -> None:
        """No more bytes will come: the generator sends what is buffered, then ends."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """End the stream without its end: once what is buffered is taken, :meth:`get` raises,
        so the server cuts the body (no last chunk) and the client resumes."""
        with self._cond:
            self.aborted = True
            self.closed = True
            self._cond.notify_all()

    def on_peer_close(self, callback: Callable[[], None]) -> None:
        """Never calls ``callback``: the client is the server's, behind the request's generator,
        and :meth:`alive` (the heartbeat's check) is all a queue can ask."""

    def get(self, timeout: float | None = None) -> bytes | None:
        """What is buffered, waiting up to ``timeout`` s for something (b"" if nothing came);
        None once the stream has ended and everything was taken; BrokenPipeError once it was
        aborted and everything was taken (the server then closes the connection quietly)."""
        with self._cond:
            self._cond.wait_for(lambda: self._chunks or self.closed, timeout)
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._size = 0
                self._cond.notify_all()
                return data
            if self.aborted:
                raise BrokenPipeError(errno.EPIPE, "the stream was cut: the client resumes")
            return None if self.closed else b""


class Lease:
    """A viewer's hold on its job's subscription; released once."""

    __slots__ = ("_release", "released")

    def __init__(self, release: Callable[[], None]):
        """``release`` gives the subscription back."""
        self._release = release
        self.released = False

    def release(self) -> None:
        """Give the subscription back (idempotent)."""
        if not self.released:
            self.released = True
            self._release()


class ViewerState(enum.Enum):
    """Where a viewer stands: admitted, held by the relay, or ended."""

    NEW = "new"
    HELD = "held"
    CLOSED = "closed"


class Connection:
    """One stream carrying several jobs: its sink, its resources, and its jobs in order."""

    __slots__ = ("sink", "chunked", "viewers", "digest", "lock", "resources", "retry",
                 "last_write", "took", "closed", "parts", "got", "writer", "ended_now",
                 "cohort")

    def __init__(self, sink: Sink | None, digest: bytes, *, retry: int = 2000,
                 resources: tuple = ()):
        """A connection whose cursor ids start with ``digest`` (which names its job list).

        ``retry`` is the reconnection delay it was told, for its goodbye; ``resources`` (its
        stream slot) are given back when its last job ends.
        """
        self.sink = sink
        self.chunked = False
        self.viewers: list[Viewer] = []
        self.digest = digest
        self.lock = None  # the relay's: held by whoever is writing to the sink
        self.resources = resources
        self.retry = retry
        self.last_write = 0.0
        self.took = 0.0  # when the client last took bytes of a write that waits for it
        self.closed = False
        # The write the relay gathers for it: the frames of its jobs, the viewer that writes
        # them (an ended job's, if any: the write then ends it) and the jobs it ends. Kept from
        # one write to the next, so that gathering allocates nothing the garbage collector
        # would have to follow.
        self.parts: list[bytes] = []
        self.got: set[Viewer] = set()  # the jobs (viewers) with a part in it
        self.writer: Viewer | None = None
        self.ended_now: list[Viewer] = []
        self.cohort: Cohort | None = None  # the streams it is written with, when in step

    def gather(self, viewer: "Viewer", frames: bytes, end: bool) -> None:
        """``viewer``'s new ``frames`` join the next write (``end``: its job's terminal entry
        is among them, and the write is then made by it, so that it ends the job)."""
        self.parts.append(frames)
        self.got.add(viewer)
        if end:
            self.ended_now.append(viewer)
        if end or not self.ended_now:
            self.writer = viewer

    def gathered(self, made: dict | None = None) -> tuple[bytes, "Viewer", list["Viewer"]]:
        """The gathered write, framed (see :meth:`wire`), its writer and the viewers it ends;
        the connection then gathers anew.

        ``made``: the writes already made in this burst, by what they are made of. Streams of
        the same jobs, sent the same frames and at the same cursors, get the same bytes: a
        burst to many such streams frames and encodes their checkpoint once, not per stream.
        """
        ended = self.ended_now
        if made is None:
            data = self.wire(b"".join(self.parts), bool(ended))
        else:
            last = bool(ended) and all(v.done for v in self.viewers)
            # Everything wire() reads: the same key, the same bytes.
            key = (self.digest, self.chunked, last, tuple(self.parts),
                   tuple([(v.cursor, v.epoch) for v in self.viewers]))
            data = made.get(key)
            if data is None:
                data = made[key] = self.wire(b"".join(self.parts), bool(ended))
        writer = self.writer
        self.parts.clear()
        self.got.clear()
        self.writer = None
        if ended:
            self.ended_now = []
        return data, writer, ended

    def complete(self) -> bool:
        """True once every job of the stream has a part in the gathered write."""
        return len(self.got) == len(self.viewers)

    def add(self, viewer: "Viewer") -> None:
        """Carry ``viewer``'s job, next in the cursor's order."""
        viewer.conn = self
        viewer.sink = self.sink
        self.viewers.append(viewer)

    def attach(self, sink: Sink, *, chunked: bool = False) -> None:
        """Write to ``sink`` (framing the body as HTTP/1.1 chunks when ``chunked``)."""
        self.sink = sink
        self.chunked = chunked
        for v in self.viewers:
            v.sink = sink
            v.chunked = chunked
            v.kind = (v.transport, chunked)

    def checkpoint(self) -> bytes:
        """The cursor of every job, as the SSE id that ends each write: ``<seq>~<epoch>`` per
        job (``<seq>`` for a log without an epoch)."""
        return b"id: %s:%s\n\n" % (self.digest, b".".join([
            b"%d~%s" % (v.cursor, v.epoch.encode()) if v.epoch else b"%d" % v.cursor
            for v in self.viewers]))

    def wire(self, frames: bytes, end: bool) -> bytes:
        """``frames`` and the checkpoint, framed for the connection; the end of the body too
        when ``end`` and no other job of the connection is still open."""
        payload = frames + self.checkpoint()
        last = end and all(v.done for v in self.viewers)
        if self.chunked:
            return chunk(payload) + LAST_CHUNK if last else chunk(payload)
        return payload

    def ended(self, viewer: "Viewer") -> None:
        """``viewer``'s job ended (or it was dropped); close once none is left open."""
        if not self.closed and all(v.state is ViewerState.CLOSED for v in self.viewers):
            self.close()

    def close(self) -> None:
        """Close the sink and give back the connection's resources (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.sink is not None:
            self.sink.close()
        for resource in self.resources:
            resource.release()


class Cohort:
    """Multi-job streams of the same jobs, in step: every job of each on the fast path, at the
    same cursors. A burst is framed once for all of them and written to each with one
    ``send()``, with nothing done per stream or per job in between; a stream that falls out of
    step (a partial write, a gap, another epoch, a job's end, a catch-up) leaves, and is written
    on its own.

    Its members' viewers keep their own cursors, set as the cohort gathers: whatever reads a
    viewer (a catch-up, a goodbye) finds it exact, in the cohort or out of it.
    """

    __slots__ = ("key", "conns", "index", "parts", "got")

    def __init__(self, key: tuple, job_ids: list[str]):
        """An empty cohort of the streams of ``job_ids`` (in their order) named by ``key``."""
        self.key = key
        # In the order they joined: first come, first written.
        self.conns: dict[Connection, None] = {}
        self.index = {job_id: k for k, job_id in enumerate(job_ids)}
        self.parts: list[bytes] = []  # the frames gathered for the next write
        self.got: set[str] = set()  # the jobs with a part in it

    def lead(self) -> Connection:
        """The member that stands for all: they are in step."""
        return next(iter(self.conns))

    def in_step(self, conn: Connection) -> bool:
        """True if ``conn`` stands where the members do: the same jobs, framed alike, at the
        same cursors of the same epochs."""
        lead = self.lead()
        if conn.chunked != lead.chunked or len(conn.viewers) != len(lead.viewers):
            return False
        for v, w in zip(conn.viewers, lead.viewers):
            if (v.job_id != w.job_id or v.cursor != w.cursor or v.epoch != w.epoch
                    or v.transport is not w.transport):
                return False
        return True

    def gather(self, job_id: str, frames: bytes, last: int) -> None:
        """``frames`` of ``job_id``, up to seq ``last``, join the next write of every member."""
        self.parts.append(frames)
        self.got.add(job_id)
        k = self.index[job_id]
        for conn in self.conns:
            conn.viewers[k].cursor = last

    def gathered(self) -> bytes:
        """The gathered write, framed with the members' cursor; the cohort then gathers anew."""
        data = self.lead().wire(b"".join(self.parts), False)
        self.clear()
        return data

    def clear(self) -> None:
        """Drop what was gathered."""
        self.parts.clear()
        self.got.clear()

    def complete(self) -> bool:
        """True once every job of the cohort has a part in the gathered write."""
        return len(self.got) == len(self.index)


class Viewer:
    """One stream of one job, from the entry after ``cursor`` on."""

    __slots__ = ("job_id", "sink", "transport", "chunked", "kind", "start", "cursor", "epoch",
                 "values", "slow", "missed", "done", "state", "resources", "on_close", "conn",
                 "retry")

    def __init__(self, job_id: str, sink: Sink | None, transport: Transport, *,
                 chunked: bool = False,
                 cursor: int = 0, start: int = 0, epoch: str | None = None,
                 resources: tuple = (), on_close: Callable[[], None] | None = None):
        """A viewer of ``job_id`` that has been sent every entry up to seq ``cursor`` of the
        log's incarnation ``epoch`` (None: a log without one, or not known yet).

        ``chunked``: the relay frames the body as HTTP/1.1 chunks itself (a taken socket).
        ``start``: values with an index below it are not sent (the text and HTML streams'
        ``?start=``). ``resources`` (a Lease, a stream slot: anything with ``release()``) are
        given back when the viewer ends; then ``on_close`` is called. A viewer whose
        connection is taken over only once its headers are out gets its sink then
        (:meth:`attach`).
        """
        self.job_id = job_id
        self.sink = sink
        self.transport = transport
        self.chunked = chunked
        self.kind = (transport, chunked)  # viewers of one kind are sent the same bytes
        self.start = start
        self.cursor = cursor
        self.epoch = epoch
        # How many values it has been sent up to its cursor, when known (never more than
        # it has: a stale count is lower), so a text or HTML stream whose position a capped
        # log trimmed is told only when values were lost, not lines it does not show.
        self.values: int | None = 0 if cursor == 0 else None
        self.slow = False   # off the fast path: a catch-up writes to it
        self.missed = 0     # the newest seq the fast path skipped while it was slow
        self.done = False   # its terminal entry was written
        self.state = ViewerState.NEW
        self.resources = resources
        self.on_close = on_close
        self.conn: Connection | None = None  # set when it is one job of a multi-job stream
        self.retry = 2000  # the reconnection delay its SSE stream was told (milliseconds)

    def attach(self, sink: Sink, *, chunked: bool = False) -> None:
        """Write to ``sink`` (framing the body as HTTP/1.1 chunks when ``chunked``)."""
        self.sink = sink
        self.chunked = chunked
        self.kind = (self.transport, chunked)

    @property
    def closed(self) -> bool:
        """True once the viewer has ended."""
        return self.state is ViewerState.CLOSED

    def wire(self, payload: bytes, end: bool = False) -> bytes:
        """``payload`` framed for this connection, plus the end of the body if ``end``."""
        if self.conn is not None:
            return self.conn.wire(payload, end)
        if self.chunked:
            return chunk(payload) + LAST_CHUNK if end else chunk(payload)
        return payload

    def release(self) -> None:
        """End the viewer: close its sink, give back its resources (idempotent)."""
        if self.state is ViewerState.CLOSED:
            return
        self.state = ViewerState.CLOSED
        if self.conn is None and self.sink is not None:
            self.sink.close()
        for resource in self.resources:
            resource.release()
        if self.conn is not None:
            self.conn.ended(self)
        if self.on_close is not None:
            self.on_close()

    def abandon(self) -> None:
        """The response closed: end the viewer unless the relay took it (the request of a
        held viewer ends long before its stream does)."""
        if self.state is ViewerState.NEW:
            self.release()
