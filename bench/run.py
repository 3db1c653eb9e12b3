"""Jobcast's fan-out benchmark, side by side with flask-sse and Nchan, in one run on one machine.

    .venv/bin/python -m bench.run                 # full run: every scenario x 3 servers x 3 repeats
    .venv/bin/python -m bench.run --quick         # a short run (smaller, 1 repeat)
    .venv/bin/python -m bench.run --help          # every knob (durations, sizes, workers, ...)

For each repeat it runs each scenario on every server back to back (the order of the servers
alternating between repeats), on the server under test:
Jobcast or the flask-sse app under gunicorn (gevent, web/gunicorn.conf.py), each with a fresh
redis-server (no persistence), or Nchan (nginx + Debian's nchan module, one worker, memory
store: bench/nchan.py), then runs every scenario: load-generator processes (asyncio + uvloop,
pinned with sched_setaffinity) hold the viewers, and a producer process, pinned with them,
writes values at a fixed rate through each server's real write path (``JobLog.value``: log +
announce in one Lua script; for flask-sse, ``PUBLISH``; for Nchan, an HTTP POST to its
publisher location).

Besides the fan-out scenarios it measures the CPU one admitted stream costs (``admit``), the
same connect storm twice on one fresh process (``fan10twice``, ``fan10texttwice``), and, for
Jobcast alone, a reconnect storm: the web process of a ``jobcast up`` killed under its SSE
viewers, which come back with ``Last-Event-ID`` (``reconnect``).

In ``fan10`` and ``fan10text`` it also runs the control, a second Nchan configured like the
first (``nchan-again``), judged against Nchan by the target Jobcast is: how often a server no
different from the anchor meets it on this machine.

It prints, and writes to ``bench/results/latest.{md,json}``, the medians per scenario, the
ratios Jobcast / flask-sse and Jobcast / Nchan, and the per-repeat figures the targets are
judged on. ``--update-doc`` also puts them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis import Redis

from bench import floor
from bench.loadgen import LAT_BINS_PER_MS
from bench.procs import children, cpu_split, pin, run_time, usage
from jobcast.launcher.redisserver import RedisServer, free_port
from jobcast.core.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
STORM_LEAD = 1.0  # storm scenarios: seconds of production before the viewers, split around them
ANCHORED = ("jobcast", "flask-sse", "nchan")
CONTROL = "nchan-again"
"""A second, identical Nchan, in ``fan10`` and ``fan10text`` only: how often the same server
meets "no worse than Nchan in the same run" in every repeat, i.e. the target's own noise."""
TARGETS = ANCHORED + (CONTROL, "jobcast-flask")
NAMES = {"jobcast": "Jobcast", "flask-sse": "flask-sse", "nchan": "Nchan",
         CONTROL: "Nchan again (the control)", "jobcast-flask": "Jobcast, every stream through Flask"}
VARIANTS = {"jobcast": {}, "jobcast-flask": {"JOBCAST_FAST_ADMISSION": "false"}}
"""Jobcast as it ships, and with its worker's fast path off (``admit`` measures both)."""

PATTERNS = {
    # Where a value starts in each server's framing (see bench.loadgen).
    ("jobcast", "sse"): r'"v":"i=(\d+) t=([0-9.]+)',
    ("jobcast", "text"): r"^i=(\d+) t=([0-9.]+)",
    ("flask-sse", "sse"): r"^data:i=(\d+) t=([0-9.]+)",
    # Nchan's EventSource: "id: <msgid>\ndata: <value>\n\n"; its http-raw-stream: the value
    # and the separator "\n", unchunked.
    ("nchan", "sse"): r"^data: ?i=(\d+) t=([0-9.]+)",
    ("nchan", "text"): r"^i=(\d+) t=([0-9.]+)",
    # Jobcast's /events?job=a&job=b: each value names its job (three groups: job, index, time),
    # then its seq and epoch (none in a log written before epochs).
    ("jobcast", "mux"): r'"job":"([0-9a-f]+)","seq":\d+,(?:"ep":"[^"]*",)?"kind":"value"[^\n]*?'
                        r'"v":"i=(\d+) t=([0-9.]+)',
    # Jobcast's job list (/events?list=50): its events carry no value; nothing is counted.
    ("jobcast", "list"): r"^(x)(y)(z)$",
}
ACCEPT = {"sse": "text/event-stream", "text": "*/*", "mux": "text/event-stream",
          "list": "text/event-stream"}  # as EventSource and curl send


class Server:
    """The server under test under gunicorn: Jobcast (``jobcast web``) or the flask-sse app."""

    def __init__(self, target: str, redis: RedisServer, workers: int, env: dict[str, str],
                 log_path: Path):
        self.target = target
        self.kind = "jobcast" if target in VARIANTS else target
        self.redis = redis
        self.db = Redis.from_url(redis.url)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Jobcast's viewers read the job's log from its start; flask-sse's only what is
        # published after they subscribed.
        self.history = self.kind == "jobcast"
        # flask-sse's response headers wait for its first event; the others' come at once.
        self.headers_at_once = self.kind == "jobcast"
        env = dict(os.environ, REDIS_URL=redis.url, PYTHONUNBUFFERED="1", **env,
                   **VARIANTS.get(target, {}))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if self.kind == "jobcast":
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

    def web_pids(self) -> list[int]:
        """The web server's processes: gunicorn master and workers."""
        return [self.proc.pid, *self.workers()]

    def redis_pids(self) -> list[int]:
        return [self.redis.proc.pid]

    def pids(self) -> list[int]:
        """Every server-side process: gunicorn master and workers, and redis-server."""
        return [*self.web_pids(), *self.redis_pids()]

    def pin(self, cpus: set[int]) -> None:
        """Keep the server's processes on ``cpus``, away from the load generators'."""
        pin(self.pids(), cpus)

    def viewers(self, channels: list[str]) -> int:
        """Viewers the server holds: Jobcast's own metric, or flask-sse's Redis subscribers."""
        if self.kind == "jobcast":
            text = httpx.get(self.url + "/metrics", timeout=10).text
            m = re.search(r"^jobcast_viewers ([0-9.e+]+)$", text, re.M)
            return int(float(m.group(1))) if m else 0
        total = 0
        for k in range(0, len(channels), 500):
            total += sum(n for _c, n in self.db.pubsub_numsub(*channels[k:k + 500]))
        return total

    def path(self, job: str, endpoint: str) -> str:
        """Where a viewer of ``job`` reads, on ``endpoint`` (``sse`` or ``text``)."""
        if self.kind == "jobcast":
            return f"/jobs/{job}/events" if endpoint == "sse" else f"/jobs/{job}/stream"
        return f"/stream?channel={job}"

    def prepare(self, jobs: list[str], sc: "Scenario") -> None:
        """Make ``jobs`` exist and run (Jobcast: a job log, as the RQ runner opens it)."""
        if self.kind == "jobcast":
            from jobcast.core.joblog import JobLog

            for j in jobs:
                log = JobLog(self.db, j)
                log.create("clock", {"rate": sc.rate, "duration": sc.duration}, None)
                log.started("bench", 1)

    def release(self, jobs: list[str]) -> None:
        """Let the server free the jobs' viewers: Jobcast's jobs finish; flask-sse only notices
        a gone client when it next writes to it."""
        if self.kind == "jobcast":
            from jobcast.core.joblog import JobLog

            for j in jobs:
                JobLog(self.db, j).finished()
        else:
            self.nudge(jobs)

    def nudge(self, jobs: list[str]) -> None:
        if self.target == "flask-sse":
            for j in jobs:
                self.db.publish(j, json.dumps({"data": "bye", "type": "bye"}))

    def producer(self) -> list[str]:
        """The producer's MODE and URL (bench.producer)."""
        return [self.kind, self.redis.url]

    def redis_clients(self) -> int | None:
        return int(self.db.info("clients")["connected_clients"])

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
        if self.kind == "jobcast":
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


class NchanServer:
    """Nchan (bench/nchan.py) behind the same interface: no Redis, the memory store."""

    kind = "nchan"
    history = True  # nchan_subscriber_first_message oldest: a newcomer reads the buffer first
    headers_at_once = True

    def __init__(self, log_path: Path, target: str = "nchan"):
        from bench.nchan import Nchan

        self.target = target  # "nchan", or the control: a second one, configured alike
        self.nchan = Nchan(log_path).start()
        self.port = self.nchan.port
        self.url = self.nchan.url
        self.redis = None

    def workers(self) -> list[int]:
        return self.nchan.workers()

    def web_pids(self) -> list[int]:
        """nginx's master and its one worker."""
        return [self.nchan.proc.pid, *self.workers()]

    def redis_pids(self) -> list[int]:
        return []

    def pids(self) -> list[int]:
        return self.web_pids()

    def pin(self, cpus: set[int]) -> None:
        pin(self.pids(), cpus)

    def viewers(self, channels: list[str]) -> int:
        """Subscribers, from ``nchan_stub_status`` (every channel's: one scenario at a time)."""
        return self.nchan.subscribers()

    def path(self, job: str, endpoint: str) -> str:
        return f"/sub/{endpoint}/{job}"

    def prepare(self, jobs: list[str], sc: "Scenario") -> None:
        pass  # a channel exists once it is subscribed or published to

    def release(self, jobs: list[str]) -> None:
        """DELETE each channel: Nchan closes its subscribers' streams."""
        for j in jobs:
            self.nchan.delete(j)

    def nudge(self, jobs: list[str]) -> None:
        pass

    def producer(self) -> list[str]:
        return ["nchan", self.url]

    def redis_clients(self) -> int | None:
        return None

    def stop(self) -> None:
        self.nchan.stop()


@contextlib.contextmanager
def serving(target: str, args, env: dict[str, str], log_dir: Path, cpus: set[int]):
    """A fresh server for ``target`` (with its own redis-server unless Nchan), pinned to
    ``cpus``; stopped on the way out."""
    if target in ("nchan", CONTROL):
        server = NchanServer(log_dir / f"{target}.log", target)
        try:
            if cpus:
                server.pin(cpus)
            yield server
        finally:
            server.stop()
        return
    redis = RedisServer(maxclients=30000).start()
    server = None
    try:
        server = Server(target, redis, args.web_workers, env, log_dir / f"{target}.log")
        if cpus:
            server.pin(cpus)
        yield server
    finally:
        if server:
            server.stop()
        redis.stop()


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
    endpoint: str = "sse"  # "sse" (Jobcast /events) or "text" (Jobcast /stream)
    targets: tuple[str, ...] = ANCHORED
    kind: str = "flow"   # "flow" (produce to held viewers), "admit", "list", "reconnect"
    fresh: bool = False  # runs on a server process started for it alone
    rounds: int = 1      # times it runs in a row on that process

    @property
    def viewers(self) -> int:
        """Connections (on the mux endpoint each one carries every job of the scenario)."""
        return self.jobs * self.viewers_per_job

    @property
    def streams(self) -> int:
        """Viewers as the relay counts them: one per job of each connection."""
        return self.viewers * (self.jobs if self.endpoint == "mux" else 1)


DEFAULT_SCENARIOS = ["idle", "admit", "fan10", "fan10text", "fan50", "mux", "fan100", "storm100",
                     "jobs100", "frozen", "list10", "list1000", "fan10twice", "fan10texttwice",
                     "reconnect"]


def scenarios(args) -> list[Scenario]:
    d = args.duration
    v = args.viewers
    storm = f"connect storm at {args.storm_ramp:,.0f}/s"
    # Three seconds of newcomers: over one second, the per-stream figure moved by ±25% between
    # repeats (what the first stream of a job costs, and the settle, weigh on a short window).
    admit_n = getattr(args, "admit_viewers", None) or 3 * v
    admit_ramp = getattr(args, "admit_ramp", 1000.0)
    rc_n = getattr(args, "reconnect_viewers", 10_000)
    rc_rate = getattr(args, "reconnect_rate", 2.0)
    anchor = ("jobcast", "nchan")  # flask-sse has no text stream
    # The job list's rows count the web's Redis commands. Nearly all are the orphan watchdog's
    # round, every 5 s, which reads each job the job index remembers: each row has a server
    # and Redis of its own, so both count the same 50 jobs (run after the other on a shared
    # one, the second read 100), and a window of 20 s holds four rounds, not one or two.
    list_d = max(d, 20.0)
    all_ = [
        Scenario("idle", f"idle hold, ramped to {args.idle_viewers:,} viewers (1 value/s)", 1,
                 args.idle_viewers, 1.0, args.hold, ramp=args.ramp),
        Scenario("admit", f"admission: {admit_n:,} text streams of an idle job opened at "
                 f"{admit_ramp:,.0f}/s (flask-sse: SSE)", 1, admit_n, 0.0, 0.0,
                 ramp=admit_ramp, endpoint="text", kind="admit", targets=ANCHORED + ("jobcast-flask",)),
        Scenario("fan10", f"{v:,} viewers x 10 values/s, SSE, {storm}", 1, v, 10.0, d,
                 ramp=args.storm_ramp, storm=True, targets=ANCHORED + (CONTROL,)),
        Scenario("fan10text", f"{v:,} viewers x 10 values/s, text, {storm}", 1, v, 10.0, d,
                 ramp=args.storm_ramp, storm=True, endpoint="text", targets=anchor + (CONTROL,)),
        Scenario("fan50", f"{v:,} viewers x 50 values/s", 1, v, 50.0, d),
        Scenario("mux", f"{v:,} viewers, each on one connection watching 5 jobs x 10 values/s",
                 5, max(1, v // 5), 10.0, d, endpoint="mux", targets=("jobcast",)),
        Scenario("list10", "10 home pages (the job list stream) while 50 jobs x 10 values/s run",
                 50, 1, 10.0, list_d, endpoint="list", targets=("jobcast",), kind="list",
                 fresh=True),
        Scenario("list1000", f"{1000:,} home pages (the job list stream) while 50 jobs x 10 "
                 "values/s run", 50, 1, 10.0, list_d, endpoint="list", targets=("jobcast",),
                 kind="list", fresh=True),
        Scenario("fan100", f"{v:,} viewers x 100 values/s", 1, v, 100.0, d),
        Scenario("storm100", f"{v:,} viewers x 100 values/s, text, {storm}", 1, v, 100.0, d,
                 ramp=args.storm_ramp, storm=True, endpoint="text", targets=anchor),
        Scenario("jobs100", f"{args.jobs} jobs x {args.viewers_per_job} viewers x 10 values/s",
                 args.jobs, args.viewers_per_job, 10.0, d),
        Scenario("frozen", f"1 frozen viewer among {v:,} (10 values/s)", 1, v, 10.0, d, frozen=1),
        Scenario("fan10twice", f"{v:,} viewers x 10 values/s, SSE, {storm}, twice on a fresh process",
                 1, v, 10.0, d, ramp=args.storm_ramp, storm=True, targets=anchor, fresh=True, rounds=2),
        Scenario("fan10texttwice", f"{v:,} viewers x 10 values/s, text, {storm}, twice on a fresh "
                 "process", 1, v, 10.0, d, ramp=args.storm_ramp, storm=True, endpoint="text",
                 targets=anchor, fresh=True, rounds=2),
        Scenario("reconnect", f"reconnect storm: {rc_n:,} SSE viewers of one job ({rc_rate:g} values/s), "
                 "web process of `jobcast up` SIGKILLed", 1, rc_n, rc_rate, 0.0,
                 ramp=args.ramp, targets=("jobcast",), kind="reconnect"),
    ]
    wanted = args.scenarios.split(",") if args.scenarios else DEFAULT_SCENARIOS
    unknown = set(wanted) - {sc.name for sc in all_}
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
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
    """Add up histograms of the same bins (JSON made their keys strings)."""
    out: dict[int, int] = {}
    for h in hists:
        for b, n in h.items():
            out[int(b)] = out.get(int(b), 0) + n
    return out


def hist_percentile(hist: dict[int, int], q: float, per_ms: int = 10) -> float | None:
    """The q-quantile of a histogram of ``per_ms`` bins per ms (0.1 ms: first bytes; latency
    is in :data:`~bench.loadgen.LAT_BINS_PER_MS`), in ms: the upper edge of its bin."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * (total - 1)
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen > rank:
            return (b + 1) / per_ms
    return (max(hist) + 1) / per_ms


def load_cpus(args) -> set[int]:
    """The CPUs of the load side (the load generators' and the producer's) when the servers
    are pinned away from them; empty when nothing is pinned."""
    return {int(c) for c in args.loadgen_cpus.split(",")} if args.pin_server else set()


def start_producer(argv: list[str], cpus: set[int]) -> subprocess.Popen:
    """Start the producer on ``cpus`` (any, if empty) and return once it writes its first
    value.

    The producer is load, like the load generators: on the server's CPU it would take that
    CPU from the server under test, and it would sit in the middle of Jobcast's path (Redis
    answers the producer before it announces the value, and the producer, woken on the same
    CPU, ran before the web process did).

    The production window starts then, not at the spawn: the producer's Python start-up
    (~0.25 s of imports) is no time the server could deliver anything in.
    """
    prod = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if cpus:
        pin([prod.pid], cpus)  # before its imports are done, long before its first value
    if not prod.stdout.readline():  # its first line says production starts
        raise RuntimeError(f"the producer exited before producing ({prod.wait()})")
    return prod


def endpoint_of(server, sc: Scenario) -> str:
    """The scenario's endpoint on ``server``: flask-sse has only SSE."""
    return sc.endpoint if (server.kind, sc.endpoint) in PATTERNS else "sse"


def loadgen_specs(server, sc: Scenario, args, viewers: list[list[str]], endpoint: str,
                  **extra) -> list[dict]:
    """One spec per load generator: viewer i goes to load generator i % n."""
    n = args.loadgens
    return [{"host": "127.0.0.1", "port": server.port, "cpu": args.loadgen_cpus,
             "ramp": sc.ramp / n if sc.ramp else 0, "pattern": PATTERNS[(server.kind, endpoint)],
             "history": server.history, "accept": ACCEPT[endpoint], "batch": args.connect_batch,
             "viewers": viewers[k::n], **extra}
            for k in range(n)]


def probe_places(viewers: int, probes: int, loadgens: int) -> list[int]:
    """Which of ``viewers`` (in connect order) are probes: all of them when ``probes`` is at
    least as many; else ``probes`` spread evenly and symmetrically (the m-th in the middle of
    the m-th slice, so the set looks the same from either end), one after the other on each
    of the ``loadgens`` load generators."""
    if probes >= viewers:
        return list(range(viewers))
    places = []
    for m in range(max(1, probes)):
        k = int((m + 0.5) * viewers / max(1, probes))
        k += (m - k) % loadgens  # on load generator m % loadgens (viewer k goes to k % n)
        places.append(min(k, viewers - 1))
    return places


def wait_all_gone(server, jobs: list[str]) -> None:
    """Let the server free the scenario's viewers before the next scenario."""
    server.release(jobs)

    def all_gone() -> bool:
        """True once the server holds none of the scenario's viewers."""
        if server.viewers(jobs) == 0:
            return True
        server.nudge(jobs)
        return False

    with contextlib.suppress(TimeoutError):  # the next scenario counts its own viewers
        wait_until(all_gone, 30, interval=0.25, what="the viewers to be freed")


def run_scenario(server, sc: Scenario, args, log_dir: Path) -> dict:
    """Hold the viewers, produce, drain, and measure one scenario on a running server."""
    jobs = [uuid.uuid4().hex for _ in range(sc.jobs)]
    endpoint = endpoint_of(server, sc)
    server.prepare(jobs, sc)
    # Viewers: round-robin over jobs; probes spread evenly over the connect order, over jobs,
    # and, one after the other, over the load generators (viewer i goes to load generator
    # i % n); the frozen one(s) last. The probes are placed symmetrically in the connect
    # order: Jobcast writes a job's viewers oldest first, Nchan newest first, and probes
    # skewed towards one end would be written earlier by one server than by the other.
    n = args.loadgens
    if endpoint == "mux":
        viewers = [["/events?" + "&".join(f"job={j}" for j in jobs), "v"]
                   for _k in range(sc.viewers)]
    else:
        viewers = [[server.path(j, endpoint), "v"] for _k in range(sc.viewers_per_job) for j in jobs]
    for k in probe_places(len(viewers), args.probes, n):
        viewers[k][1] = "p"
    for k in range(sc.frozen):
        viewers[-1 - k][1] = "f"
    specs = loadgen_specs(server, sc, args, viewers, endpoint)

    pids, web_pids, redis_pids = server.pids(), server.web_pids(), server.redis_pids()
    _, rss_before = usage(pids)
    producer_argv = [sys.executable, "-m", "bench.producer", *server.producer(),
                     str(sc.rate), str(sc.duration + (STORM_LEAD if sc.storm else 0)), *jobs]
    prod = None
    if sc.storm:
        # Values flow before the first viewer arrives and while they all connect: the
        # newcomers read history, and those already in must not be held up by them.
        cpu0, _ = usage(pids)
        split0 = cpu_split(web_pids)
        redis0 = usage(redis_pids)[0]
        prod = start_producer(producer_argv, load_cpus(args))
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
            if sc.storm and server.kind == "jobcast":
                # Values are flowing: Jobcast's own count is a /metrics request, a Flask
                # request on the loop under test, polled 4 times a second (Nchan's stub status
                # costs nothing). Its response headers go out once a stream is admitted, so
                # the load generators count the same streams.
                result["held"] = sum(st["headers"] for st in gens.ask("stats"))
            else:
                result["held"] = server.viewers(jobs)
            return result["held"] >= sc.streams

        with contextlib.suppress(TimeoutError):  # the table reports how many were held
            wait_until(all_held, args.connect_timeout, interval=0.25, what="every viewer held")
        result["connect_s"] = time.monotonic() - t_connect
        held = result["held"]
        time.sleep(0.5)
        pids, web_pids, redis_pids = server.pids(), server.web_pids(), server.redis_pids()
        _, rss_held = usage(pids)
        result["rss_per_viewer_kib"] = (rss_held - rss_before) / max(1, held)
        result["server_rss_mib"] = rss_held / 1024
        result["redis_clients"] = server.redis_clients()
        if sc.storm:
            # From here on every viewer is in: the steady state's own CPU per delivery.
            steady_cpu0 = usage(pids)[0]
            steady_received0 = sum(s["received"] for s in gens.ask("stats"))

        if prod is None:
            cpu0, _ = usage(pids)
            split0 = cpu_split(web_pids)
            redis0 = usage(redis_pids)[0]
            prod = start_producer(producer_argv, load_cpus(args))
            w0 = time.monotonic()
        stdout, _ = prod.communicate()
        if prod.returncode:
            raise RuntimeError(f"the producer failed ({prod.returncode})")
        produced = json.loads(stdout.strip().splitlines()[-1])
        # Jobcast's and Nchan's viewers get every value (history first); flask-sse's only
        # those published after they subscribed, so in a storm its loss cannot be counted.
        countable = server.history or not sc.storm
        per_viewer = produced["per_job"] * (sc.jobs if endpoint == "mux" else 1)
        expected = per_viewer * (sc.viewers - sc.frozen) if countable else 0
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
        split1 = cpu_split(web_pids)
        redis1 = usage(redis_pids)[0]
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
        "lat_p50_ms": hist_percentile(all_hist, 0.50, LAT_BINS_PER_MS),
        "lat_p99_ms": hist_percentile(all_hist, 0.99, LAT_BINS_PER_MS),
        "lat_max_ms": hist_percentile(all_hist, 1.0, LAT_BINS_PER_MS),
        "lat_storm_p99_ms": hist_percentile(storm_hist, 0.99, LAT_BINS_PER_MS) if sc.storm else None,
        "lat_steady_p99_ms": hist_percentile(steady_hist, 0.99, LAT_BINS_PER_MS) if sc.storm else None,
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
    wait_all_gone(server, jobs)
    return result


def run_admission(server, sc: Scenario, args, log_dir: Path) -> dict:
    """The server-side CPU one admitted stream costs: open ``sc.viewers`` streams of an idle job
    (no value is produced) at ``sc.ramp``/s and divide the CPU the server's processes used from
    the first connection to the last response headers (plus a short settle: Jobcast's relay
    takes the connection once its headers are out) by their number, less what the idle server
    burns in that time (measured just before). "Server" is every server-side process, as in
    the other CPU columns (web + its Redis; Nchan: nginx); the web processes alone are kept as
    ``admission_web_cpu_us_per_stream``. CPU time is the threads' schedstat run time (ns), not
    /proc/<pid>/stat's 10 ms ticks: Nchan admits 1,000 streams in about one tick.

    Admitted means the response headers reached the load generator, which is polled meanwhile
    rather than the server (Jobcast's /metrics would cost the server CPU); the server's own
    count is read afterwards. flask-sse sends its headers with its first event only, so for it
    the count is Redis's ``PUBSUB NUMSUB`` (Redis's CPU for it is counted).
    """
    jobs = [uuid.uuid4().hex]
    endpoint = endpoint_of(server, sc)
    server.prepare(jobs, sc)
    viewers = [[server.path(jobs[0], endpoint), "v"] for _ in range(sc.viewers)]
    specs = loadgen_specs(server, sc, args, viewers, endpoint)
    pids, web_pids = server.pids(), server.web_pids()
    base0, web_base0, tb0 = run_time(pids), run_time(web_pids), time.monotonic()
    time.sleep(args.admit_baseline)
    base1, web_base1, tb1 = run_time(pids), run_time(web_pids), time.monotonic()
    idle_rate = (base1 - base0) / (tb1 - tb0)
    web_idle_rate = (web_base1 - web_base0) / (tb1 - tb0)
    result: dict = {"target": server.target, "scenario": sc.name, "viewers": sc.viewers,
                    "endpoint": endpoint, "idle_cpu_per_s": idle_rate}
    cpu0, web0, t0 = run_time(pids), run_time(web_pids), time.monotonic()
    gens = LoadGens(specs, log_dir)
    try:
        result["connected"] = sum(r["connected"] for r in gens.ask(None))

        def all_admitted() -> bool:
            if server.headers_at_once:
                result["admitted"] = sum(st["headers"] for st in gens.ask("stats"))
            else:
                result["admitted"] = server.viewers(jobs)
            return result["admitted"] >= sc.viewers

        with contextlib.suppress(TimeoutError):  # the row says how many were admitted
            wait_until(all_admitted, args.connect_timeout, interval=0.05, what="every stream admitted")
        time.sleep(args.admit_settle)
        cpu1, web1, t1 = run_time(pids), run_time(web_pids), time.monotonic()
        result["held"] = server.viewers(jobs)
        reports = gens.ask("report")
    finally:
        gens.close()
    admitted = max(1, result["admitted"])
    spent = (cpu1 - cpu0) - idle_rate * (t1 - t0)
    web_spent = (web1 - web0) - web_idle_rate * (t1 - t0)
    ttfb = merge_hists([r["hist_ttfb"] for r in reports])
    result.update({
        "admit_s": t1 - t0,
        "server_cpu_s": cpu1 - cpu0,
        "admission_cpu_us_per_stream": 1e6 * spent / admitted,
        "admission_web_cpu_us_per_stream": 1e6 * web_spent / admitted,
        "bad_status": sum(r["bad_status"] for r in reports),
        "ttfb_p50_ms": hist_percentile(ttfb, 0.50),
        "ttfb_p99_ms": hist_percentile(ttfb, 0.99),
        "loadgen_cpu_s": sum(r["cpu"] for r in reports),
        "redis_clients": None,
    })
    wait_all_gone(server, jobs)
    return result


def run_list(server, sc: Scenario, args, log_dir: Path) -> dict:
    """What home pages cost Redis: as many pages as the scenario's name says hold the job list
    stream while ``sc.jobs`` jobs write ``sc.rate`` values/s. Redis's MONITOR counts, for the
    production's window, the commands that come from the web process's own connections (its
    pub/sub connection and its pool), whatever the producer and the scripts do."""
    import psutil

    pages = int(sc.name.removeprefix("list"))
    jobs = [uuid.uuid4().hex for _ in range(sc.jobs)]
    server.prepare(jobs, sc)
    viewers = [["/events?list=50", "v"] for _ in range(pages)]
    specs = loadgen_specs(server, sc, args, viewers, "list")
    gens = LoadGens(specs, log_dir)
    result: dict = {"target": server.target, "scenario": sc.name, "viewers": pages}
    by_port: collections.Counter = collections.Counter()  # commands per client port
    stop = threading.Event()
    window_on = threading.Event()
    try:
        result["connected"] = sum(r["connected"] for r in gens.ask(None))
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: sum(st["headers"] for st in gens.ask("stats")) >= pages,
                       args.connect_timeout, interval=0.1, what="every page connected")
        time.sleep(1.0)
        redis_port = server.redis.port

        def web_ports() -> set[int]:
            """The local ports of the web processes' connections to Redis, now."""
            return {c.laddr.port for pid in server.web_pids()
                    for c in psutil.Process(pid).net_connections("tcp")
                    if c.raddr and c.raddr.port == redis_port}

        ports = web_ports()

        def monitor() -> None:
            """Count the commands Redis runs, by client port, while the window is on."""
            with Redis.from_url(server.redis.url).monitor() as m:
                for cmd in m.listen():
                    if stop.is_set():
                        return
                    if window_on.is_set() and cmd.get("client_port"):
                        by_port[int(cmd["client_port"])] += 1

        watcher = threading.Thread(target=monitor, daemon=True)
        watcher.start()
        time.sleep(0.2)
        pids, web_pids = server.pids(), server.web_pids()
        cpu0, web0 = usage(pids)[0], usage(web_pids)[0]
        window_on.set()
        prod = start_producer([sys.executable, "-m", "bench.producer", *server.producer(),
                               str(sc.rate), str(sc.duration), *jobs], load_cpus(args))
        w0 = time.monotonic()
        prod.communicate()
        w1 = time.monotonic()
        window_on.clear()
        ports |= web_ports()  # and any the web opened meanwhile
        cpu1, web1 = usage(pids)[0], usage(web_pids)[0]
        stop.set()
        server.db.ping()  # one more command, so the monitor wakes and sees the stop
        gens.ask("report")
    finally:
        stop.set()
        gens.close()
    window = w1 - w0
    result.update({
        "window_s": window,
        "redis_cmds_per_s": sum(by_port[port] for port in ports) / window,
        "web_connections": len(ports),
        "web_cpu_s": web1 - web0,
        "server_cpu_s": cpu1 - cpu0,
        "bad_status": 0,
    })
    from jobcast.core.joblog import JobLog

    for j in jobs:
        JobLog(server.db, j).finished()
    return result


def up_state(data_home: Path) -> dict:
    """The state file of a `jobcast up` whose XDG_DATA_HOME is ``data_home``."""
    try:
        return json.loads((data_home / "jobcast" / "up.json").read_text())
    except (OSError, ValueError):
        return {}


def web_service_pid(data_home: Path) -> int | None:
    for s in up_state(data_home).get("services", []):
        if s["name"].startswith("web.") and s["state"] == "running":
            return s["pid"]
    return None


def ready_now(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def run_reconnect(sc: Scenario, args, env: dict[str, str], log_dir: Path, cpus: set[int]) -> dict:
    """The reconnect storm: ``sc.viewers`` SSE viewers of one job cut off at once by a SIGKILL
    of the web process of a `jobcast up`, which restarts it.

    `jobcast up` (Redis: the benchmark's own, through REDIS_URL; no RQ worker, no demo job; its
    own XDG_DATA_HOME) runs the web as it does for a user, pinned with everything it starts to
    the servers' CPU. The viewers (bench.loadgen's EventSource: Last-Event-ID, the server's
    ``retry:``) connect at ``sc.ramp``/s; then values flow at ``sc.rate``/s and, after
    ``--reconnect-lead`` s, the web service's whole process group (gunicorn master and workers)
    gets SIGKILL at once. `jobcast up` notices the exit and restarts the service after its
    backoff. Measured: kill → the restarted web's /readyz answering 200 (polled every 10 ms),
    and from then until each viewer has received a value newer than the last one it had
    before the kill; then, once production ends and the viewers drain, values lost and
    received twice, per viewer.
    """
    redis = RedisServer(maxclients=30000).start()
    data_home = Path(tempfile.mkdtemp(prefix="jobcast-bench-up-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # As for the other scenarios: no RQ worker runs the job, so the watchdog must not fail it.
    up_env = dict(os.environ, JOBCAST_ORPHAN_TIMEOUT="1000000000")
    up_env.update(env, REDIS_URL=redis.url, XDG_DATA_HOME=str(data_home), PYTHONUNBUFFERED="1")
    up_env["PYTHONPATH"] = str(ROOT) + os.pathsep + up_env.get("PYTHONPATH", "")
    log = open(log_dir / "jobcast-up.log", "ab")

    def pinned() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)  # `jobcast up` and everything it starts

    up = subprocess.Popen([sys.executable, "-m", "jobcast", "up", "--port", str(port), "--workers", "0",
                           "--web-workers", str(args.web_workers), "--no-demo"],
                          env=up_env, cwd=ROOT, stdout=log, stderr=log, preexec_fn=pinned)
    result: dict = {"target": "jobcast", "scenario": sc.name, "viewers": sc.viewers}
    gens = prod = None
    db = Redis.from_url(redis.url)
    try:
        if cpus:
            pin([redis.proc.pid], cpus)

        def up_ready() -> bool:
            if up.poll() is not None:
                raise RuntimeError(f"jobcast up exited ({up.returncode}); see {log_dir}/jobcast-up.log")
            return ready_now(url) and web_service_pid(data_home) is not None

        wait_until(up_ready, 90, interval=0.1, what="jobcast up's web")
        from jobcast.core.joblog import JobLog

        job = uuid.uuid4().hex
        jl = JobLog(db, job)
        jl.create("clock", {"rate": sc.rate}, None)
        jl.started("bench", 1)
        viewers = [[f"/jobs/{job}/events", "v"] for _ in range(sc.viewers)]
        # EventSource's own reconnection delay until the server sends one: 3 s, as browsers.
        specs = loadgen_specs(UpTarget(port), sc, args, viewers, "sse", reconnect=True, retry=3000)
        gens = LoadGens(specs, log_dir)
        t_connect = time.monotonic()
        result["connected"] = sum(r["connected"] for r in gens.ask(None))

        def stats() -> dict:
            """The load generators' stats together (counts added, extremes kept)."""
            out: dict = {}
            for st in gens.ask("stats"):
                for k, v in st.items():
                    out[k] = (min(out.get(k, v), v) if k == "min" else max(out.get(k, v), v)
                              if k == "last_max" else out.get(k, 0) + v)
            return out

        with contextlib.suppress(TimeoutError):
            wait_until(lambda: stats()["headers"] >= sc.viewers, args.connect_timeout, interval=0.25,
                       what="every viewer streaming")
        result["connect_s"] = time.monotonic() - t_connect
        result["held"] = stats()["headers"]
        lead, window = args.reconnect_lead, args.reconnect_window
        duration = 10 * (lead + window)  # more than it takes: it is stopped (SIGTERM)
        prod = start_producer([sys.executable, "-m", "bench.producer", "jobcast", redis.url,
                               str(sc.rate), str(duration), job], load_cpus(args))
        time.sleep(lead)
        before = stats()
        result["streaming_before_kill"] = before["streaming"]
        pid = web_service_pid(data_home)
        t_kill = time.time()
        os.killpg(pid, signal.SIGKILL)  # master and workers at once: `jobcast web` leads its group
        result["killed_pid"] = pid

        def refused() -> bool:
            return not ready_now(url)

        wait_until(refused, 10, interval=0.005, what="the killed web to be gone")
        wait_until(lambda: ready_now(url), window, interval=0.01, what="the restarted web's /readyz")
        t_ready = time.time()
        result["kill_to_ready_s"] = t_ready - t_kill

        def all_back() -> bool:
            st = stats()
            return st["back"] + st["failed"] >= st["dropped"] and st["dropped"] >= result["streaming_before_kill"]

        with contextlib.suppress(TimeoutError):  # who is not back is reported
            wait_until(all_back, window, interval=0.05, what="every viewer back")
        # `jobcast up` marks the new web running after its own readiness check (every 0.2 s).
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: web_service_pid(data_home) not in (None, pid), 10, interval=0.05,
                       what="jobcast up to see the restarted web")
        result["restarted_pid"] = web_service_pid(data_home)
        time.sleep(args.reconnect_lead)  # values after the storm too, then production ends
        prod.send_signal(signal.SIGTERM)
        stdout, _ = prod.communicate()
        produced = json.loads(stdout.strip().splitlines()[-1])
        total = produced["per_job"]
        with contextlib.suppress(TimeoutError):  # what is missing then is counted as lost
            wait_until(lambda: stats()["min"] >= total, args.drain, interval=0.1,
                       what="every viewer to have every value")
        reports = gens.ask("report")
    finally:
        if gens:
            gens.close()
        if prod and prod.poll() is None:
            prod.kill()
            prod.wait()
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)  # `jobcast up` stops its services in order
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
        log.close()
        db.close()
        redis.stop()
        shutil.rmtree(data_home, ignore_errors=True)
    back = sorted(b - t_ready for r in reports for b in r["back_at"])
    dropped_at = [d for r in reports for d in r["dropped_at"]]
    counts = [c for r in reports for c in r["counts"]]
    result.update({
        "produced_per_job": total,
        "dropped": sum(r["dropped"] for r in reports),
        "back": len(back),
        "not_back": sum(r["dropped"] for r in reports) - len(back),
        "ready_to_all_back_s": back[-1] if back and len(back) == result["streaming_before_kill"] else None,
        "ready_to_back_p50_s": back[len(back) // 2] if back else None,
        "ready_to_back_p99_s": back[min(len(back) - 1, int(0.99 * len(back)))] if back else None,
        "ready_to_last_back_s": back[-1] if back else None,
        "kill_to_drop_max_s": max(dropped_at) - t_kill if dropped_at else None,
        "expected": total * sc.viewers,
        "delivered": sum(r["received"] for r in reports),
        "lost": max(0, total * sc.viewers - sum(r["received"] for r in reports)),
        "duplicates": sum(r["duplicates"] for r in reports),
        "gaps": sum(r["gaps"] for r in reports),
        "failed": sum(r["failed"] for r in reports),
        "failed_statuses": merge_hists([r["failed_statuses"] for r in reports]),
        "reconnect_attempts": sum(r["reconnect_attempts"] for r in reports),
        "retry_s": sorted({x for r in reports for x in r["retry_s"]}),
        "fewest_values": min(counts) if counts else 0,
        "loadgen_cpu_s": sum(r["cpu"] for r in reports),
    })
    return result


@dataclass
class UpTarget:
    """What :func:`loadgen_specs` needs of a server, for the `jobcast up` of the reconnect storm."""

    port: int
    target: str = "jobcast"
    kind: str = "jobcast"
    history: bool = True


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
    ("admission CPU µs / stream", "admission_cpu_us_per_stream", "{:.0f}"),
    ("web's Redis commands/s", "redis_cmds_per_s", "{:,.0f}"),
]
RATIOS = [("flask-sse", "**Jobcast / flask-sse**"), ("nchan", "**Jobcast / Nchan**"),
          ("jobcast-flask", "**Jobcast / every stream through Flask**")]


def median_of(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(fmt_: str, v) -> str:
    return "–" if v is None else fmt_.format(v)


def row_groups(results: list[dict], scs: list[Scenario]):
    """(title, scenario name, round, rows) for each row group of the table, in order."""
    for sc in scs:
        if sc.kind == "reconnect":
            continue
        for rnd in range(1, sc.rounds + 1):
            title = sc.title
            if sc.rounds > 1:
                title += f": storm {rnd} of {sc.rounds}"
            rows = [r for r in results if r["scenario"] == sc.name and r.get("round", 1) == rnd]
            yield title, sc, rnd, rows


def table(results: list[dict], scs: list[Scenario], targets: list[str]) -> str:
    if not any(rows for *_, rows in row_groups(results, scs)):
        return ""
    lines = ["| scenario | server | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for title, sc, _rnd, group in row_groups(results, scs):
        meds = {}
        for t in targets:
            rows = [r for r in group if r["target"] == t]
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
            lines.append(f"| {title} | {t} (n={len(rows)}) | " + " | ".join(cells) + " |")
        for other, label in RATIOS:
            if "jobcast" in meds and other in meds:
                cells = []
                for _, k, _f in COLUMNS:
                    a, b = meds["jobcast"].get(k), meds[other].get(k)
                    cells.append(f"{a / b:.2f}×" if a is not None and b and k != "lat_storm_p99_ms"
                                 else "–")
                lines.append(f"| {title} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_repeat(results: list[dict], name: str, target: str, rnd: int = 1) -> dict[int, dict]:
    return {r["repeat"]: r for r in results
            if r["scenario"] == name and r["target"] == target and r.get("round", 1) == rnd}


def ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def verdict(checks: list[bool]) -> str:
    if not checks:
        return "–"
    held = sum(checks)
    return f"**holds in every repeat ({held}/{len(checks)})**" if held == len(checks) else \
        f"**does not hold: {held}/{len(checks)} repeats**"


def against_nchan(results: list[dict], scenarios: list[str], target: str) -> list[str]:
    """``target``'s rows against Nchan's, repeat by repeat, with issue 25's target for each
    scenario and its verdict: Jobcast's, or the control's (the same target, Nchan against
    itself)."""
    name_of = NAMES[target]
    out = [f"| scenario | repeat | {name_of} p50 / p99 ms | Nchan p50 / p99 ms | p50 ratio | p99 ratio "
           f"| {name_of} lost | target | met |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name in scenarios:
        jc, nc = by_repeat(results, name, target), by_repeat(results, name, "nchan")
        checks = []
        for rep in sorted(set(jc) & set(nc)):
            j, n = jc[rep], nc[rep]
            p50r, p99r = ratio(j["lat_p50_ms"], n["lat_p50_ms"]), ratio(j["lat_p99_ms"], n["lat_p99_ms"])
            if name == "storm100":
                goal = "p99 ≤ 1.5× Nchan's, 0 lost"
                ok = p99r is not None and p99r <= 1.5 and j["lost"] == 0
            else:
                # Both held every viewer and lost nothing: a server that dropped some would
                # win on latency with a shorter fan-out.
                goal = "p50 and p99 ≤ Nchan's"
                ok = (p50r is not None and p99r is not None and p50r <= 1.0 and p99r <= 1.0
                      and all(x["lost"] == 0 and x.get("held", 0) >= x["viewers"]
                              for x in (j, n)))
            checks.append(ok)
            out.append(f"| {name} | {rep} | {fmt('{:.2f}', j['lat_p50_ms'])} / {fmt('{:.2f}', j['lat_p99_ms'])} "
                       f"| {fmt('{:.2f}', n['lat_p50_ms'])} / {fmt('{:.2f}', n['lat_p99_ms'])} "
                       f"| {fmt('{:.2f}×', p50r)} | {fmt('{:.2f}×', p99r)} | {fmt('{:,}', j['lost'])} "
                       f"| {goal} | {'yes' if ok else 'no'} |")
        out.append(f"| {name} | all | | | | | | | {verdict(checks)} |")
    return out


def targets_report(results: list[dict], scs: list[Scenario]) -> str:
    """The per-repeat figures issue 25's (and 21's) targets are judged on (not medians)."""
    names = {sc.name for sc in scs}
    out: list[str] = []
    mux, fan50 = by_repeat(results, "mux", "jobcast"), by_repeat(results, "fan50", "jobcast")
    if mux:
        out += ["", "Many jobs on one connection (`mux`), repeat by repeat, against `fan50` of "
                "the same repeat:", "",
                "| repeat | lost | p99 ms | CPU µs / delivery | fan50's | ratio | target | met |",
                "|---:|---:|---:|---:|---:|---:|---|---|"]
        checks = []
        for rep in sorted(mux):
            m, f = mux[rep], fan50.get(rep, {})
            cpu_ratio = ratio(m.get("server_cpu_us_per_delivery"), f.get("server_cpu_us_per_delivery"))
            ok = (m.get("lost") == 0 and m.get("lat_p99_ms") is not None and m["lat_p99_ms"] <= 25
                  and cpu_ratio is not None and cpu_ratio <= 1.10)
            checks.append(ok)
            out.append(f"| {rep} | {fmt('{:,}', m.get('lost'))} | {fmt('{:.1f}', m.get('lat_p99_ms'))} "
                       f"| {fmt('{:.1f}', m.get('server_cpu_us_per_delivery'))} "
                       f"| {fmt('{:.1f}', f.get('server_cpu_us_per_delivery'))} "
                       f"| {fmt('{:.2f}×', cpu_ratio)} | 0 lost, p99 ≤ 25 ms, CPU ≤ 1.10× fan50's "
                       f"| {'yes' if ok else 'no'} |")
        out.append(f"\n`mux`: {verdict(checks)}")
    lists = {n: by_repeat(results, n, "jobcast") for n in ("list10", "list1000")}
    if all(lists.values()):
        out += ["", "The job list: the web process's Redis commands per second while 50 jobs "
                "write 10 values/s each (no page polls):", "",
                "| repeat | 10 home pages | 1,000 home pages |", "|---:|---:|---:|"]
        for rep in sorted(lists["list10"]):
            a, b = lists["list10"][rep], lists["list1000"].get(rep, {})
            out.append(f"| {rep} | {fmt('{:,.0f}', a.get('redis_cmds_per_s'))} "
                       f"| {fmt('{:,.0f}', b.get('redis_cmds_per_s'))} |")
    ran = {(r["scenario"], r["target"]) for r in results}
    vs = [n for n in ("fan10", "fan10text", "storm100")
          if n in names and (n, "jobcast") in ran and (n, "nchan") in ran]
    if vs:
        out += ["", "Jobcast against Nchan, repeat by repeat (each pair from the same run):", ""]
        out += against_nchan(results, vs, "jobcast")
    control = [n for n in ("fan10", "fan10text") if (n, CONTROL) in ran and (n, "nchan") in ran]
    if control:
        out += ["", "The control: a second Nchan, configured alike, against Nchan in the same run, "
                "judged by the same target. It shows how often a server no different from Nchan "
                "meets \"no worse than Nchan\" in a repeat on this machine:", ""]
        out += against_nchan(results, control, CONTROL)
    fast, slow = by_repeat(results, "admit", "jobcast"), by_repeat(results, "admit", "jobcast-flask")
    if fast and slow:
        out += ["", "Admission (`admit`), repeat by repeat: server CPU per admitted stream with the "
                "worker's fast path (as shipped) and with every stream through a Flask request "
                "(`JOBCAST_FAST_ADMISSION=false`, the path every stream took before):", "",
                "| repeat | fast path µs | through Flask µs | ratio | target | met |",
                "|---:|---:|---:|---:|---|---|"]
        checks = []
        for rep in sorted(set(fast) & set(slow)):
            a, b = fast[rep]["admission_cpu_us_per_stream"], slow[rep]["admission_cpu_us_per_stream"]
            r = ratio(a, b)
            ok = r is not None and r <= 0.5 and fast[rep]["bad_status"] == 0
            checks.append(ok)
            out.append(f"| {rep} | {fmt('{:.0f}', a)} | {fmt('{:.0f}', b)} | {fmt('{:.2f}×', r)} "
                       f"| ≤ 0.50× | {'yes' if ok else 'no'} |")
        out.append(f"\n`admit`: {verdict(checks)}")
    twice = [sc for sc in scs if sc.rounds > 1]
    if twice:
        out += ["", "The second connect storm of a fresh process against its first (storm p99: values "
                "produced while the newcomers connect, to the viewers already in):", "",
                "| scenario | server | repeat | storm 1: p99 / storm p99 / first byte p99 ms "
                "| storm 2: p99 / storm p99 / first byte p99 ms | storm p99, 2nd / 1st | 2nd no slower |",
                "|---|---|---:|---:|---:|---:|---|"]
        for sc in twice:
            for t in sc.targets:
                first, second = by_repeat(results, sc.name, t, 1), by_repeat(results, sc.name, t, 2)
                checks = []
                for rep in sorted(set(first) & set(second)):
                    a, b = first[rep], second[rep]
                    r = ratio(b["lat_storm_p99_ms"], a["lat_storm_p99_ms"])
                    ok = r is not None and r <= 1.0  # no storm samples: not shown to hold
                    checks.append(ok)
                    cell = lambda x: (f"{fmt('{:.1f}', x['lat_p99_ms'])} / {fmt('{:.1f}', x['lat_storm_p99_ms'])} / "  # noqa: E731
                                      f"{fmt('{:.1f}', x['ttfb_p99_ms'])}")
                    out.append(f"| {sc.name} | {t} | {rep} | {cell(a)} | {cell(b)} | {fmt('{:.2f}×', r)} "
                               f"| {'yes' if ok else 'no' if r is not None else 'unknown: no storm samples'} |")
                if checks:
                    out.append(f"| {sc.name} | {t} | all | | | | {verdict(checks)} |")
    rc = [r for r in results if r["scenario"] == "reconnect"]
    if rc:
        out += ["", "Reconnect storm (Jobcast under `jobcast up`; target: every viewer streaming again "
                "with every value exactly once within 3 s of the restarted web being ready):", "",
                "| repeat | viewers streaming at the kill | kill → ready s | ready → back s, p50 / p99 / last "
                "| kill → last back s | not back | lost | duplicates | failed (status) | reconnect attempts "
                "| retry: s | met |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|"]
        checks = []
        for r in sorted(rc, key=lambda r: r["repeat"]):
            ok = (r["ready_to_all_back_s"] is not None and r["ready_to_all_back_s"] <= 3.0
                  and r["lost"] == 0 and r["duplicates"] == 0 and r["failed"] == 0)
            checks.append(ok)
            last = r["ready_to_last_back_s"]
            kill_to_last = None if last is None else r["kill_to_ready_s"] + last
            failed = f"{r['failed']:,}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(r['failed_statuses'].items()))})"
                                           if r["failed_statuses"] else "")
            out.append(f"| {r['repeat']} | {r['streaming_before_kill']:,} of {r['viewers']:,} "
                       f"| {fmt('{:.2f}', r['kill_to_ready_s'])} "
                       f"| {fmt('{:.2f}', r['ready_to_back_p50_s'])} / {fmt('{:.2f}', r['ready_to_back_p99_s'])} / "
                       f"{fmt('{:.2f}', r['ready_to_last_back_s'])} "
                       f"| {fmt('{:.2f}', kill_to_last)} | {r['not_back']:,} | {r['lost']:,} "
                       f"| {r['duplicates']:,} | {failed} | {r['reconnect_attempts']:,} "
                       f"| {retry_span(r['retry_s'])} | {'yes' if ok else 'no'} |")
        out.append(f"| all | | | | | | | | | | | {verdict(checks)} |")
        out += ["", "Ready is when the benchmark's own poll of `/readyz` is answered, and that poll waits in "
                "the same accept queue as the returning viewers: a negative time back means a viewer was "
                "streaming again before the poll got its answer. Kill → last back is the whole outage."]
    return "\n".join(out)


def retry_span(values: list[float]) -> str:
    """The ``retry:`` values the viewers were told, in seconds: their range and how many differ."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:g}"
    return f"{min(values):g}–{max(values):g} ({len(values):,} values)"


def describe(r: dict) -> str:
    """One result as the line printed when it is measured."""
    if r["scenario"] == "reconnect":
        return (f"held {r['held']:,}, {r['streaming_before_kill']:,} streaming at the kill; killed → ready "
                f"{fmt('{:.2f}', r['kill_to_ready_s'])} s; ready → back p50 {fmt('{:.2f}', r['ready_to_back_p50_s'])} "
                f"p99 {fmt('{:.2f}', r['ready_to_back_p99_s'])} last {fmt('{:.2f}', r['ready_to_last_back_s'])} s; "
                f"not back {r['not_back']:,}; lost {r['lost']:,}, duplicates {r['duplicates']:,}, "
                f"failed {r['failed']:,} {r['failed_statuses'] or ''}; reconnect attempts {r['reconnect_attempts']:,}; "
                f"retry {retry_span(r['retry_s'])} s; loadgen {r['loadgen_cpu_s']:.1f} s")
    if r["scenario"].startswith("list"):
        return (f"{r['viewers']:,} pages; the web's Redis commands {r['redis_cmds_per_s']:,.0f}/s "
                f"on its {r['web_connections']} connections; web CPU {r['web_cpu_s']:.2f} s in "
                f"{r['window_s']:.1f} s")
    if r["scenario"] == "admit":
        return (f"admitted {r['admitted']:,} ({r['endpoint']}), held {r['held']:,} in {r['admit_s']:.2f} s; "
                f"{fmt('{:.0f}', r['admission_cpu_us_per_stream'])} µs server CPU / stream (web alone "
                f"{fmt('{:.0f}', r['admission_web_cpu_us_per_stream'])}; idle {r['idle_cpu_per_s'] * 1e3:.1f} ms/s "
                f"subtracted); first byte p50/p99 {fmt('{:.1f}', r['ttfb_p50_ms'])}/{fmt('{:.1f}', r['ttfb_p99_ms'])} ms; "
                f"bad status {r['bad_status']}")
    return (f"held {r['held']:>6,} delivered {r['delivered']:>8,} lost {fmt('{:,}', r['lost']):>6} "
            f"{r['deliveries_per_s']:>8,.0f}/s p50 {fmt('{:.1f}', r['lat_p50_ms'])} "
            f"p99 {fmt('{:.1f}', r['lat_p99_ms'])} ms "
            f"(storm {fmt('{:.1f}', r['lat_storm_p99_ms'])}, steady "
            f"{fmt('{:.1f}', r['lat_steady_p99_ms'])}; first byte p50/p99 "
            f"{fmt('{:.1f}', r['ttfb_p50_ms'])}/{fmt('{:.1f}', r['ttfb_p99_ms'])})  "
            f"{fmt('{:.1f}', r['server_cpu_us_per_delivery'])} µs/delivery "
            f"(steady {fmt('{:.1f}', r.get('steady_cpu_us_per_delivery'))})  "
            f"rss/viewer {r['rss_per_viewer_kib']:.1f} KiB  redis clients {fmt('{}', r['redis_clients'])}  "
            f"cpu web usr/sys {r['web_user_s']:.2f}/{r['web_sys_s']:.2f} redis {r['redis_cpu_s']:.2f} "
            f"loadgen {r['loadgen_cpu_s']:.2f} s  producer max late {r['producer_max_late_s'] * 1e3:.1f} ms")


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
                    help="short run: 1 repeat, 2,000 idle and reconnecting viewers, 3 s scenarios")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list of " + ",".join(TARGETS))
    ap.add_argument("--scenarios", default="",
                    help="comma list; default, in this order: " + ",".join(DEFAULT_SCENARIOS))
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
    ap.add_argument("--admit-viewers", type=int, default=0,
                    help="streams the admit scenario opens (default: 3 x --viewers)")
    ap.add_argument("--admit-ramp", type=float, default=1000.0, help="admit scenario: connections/s")
    ap.add_argument("--admit-baseline", type=float, default=1.0,
                    help="admit scenario: seconds of idle server CPU measured first, and subtracted")
    ap.add_argument("--admit-settle", type=float, default=0.2,
                    help="admit scenario: seconds after the last response headers still counted")
    ap.add_argument("--reconnect-viewers", type=int, default=10_000)
    ap.add_argument("--reconnect-rate", type=float, default=2.0,
                    help="reconnect scenario: values/s of its job")
    ap.add_argument("--reconnect-lead", type=float, default=2.0,
                    help="reconnect scenario: seconds of production before the kill")
    ap.add_argument("--reconnect-window", type=float, default=20.0,
                    help="reconnect scenario: max seconds for the web to be ready, and then for every viewer "
                         "to be back")
    ap.add_argument("--probes", type=int, default=50,
                    help="viewers that time values (kernel receive timestamps), spread evenly "
                         "and symmetrically over the connect order; every viewer when there "
                         "are no more viewers than this (at 100 values/s, 1,000 probes lag, "
                         "and a read that gathers several values gives them its last one's "
                         "timestamp: p50 13 ms where 50 probes read 4 ms)")
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
        print("\n".join(part for part in (table(saved["results"], scs, targets),
                                         targets_report(saved["results"], scs)) if part))
        return 0
    if args.quick:
        if "--repeats" not in (argv or sys.argv):
            args.repeats = 1
        args.idle_viewers = min(args.idle_viewers, 2000)
        args.reconnect_viewers = min(args.reconnect_viewers, 2000)
        args.hold, args.duration, args.drain = min(args.hold, 3.0), min(args.duration, 3.0), min(args.drain, 15.0)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    need = max(args.idle_viewers, args.viewers, args.jobs * args.viewers_per_job, args.reconnect_viewers,
               args.admit_viewers)
    if hard < need + 1000:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} is low for {need} viewers", file=sys.stderr)

    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown target(s): {', '.join(sorted(unknown))}")
    nchan_versions = None
    if {"nchan", CONTROL} & set(targets):
        from bench import nchan

        try:
            nchan.nginx_binary(), nchan.module_path()
        except nchan.NchanMissing as exc:
            raise SystemExit(f"bench: {exc}; or leave it out with --targets jobcast,flask-sse") from None
        nchan_versions = nchan.versions()
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

    def record(r: dict, rep: int, target: str, name: str) -> None:
        r["repeat"] = rep
        results.append(r)
        print(f"[{time.time() - started:6.0f}s] rep {rep} {target:9} {name:8} {describe(r)}", flush=True)

    for rep in range(args.repeats):
        order = targets if rep % 2 == 0 else targets[::-1]
        # Each scenario runs on every server back to back, so that the servers compared share
        # the same minutes of a machine whose speed drifts (a shared VM's loopback send cost
        # moves by half within an hour). Each server keeps one process for the scenarios
        # that share one, idle while the others run theirs, and stopped after its last.
        shared = [n for n, sc in enumerate(scs) if sc.kind != "reconnect" and not sc.fresh]
        last = {t: max((n for n in shared if t in scs[n].targets), default=-1) for t in order}
        with contextlib.ExitStack() as every:
            servers: dict[str, tuple[contextlib.ExitStack, object]] = {}
            for n, sc in enumerate(scs):
                for target in [t for t in order if t in sc.targets]:
                    if sc.kind == "reconnect":
                        record(run_reconnect(sc, args, env, log_dir, server_cpus), rep, target,
                               sc.name)
                    elif sc.fresh:  # a server process of its own, the scenario run sc.rounds times
                        with serving(target, args, env, log_dir, server_cpus) as server:
                            run = run_list if sc.kind == "list" else run_scenario
                            for rnd in range(1, sc.rounds + 1):
                                r = run(server, sc, args, log_dir)
                                if sc.rounds == 1:
                                    record(r, rep, target, sc.name)
                                    continue
                                r["round"] = rnd
                                record(r, rep, target, f"{sc.name}#{rnd}")
                    else:
                        if target not in servers:
                            own = every.enter_context(contextlib.ExitStack())
                            servers[target] = own, own.enter_context(
                                serving(target, args, env, log_dir, server_cpus))
                        own, server = servers[target]
                        run = {"admit": run_admission, "list": run_list}.get(sc.kind, run_scenario)
                        record(run(server, sc, args, log_dir), rep, target, sc.name)
                        if n == last[target]:
                            own.close()
    md = "\n".join(part for part in (table(results, scs, targets), targets_report(results, scs)) if part)
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Machine: {machine()}.  \nCommand: `{command.strip()}`; "
              f"{args.repeats} repeat(s), medians (lost: worst repeat); "
              f"{args.web_workers} gunicorn worker process(es)"
              f"{f'; Nchan: {nchan_versions}, one nginx worker process' if nchan_versions else ''}; "
              f"{args.loadgens} load generators"
              f"{' and the producer' if server_cpus else ''} pinned to CPU {args.loadgen_cpus}"
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
