"""Prometheus metrics: ``GET /metrics`` in the text exposition format.

Under gunicorn every worker process records into ``PROMETHEUS_MULTIPROC_DIR`` (``jobcast
web`` points it at a fresh temporary directory when it is unset) and a scrape, answered by
whichever worker gets it, merges every process's files. Without that variable (tests, a
single process) the default in-process registry is used.

What is counted where, so the hot path stays cheap:

- the relay counts each announcement once and the entries it hands to viewers with one
  ``inc(n)`` per announcement, never one call per viewer;
- the relay (:mod:`jobcast.web.relay`: held sockets, and the queues a WSGI generator drains
  under other servers) counts viewers, catch-ups from the log, heartbeats and the reason each
  viewer stopped: per viewer and per event, never per value;
- queue depth, busy workers and jobs by state are read from RQ at scrape time;
- refused streams (by reason) and cancellations are counted where they happen;
- the events of one stream (admitted, a viewer added or removed, a catch-up, a disconnect) go
  through :data:`TALLY`: an append where they happen, published to Prometheus by the relay's
  heartbeat about once a second and by a scrape for its own process. In multi-process mode
  each ``inc()`` takes a lock and writes an mmapped file; tallying the three on an
  admission's path took about 9 % off an admitted stream's CPU (docs/benchmarks.md). A
  scrape may then miss another worker process's last second. Open stream connections (``jobcast_streams``) stay exact at every
  instant: the limiter counts them as they open and close.

No label takes values that grow without bound (such as job ids): a job's own viewer count is
in the API (``GET /api/jobs/<id>``, ``viewers``), not here.
"""

from __future__ import annotations

import collections
import glob
import logging
import os
import re
import time

from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily

from jobcast.core.settings import get_settings

log = logging.getLogger(__name__)

def multiproc_dir() -> str | None:
    """The multi-process directory, if multi-process mode is on."""
    return get_settings().prometheus_multiproc_dir or None


# Gauges of live viewers: "livesum" adds up the processes that are alive, so the files of a
# worker that died stop counting once it is marked dead (see cleanup_dead_processes).
VIEWERS = Gauge("jobcast_viewers", "Viewers connected, all jobs", multiprocess_mode="livesum")
# Open stream connections (a multi-job stream is one, whatever its jobs): what a browser costs
# the server, counted where the limiter admits a stream (web/limits.py).
STREAMS = Gauge("jobcast_streams", "Stream connections open (a multi-job stream counts once)",
                multiprocess_mode="livesum")
ANNOUNCEMENTS = Counter("jobcast_hub_announcements", "Announcements read from Redis pub/sub by the hubs")
RELAYED = Counter("jobcast_entries_relayed",
                  "Live entries handed to viewers by the relays (one per entry per viewer)")
VALUES_RELAYED = Counter("jobcast_values_relayed",
                         "Live value entries handed to viewers by the relays (one per value per viewer)")
CATCHUPS = Counter("jobcast_catchups",
                   "Reads of a job's log by a viewer, by reason (history; slow: its buffer "
                   "was full; gap, busy, quiet, resync, epoch, reset, trimmed)", ["reason"])
HEARTBEATS = Counter("jobcast_heartbeats", "Quiet spells: heartbeats sent or liveness checks made")
DISCONNECTS = Counter("jobcast_disconnects",
                      "Viewers that stopped, by reason (job_ended, client_gone, closed, error)",
                      ["reason"])
HUB_LAG = Histogram("jobcast_hub_lag_seconds",
                    "Time from an entry being logged and published to its delivery by a relay",
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
HUB_LAST_LAG = Gauge("jobcast_hub_last_lag_seconds", "Lag of the latest entry a hub dispatched",
                     multiprocess_mode="livemax")
HUB_RECONNECTS = Counter("jobcast_hub_reconnects", "Times a hub lost its live subscription to "
                         "Redis (it is made again once Redis answers; failed tries not counted)")
HUB_CHANNELS = Gauge("jobcast_hub_channels",
                     "Job channels the brokers subscribe to (jobs watched here, and lingering ones)",
                     multiprocess_mode="livesum")
# The reasons a stream can be refused: a fixed set, so the label stays bounded.
REFUSAL_REASONS = ("per_client", "per_process", "unauthorized", "forbidden")
STREAM_REFUSALS = Counter("jobcast_stream_refusals",
                          "Streams refused, by reason (per_client: 429, per_process: 503, "
                          "unauthorized: 401, forbidden: 403)", ["reason"])
# Single-job streams admitted, by the path that admitted them: the worker's fast path
# (web/fastpath.py) or a Flask request (everything the fast path leaves to Flask).
ADMISSIONS = Counter("jobcast_stream_admissions",
                     "Single-job streams admitted, by path (fast: by the gunicorn worker without "
                     "a Flask request; flask)", ["path"])
CANCELLATIONS = Counter("jobcast_cancellations", "Jobs cancelled through this web server")
# RQ's registries, read at scrape time (see RQCollector).
JOB_STATES = ("queued", "started", "deferred", "scheduled", "finished", "failed", "canceled")


class Tally:
    """Events counted by the hot paths with one ``deque.append``, put into their metrics by
    :meth:`publish` (one ``inc()`` per metric and label for everything since the last call).

    Safe under threads as well as greenlets: each event is taken off the deque once, so
    concurrent publishers neither lose nor double any.
    """

    def __init__(self):
        """Nothing counted yet."""
        self._events: collections.deque = collections.deque()

    def add(self, metric, label: str | None = None, amount: float = 1) -> None:
        """Count ``amount`` on ``metric`` (a Counter or a Gauge), labelled ``label`` if given."""
        self._events.append((metric, label, amount))

    def publish(self) -> None:
        """Put the events counted so far into their metrics."""
        events = self._events
        totals: dict = {}
        for _ in range(len(events)):
            try:
                metric, label, amount = events.popleft()
            except IndexError:  # another thread's publish took the rest
                break
            totals[metric, label] = totals.get((metric, label), 0) + amount
        for (metric, label), amount in totals.items():
            if amount:  # a gauge's +1 and -1 within one round cancel out
                (metric if label is None else metric.labels(label)).inc(amount)


TALLY = Tally()
"""This process's tally of per-stream events (see the module's docstring)."""


def publish() -> None:
    """Put this process's tallied events into the metrics (the relay's heartbeat, a scrape)."""
    TALLY.publish()


def announced(count: int) -> None:
    """The broker read ``count`` announcements in one burst (tallied: a burst comes with every
    value, up to thousands a second)."""
    TALLY.add(ANNOUNCEMENTS, amount=count)


def admitted(path: str) -> None:
    """A single-job stream was admitted by ``path``: ``fast`` or ``flask``."""
    TALLY.add(ADMISSIONS, path)


def caught_up(reason: str) -> None:
    """A viewer reads the log for ``reason`` (history, gap, slow, ...)."""
    TALLY.add(CATCHUPS, reason)


def disconnected(reason: str) -> None:
    """A viewer stopped for ``reason`` (job_ended, client_gone, ...)."""
    TALLY.add(DISCONNECTS, reason)


def stream_refused(reason: str) -> None:
    """A stream was refused for ``reason`` (one of REFUSAL_REASONS)."""
    STREAM_REFUSALS.labels(reason if reason in REFUSAL_REASONS else "other").inc()


def job_cancelled() -> None:
    """A job was cancelled (called by the cancel endpoint)."""
    CANCELLATIONS.inc()


def viewer_added() -> None:
    """A viewer attached to this process's relay (counted in total, not per job: a label
    per job would be a series per job)."""
    TALLY.add(VIEWERS)


def viewer_removed() -> None:
    """A viewer detached."""
    TALLY.add(VIEWERS, amount=-1)


def dispatched(entry, viewers: int) -> None:
    """The relay handed ``entry`` to ``viewers`` viewers."""
    if viewers:
        RELAYED.inc(viewers)
        if entry.kind == "value":
            VALUES_RELAYED.inc(viewers)
    ts = entry.data.get("ts")
    if isinstance(ts, (int, float)):
        lag = max(0.0, time.time() - ts)
        HUB_LAG.observe(lag)
        HUB_LAST_LAG.set(lag)


class RQCollector:
    """Queue depth and busy workers, read from RQ when scraped."""

    def __init__(self, redis, queue_name: str):
        """Read the queue ``queue_name`` on ``redis``."""
        self.redis = redis
        self.queue_name = queue_name

    def collect(self):
        """Yield the gauges; on a Redis error yield nothing rather than fail the scrape."""
        from rq import Queue

        from jobcast.core.workers import WorkerRecord

        try:
            queue = Queue(self.queue_name, connection=self.redis)
            depth = queue.count
            workers = WorkerRecord.all(connection=self.redis)
            busy = sum(1 for w in workers if w.get_state() == "busy")
            registries = {
                "started": queue.started_job_registry, "deferred": queue.deferred_job_registry,
                "scheduled": queue.scheduled_job_registry, "finished": queue.finished_job_registry,
                "failed": queue.failed_job_registry, "canceled": queue.canceled_job_registry,
            }
            # ZCARD only: a scrape must not run RQ's cleanup (the workers' maintenance does).
            states = {"queued": depth, **{name: r.get_job_count(cleanup=False)
                                          for name, r in registries.items()}}
        except Exception:  # a scrape must still answer with the process metrics
            log.warning("metrics: cannot read RQ state", exc_info=True)
            return
        q = GaugeMetricFamily("jobcast_queue_depth", "Jobs waiting on the RQ queue", labels=["queue"])
        q.add_metric([self.queue_name], depth)
        yield q
        w = GaugeMetricFamily("jobcast_workers", "RQ workers by state", labels=["state"])
        w.add_metric(["busy"], busy)
        w.add_metric(["idle"], len(workers) - busy)
        yield w
        b = GaugeMetricFamily("jobcast_workers_busy", "RQ workers running a job")
        b.add_metric([], busy)
        yield b
        j = GaugeMetricFamily("jobcast_jobs", "Jobs by state, from RQ's registries (finished and "
                              "failed ones count until their results expire)", labels=["state"])
        for name in JOB_STATES:
            j.add_metric([name], states[name])
        yield j


_PID_RE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def cleanup_dead_processes(path: str) -> None:
    """Drop the live-gauge files of worker processes that no longer exist.

    gunicorn's ``child_exit`` hook is the usual place for this; doing it at scrape time keeps
    gunicorn.conf.py free of code and also covers workers killed with SIGKILL.
    """
    from prometheus_client import multiprocess

    for name in {os.path.basename(p) for p in glob.glob(os.path.join(path, "gauge_live*_*.db"))}:
        m = _PID_RE.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except PermissionError:
            pass


class _Forward:
    """Collects another registry's metrics, so the RQ collector can be added per scrape."""

    def __init__(self, inner):
        """Wrap ``inner``."""
        self.inner = inner

    def collect(self):
        """Yield ``inner``'s metrics."""
        yield from self.inner.collect()


def render(redis=None, queue_name: str | None = None) -> bytes:
    """The exposition text of every metric (all processes in multi-process mode)."""
    publish()  # this process's tally, at least, is current
    path = multiproc_dir()
    if path:
        from prometheus_client import multiprocess

        cleanup_dead_processes(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    if redis is not None and queue_name:
        registry.register(RQCollector(redis, queue_name))
    return generate_latest(registry)
