"""A small run of the fan-out benchmark (bench/): every viewer gets every value, none lost.

It starts the benchmark's own redis-server, Jobcast under gunicorn, Nchan (nginx with Debian's
nchan module: `make test` installs both, see the Makefile's system-deps) and load generators,
holds about 200 viewers for a few seconds (on SSE and on the text stream, connecting while
values flow), measures what admitting 200 streams costs, and checks delivery, not speed, and
that the bare-loop reference (bench/floor.py) is measured and printed with the table: the
speed is for ``python -m bench.run`` and docs/benchmarks.md. A second run cuts 200 SSE viewers
off by killing the web process of a `jobcast up` and checks they all come back with every
value exactly once. It needs neither uvloop nor flask-sse (the load generator falls back to
asyncio's own loop).
"""

from __future__ import annotations

import json

from bench import run


def test_benchmark_smoke_run_loses_nothing(tmp_path):
    out = tmp_path / "smoke"
    rc = run.main(["--targets", "jobcast,nchan,nchan-again,jobcast-flask", "--repeats", "1",
                   "--scenarios", "admit,fan10,fan10text,frozen",
                   "--viewers", "200", "--duration", "2", "--drain", "30", "--loadgens", "1",
                   "--admit-viewers", "200", "--admit-baseline", "0.5", "--out", str(out)])
    assert rc == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    results = saved["results"]
    # Jobcast with its fast path off runs the admission only, for the comparison; the control
    # (a second Nchan) the two scenarios whose target is "no worse than Nchan".
    assert {(r["target"], r["scenario"]) for r in results} == {
        (t, s) for t in ("jobcast", "nchan") for s in ("admit", "fan10", "fan10text", "frozen")
    } | {("jobcast-flask", "admit")} | {("nchan-again", s) for s in ("fan10", "fan10text")}
    for r in results:
        assert r["held"] == 200, r
        assert r["bad_status"] == 0, r
        if r["scenario"] == "admit":
            assert r["admitted"] == 200 and r["admission_cpu_us_per_stream"] > 0, r
            continue
        assert r["expected"] > 0 and r["delivered"] == r["expected"], r
        assert r["lost"] == 0 and r["order_errors"] == 0, r
        assert r["lat_samples"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| scenario |" in table and "**Jobcast / Nchan**" in table
    assert "Jobcast against Nchan, repeat by repeat" in table
    assert "The control: a second Nchan" in table
    assert "| Nchan again (the control) p50 / p99 ms |" in table
    assert "Admission (`admit`), repeat by repeat" in table
    assert "nchan 1." in table  # the header names Nchan's version
    # The bare-loop reference, measured in the same run, heads the table.
    ref = saved["floor"]
    assert ref["viewers"] == 200
    assert 0 < ref["trip_p50_ms"] <= ref["trip_p90_ms"] < 1000
    assert 0 < ref["burst_p50_ms"] <= ref["burst_p90_ms"] < 1000
    assert 0 < ref["cpu_us_per_send"] < 1000
    # ... and again to connections still in their readers' quick-ACK mode.
    assert 0 < ref["burst_fresh_p50_ms"] <= ref["burst_fresh_p90_ms"] < 1000
    assert 0 < ref["cpu_us_per_send_fresh"] < 1000
    assert ref["trip_p50_ms"] < ref["floor_p50_ms"] < ref["floor_last_ms"]
    assert "Reference on this machine in this run" in table
    assert "first 16 segments" in table


def test_reconnect_storm_smoke_run_brings_every_viewer_back_exactly_once(tmp_path):
    out = tmp_path / "reconnect"
    rc = run.main(["--targets", "jobcast", "--repeats", "1", "--scenarios", "reconnect",
                   "--reconnect-viewers", "200", "--reconnect-lead", "1.5", "--loadgens", "1",
                   "--no-floor", "--out", str(out)])
    assert rc == 0
    (r,) = json.loads(out.with_suffix(".json").read_text())["results"]
    assert r["held"] == 200 and r["streaming_before_kill"] == 200, r
    assert r["restarted_pid"] and r["restarted_pid"] != r["killed_pid"], r
    assert r["dropped"] == 200 and r["back"] == 200 and r["not_back"] == 0, r
    assert r["ready_to_all_back_s"] is not None, r
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["gaps"] == 0 and r["failed"] == 0, r
    assert r["produced_per_job"] > 0 and r["delivered"] == r["expected"], r
    assert "Reconnect storm" in out.with_suffix(".md").read_text()


def test_mux_smoke_run_counts_every_value_of_every_job(tmp_path):
    # The load generators find each value of a multi-job stream by its framing: a change of
    # that framing (the epoch in each entry) must fail here, not read as 100 % loss in a bench.
    out = tmp_path / "mux"
    rc = run.main(["--targets", "jobcast", "--repeats", "1", "--scenarios", "mux",
                   "--viewers", "200", "--duration", "2", "--drain", "30", "--loadgens", "1",
                   "--no-floor", "--out", str(out)])
    assert rc == 0
    (r,) = json.loads(out.with_suffix(".json").read_text())["results"]
    assert r["expected"] > 0 and r["delivered"] == r["expected"], r
    assert r["lost"] == 0 and r["order_errors"] == 0 and r["bad_status"] == 0, r
    assert r["lat_samples"] > 0, r


def test_the_retry_values_told_are_reported_as_a_range_not_one_by_one():
    # 10,000 viewers are told up to 2,001 different retry: values; the table lists their span.
    assert run.retry_span([0.5, 0.501, 2.5]) == "0.5–2.5 (3 values)"
    assert run.retry_span([3.0]) == "3" and run.retry_span([]) == "–"
