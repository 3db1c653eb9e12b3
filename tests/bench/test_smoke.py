"""A small run of the fan-out benchmark (bench/): every viewer gets every value, none lost.

It starts the benchmark's own redis-server, Jobcast under gunicorn and load generators, holds
about 200 viewers for a few seconds (on SSE and on the text stream, connecting while values
flow) and checks delivery, not speed, and that the bare-loop reference (bench/floor.py) is
measured and printed with the table: the speed is for
``python -m bench.run`` and docs/benchmarks.md. It needs neither uvloop nor flask-sse (the load
generator falls back to asyncio's own loop).
"""

from __future__ import annotations

import json

from bench import run


def test_benchmark_smoke_run_loses_nothing(tmp_path):
    out = tmp_path / "smoke"
    rc = run.main(["--targets", "jobcast", "--repeats", "1", "--scenarios", "fan10,fan10text,frozen",
                   "--viewers", "200", "--duration", "5", "--drain", "30", "--loadgens", "1",
                   "--out", str(out)])
    assert rc == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    results = saved["results"]
    assert {r["scenario"] for r in results} == {"fan10", "fan10text", "frozen"}
    for r in results:
        assert r["held"] == 200, r
        assert r["expected"] > 0 and r["delivered"] == r["expected"], r
        assert r["lost"] == 0 and r["order_errors"] == 0 and r["bad_status"] == 0, r
        assert r["lat_samples"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| scenario |" in table
    # The bare-loop reference, measured in the same run, heads the table.
    ref = saved["floor"]
    assert ref["viewers"] == 200
    assert 0 < ref["trip_p50_ms"] <= ref["trip_p90_ms"] < 1000
    assert 0 < ref["burst_p50_ms"] <= ref["burst_p90_ms"] < 1000
    assert 0 < ref["cpu_us_per_send"] < 1000
    assert ref["trip_p50_ms"] < ref["floor_p50_ms"] < ref["floor_last_ms"]
    assert "Reference on this machine in this run" in table
