"""What a lossy failover leaves of a job's log, played on one Redis."""

from __future__ import annotations

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
