"""What the fast path's tests share (tests/web/test_fastpath.py, test_handover.py): the
stream admissions a server counts, a finished job, a raw GET."""

from __future__ import annotations

import re

import httpx

from tests.support.jobs import create_job
from tests.support.wait import wait_for


def admissions(url: str) -> dict[str, float]:
    """``jobcast_stream_admissions_total`` by path, from the server's /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in
            re.findall(r'^jobcast_stream_admissions_total\{path="(\w+)"\} (\S+)$', text, re.M)}


def settled_admissions(url: str) -> dict[str, float]:
    """:func:`admissions` once each worker process has published its own (they do every
    heartbeat round, a third of a second on the session's server): two scrapes half a second
    apart that agree."""
    last: list[dict[str, float]] = []

    def agreed() -> tuple[dict[str, float]] | None:
        """The counts, when the scrape before this one saw the same."""
        now = admissions(url)
        same = bool(last) and last[-1] == now
        last.append(now)
        return (now,) if same else None

    return wait_for(agreed, 10, interval=0.5, what="the admission counts to settle")[0]


def finished_job(http: httpx.Client, n: int = 5) -> str:
    """A sqrt job of ``n`` values that has finished."""
    job_id = create_job(http, "sqrt", n=n, interval=0)
    wait_for(lambda: http.get(f"/api/jobs/{job_id}").json()["status"] == "finished", 30,
             what="the job to finish")
    return job_id


def request(path: str, *headers: str) -> bytes:
    """A GET of ``path`` over HTTP/1.1 with ``headers``."""
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: localhost", *headers]) +
            "\r\n\r\n").encode()
