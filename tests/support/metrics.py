"""This process's Prometheus counters, as a scrape would show them: for the tests that run
the relay in the test process itself."""

from __future__ import annotations

import httpx


def metric_value(name: str, **labels: str) -> float:
    """A counter of this process's Prometheus registry, as a scrape would show it (the
    tally published first); 0 when never incremented."""
    from prometheus_client import REGISTRY

    from jobcast.web import metrics

    metrics.publish()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def served_refusals(base_url: str, reason: str, headers: dict | None = None) -> float:
    """jobcast_stream_refusals_total{reason} as the server at ``base_url`` shows it."""
    r = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r  # (a refused scrape must not read as no refusals)
    for line in r.text.splitlines():
        if line.startswith(f'jobcast_stream_refusals_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0
