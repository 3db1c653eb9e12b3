"""A job's chart history, downsampled as it is written, so a page opens long jobs at once.

The worker folds every numeric value into at most ``BUCKETS`` buckets (min, max, first and
last of a run of ``span`` indices); when the buckets run out, neighbours merge and ``span``
doubles, exactly as web/static/chart.js does in the browser. The worker stores a snapshot
about once a second under ``jobcast:job:<id>:chart``, so the job page draws the whole job
from one small read instead of replaying every entry, and the chart still covers values that
the capped log has trimmed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from jobcast.core.joblog import JobLog
from jobcast.core.store import REDIS_ERRORS

log = logging.getLogger(__name__)

BUCKETS = 2048
SAVE_EVERY = 1.0
"""Seconds between two snapshots while a job runs."""


def numeric(value: Any) -> float | None:
    """The value as a chart point, or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        v = float(value)
    except OverflowError:  # an int past a float's range: a value all the same, not a point
        return None
    return v if math.isfinite(v) else None


class Downsample:
    """min/max/first/last buckets over value indices; O(1) amortised per value."""

    def __init__(self, buckets: int = BUCKETS):
        """Empty series of at most ``buckets`` buckets."""
        self.buckets = buckets
        self.span = 1
        self.min: list[float | None] = []
        self.max: list[float | None] = []
        self.first: list[float | None] = []
        self.last: list[float | None] = []
        self.points = 0
        self.upto = -1          # highest value index folded in (numeric or not)
        self.dirty = False

    def add(self, i: int, value: Any) -> None:
        """Fold value number ``i`` in (non-numeric values only move ``upto``)."""
        self.upto = max(self.upto, i)
        self.dirty = True
        v = numeric(value)
        if v is None or i < 0:
            return
        b = i // self.span
        while b >= self.buckets:
            self._merge()
            b = i // self.span
        while len(self.first) <= b:
            for series in (self.min, self.max, self.first, self.last):
                series.append(None)
        if self.first[b] is None:
            self.first[b] = self.min[b] = self.max[b] = v
        else:
            self.min[b] = min(self.min[b], v)
            self.max[b] = max(self.max[b], v)
        self.last[b] = v
        self.points += 1

    def _merge(self) -> None:
        """Halve the resolution: bucket k takes buckets 2k and 2k+1."""
        def pair(xs: list, pick) -> list:
            """Fold each two neighbouring buckets of ``xs`` into one with ``pick``."""
            out = []
            for k in range(0, len(xs), 2):
                both = [x for x in xs[k:k + 2] if x is not None]
                out.append(pick(both) if both else None)
            return out

        self.min = pair(self.min, min)
        self.max = pair(self.max, max)
        self.first = pair(self.first, lambda b: b[0])
        self.last = pair(self.last, lambda b: b[-1])
        self.span *= 2

    def to_json(self) -> str:
        """The snapshot as stored and served."""
        return json.dumps({"span": self.span, "upto": self.upto, "points": self.points,
                           "min": self.min, "max": self.max, "first": self.first,
                           "last": self.last}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str | None, buckets: int = BUCKETS) -> "Downsample":
        """Rebuild a series from a snapshot (an empty one for None)."""
        series = cls(buckets)
        if raw:
            data = json.loads(raw)
            series.span, series.upto, series.points = data["span"], data["upto"], data["points"]
            series.min, series.max = data["min"], data["max"]
            series.first, series.last = data["first"], data["last"]
        return series


class ChartWriter:
    """Keeps a running job's snapshot in Redis, at most once per ``SAVE_EVERY`` seconds."""

    def __init__(self, jlog: JobLog):
        """Continue the job's snapshot, if an earlier attempt left one."""
        self.jlog = jlog
        self.series = Downsample.from_json(jlog.chart())
        self.saved_at = time.monotonic()

    def add(self, i: int, value: Any) -> None:
        """Fold value ``i`` in; store the snapshot when the last one is old enough."""
        self.series.add(i, value)
        if time.monotonic() - self.saved_at >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        """Store the snapshot now (a failure only costs the page a slower chart)."""
        if not self.series.dirty:
            return
        self.saved_at = time.monotonic()
        try:
            self.jlog.save_chart(self.series.to_json())
            self.series.dirty = False
        except REDIS_ERRORS as exc:
            log.warning("chart snapshot of job %s not saved: %s", self.jlog.job_id, exc)
