"""This process's Prometheus counters, as a scrape would show them: for the tests that run
the relay in the test process itself."""

from __future__ import annotations


def metric_value(name: str, **labels: str) -> float:
    """A counter of this process's Prometheus registry, as a scrape would show it (the
    tally published first); 0 when never incremented."""
    from prometheus_client import REGISTRY

    from jobcast.web import metrics

    metrics.publish()
    return REGISTRY.get_sample_value(name, labels) or 0.0
