"""The machine's reference for fan-out latency: the same writes done by a bare loop.

    .venv/bin/python -m bench.floor            # 1,000 sockets, the benchmark's CPU split
    .venv/bin/python -m bench.floor --json     # one JSON line (bench.run puts it in its header)

A value reaches 1,000 viewers of one web process after

- **the trip** from the producer through Redis to a subscriber in the server's CPU set: a
  ``JobLog.value`` (the runner's write) announced to a plain redis-py subscriber, timed from the
  entry's own timestamp to the subscriber's read; then
- **the burst**: 1,000 ``send()``s of one SSE-sized frame from one core to 1,000 loopback TCP
  sockets (``TCP_NODELAY``, non-blocking, as the relay holds them), written by a bare Python
  loop with nothing else to do. The readers are a process on the load generators' CPU, as in
  the benchmark. On loopback the sender's CPU also runs the receiving side of TCP, so each
  ``send()`` costs what the kernel spends on both ends. It is measured twice:

  - **settled**: once each reader has had more than 16 segments. A reader then acknowledges
    what it reads from its own ``recv()``, on its own CPU;
  - **fresh**: during a connection's first segments. Linux's receiver starts in quick-ACK
    mode (``TCP_MAX_QUICKACKS``, 16) and acknowledges each segment as it arrives, which on
    loopback is inside the sender's ``send()``: the sending core then also runs the ACK's way
    back. This is what the seconds after a connect storm cost (docs/benchmarks.md, "The
    seconds after a storm").

The median viewer is written about halfway through the burst, the last one at its end, so a
relay that writes from one core serves the median viewer about ``trip p50 + burst / 2`` after a
value is produced and the last one about ``trip p90 + burst p90`` after. Both are measured at
10 values/s, as the ``fan10`` scenarios produce, with the machine idle between values: at
higher rates it never idles, and wake-ups and sends get cheaper. Both move with the machine (a
shared VM's loopback send costs 5-10 µs from one half-hour to the next), which is why
``bench.run`` measures them in the same run as its table.
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
import traceback

from redis import Redis

from jobcast.core.joblog import JobLog
from jobcast.core.keys import channel
from jobcast.launcher.redisserver import RedisServer

FRAME = b"C8\r\n" + b"x" * 200 + b"\r\n"  # about one value's SSE event, as an HTTP/1.1 chunk
RATE = 10.0  # values per second, as in the fan10 scenarios
TIMEOUT = 30.0  # seconds any step may take before the measurement gives up
FRESH = 12  # bursts timed while the readers are in quick-ACK mode (Linux gives 16 segments)
SETTLING = 8  # bursts not timed, which spend the rest of the readers' quick ACKs
SETTLED = 20  # bursts timed after


def _child(work, *args) -> int:
    """Fork a child that runs ``work(*args)`` and exits 0, or 1 with its traceback on stderr."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _reap(pid: int, what: str) -> None:
    """Wait for a child and fail if it failed."""
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"bench.floor: the {what} failed (see its traceback above)")


def _wait_readable(fd: int, what: str) -> None:
    """Wait until ``fd`` can be read, or fail after TIMEOUT seconds."""
    if not select.select([fd], [], [], TIMEOUT)[0]:
        raise TimeoutError(f"bench.floor: no word from the {what} in {TIMEOUT:.0f} s")


def _reader(port: int, n: int, cpus: set[int], ready: int) -> None:
    """Child process: open ``n`` connections and read whatever arrives until each is closed."""
    os.sched_setaffinity(0, cpus)
    poller = select.epoll()
    open_socks: dict[int, socket.socket] = {}
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        c.setblocking(False)
        poller.register(c.fileno(), select.EPOLLIN)
        open_socks[c.fileno()] = c
    os.write(ready, b"x")
    deadline = time.monotonic() + TIMEOUT + 60
    while open_socks and time.monotonic() < deadline:
        for fd, _ in poller.poll(1.0):
            try:
                data = open_socks[fd].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # the sender is done with this one
                poller.unregister(fd)
                open_socks.pop(fd).close()


def burst(n: int, server_cpus: set[int], reader_cpus: set[int]) -> dict:
    """Time rounds of one frame sent to ``n`` loopback sockets from one core: ``FRESH`` on new
    connections, then ``SETTLED`` once their readers have left quick-ACK mode."""
    affinity = os.sched_getaffinity(0)
    listener = socket.create_server(("127.0.0.1", 0), backlog=n + 16)
    listener.settimeout(TIMEOUT)
    ready_r, ready_w = os.pipe()
    socks: list[socket.socket] = []
    pid = _child(_reader, listener.getsockname()[1], n, reader_cpus, ready_w)
    try:
        os.close(ready_w)
        os.sched_setaffinity(0, server_cpus)
        for _ in range(n):
            s, _addr = listener.accept()
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
        _wait_readable(ready_r, "readers")
        time.sleep(0.3)
        took: list[float] = []
        cpu: list[float] = []
        for _ in range(FRESH + SETTLING + SETTLED):
            before = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            for s in socks:
                s.send(FRAME)
            took.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
            time.sleep(1 / RATE)
    finally:
        for s in socks:
            s.close()  # the readers exit once every connection is closed
        listener.close()
        os.close(ready_r)
        os.sched_setaffinity(0, affinity)
        _reap(pid, "readers")
    fresh, settled = took[:FRESH], took[FRESH + SETTLING:]
    return {"burst_p50_ms": statistics.median(settled) * 1e3,
            "burst_p90_ms": statistics.quantiles(settled, n=10)[-1] * 1e3,
            "cpu_us_per_send": sum(cpu[FRESH + SETTLING:]) / (SETTLED * n) * 1e6,
            "burst_fresh_p50_ms": statistics.median(fresh) * 1e3,
            "burst_fresh_p90_ms": statistics.quantiles(fresh, n=10)[-1] * 1e3,
            "cpu_us_per_send_fresh": sum(cpu[:FRESH]) / (FRESH * n) * 1e6}


def _subscriber(url: str, cpus: set[int], values: int, ready: int, out: int) -> None:
    """Child process: subscribe, say so on ``ready``, then write the trips (s) as JSON on ``out``."""
    os.sched_setaffinity(0, cpus)
    pubsub = Redis.from_url(url).pubsub()
    pubsub.subscribe(channel("floor"))
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=1.0)
        if msg and msg["type"] == "subscribe":  # Redis confirmed: nothing published is missed
            break
    os.write(ready, b"x")
    got: list[float] = []
    deadline = time.monotonic() + TIMEOUT + values / RATE
    while len(got) < values and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=1.0)
        if msg and msg["type"] == "message":
            got.append(time.time() - json.loads(msg["data"])["ts"])
    os.write(out, json.dumps(got).encode())


def trip(server_cpus: set[int], values: int = 50) -> dict:
    """Time ``JobLog.value`` → Redis → a subscriber pinned with Redis to ``server_cpus``."""
    redis = RedisServer().start()
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = None
    try:
        os.sched_setaffinity(redis.proc.pid, server_cpus)
        log = JobLog(Redis.from_url(redis.url), "floor")
        log.create("floor", {}, None)
        pid = _child(_subscriber, redis.url, server_cpus, values, ready_w, out_w)
        os.close(ready_w)
        os.close(out_w)
        ready_w = out_w = -1
        _wait_readable(ready_r, "subscriber")
        for i in range(values):
            log.value(i, i)
            time.sleep(1 / RATE)
        _wait_readable(out_r, "subscriber")
        data = b""
        while chunk := os.read(out_r, 65536):
            data += chunk
    finally:
        for fd in (ready_r, ready_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)
        if pid is not None:
            _reap(pid, "subscriber")
        redis.stop()
    got = json.loads(data or b"[]")
    if len(got) < 2:
        raise RuntimeError(f"bench.floor: the subscriber heard {len(got)} of {values} values")
    return {"trip_p50_ms": statistics.median(got) * 1e3,
            "trip_p90_ms": statistics.quantiles(got, n=10)[-1] * 1e3}


def measure(n: int = 1000, loadgen_cpus: set[int] | None = None) -> dict:
    """The trip, the burst and the latencies they add up to, on the benchmark's CPU split."""
    cpus = set(os.sched_getaffinity(0))
    reader_cpus = (loadgen_cpus & cpus if loadgen_cpus else set()) or {max(cpus)}
    server_cpus = (cpus - reader_cpus) or cpus
    result = {"viewers": n, **trip(server_cpus), **burst(n, server_cpus, reader_cpus)}
    result["floor_p50_ms"] = result["trip_p50_ms"] + result["burst_p50_ms"] / 2
    result["floor_last_ms"] = result["trip_p90_ms"] + result["burst_p90_ms"]
    return result


def describe(f: dict) -> str:
    """One sentence for the benchmark's header."""
    return (f"Reference on this machine in this run (`python -m bench.floor`, a bare loop doing "
            f"only the writes, at 10 values/s): one core's {f['viewers']:,} loopback `send()`s of "
            f"one frame take {f['burst_p50_ms']:.1f} ms ({f['cpu_us_per_send']:.1f} µs of CPU "
            f"each) and a value's trip from the producer through Redis to a subscriber "
            f"{f['trip_p50_ms']:.2f} ms, so a relay writing from one core serves the median "
            f"viewer ~{f['floor_p50_ms']:.1f} ms and the last ~{f['floor_last_ms']:.1f} ms after "
            f"a value is produced. To connections still in their first 16 segments (the "
            f"readers' quick ACKs, run by the sending core) the same sends take "
            f"{f['burst_fresh_p50_ms']:.1f} ms ({f['cpu_us_per_send_fresh']:.1f} µs each).")


def main(argv: list[str] | None = None) -> int:
    """Measure and print the reference."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--loadgen-cpus", default=None, help="CPU(s) of the readers, e.g. 1")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two sockets per viewer
    cpus = {int(c) for c in args.loadgen_cpus.split(",")} if args.loadgen_cpus else None
    f = measure(args.viewers, cpus)
    print(json.dumps(f) if args.json else describe(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
