"""The load generator: many streaming HTTP/1.1 viewers in one asyncio (uvloop) process.

Started by :mod:`bench.run` with a JSON spec on its first stdin line; it answers on stdout,
one JSON object a line, to the commands that follow on stdin:

- (spec)   ``{"host", "port", "cpu", "ramp", "batch", "pattern", "history", "accept",
           "reconnect", "retry", "viewers": [[path, role], ...]}``
           where role is ``"v"`` (viewer), ``"p"`` (probe: a viewer that also times values)
           or ``"f"`` (frozen: sends its request, then never reads). ``history`` is false for a server that sends no history (flask-sse): its
           viewers start counting at the first value they get. ``accept`` is the request's
           Accept header (``text/event-stream`` for SSE: Nchan refuses an EventSource
           subscriber without it). Answers ``{"connected": n}``.
- ``stats``  → ``{"received": total, "min": fewest received by one counting viewer, ...}``
- ``report`` → totals, loss/ordering errors, latency histograms and this process's CPU; exits.

With ``"reconnect": true`` every viewer is an EventSource instead (:class:`Resumer`): when its
connection ends or fails it waits the server's last ``retry:`` (``"retry"`` ms until one came)
and reconnects with ``Last-Event-ID``, as a browser does; it counts each value it gets once,
and the duplicates and gaps apart, and notes when it first got a value newer than the last
one before its first drop (the reconnect-storm scenario of :mod:`bench.run`).

Probes measure produce-to-receive latency (with the kernel's receive timestamp) on the values
produced after they joined the stream, that is once its response headers have arrived (older values are its history, not
latency). The time from opening the connection to those headers, the wait to be admitted, is
recorded apart ("first byte", in 0.1 ms bins). Latencies go into histograms of 0.01 ms bins
(:data:`LAT_BINS_PER_MS`: a 5 ms median is then read to 0.2 %, not 2 %), one for values
produced while this process was still opening connections (the connect storm) and one for
after, so the orchestrator can report both.

Viewers parse nothing but the values: every value's text begins ``i=<index> t=<unix time>``
and ``pattern`` (a regex prefix per server and endpoint) says where a value starts, so a
value is counted once however the server frames it (chunked text lines, SSE, JSON in SSE).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import struct
import sys
import threading
import time


LAT_BINS_PER_MS = 100
"""Latency histogram bins per millisecond (10 µs bins)."""

# Linux's SO_TIMESTAMPNS (Python does not name it): a receive timestamp as a struct timespec.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESTAMP_CMSG = socket.CMSG_SPACE(16)  # struct timespec: two 64-bit fields


class Viewer:
    """One streaming connection: counts values and checks they are contiguous; a probe
    (role ``"p"``) also times them.

    A probe reads its socket itself (``recvmsg`` from the event loop's reader callback) so that
    each read carries the kernel's receive timestamp (``SO_TIMESTAMPNS``): latency is then the
    time the bytes reached the probe's socket, not the time this process, which plays hundreds
    of viewers on one core, got round to them. Other viewers read through an asyncio protocol
    (:class:`Reading`), which costs this process less.
    """

    __slots__ = ("gen", "request", "role", "pattern", "sock", "transport", "tail", "count", "last",
                 "errors", "closed", "status", "headers_done", "connected_at", "joined_at", "lasts")

    def __init__(self, gen: "LoadGen", request: bytes, role: str, pattern: re.Pattern):
        self.gen = gen
        self.request = request
        self.role = role
        self.pattern = pattern
        self.lasts: dict[bytes, int] = {}  # per job, when one connection carries several
        self.sock: socket.socket | None = None  # a probe's own socket
        self.transport = None  # the asyncio transport of any other viewer
        self.tail = b""
        self.count = 0
        self.last = -1
        self.errors = 0
        self.closed = False
        self.connected_at = 0.0
        self.joined_at = float("inf")
        self.status = 0
        self.headers_done = False

    def connected(self, loop, sock: socket.socket) -> None:
        """The connection is open: send the request and start reading (unless frozen)."""
        self.sock = sock
        self.connected_at = time.time()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # no kernel timestamps here: readable() falls back to the time of reading
        sock.sendall(self.request)
        loop.add_reader(sock.fileno(), self.readable, loop)

    def readable(self, loop) -> None:
        """Read what arrived, with its kernel timestamp."""
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(262144, TIMESTAMP_CMSG)
        except BlockingIOError:
            return
        except OSError:
            data, anc = b"", []
        if not data:
            loop.remove_reader(self.sock.fileno())
            self.closed = True
            return
        now = None
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                now = sec + nsec * 1e-9
        self.data_received(data, now if now is not None else time.time())

    def data_received(self, data: bytes, now: float) -> None:
        if not self.headers_done:
            data = self.tail + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.tail = data
                return
            try:
                self.status = int(data[9:12])
            except ValueError:
                self.status = -1
            self.headers_done = True
            self.joined_at = now
            ttfb = int((now - self.connected_at) * 10000)
            self.gen.ttfb[ttfb] = self.gen.ttfb.get(ttfb, 0) + 1
            data = data[end + 4:]
            self.tail = b""
        buf = self.tail + data if self.tail else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self.tail = buf
            return
        self.tail = buf[cut + 1:]
        found = self.pattern.findall(buf, 0, cut + 1)
        if not found:
            return
        n = len(found)
        if len(found[0]) == 3:
            # Several jobs on one connection (Jobcast's /events): each job's values in order,
            # the jobs interleaved.
            lasts = self.lasts
            for job, i, _t in found:
                i = int(i)
                if i != lasts.get(job, -1) + 1:
                    self.errors += 1
                lasts[job] = i
            found = [(i, t) for _job, i, t in found]
        else:
            first = int(found[0][0])
            if self.last < 0 and not self.gen.history:
                self.last = first - 1  # no history: the first value seen starts the count
            lastv = int(found[-1][0])
            if first != self.last + 1 or lastv != first + n - 1:
                # A gap, a duplicate or disorder: check value by value.
                for i, _t in found:
                    i = int(i)
                    if i != self.last + 1:
                        self.errors += 1
                    self.last = i
            else:
                self.last = lastv
        self.count += n
        gen = self.gen
        storm_until = gen.connected_all_at or now + 1
        for _i, t in found:
            t = float(t)
            if t < self.joined_at:
                continue  # history: produced before this viewer joined the stream
            if self.role != "p":
                break
            hist = gen.storm if t < storm_until else gen.steady
            b = int((now - t) * (1000 * LAT_BINS_PER_MS))
            hist[b] = hist.get(b, 0) + 1



class Reading(asyncio.Protocol):
    """A plain viewer's connection, read by the event loop (no timestamps)."""

    __slots__ = ("viewer",)

    def __init__(self, viewer: Viewer):
        self.viewer = viewer

    def connection_made(self, transport) -> None:
        v = self.viewer
        v.connected_at = time.time()
        v.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if v.role == "f":
                # Frozen: a small receive buffer so the server's side fills quickly.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.write(v.request)
        if v.role == "f":
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.viewer.data_received(data, time.time())

    def connection_lost(self, exc) -> None:
        self.viewer.closed = True


ID_LINE = re.compile(rb"^id: ?(.*)$", re.M)
RETRY_LINE = re.compile(rb"^retry: ?(\d+)$", re.M)


class Resumer:
    """An EventSource: reconnects after the server's ``retry:`` with ``Last-Event-ID``.

    It follows the EventSource rules that matter here: an event's ``id:`` becomes the last
    event id once the event is complete (its blank line arrived); a ``retry:`` line sets the
    reconnection delay; a connection that ends, or cannot be opened, is tried again after that
    delay; a response other than 200 ends the viewer for good (``failed``: what a browser's
    EventSource does, 204 included). The body is de-chunked (Jobcast streams chunked).

    Each value (its index ``i``) is counted once: ``count`` is the distinct values, in order;
    a value at or below the last one is a duplicate, a jump past the next one a gap (``gaps``
    counts the values skipped). ``back_at`` is the time the first value newer than
    ``last_at_drop``, the last one before the first drop, arrived.
    """

    __slots__ = ("gen", "path", "pattern", "transport", "raw", "body", "left", "chunked",
                 "headers_done", "status", "last_id", "retry", "count", "last", "dups", "gaps",
                 "drops", "attempts", "failed", "dropped_at", "back_at", "last_at_drop", "open")

    def __init__(self, gen: "LoadGen", path: str, pattern: re.Pattern):
        self.gen = gen
        self.path = path
        self.pattern = pattern
        self.transport = None
        self.last_id: bytes | None = None
        self.retry = float(gen.spec.get("retry") or 3000) / 1000
        self.count = 0
        self.last = -1
        self.dups = 0
        self.gaps = 0
        self.drops = 0
        self.attempts = 0
        self.failed = 0  # the status of a response that ended it for good
        self.dropped_at = 0.0
        self.back_at = 0.0
        self.last_at_drop = -1
        self.open = False
        self._reset()

    @property
    def closed(self) -> bool:
        return not self.open

    def _reset(self) -> None:
        self.raw = b""
        self.body = b""
        self.left = 0
        self.chunked = False
        self.headers_done = False
        self.status = 0

    def request(self) -> bytes:
        host, port = self.gen.spec["host"], self.gen.spec["port"]
        resume = b"Last-Event-ID: %s\r\n" % self.last_id if self.last_id is not None else b""
        return (b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\n%sUser-Agent: jobcast-bench\r\n\r\n"
                % (self.path.encode(), host.encode(), port, resume))

    async def connect(self) -> None:
        """Open a connection; if it cannot be opened, try again after ``retry``."""
        loop = asyncio.get_running_loop()
        self.attempts += 1
        self._reset()
        try:
            await loop.create_connection(lambda: ResumerProtocol(self), self.gen.spec["host"],
                                         self.gen.spec["port"])
        except OSError:
            self.gen.connect_errors += 1
            self.lost()

    def lost(self) -> None:
        """The connection ended (or never opened): reconnect after ``retry``."""
        self.open = False
        self.transport = None
        if self.gen.stopping or self.failed:
            return
        if not self.dropped_at and self.count:  # its first drop while streaming
            self.dropped_at = time.time()
            self.last_at_drop = self.last
        self.drops += 1
        loop = asyncio.get_running_loop()
        loop.call_later(self.retry, lambda: loop.create_task(self.connect()))

    def data_received(self, data: bytes) -> None:
        if not self.headers_done:
            data = self.raw + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.raw = data
                return
            head = data[:end].lower()
            try:
                self.status = int(data[9:12])
            except ValueError:
                self.status = -1
            self.headers_done = True
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            data = data[end + 4:]
            self.raw = b""
            if self.status != 200:  # EventSource fails the connection: no reconnect
                self.failed = self.status
                if self.transport is not None:
                    self.transport.close()
                return
        if self.chunked:
            data = self.dechunk(data)
        buf = self.body + data if self.body else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.body = buf
            return
        events, self.body = buf[:cut + 2], buf[cut + 2:]
        ids = ID_LINE.findall(events)
        if ids:
            self.last_id = ids[-1].rstrip(b"\r")
        if b"retry:" in events:
            retries = RETRY_LINE.findall(events)
            if retries:
                self.retry = int(retries[-1]) / 1000
        found = self.pattern.findall(events)
        if not found:
            return
        now = time.time()
        for i, _t in found:
            i = int(i)
            if i <= self.last:
                self.dups += 1
                continue
            if i > self.last + 1:
                self.gaps += i - self.last - 1
            self.last = i
            self.count += 1
        if self.dropped_at and not self.back_at and self.last > self.last_at_drop:
            self.back_at = now

    def dechunk(self, data: bytes) -> bytes:
        """The payload of HTTP/1.1 chunks in ``data`` (with what an earlier read left)."""
        buf = self.raw + data if self.raw else data
        out = []
        pos, n = 0, len(buf)
        while pos < n:
            if self.left > 0:  # inside a chunk's data
                take = min(self.left, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self.left -= take
                if self.left == 0:
                    self.left = -2  # its CRLF is next
                continue
            if self.left == -2:
                if n - pos < 2:
                    break
                pos += 2
                self.left = 0
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:  # the last chunk: the server ended the stream
                pos = n
                break
            self.left = size
        self.raw = buf[pos:]
        return b"".join(out)

    @staticmethod
    def stats(viewers: list["Resumer"]) -> dict:
        counts = [v.count for v in viewers]
        return {"received": sum(counts), "min": min(counts) if counts else 0,
                "open": sum(1 for v in viewers if v.open),
                "headers": sum(1 for v in viewers if v.open and v.headers_done),
                "streaming": sum(1 for v in viewers if v.open and v.count),
                "last_max": max((v.last for v in viewers), default=-1),
                "dropped": sum(1 for v in viewers if v.dropped_at),
                "back": sum(1 for v in viewers if v.back_at),
                "failed": sum(1 for v in viewers if v.failed)}

    @staticmethod
    def report(viewers: list["Resumer"]) -> dict:
        statuses: dict[str, int] = {}
        for v in viewers:
            if v.failed:
                statuses[str(v.failed)] = statuses.get(str(v.failed), 0) + 1
        return {
            "viewers": len(viewers),
            "received": sum(v.count for v in viewers),
            "counts": sorted({v.count for v in viewers}),
            "min": min((v.count for v in viewers), default=0),
            "duplicates": sum(v.dups for v in viewers),
            "gaps": sum(v.gaps for v in viewers),
            "order_errors": sum(v.dups for v in viewers) + sum(1 for v in viewers if v.gaps),
            "dropped": sum(1 for v in viewers if v.dropped_at),
            "reconnect_attempts": sum(v.attempts - 1 for v in viewers),
            "failed": sum(1 for v in viewers if v.failed),
            "failed_statuses": statuses,
            "retry_s": sorted({v.retry for v in viewers}),
            "dropped_at": [v.dropped_at for v in viewers if v.dropped_at],
            "back_at": [v.back_at for v in viewers if v.back_at],
            "bad_status": sum(1 for v in viewers if v.failed),
        }


class ResumerProtocol(asyncio.Protocol):
    """A :class:`Resumer`'s current connection."""

    __slots__ = ("viewer",)

    def __init__(self, viewer: Resumer):
        self.viewer = viewer

    def connection_made(self, transport) -> None:
        v = self.viewer
        v.transport = transport
        v.open = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(v.request())

    def data_received(self, data: bytes) -> None:
        self.viewer.data_received(data)

    def connection_lost(self, exc) -> None:
        self.viewer.lost()


class LoadGen:
    """Holds the viewers of one process and answers the orchestrator."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.viewers: list[Viewer] = []
        self.connect_errors = 0
        self.history = bool(spec.get("history", True))
        self.connected_all_at = 0.0
        self.storm: dict[int, int] = {}
        self.steady: dict[int, int] = {}
        self.ttfb: dict[int, int] = {}  # connect to response headers, 0.1 ms bins
        self.accept = spec.get("accept") or "*/*"
        self.resuming = bool(spec.get("reconnect"))
        self.stopping = False

    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.spec["host"], self.spec["port"]
        pattern = re.compile(self.spec["pattern"].encode(), re.M)
        ramp = float(self.spec.get("ramp") or 0)  # connections per second, 0 = at once
        # By default one connection after the other, in the spec's order: the server then
        # admits them in that order, so probes spread evenly over the spec sit evenly over the
        # order the relay writes in. With "batch" > 1, that many connect at the same instant (a
        # burstier storm); the probes, whose connect path differs, then bunch up at a few places
        # in the relay's order, and their p50 depends on where.
        batch = max(1, int(self.spec.get("batch") or 1))
        started = time.monotonic()
        items = self.spec["viewers"]
        for k in range(0, len(items), batch):
            tasks = []
            for path, role in items[k:k + batch]:
                if self.resuming:
                    r = Resumer(self, path, pattern)
                    self.viewers.append(r)
                    tasks.append(r.connect())
                    continue
                req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       f"Accept: {self.accept}\r\nUser-Agent: jobcast-bench\r\n\r\n").encode()
                v = Viewer(self, req, role, pattern)
                self.viewers.append(v)
                tasks.append(self._connect(loop, v, host, port))
            await asyncio.gather(*tasks)
            if ramp > 0:
                delay = started + (k + len(tasks)) / ramp - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def _connect(self, loop, v: Viewer, host: str, port: int) -> None:
        for attempt in range(20):
            try:
                if v.role == "p":
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    try:
                        await loop.sock_connect(sock, (host, port))
                    except OSError:
                        sock.close()
                        raise
                    v.connected(loop, sock)
                else:
                    await loop.create_connection(lambda: Reading(v), host, port)
                return
            except OSError:
                self.connect_errors += 1
                await asyncio.sleep(0.05 * (attempt + 1))
        v.closed = True

    def counting(self) -> list[Viewer]:
        return [v for v in self.viewers if v.role != "f"]

    def stats(self) -> dict:
        if self.resuming:
            return Resumer.stats(self.viewers)
        counting = self.counting()
        counts = [v.count for v in counting]
        return {"received": sum(counts), "min": min(counts) if counts else 0,
                "open": sum(1 for v in self.viewers if not v.closed),
                "headers": sum(1 for v in self.viewers if v.headers_done)}

    def report(self) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        if self.resuming:
            return {**Resumer.report(self.viewers), "connect_errors": self.connect_errors,
                    "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss}
        counting = self.counting()
        return {
            "viewers": len(self.viewers),
            "received": sum(v.count for v in counting),
            "counts": sorted({v.count for v in counting}),
            "min": min((v.count for v in counting), default=0),
            "order_errors": sum(v.errors for v in counting),
            "closed_early": sum(1 for v in counting if v.closed and v.count == 0),
            "bad_status": sum(1 for v in self.viewers if v.headers_done and v.status != 200),
            "connect_errors": self.connect_errors,
            "frozen": sum(1 for v in self.viewers if v.role == "f"),
            "hist_storm": self.storm,
            "hist_steady": self.steady,
            "hist_ttfb": self.ttfb,
            "cpu": ru.ru_utime + ru.ru_stime,
            "maxrss_kib": ru.ru_maxrss,
        }


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(spec: dict) -> None:
    gen = LoadGen(spec)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "report")

    threading.Thread(target=read_stdin, daemon=True).start()
    await gen.connect_all()
    gen.connected_all_at = time.time()
    emit({"connected": sum(1 for v in gen.viewers if not v.closed)})
    while True:
        cmd = await commands.get()
        if cmd == "stats":
            emit(gen.stats())
        elif cmd == "report":
            gen.stopping = True  # no more reconnects
            emit(gen.report())
            for v in gen.viewers:
                if v.transport is not None:
                    v.transport.abort()
                elif getattr(v, "sock", None) is not None:
                    v.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    v.sock.close()  # an abortive close, as a client that vanishes
            return


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    cpu = spec.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in str(cpu).split(",")})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # still correct, only slower
        pass
    asyncio.run(main_async(spec))


if __name__ == "__main__":
    main()
