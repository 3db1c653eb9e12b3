"""Where the benchmark's latency probes sit among the viewers: pure logic."""

from __future__ import annotations

import statistics

import pytest

from bench.run import probe_places


def test_every_viewer_is_a_probe_when_there_are_no_more_viewers_than_probes():
    assert probe_places(1000, 1000, 2) == list(range(1000))
    assert probe_places(200, 1000, 1) == list(range(200))


@pytest.mark.parametrize("viewers, probes, loadgens", [(1000, 50, 2), (10_000, 1000, 2),
                                                       (999, 37, 3), (200, 50, 1)])
def test_a_subset_of_probes_looks_the_same_from_either_end_of_the_write_order(
        viewers, probes, loadgens):
    """A review's finding: probes at 0, 21, 40 … 981 of 1,000 sat at 490.5 on average in the
    order Jobcast writes a job's viewers (oldest first), and at 508.5 in Nchan's (newest
    first): Nchan's median probe was written ~18 sends later, ~3 % of its p50."""
    places = probe_places(viewers, probes, loadgens)
    assert len(places) == len(set(places)) == probes
    assert all(0 <= k < viewers for k in places)
    middle = (viewers - 1) / 2
    assert abs(statistics.mean(places) - middle) <= loadgens
    mirrored = sorted(viewers - 1 - k for k in places)
    assert abs(statistics.median(places) - statistics.median(mirrored)) <= 2 * loadgens
    # One after the other on each load generator (viewer k goes to load generator k % n).
    assert [k % loadgens for k in places] == [m % loadgens for m in range(probes)]
