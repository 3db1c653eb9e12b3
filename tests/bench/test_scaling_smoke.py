"""A tiny run of bench/scaling.py: both tables come out, and each subscriber got exactly the
announcements its subscriptions ask for (all of them by pattern, the watched jobs' per job)."""

from __future__ import annotations

from bench import scaling


def test_scaling_quick_run_prints_both_tables_with_the_expected_deliveries(tmp_path):
    out = tmp_path / "scaling.md"
    assert scaling.main(["--quick", "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")]
    cost = {r[0].strip(): r for r in rows if len(r) == 9 and "µs" in r[6]}
    # --quick: 20 jobs x 5 values announced, 2 of the jobs watched.
    assert cost["pattern (`PSUBSCRIBE`)"][5].strip() == "100"
    assert cost["per-job (`SUBSCRIBE`)"][5].strip() == "10"
    stores = {r[0].strip(): int(r[3].strip().replace(",", "")) for r in rows if len(r) == 5
              and r[0].strip() != "stream store"}
    assert set(stores) == {"single Redis", "Redis Cluster, 3 primaries"}
    assert all(appends > 0 for appends in stores.values())
