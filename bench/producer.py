"""The probe producer: values at a fixed rate on each of N jobs, through the real write path.

For Jobcast every value goes through :meth:`jobcast.core.joblog.JobLog.value`, the very call the RQ
runner makes for each value a task yields (one Lua script: XADD to the log + PUBLISH), on the
client a job's run makes (:func:`jobcast.worker.emit.log_connection`). For
flask-sse it is what ``sse.publish`` sends: a JSON message PUBLISHed on the channel. For Nchan
(bench/nchan.py) it is an HTTP POST of the value to the channel's publisher location, one
request after the other on one keep-alive connection (``http.client``), each answered before
the next is sent.

Each value is 100 bytes of text beginning ``i=<index> t=<unix time>``, so viewers can count
values, check their order and measure produce-to-receive latency.

    python -m bench.producer MODE URL RATE DURATION JOB [JOB ...]

MODE is ``jobcast`` or ``flask-sse`` (URL: the Redis URL) or ``nchan`` (URL: nginx's base URL).

Prints a JSON line when production starts (``started_at``, unix time), then one at the end:
values produced per job, how long it took, how late the latest value was, and this process's
CPU. SIGTERM ends production early (the reconnect storm stops it once it has what it measures).
"""

from __future__ import annotations

import http.client
import json
import resource
import signal
import socket
import sys
import time
from urllib.parse import urlsplit

from redis import Redis

VALUE_BYTES = 100


def value_text(i: int) -> str:
    """The i-th value: ``i=<i> t=<now>`` padded to VALUE_BYTES."""
    head = f"i={i} t={time.time():.6f} "
    return head + "x" * max(0, VALUE_BYTES - len(head))


def main(argv: list[str]) -> int:
    mode, url, rate, duration, *jobs = argv
    rate, duration = float(rate), float(duration)
    if mode == "nchan":
        where = urlsplit(url)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        conn.connect()  # before production starts: the first value does not time the connect
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {"Content-Type": "text/plain", "Connection": "keep-alive"}

        def poster(channel: str):
            path = f"/pub/{channel}"

            def send_one(i: int) -> None:
                conn.request("POST", path, value_text(i).encode(), headers)
                r = conn.getresponse()
                r.read()
                if r.status not in (201, 202):
                    raise RuntimeError(f"nchan answered {r.status} to POST {path}")
            return send_one
        send = [poster(j) for j in jobs]
    elif mode == "jobcast":
        from jobcast.core.joblog import JobLog
        from jobcast.core.settings import Settings
        from jobcast.worker.emit import log_connection

        # The client a job's run writes with, made from RQ's connection as a worker's is.
        redis = log_connection(Settings(redis_url=url), Redis.from_url(url))
        logs = [JobLog(redis, j) for j in jobs]
        send = [lambda i, log=log: log.value(i, value_text(i)) for log in logs]
    else:
        redis = Redis.from_url(url)

        def publisher(channel: str):
            def send_one(i: int) -> None:
                redis.publish(channel, json.dumps({"data": value_text(i), "type": "value"}))
            return send_one
        send = [publisher(j) for j in jobs]
    total = int(round(rate * duration))
    stopped = []  # SIGTERM ends production early, after the value being written
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    # Production starts now, after this process's own start-up: the runner times from here.
    print(json.dumps({"started_at": time.time()}), flush=True)
    start = time.monotonic()
    late = 0.0
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late = max(late, -delay)
        if stopped:
            total = i
            break
        for s in send:
            s(i)
    elapsed = time.monotonic() - start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"per_job": total, "jobs": len(jobs), "elapsed": elapsed,
                      "max_late": late, "cpu": ru.ru_utime + ru.ru_stime}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
