"""What ``JOBCAST_TERMINAL_REPLICAS=1`` costs: a job's terminal entry, written with and without
``WAIT 1`` for a replica.

    .venv/bin/python -m bench.wait_cost              # 2,000 jobs each way, a local primary + replica
    .venv/bin/python -m bench.wait_cost --json       # one JSON line

It starts a redis-server primary and a replica of it on loopback (the cost is one round trip
to the replica: over a network, add that network's), and for each job writes what a worker
writes: ``queued``, ``started``, ``values`` values, then ``finished``, timing the ``finished``
call alone and the whole job. Then it cuts the replica off and times the ``finished`` that
waits in vain: it pays ``JOBCAST_TERMINAL_WAIT_MS``. Rounds alternate, so a noisy neighbour
hurts both sides alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from redis import Redis

from jobcast.core.joblog import JobLog
from jobcast.core.wait import wait_until
from jobcast.launcher.redisserver import answers_ping, find_redis_server, free_port


def start_pair(base: Path) -> tuple[list[subprocess.Popen], int, int]:
    """A primary and its replica, in sync; (processes, primary port, replica port)."""
    binary = find_redis_server()
    primary, replica = free_port(), free_port()
    procs = []
    for port, extra in ((primary, []), (replica, ["--replicaof", "127.0.0.1", str(primary)])):
        (base / str(port)).mkdir()
        procs.append(subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--repl-diskless-sync-delay", "0", "--dir", str(base / str(port)), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda p=port: answers_ping(p), 10, what=f"redis on {port}")
    wait_until(lambda: Redis(port=primary).execute_command("WAIT", 1, 100) == 1, 10,
               what="the replica to sync")
    return procs, primary, replica


def one_job(redis: Redis, values: int, replicas: int, wait_ms: int) -> tuple[float, float]:
    """Write a whole job; (seconds of its ``finished``, seconds of the whole job)."""
    log = JobLog(redis, uuid.uuid4().hex, terminal_replicas=replicas, terminal_wait_ms=wait_ms)
    began = time.perf_counter()
    log.create("sqrt", {}, values)
    log.begin()
    log.started("bench", 1)
    for i in range(values):
        log.value(i, i * 0.5)
    before = time.perf_counter()
    log.finished()
    end = time.perf_counter()
    return end - before, end - began


def summary(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and mean, in microseconds."""
    us = sorted(s * 1e6 for s in seconds)
    return {"p50_us": round(us[len(us) // 2]), "p99_us": round(us[int(len(us) * 0.99)]),
            "mean_us": round(statistics.mean(us))}


def main() -> None:
    """Measure, and print a table (or one JSON line)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs each way")
    parser.add_argument("--values", type=int, default=10, help="values per job")
    parser.add_argument("--wait-ms", type=int, default=500, help="JOBCAST_TERMINAL_WAIT_MS")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        procs, primary, replica = start_pair(Path(tmp))
        try:
            redis = Redis(port=primary)
            for replicas in (0, 1):  # warm both paths (scripts loaded, connections open)
                one_job(redis, args.values, replicas, args.wait_ms)
            got: dict[int, tuple[list[float], list[float]]] = {0: ([], []), 1: ([], [])}
            for n in range(args.jobs * 2):
                replicas = n % 2
                end, whole = one_job(redis, args.values, replicas, args.wait_ms)
                got[replicas][0].append(end)
                got[replicas][1].append(whole)
            Redis(port=replica).execute_command("REPLICAOF", "NO", "ONE")  # the replica is gone
            cut = [one_job(redis, args.values, 1, args.wait_ms)[0] for _ in range(3)]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    result = {
        "jobs": args.jobs, "values_per_job": args.values,
        "finished_plain": summary(got[0][0]), "finished_wait1": summary(got[1][0]),
        "job_plain": summary(got[0][1]), "job_wait1": summary(got[1][1]),
        "finished_replica_gone_ms": [round(s * 1000) for s in cut],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.jobs} jobs each way, {args.values} values per job, primary and replica on loopback")
    for name in ("finished_plain", "finished_wait1", "job_plain", "job_wait1"):
        s = result[name]
        print(f"  {name:<16} p50 {s['p50_us']:>7} µs   p99 {s['p99_us']:>7} µs   mean {s['mean_us']:>7} µs")
    print(f"  finished, replica gone: {result['finished_replica_gone_ms']} ms "
          f"(JOBCAST_TERMINAL_WAIT_MS={args.wait_ms})")


if __name__ == "__main__":
    main()
