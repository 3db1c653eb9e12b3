"""Plain RQ job functions for the tests: not generators, not registered, they call emit()."""

from __future__ import annotations

import time

from rq import get_current_job

from jobcast import emit, resume


def emit_lines(n: int = 20, interval: float = 0.0) -> int:
    """Emit ``n`` text lines, then return."""
    for i in range(n):
        emit(f"line {i}", total=n)
        time.sleep(interval)
    return n


def crash_once(n: int = 6, crash_at: int = 3, resumable: bool = False) -> int:
    """Emit 0..n-1; the first attempt dies after ``crash_at`` values. With ``resumable`` the
    retry skips what is logged (resume()), else it replays from 0."""
    job = get_current_job()
    first = int(job.connection.hget(f"jobcast:job:{job.id}", "attempt") or 1) == 1
    for i in range(resume() if resumable else 0, n):
        if i == crash_at and first:
            raise ConnectionError(f"simulated crash at value {i}")
        emit(i)
    return n


def ask_retry_once(n: int = 4):
    """Emit 0..n-1; the first run then returns rq.Retry (RQ's way for a job to ask for one)."""
    from rq import Retry

    job = get_current_job()
    first = int(job.connection.hget(f"jobcast:job:{job.id}", "attempt") or 1) == 1
    for i in range(n):
        emit(i)
    return Retry(max=1) if first else n
