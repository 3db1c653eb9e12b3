"""The worker's chart snapshot: bounded, spikes kept, and continued across a retry."""

from __future__ import annotations

import math

from jobcast.worker.chart import Downsample


def test_a_million_values_fold_into_at_most_2048_buckets_keeping_every_spike():
    series = Downsample()
    for i in range(1_000_000):
        series.add(i, 1e6 if i == 777_777 else math.sin(i / 1000))
    assert len(series.first) <= 2048 and series.span == 512 and series.points == 1_000_000
    assert max(v for v in series.max if v is not None) == 1e6
    assert series.upto == 999_999


def test_non_numeric_values_move_upto_but_draw_nothing():
    series = Downsample()
    for i, v in enumerate([1, "x", None, True, float("nan"), 2.5]):
        series.add(i, v)
    assert series.points == 2 and series.upto == 5
    assert series.first[0] == 1 and series.first[5] == 2.5 and series.first[1] is None


def test_a_snapshot_continues_where_it_stopped():
    whole, first_half = Downsample(64), Downsample(64)
    for i in range(10_000):
        whole.add(i, i % 97)
        if i < 5_000:
            first_half.add(i, i % 97)
    resumed = Downsample.from_json(first_half.to_json(), 64)
    for i in range(5_000, 10_000):
        resumed.add(i, i % 97)
    assert resumed.to_json() == whole.to_json()
