"""Jobcast's fan-out benchmark, side by side with flask-sse, in one run on one machine.

    .venv/bin/python -m bench.run                 # full run: 5 scenarios x 2 servers x 3 repeats
    .venv/bin/python -m bench.run --quick         # a short run (smaller, 1 repeat)
    .venv/bin/python -m bench.run --help          # every knob (durations, sizes, workers, ...)

For each repeat, and alternating which server goes first, it starts a fresh redis-server (no
persistence) and the server under test with gunicorn (gevent, web/gunicorn.conf.py), then runs
every scenario: load-generator processes (asyncio + uvloop, pinned with sched_setaffinity) hold
the viewers, and a producer process writes values at a fixed rate through the real write path
(``JobLog.value``: log + announce in one Lua script; for flask-sse, ``PUBLISH``).

It prints, and writes to ``bench/results/latest.{md,json}``, the medians per scenario and the
ratio Jobcast / flask-sse. ``--update-doc`` also puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis import Redis

from bench import floor
from jobcast.launcher.redisserver import RedisServer, free_port
from jobcast.core.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
STORM_LEAD = 1.0  # storm scenarios: seconds of production before the viewers, split around them

PATTERNS = {
    # Where a value starts in each server's framing (see bench.loadgen).
    ("jobcast", "sse"): r'"v":"i=(\d+) t=([0-9.]+)',
    ("jobcast", "text"): r"^i=(\d+) t=([0-9.]+)",
    ("flask-sse", "sse"): r"^data:i=(\d+) t=([0-9.]+)",
}


# -- processes and /proc ---------------------------------------------------------------------

def proc_stat(pid: int) -> tuple[int, float, int]:
    """(ppid, cpu seconds user+system, rss KiB) of ``pid`` from /proc."""
    ppid, user, system, rss = proc_stat4(pid)
    return ppid, user + system, rss


def proc_stat4(pid: int) -> tuple[int, float, float, int]:
    """(ppid, user cpu seconds, system cpu seconds, rss KiB) of ``pid`` from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK, int(rest[21]) * PAGE_KIB


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if proc_stat(int(name))[0] == pid:
                    out.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """Summed (user, system) cpu seconds of ``pids``."""
    user = system = 0.0
    for pid in pids:
        try:
            _, u, s_, _ = proc_stat4(pid)
        except OSError:
            continue
        user += u
        system += s_
    return user, system


def usage(pids: list[int]) -> tuple[float, int]:
    """Summed (cpu seconds, rss KiB) of ``pids`` (gone ones count 0)."""
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            _, c, r = proc_stat(pid)
        except OSError:
            continue
        cpu += c
        rss += r
    return cpu, rss


class Server:
    """The server under test under gunicorn: Jobcast (``jobcast web``) or the flask-sse app."""

    def __init__(self, target: str, redis: RedisServer, workers: int, env: dict[str, str],
                 log_path: Path):
        self.target = target
        self.redis = redis
        self.db = Redis.from_url(redis.url)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, REDIS_URL=redis.url, PYTHONUNBUFFERED="1", **env)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if target == "jobcast":
            self.metrics_dir = tempfile.mkdtemp(prefix="jobcast-bench-metrics-")
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
            # Every viewer comes from 127.0.0.1, and the default caps serve them all: no
            # JOBCAST_STREAMS_* override here.
            # The producer drives JobLog.value itself, with no RQ worker registered: keep the
            # orphaned-job watchdog from failing the benchmark's jobs.
            env.setdefault("JOBCAST_ORPHAN_TIMEOUT", "1000000000")
            from jobcast.web.serve import gunicorn_argv

            # What `jobcast web` execs, without gunicorn's machine-wide control socket.
            argv = gunicorn_argv(f"127.0.0.1:{self.port}", workers, ["--no-control-socket"])
        else:
            # The same settings, on gunicorn's stock gevent worker: flask-sse streams through
            # the WSGI generator, as documented.
            argv = [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "web" / "gunicorn.conf.py"),
                    "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                    "--worker-class", "gevent", "--no-control-socket", "bench.flasksse_app:app"]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log, stderr=self.log)

        def ready() -> bool:
            """True once /readyz answers 200; RuntimeError if the server exited."""
            if self.proc.poll() is not None:
                raise RuntimeError(f"{target} server exited; see {log_path}")
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, interval=0.1, what=f"{target} server /readyz (see {log_path})")
        with contextlib.suppress(TimeoutError):  # measured with the workers there are
            wait_until(lambda: len(self.workers()) >= workers, 30, interval=0.1,
                       what="gunicorn's workers")

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def pids(self) -> list[int]:
        """Every server-side process: gunicorn master and workers, and redis-server."""
        return [self.proc.pid, *self.workers(), self.redis.proc.pid]

    def pin(self, cpus: set[int]) -> None:
        """Keep the server's processes on ``cpus``, away from the load generators'."""
        for pid in self.pids():
            try:
                os.sched_setaffinity(pid, cpus)
            except OSError:
                pass

    def viewers(self, channels: list[str]) -> int:
        """Viewers the server holds: Jobcast's own metric, or flask-sse's Redis subscribers."""
        if self.target == "jobcast":
            text = httpx.get(self.url + "/metrics", timeout=10).text
            m = re.search(r"^jobcast_viewers ([0-9.e+]+)$", text, re.M)
            return int(float(m.group(1))) if m else 0
        total = 0
        for k in range(0, len(channels), 500):
            total += sum(n for _c, n in self.db.pubsub_numsub(*channels[k:k + 500]))
        return total

    def stop(self) -> None:
        self.db.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- scenarios -------------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    title: str
    jobs: int
    viewers_per_job: int
    rate: float          # values per second per job
    duration: float      # seconds of production
    frozen: int = 0
    ramp: float = 0.0    # connections per second (0: as fast as possible)
    storm: bool = False  # production runs while the viewers connect (else: connect, then produce)
    endpoint: str = "sse"  # Jobcast's endpoint: "sse" (/events) or "text" (/stream)
    targets: tuple[str, ...] = ("jobcast", "flask-sse")

    @property
    def viewers(self) -> int:
        return self.jobs * self.viewers_per_job


def scenarios(args) -> list[Scenario]:
    d = args.duration
    v = args.viewers
    storm = f"connect storm at {args.storm_ramp:,.0f}/s"
    all_ = [
        Scenario("idle", f"idle hold, ramped to {args.idle_viewers:,} viewers (1 value/s)", 1,
                 args.idle_viewers, 1.0, args.hold, ramp=args.ramp),
        Scenario("fan10", f"{v:,} viewers x 10 values/s, SSE, {storm}", 1, v, 10.0, d,
                 ramp=args.storm_ramp, storm=True),
        Scenario("fan10text", f"{v:,} viewers x 10 values/s, text, {storm}", 1, v, 10.0, d,
                 ramp=args.storm_ramp, storm=True, endpoint="text", targets=("jobcast",)),
        Scenario("fan50", f"{v:,} viewers x 50 values/s", 1, v, 50.0, d),
        Scenario("fan100", f"{v:,} viewers x 100 values/s", 1, v, 100.0, d),
        Scenario("jobs100", f"{args.jobs} jobs x {args.viewers_per_job} viewers x 10 values/s",
                 args.jobs, args.viewers_per_job, 10.0, d),
        Scenario("frozen", f"1 frozen viewer among {v:,} (10 values/s)", 1, v, 10.0, d, frozen=1),
    ]
    default = ["idle", "fan10", "fan10text", "fan50", "fan100", "jobs100", "frozen"]
    wanted = args.scenarios.split(",") if args.scenarios else default
    return [s for s in all_ if s.name in wanted]


class LoadGens:
    """The load-generator processes of one scenario."""

    def __init__(self, specs: list[dict], log_dir: Path):
        self.procs = []
        for k, spec in enumerate(specs):
            p = subprocess.Popen([sys.executable, "-m", "bench.loadgen"], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=open(log_dir / f"loadgen-{k}.log", "ab"), text=True, bufsize=1)
            p.stdin.write(json.dumps(spec) + "\n")
            p.stdin.flush()
            self.procs.append(p)

    def ask(self, cmd: str | None) -> list[dict]:
        if cmd:
            for p in self.procs:
                p.stdin.write(cmd + "\n")
                p.stdin.flush()
        out = []
        for p in self.procs:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("a load generator died; see its log in bench/results/logs")
            out.append(json.loads(line))
        return out

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def merge_hists(hists: list[dict]) -> dict[int, int]:
    """Add up latency histograms (0.1 ms bins; JSON made their keys strings)."""
    out: dict[int, int] = {}
    for h in hists:
        for b, n in h.items():
            out[int(b)] = out.get(int(b), 0) + n
    return out


def hist_percentile(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile of a 0.1 ms histogram, in ms (the upper edge of its bin)."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * (total - 1)
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen > rank:
            return (b + 1) / 10
    return (max(hist) + 1) / 10


def start_producer(argv: list[str]) -> subprocess.Popen:
    """Start the producer and return once it writes its first value.

    The production window starts then, not at the spawn: the producer's Python start-up
    (~0.25 s of imports) is no time the server could deliver anything in.
    """
    prod = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if not prod.stdout.readline():  # its first line says production starts
        raise RuntimeError(f"the producer exited before producing ({prod.wait()})")
    return prod


def run_scenario(server: Server, sc: Scenario, args, log_dir: Path) -> dict:
    """Hold the viewers, produce, drain, and measure one scenario on a running server."""
    db = server.db
    jobcast = server.target == "jobcast"
    jobs = [uuid.uuid4().hex for _ in range(sc.jobs)]
    endpoint = sc.endpoint if jobcast else "sse"
    if jobcast:
        from jobcast.core.joblog import JobLog

        for j in jobs:
            log = JobLog(db, j)
            log.create("clock", {"rate": sc.rate, "duration": sc.duration}, None)
            log.started("bench", 1)
        path = (lambda j: f"/jobs/{j}/events") if endpoint == "sse" else (lambda j: f"/jobs/{j}/stream")
    else:
        path = lambda j: f"/stream?channel={j}"  # noqa: E731
    # Viewers: round-robin over jobs; every k-th one a probe, so probes are spread evenly over
    # the connect order (which is the order the relay writes them in), over jobs, and, one
    # after the other, over the load generators (viewer i goes to load generator i % n); the
    # frozen one(s) last.
    n = args.loadgens
    viewers = [[path(j), "v"] for _k in range(sc.viewers_per_job) for j in jobs]
    every = max(1, len(viewers) // max(1, args.probes))
    for m, k in enumerate(range(0, len(viewers), every)):
        viewers[min(k + m % n, len(viewers) - 1)][1] = "p"
    for k in range(sc.frozen):
        viewers[-1 - k][1] = "f"
    specs = [{"host": "127.0.0.1", "port": server.port, "cpu": args.loadgen_cpus,
              "ramp": sc.ramp / n if sc.ramp else 0, "pattern": PATTERNS[(server.target, endpoint)],
              "history": jobcast, "batch": args.connect_batch, "viewers": viewers[k::n]}
             for k in range(n)]

    pids = server.pids()
    _, rss_before = usage(server.pids())
    producer_argv = [sys.executable, "-m", "bench.producer", "jobcast" if jobcast else "flask-sse",
                     server.redis.url, str(sc.rate), str(sc.duration + (STORM_LEAD if sc.storm else 0)),
                     *jobs]
    prod = None
    if sc.storm:
        # Values flow before the first viewer arrives and while they all connect: the
        # newcomers read history, and those already in must not be held up by them.
        cpu0, _ = usage(pids)
        split0 = cpu_split(pids[:-1])
        redis0 = usage(pids[-1:])[0]
        prod = start_producer(producer_argv)
        w0 = time.monotonic()
        time.sleep(STORM_LEAD / 2)
    gens = LoadGens(specs, log_dir)
    result: dict = {"target": server.target, "scenario": sc.name, "viewers": sc.viewers}
    try:
        t_connect = time.monotonic()
        connected = sum(r["connected"] for r in gens.ask(None))
        # Wait until the server holds every viewer (its own count, or Redis subscribers).
        def all_held() -> bool:
            """True once the server holds every viewer (the count is kept either way)."""
            result["held"] = server.viewers(jobs)
            return result["held"] >= sc.viewers

        with contextlib.suppress(TimeoutError):  # the table reports how many were held
            wait_until(all_held, args.connect_timeout, interval=0.25, what="every viewer held")
        result["connect_s"] = time.monotonic() - t_connect
        held = result["held"]
        time.sleep(0.5)
        pids = server.pids()
        _, rss_held = usage(pids)
        result["rss_per_viewer_kib"] = (rss_held - rss_before) / max(1, held)
        result["server_rss_mib"] = rss_held / 1024
        result["redis_clients"] = int(db.info("clients")["connected_clients"])
        if sc.storm:
            # From here on every viewer is in: the steady state's own CPU per delivery.
            steady_cpu0 = usage(pids)[0]
            steady_received0 = sum(s["received"] for s in gens.ask("stats"))

        if prod is None:
            cpu0, _ = usage(pids)
            split0 = cpu_split(pids[:-1])
            redis0 = usage(pids[-1:])[0]
            prod = start_producer(producer_argv)
            w0 = time.monotonic()
        stdout, _ = prod.communicate()
        if prod.returncode:
            raise RuntimeError(f"the producer failed ({prod.returncode})")
        produced = json.loads(stdout.strip().splitlines()[-1])
        # Jobcast's viewers get every value (history first); flask-sse's only those
        # published after they subscribed, so in a storm its loss cannot be counted.
        countable = jobcast or not sc.storm
        expected = produced["per_job"] * (sc.viewers - sc.frozen) if countable else 0
        # Drain: wait until every counting viewer has every value, or the drain timeout.
        if countable:
            with contextlib.suppress(TimeoutError):  # what is missing then is counted as lost
                wait_until(lambda: sum(s["received"] for s in gens.ask("stats")) >= expected,
                           args.drain, interval=0.1, what="every viewer to have every value")
        else:
            time.sleep(1.0)
        w1 = time.monotonic()
        cpu1, _ = usage(pids)
        if sc.storm:
            steady_delivered = sum(s["received"] for s in gens.ask("stats")) - steady_received0
            result["steady_cpu_us_per_delivery"] = (
                1e6 * (cpu1 - steady_cpu0) / steady_delivered if steady_delivered else None)
        split1 = cpu_split(pids[:-1])
        redis1 = usage(pids[-1:])[0]
        reports = gens.ask("report")
    finally:
        gens.close()
    storm_hist = merge_hists([r["hist_storm"] for r in reports])
    steady_hist = merge_hists([r["hist_steady"] for r in reports])
    all_hist = merge_hists([storm_hist, steady_hist])
    ttfb_hist = merge_hists([r["hist_ttfb"] for r in reports])
    delivered = sum(r["received"] for r in reports)
    # Production lasts values ÷ rate: from the first value to the end of the last one's period.
    window = w1 - w0 + 1 / sc.rate
    server_cpu = cpu1 - cpu0
    result.update({
        "connected": connected,
        "produced_per_job": produced["per_job"],
        "producer_max_late_s": produced["max_late"],
        "expected": expected,
        "delivered": delivered,
        "lost": max(0, expected - delivered) if countable else None,
        "order_errors": sum(r["order_errors"] for r in reports),
        "bad_status": sum(r["bad_status"] for r in reports),
        "window_s": window,
        "deliveries_per_s": delivered / window if window else 0,
        "lat_p50_ms": hist_percentile(all_hist, 0.50),
        "lat_p99_ms": hist_percentile(all_hist, 0.99),
        "lat_max_ms": hist_percentile(all_hist, 1.0),
        "lat_storm_p99_ms": hist_percentile(storm_hist, 0.99) if sc.storm else None,
        "lat_steady_p99_ms": hist_percentile(steady_hist, 0.99) if sc.storm else None,
        "lat_samples": sum(all_hist.values()),
        "lat_storm_samples": sum(storm_hist.values()),
        "ttfb_p50_ms": hist_percentile(ttfb_hist, 0.50),
        "ttfb_p99_ms": hist_percentile(ttfb_hist, 0.99),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_delivery": 1e6 * server_cpu / delivered if delivered else None,
        "server_cpu_per_1000_ms": 1e6 * server_cpu / delivered if delivered else None,
        "deliveries_per_cpu_s": delivered / server_cpu if server_cpu else None,
        "web_user_s": split1[0] - split0[0],
        "web_sys_s": split1[1] - split0[1],
        "redis_cpu_s": redis1 - redis0,
        "loadgen_cpu_s": sum(r["cpu"] for r in reports),
        "producer_cpu_s": produced["cpu"],
    })
    # Let the server free the viewers before the next scenario.
    if jobcast:
        from jobcast.core.joblog import JobLog

        for j in jobs:
            JobLog(db, j).finished()
    else:
        for j in jobs:  # flask-sse only notices a gone client when it next writes to it
            db.publish(j, json.dumps({"data": "bye", "type": "bye"}))

    def all_gone() -> bool:
        """True once the server holds none of the scenario's viewers."""
        if server.viewers(jobs) == 0:
            return True
        if not jobcast:
            for j in jobs:
                db.publish(j, json.dumps({"data": "bye", "type": "bye"}))
        return False

    with contextlib.suppress(TimeoutError):  # the next scenario counts its own viewers
        wait_until(all_gone, 30, interval=0.25, what="the viewers to be freed")
    return result


# -- the table -------------------------------------------------------------------------------

COLUMNS = [
    ("viewers", "held", "{:,.0f}"),
    ("delivered", "delivered", "{:,.0f}"),
    ("lost", "lost", "{:,.0f}"),
    ("deliveries/s", "deliveries_per_s", "{:,.0f}"),
    ("p50 ms", "lat_p50_ms", "{:.1f}"),
    ("p99 ms", "lat_p99_ms", "{:.1f}"),
    ("p99 ms, storm / steady", "lat_storm_p99_ms", "{:.1f}"),
    ("max ms", "lat_max_ms", "{:.0f}"),
    ("first byte p99 ms", "ttfb_p99_ms", "{:.1f}"),
    ("server CPU µs / delivery", "server_cpu_us_per_delivery", "{:.1f}"),
    ("of which steady state", "steady_cpu_us_per_delivery", "{:.1f}"),
    ("deliveries / server CPU-s", "deliveries_per_cpu_s", "{:,.0f}"),
    ("idle RSS KiB / viewer", "rss_per_viewer_kib", "{:.1f}"),
    ("Redis clients", "redis_clients", "{:,.0f}"),
    ("load-gen CPU s", "loadgen_cpu_s", "{:.1f}"),
]


def median_of(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(fmt_: str, v) -> str:
    return "–" if v is None else fmt_.format(v)


def table(results: list[dict], scs: list[Scenario], targets: list[str]) -> str:
    lines = ["| scenario | server | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for sc in scs:
        meds = {}
        for t in targets:
            rows = [r for r in results if r["target"] == t and r["scenario"] == sc.name]
            if not rows:
                continue
            meds[t] = {k: median_of(rows, k) for _, k, _ in COLUMNS}
            if sc.name != "idle":  # memory per viewer is measured on a fresh server, idle
                meds[t]["rss_per_viewer_kib"] = None
            lost = [r["lost"] for r in rows if r.get("lost") is not None]
            meds[t]["lost_max"] = max(lost) if lost else None
            meds[t]["lat_steady_p99_ms"] = median_of(rows, "lat_steady_p99_ms")
            cells = [fmt(f, meds[t][k]) for _, k, f in COLUMNS]
            cells[2] = fmt("{:,}", meds[t]["lost_max"])  # worst repeat, not the median
            if meds[t]["lat_storm_p99_ms"] is not None:
                cells[6] = (f"{fmt('{:.1f}', meds[t]['lat_storm_p99_ms'])} / "
                            f"{fmt('{:.1f}', meds[t]['lat_steady_p99_ms'])}")
            lines.append(f"| {sc.title} | {t} (n={len(rows)}) | " + " | ".join(cells) + " |")
        if "jobcast" in meds and "flask-sse" in meds:
            cells = []
            for _, k, _f in COLUMNS:
                a, b = meds["jobcast"].get(k), meds["flask-sse"].get(k)
                cells.append(f"{a / b:.2f}×" if a is not None and b and k != "lat_storm_p99_ms"
                             else "–")
            lines.append(f"| {sc.title} | **Jobcast / flask-sse** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = 0
    return (f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {model}, "
            f"{mem / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="short run: 1 repeat, 2,000 idle viewers, 3 s scenarios")
    ap.add_argument("--targets", default="jobcast,flask-sse")
    ap.add_argument("--scenarios", default="", help="comma list of idle,fan10,fan50,jobs100,frozen (default) and fan100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--web-workers", type=int, default=1, help="gunicorn worker processes")
    ap.add_argument("--idle-viewers", type=int, default=10_000)
    ap.add_argument("--hold", type=float, default=10.0, help="seconds the idle viewers are held")
    ap.add_argument("--ramp", type=float, default=2500.0, help="idle ramp, connections/s")
    ap.add_argument("--storm-ramp", type=float, default=2000.0,
                    help="connections/s while values flow (the connect storm scenarios)")
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--viewers-per-job", type=int, default=10)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of production per scenario")
    ap.add_argument("--drain", type=float, default=30.0, help="max seconds to wait for stragglers")
    ap.add_argument("--connect-timeout", type=float, default=60.0)
    ap.add_argument("--connect-batch", type=int, default=1,
                    help="connections each load generator opens at the same instant (1: one after "
                         "the other at the scenario's rate; 200: the burstier storms of tables "
                         "before 2026-11-24)")
    ap.add_argument("--probes", type=int, default=50,
                    help="viewers that time values (kernel receive timestamps), spread evenly")
    ap.add_argument("--loadgens", type=int, default=2, help="load-generator processes")
    ap.add_argument("--no-pin-server", dest="pin_server", action="store_false",
                    help="let the servers' processes run on the load generators' CPU too")
    ap.add_argument("--loadgen-cpus", default=str(max(0, (os.cpu_count() or 1) - 1)),
                    help="CPU(s) the load generators are pinned to, e.g. 1 or 0,1")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the servers (e.g. JOBCAST_HEARTBEAT=5)")
    ap.add_argument("--out", default=str(RESULTS / "latest"), help="writes OUT.json and OUT.md")
    ap.add_argument("--update-doc", action="store_true", help="put the table into docs/benchmarks.md")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip measuring the bare-loop reference (bench.floor) before the scenarios")
    ap.add_argument("--from-json", metavar="FILE", help="only print the table of an earlier run")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        a = argparse.Namespace(**saved["args"])
        names = list(dict.fromkeys(r["scenario"] for r in saved["results"]))
        a.scenarios = ",".join(names)
        scs = scenarios(a)
        targets = list(dict.fromkeys(r["target"] for r in saved["results"]))
        print(table(saved["results"], scs, targets))
        return 0
    if args.quick:
        if "--repeats" not in (argv or sys.argv):
            args.repeats = 1
        args.idle_viewers = min(args.idle_viewers, 2000)
        args.hold, args.duration, args.drain = min(args.hold, 3.0), min(args.duration, 3.0), min(args.drain, 15.0)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    need = max(args.idle_viewers, args.viewers, args.jobs * args.viewers_per_job)
    if hard < need + 1000:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} is low for {need} viewers", file=sys.stderr)

    targets = [t for t in args.targets.split(",") if t]
    loadgen_cpus = {int(c) for c in args.loadgen_cpus.split(",")}
    server_cpus = set(os.sched_getaffinity(0)) - loadgen_cpus if args.pin_server else set()
    scs = scenarios(args)
    env = dict(e.split("=", 1) for e in args.env)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / "logs"
    log_dir.mkdir(exist_ok=True)
    results: list[dict] = []
    started = time.time()
    # What a bare loop doing only the writes reaches on this machine now (it drifts by the
    # half-hour on a shared VM), measured in the same run as the table it is read against.
    floor_found = floor.measure(args.viewers, loadgen_cpus) if args.floor else None
    if floor_found:
        print(floor.describe(floor_found), flush=True)
    for rep in range(args.repeats):
        order = targets if rep % 2 == 0 else targets[::-1]
        for target in order:
            redis = RedisServer(maxclients=30000).start()
            server = None
            try:
                server = Server(target, redis, args.web_workers, env, log_dir / f"{target}.log")
                if server_cpus:
                    server.pin(server_cpus)
                for sc in scs:
                    if target not in sc.targets:
                        continue
                    r = run_scenario(server, sc, args, log_dir)
                    r["repeat"] = rep
                    results.append(r)
                    print(f"[{time.time() - started:6.0f}s] rep {rep} {target:9} {sc.name:8} "
                          f"held {r['held']:>6,} delivered {r['delivered']:>8,} lost {fmt('{:,}', r['lost']):>6} "
                          f"{r['deliveries_per_s']:>8,.0f}/s p50 {fmt('{:.1f}', r['lat_p50_ms'])} "
                          f"p99 {fmt('{:.1f}', r['lat_p99_ms'])} ms "
                          f"(storm {fmt('{:.1f}', r['lat_storm_p99_ms'])}, steady "
                          f"{fmt('{:.1f}', r['lat_steady_p99_ms'])}; first byte p50/p99 "
                          f"{fmt('{:.1f}', r['ttfb_p50_ms'])}/{fmt('{:.1f}', r['ttfb_p99_ms'])})  "
                          f"{fmt('{:.1f}', r['server_cpu_us_per_delivery'])} µs/delivery "
                          f"(steady {fmt('{:.1f}', r.get('steady_cpu_us_per_delivery'))})  "
                          f"rss/viewer {r['rss_per_viewer_kib']:.1f} KiB  redis clients {r['redis_clients']}  "
                          f"cpu web usr/sys {r['web_user_s']:.2f}/{r['web_sys_s']:.2f} redis {r['redis_cpu_s']:.2f} "
                          f"loadgen {r['loadgen_cpu_s']:.2f} s",
                          flush=True)
            finally:
                if server:
                    server.stop()
                redis.stop()
    md = table(results, scs, targets)
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Machine: {machine()}.  \nCommand: `{command.strip()}`; "
              f"{args.repeats} repeat(s), medians (lost: worst repeat); "
              f"{args.web_workers} gunicorn worker process(es); "
              f"{args.loadgens} load generators pinned to CPU {args.loadgen_cpus}"
              f"{', servers to CPU ' + ','.join(map(str, sorted(server_cpus))) if server_cpus else ''}; "
              f"run took {time.time() - started:.0f} s.\n"
              + (f"{floor.describe(floor_found)}\n" if floor_found else "") + "\n")
    print()
    print(header + md)
    out.with_suffix(".md").write_text(header + md + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"args": vars(args), "machine": machine(), "floor": floor_found, "results": [
            {k: v for k, v in r.items()} for r in results]}, indent=1))
    if args.update_doc and DOC.exists():
        text = DOC.read_text()
        start, end = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
        if start in text and end in text:
            a, b = text.index(start) + len(start), text.index(end)
            DOC.write_text(text[:a] + "\n" + header + md + "\n" + text[b:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
