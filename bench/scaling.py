"""What scaling past one web process and one Redis costs and gains, measured on one machine.

    .venv/bin/python -m bench.scaling              # the full run (about a minute)
    .venv/bin/python -m bench.scaling --quick      # a tiny run that only checks the script works
    .venv/bin/python -m bench.scaling --help       # every knob

(a) **Redis CPU per announcement, pattern vs per-job subscriptions.** A fresh redis-server;
    ``--subscribers`` web-like processes listen, and values are appended to ``--jobs`` jobs
    through the real write path (``JobLog.value``: the Lua script that appends and
    announces), while viewers watch only ``--watched`` of them (each watched job in every
    subscriber process, the worst case for per-job subscriptions). The old way has every
    process ``PSUBSCRIBE jobcast:job:*:ch``; the new way has each process ``SUBSCRIBE`` only
    the watched jobs' channels (web/broker.py). Redis's own CPU (``INFO cpu``,
    ``used_cpu_user + used_cpu_sys``) is divided by the number of announcements, once every
    subscriber has received all it should; a run with no subscriber is the baseline.
(b) **Append throughput, one Redis vs a Redis Cluster.** ``--writers`` processes append
    values to jobs of their own through ``JobLog.value`` for ``--duration`` seconds, on a
    single redis-server and on a local three-primary Redis Cluster (hash-tagged keys,
    ``SPUBLISH``). On one machine the cluster's nodes share its cores with the writers:
    the figure shows the spread, not what three hosts would reach.

Prints two markdown tables (``--out FILE`` also writes them there).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
import uuid
from pathlib import Path

from redis import Redis

from jobcast.launcher.redisserver import RedisServer
from tests.support.cluster import LocalRedisCluster
from jobcast.core.joblog import JobLog
from jobcast.core.keys import CHANNEL_PATTERN, channel
from jobcast.core.store import connect

VALUE = "x" * 100  # a value's text, about the size bench.run uses


# -- (a) Redis CPU per announcement ----------------------------------------------------------

def subscriber(url: str, pattern: str | None, channels: list[str], ready, received) -> None:
    """A web-like process: subscribe, then read and count announcements until killed."""
    redis = Redis.from_url(url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    if pattern:
        pubsub.psubscribe(pattern)
    if channels:
        pubsub.subscribe(*channels)
    while pubsub.get_message(timeout=1.0) is None and not pubsub.subscribed:
        pass
    ready.set()
    while True:
        msg = pubsub.get_message(timeout=1.0)
        if msg is not None:
            with received.get_lock():
                received.value += 1


def redis_cpu(redis: Redis) -> float:
    """Seconds of CPU redis-server has used (user + system, all its threads)."""
    info = redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def announcement_cost(mode: str, subscribers: int, jobs: int, watched: int, values: int) -> dict:
    """Redis CPU per announcement with ``subscribers`` processes subscribed the ``mode`` way
    ("none", "pattern" or "per-job")."""
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp, RedisServer(data_dir=tmp) as server:
        redis = Redis.from_url(server.url)
        logs = [JobLog(redis, uuid.uuid4().hex) for _ in range(jobs)]
        for log in logs:
            log.create("bench", {}, None)
            log.started("bench", 1)
        seen = [log.job_id for log in logs[:watched]]
        procs, counters = [], []
        for _ in range(subscribers if mode != "none" else 0):
            ready, received = ctx.Event(), ctx.Value("l", 0)
            proc = ctx.Process(target=subscriber, daemon=True, args=(
                server.url, CHANNEL_PATTERN if mode == "pattern" else None,
                [channel(j) for j in seen] if mode == "per-job" else [], ready, received))
            proc.start()
            ready.wait(30)
            procs.append(proc)
            counters.append(received)
        try:
            cpu, started = redis_cpu(redis), time.monotonic()
            for i in range(values):
                for log in logs:
                    log.value(i, VALUE)
            announcements = values * jobs
            per_sub = announcements if mode == "pattern" else values * watched
            deadline = time.monotonic() + 120
            while any(c.value < per_sub for c in counters) and time.monotonic() < deadline:
                time.sleep(0.05)
            used, elapsed = redis_cpu(redis) - cpu, time.monotonic() - started
            delivered = min((c.value for c in counters), default=0)
        finally:
            for proc in procs:
                proc.kill()
                proc.join()
            redis.close()
    return {"mode": mode, "subscribers": subscribers if mode != "none" else 0, "jobs": jobs,
            "watched": watched, "announcements": announcements,
            "delivered_per_subscriber": delivered, "redis_cpu_s": used,
            "us_per_announcement": used / announcements * 1e6,
            "rate_per_s": announcements / elapsed, "core_share": used / elapsed}


# -- (b) append throughput -------------------------------------------------------------------

def writer(url: str, jobs: int, duration: float, start_at: float, done) -> None:
    """Append values to ``jobs`` jobs of its own, round robin, for ``duration`` s."""
    redis = connect(url)
    logs = [JobLog(redis, uuid.uuid4().hex) for _ in range(jobs)]
    for log in logs:
        log.create("bench", {}, None)
        log.started("bench", 1)
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    i = n = 0
    while time.time() < end:
        for log in logs:
            log.value(i, VALUE)
        i += 1
        n += len(logs)
    with done.get_lock():
        done.value += n


def append_throughput(store: str, url: str, writers: int, jobs: int, duration: float) -> dict:
    """Appends per second that ``writers`` processes reach on the store at ``url``."""
    ctx = mp.get_context("fork")
    done = ctx.Value("q", 0)
    start_at = time.time() + 1.0 + 0.1 * writers  # after every writer has set up its jobs
    procs = [ctx.Process(target=writer, args=(url, jobs, duration, start_at, done))
             for _ in range(writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(duration + 60)
    return {"store": store, "writers": writers, "jobs": writers * jobs, "appends": done.value,
            "seconds": duration, "appends_per_s": done.value / duration}


# -- report ----------------------------------------------------------------------------------

def tables(cost: list[dict], throughput: list[dict]) -> str:
    """The two results as markdown tables."""
    lines = ["| subscriptions | subscriber processes | jobs | watched | announcements | "
             "delivered per subscriber | Redis CPU per announcement | announcements/s | "
             "Redis CPU (share of a core) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"none": "none (baseline)", "pattern": "pattern (`PSUBSCRIBE`)",
             "per-job": "per-job (`SUBSCRIBE`)"}
    for r in cost:
        lines.append(f"| {names[r['mode']]} | {r['subscribers']} | {r['jobs']} | {r['watched']} | "
                     f"{r['announcements']:,} | {r['delivered_per_subscriber']:,} | "
                     f"{r['us_per_announcement']:.1f} µs | {r['rate_per_s']:,.0f} | "
                     f"{r['core_share']:.0%} |")
    lines += ["", "| stream store | writer processes | jobs | appends | appends/s |",
              "|---|---:|---:|---:|---:|"]
    for r in throughput:
        lines.append(f"| {r['store']} | {r['writers']} | {r['jobs']} | {r['appends']:,} | "
                     f"{r['appends_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny run: checks the script works")
    p.add_argument("--subscribers", type=int, default=4, help="web-like subscriber processes")
    p.add_argument("--jobs", type=int, default=200, help="jobs announcing values in (a)")
    p.add_argument("--watched", type=int, default=5, help="jobs with viewers in (a)")
    p.add_argument("--values", type=int, default=100, help="values per job in (a)")
    p.add_argument("--writers", type=int, default=8, help="writer processes in (b)")
    p.add_argument("--writer-jobs", type=int, default=10, help="jobs per writer in (b)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of writing in (b)")
    p.add_argument("--skip-cluster", action="store_true", help="leave out the Redis Cluster")
    p.add_argument("--out", type=Path, help="also write the tables to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.subscribers, args.jobs, args.watched, args.values = 2, 20, 2, 5
        args.writers, args.writer_jobs, args.duration = 2, 3, 1.0

    cost = [announcement_cost(mode, args.subscribers, args.jobs, args.watched, args.values)
            for mode in ("none", "pattern", "per-job")]
    throughput = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer(data_dir=tmp) as server:
        throughput.append(append_throughput("single Redis", server.url, args.writers,
                                            args.writer_jobs, args.duration))
    if not args.skip_cluster:
        with tempfile.TemporaryDirectory() as tmp, LocalRedisCluster(tmp, appendonly=False) as c:
            throughput.append(append_throughput("Redis Cluster, 3 primaries", c.url, args.writers,
                                                args.writer_jobs, args.duration))
    out = tables(cost, throughput)
    print(out, end="")
    if args.out:
        args.out.write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
