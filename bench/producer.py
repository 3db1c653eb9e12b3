"""The probe producer: values at a fixed rate on each of N jobs, through the real write path.

For Jobcast every value goes through :meth:`jobcast.core.joblog.JobLog.value`, the very call the RQ
runner makes for each value a task yields (one Lua script: XADD to the log + PUBLISH). For
flask-sse it is what ``sse.publish`` sends: a JSON message PUBLISHed on the channel.

Each value is 100 bytes of text beginning ``i=<index> t=<unix time>``, so viewers can count
values, check their order and measure produce-to-receive latency.

    python -m bench.producer MODE REDIS_URL RATE DURATION JOB [JOB ...]

Prints a JSON line when production starts (``started_at``, unix time), then one at the end:
values produced per job, how long it took, how late the latest value was, and this process's
CPU.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from redis import Redis

VALUE_BYTES = 100


def value_text(i: int) -> str:
    """The i-th value: ``i=<i> t=<now>`` padded to VALUE_BYTES."""
    head = f"i={i} t={time.time():.6f} "
    return head + "x" * max(0, VALUE_BYTES - len(head))


def main(argv: list[str]) -> int:
    mode, url, rate, duration, *jobs = argv
    rate, duration = float(rate), float(duration)
    redis = Redis.from_url(url)
    if mode == "jobcast":
        from jobcast.core.joblog import JobLog

        logs = [JobLog(redis, j) for j in jobs]
        send = [lambda i, log=log: log.value(i, value_text(i)) for log in logs]
    else:
        def publisher(channel: str):
            def send_one(i: int) -> None:
                redis.publish(channel, json.dumps({"data": value_text(i), "type": "value"}))
            return send_one
        send = [publisher(j) for j in jobs]
    total = int(round(rate * duration))
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
        for s in send:
            s(i)
    elapsed = time.monotonic() - start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"per_job": total, "jobs": len(jobs), "elapsed": elapsed,
                      "max_late": late, "cpu": ru.ru_utime + ru.ru_stime}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
