"""What a lossy failover leaves of a job's log, played on one Redis."""

from __future__ import annotations

import pytest

from jobcast.core.epoch import LogReset
from jobcast.core.joblog import JobLog


def lose(log: JobLog, keep: int) -> None:
    """Make ``log`` what a promoted replica that lacked the primary's last writes has: the
    entries after seq ``keep`` gone, and the hash's seq and count of values as they were then
    (its epoch unchanged: the replica never saw a new one)."""
    entries = list(log.entries())
    log.redis.delete(log.keys.log)  # rebuilt: a stream's last id never goes back otherwise
    for entry in entries:
        if entry.seq <= keep:
            log.redis.xadd(log.keys.log, {"e": entry.raw}, id=f"0-{entry.seq}")
    values = sum(1 for e in entries if e.kind == "value" and e.seq <= keep)
    log.redis.hset(log.keys.meta, mapping={"seq": keep, "values": values, "status": "running"})


def retried_after_loss(log: JobLog, writer: JobLog, keep: int, index: int) -> JobLog:
    """A lossy failover (:func:`lose`, keeping seq ``keep``) under a running attempt: its
    ``writer``'s next value (number ``index``) is refused with LogReset, and the job's second
    attempt begins, as the worker's retry would. Returns the new attempt's writer."""
    lose(log, keep)
    with pytest.raises(LogReset):
        writer.value(index, "refused")
    retry = JobLog(log.redis, log.job_id)
    retry.retrying("the job's log was reset")
    retry.begin()
    retry.started("w2", 2)
    return retry
