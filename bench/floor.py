"""The machine's floor for fan-out latency: what no relay on one core can beat here.

    .venv/bin/python -m bench.floor            # 1,000 sockets, the benchmark's CPU split
    .venv/bin/python -m bench.floor --json     # one JSON line (bench.run puts it in its header)

A value reaches 1,000 viewers of one web process no sooner than

- **the trip** from the producer through Redis to a subscriber in the server's CPU set: a
  ``JobLog.value`` (the runner's write) announced to a plain redis-py subscriber, timed from the
  entry's own timestamp to the subscriber's read; plus
- **the burst**: 1,000 ``send()``s of one SSE-sized frame from one core to 1,000 loopback TCP
  sockets (``TCP_NODELAY``, non-blocking, as the relay holds them), written by a bare Python
  loop with nothing else to do. The readers are a process on the load generators' CPU, as in
  the benchmark. On loopback the sender's CPU also runs the receiving side of TCP, so each
  ``send()`` costs what the kernel spends on both ends.

The median viewer is written about halfway through the burst, the last one at its end, so the
floor of p50 is ``trip p50 + burst / 2`` and that of p99 is ``trip p99 + burst``. Both move with
the machine (a shared VM's loopback send costs 5-15 µs from one hour to the next), which is
why ``bench.run`` measures them in the same run as its table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import statistics
import sys
import time

from redis import Redis

from jobcast.joblog import JobLog, channel
from producer.redisproc import RedisServer

FRAME = b"C8\r\n" + b"x" * 200 + b"\r\n"  # about one value's SSE event, as an HTTP/1.1 chunk


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _reader(port: int, n: int, cpus: set[int], ready: int, seconds: float) -> None:
    """Child process: open ``n`` connections and read whatever arrives, as viewers do."""
    os.sched_setaffinity(0, cpus)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    poller = select.epoll()
    by_fd = {}
    for c in conns:
        c.setblocking(False)
        poller.register(c.fileno(), select.EPOLLIN)
        by_fd[c.fileno()] = c
    os.write(ready, b"x")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd, _ in poller.poll(0.2):
            try:
                by_fd[fd].recv(65536)
            except BlockingIOError:
                pass


def burst(n: int, server_cpus: set[int], reader_cpus: set[int], bursts: int = 30) -> dict:
    """Time ``bursts`` rounds of one frame sent to ``n`` loopback sockets from one core."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=n + 16)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the viewers' side
        try:
            _reader(listener.getsockname()[1], n, reader_cpus, w, 5.0 + bursts * 0.2)
        finally:
            os._exit(0)
    try:
        os.sched_setaffinity(0, server_cpus)
        socks = []
        for _ in range(n):
            s, _addr = listener.accept()
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
        os.read(r, 1)
        time.sleep(0.3)
        took = []
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(bursts):
            t0 = time.perf_counter()
            for s in socks:
                s.send(FRAME)
            took.append(time.perf_counter() - t0)
            time.sleep(0.1)  # 10 values/s, as in the fan10 scenarios
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        for s in socks:
            s.close()
    finally:
        os.sched_setaffinity(0, server_cpus | reader_cpus)
        listener.close()
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    return {"burst_p50_ms": statistics.median(took) * 1e3,
            "burst_p90_ms": _pct(took, 0.9) * 1e3,
            "cpu_us_per_send": cpu / (bursts * n) * 1e6}


def trip(server_cpus: set[int], values: int = 60) -> dict:
    """Time ``JobLog.value`` → Redis → a subscriber pinned with Redis to ``server_cpus``."""
    redis = RedisServer().start()
    try:
        os.sched_setaffinity(redis.proc.pid, server_cpus)
        client = Redis.from_url(redis.url)
        log = JobLog(client, "floor")
        log.create("floor", {}, None)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the subscriber: one line of milliseconds per value on the pipe
            try:
                os.sched_setaffinity(0, server_cpus)
                pubsub = Redis.from_url(redis.url).pubsub()
                pubsub.subscribe(channel("floor"))
                got = []
                deadline = time.monotonic() + 10 + values * 0.05
                while len(got) < values and time.monotonic() < deadline:
                    msg = pubsub.get_message(timeout=1.0)
                    if msg and msg["type"] == "message":
                        got.append(time.time() - json.loads(msg["data"])["ts"])
                os.write(w, json.dumps(got).encode())
            finally:
                os._exit(0)
        os.close(w)
        time.sleep(0.5)  # let it subscribe
        for i in range(values):
            log.value(i, i)
            time.sleep(0.05)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        got = json.loads(data or b"[]")
    finally:
        redis.stop()
    if not got:
        raise RuntimeError("the subscriber heard nothing")
    return {"trip_p50_ms": statistics.median(got) * 1e3, "trip_p99_ms": _pct(got, 0.99) * 1e3}


def measure(n: int = 1000, loadgen_cpus: set[int] | None = None) -> dict:
    """The trip, the burst and the floors they give, on the benchmark's CPU split."""
    cpus = set(os.sched_getaffinity(0))
    reader_cpus = loadgen_cpus or {max(cpus)}
    server_cpus = (cpus - reader_cpus) or cpus
    result = {"viewers": n, **trip(server_cpus), **burst(n, server_cpus, reader_cpus)}
    result["floor_p50_ms"] = result["trip_p50_ms"] + result["burst_p50_ms"] / 2
    result["floor_p99_ms"] = result["trip_p99_ms"] + result["burst_p90_ms"]
    return result


def describe(f: dict) -> str:
    """One sentence for the benchmark's header."""
    return (f"Floor on this machine in this run (`python -m bench.floor`): one core's "
            f"{f['viewers']:,} loopback `send()`s of one frame take {f['burst_p50_ms']:.1f} ms "
            f"({f['cpu_us_per_send']:.1f} µs of CPU each), a value's trip from the producer "
            f"through Redis to a subscriber {f['trip_p50_ms']:.2f} ms (p99 "
            f"{f['trip_p99_ms']:.2f}): no relay on one core gets p50 below "
            f"{f['floor_p50_ms']:.1f} ms or p99 below {f['floor_p99_ms']:.1f} ms here.")


def main(argv: list[str] | None = None) -> int:
    """Measure and print the floor."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--loadgen-cpus", default=None, help="CPU(s) of the readers, e.g. 1")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    cpus = {int(c) for c in args.loadgen_cpus.split(",")} if args.loadgen_cpus else None
    f = measure(args.viewers, cpus)
    print(json.dumps(f) if args.json else describe(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
