"""Follow one job for one viewer: history from the log, then live entries, without gaps.

The viewer keeps a cursor, the seq of the last entry it was given. Every entry it is handed
has seq == cursor + 1. Live entries come from the hub; whenever the hub cannot vouch for
continuity (a skipped seq, an overflowing buffer, a reconnect, a quiet spell) the log is read
from the cursor on. So the seam between history and live values has no gap and no duplicate.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

from redis.exceptions import RedisError

from jobcast.joblog import Entry, JobLog
from web import metrics
from web.hub import OVERFLOW, RESYNC, SHUTDOWN, Hub

log = logging.getLogger(__name__)

MAX_OUTAGE = 120.0
"""Seconds a viewer waits for an unreachable Redis before its stream ends."""

HEARTBEAT = None
"""Yielded by :func:`follow` when the job was quiet for a heartbeat interval."""

HISTORY_BATCH = 500
"""Most entries of history handed over (and written) at once."""


def follow(hub: Hub, joblog: JobLog, after: int = 0, *, heartbeat: float = 15.0,
           alive: Callable[[], bool] | None = None) -> Iterator[Entry | None]:
    """Yield the job's entries with ``seq > after`` in order, ending after the terminal one.

    Yields :data:`HEARTBEAT` (None) after ``heartbeat`` quiet seconds. ``alive`` is asked on
    each quiet spell; when it says False the generator stops, freeing the viewer's resources.
    """
    batches = follow_batches(hub, joblog, after, heartbeat=heartbeat, alive=alive)
    try:
        for batch in batches:
            if batch is HEARTBEAT:
                yield HEARTBEAT
            else:
                yield from batch
    finally:
        batches.close()


def follow_batches(hub: Hub, joblog: JobLog, after: int = 0, *, heartbeat: float = 15.0,
                   alive: Callable[[], bool] | None = None) -> Iterator[list[Entry] | None]:
    """Like :func:`follow`, but yields the entries in non-empty lists: all those ready at once.

    A stream encodes a whole list into one write, so a viewer who has fallen behind (or reads
    history) costs one system call per batch, not one per entry.
    """
    reason = "closed"  # the consumer stopped early: the client went away during a write
    try:
        reason = yield from _follow(hub, joblog, after, heartbeat, alive)
    except GeneratorExit:
        raise
    except BaseException:
        reason = "error"
        raise
    finally:
        metrics.DISCONNECTS.labels(reason).inc()


def _follow(hub: Hub, joblog: JobLog, after: int, heartbeat: float,
            alive: Callable[[], bool] | None):
    """The body of :func:`follow_batches`; returns why it stopped (e.g. "job_ended")."""
    cursor = after
    outage_since: float | None = None
    with hub.subscribe(joblog.job_id) as sub:
        # History first: subscribing before reading means nothing can fall between the two.
        catch_up = "history"
        while True:
            if catch_up:
                metrics.CATCHUPS.labels(catch_up).inc()
                catch_up = None
                fresh = False
                out: list[Entry] = []
                try:
                    for entry in joblog.entries(after=cursor):
                        if entry.seq <= cursor:
                            continue
                        fresh = True
                        cursor = entry.seq
                        out.append(entry)
                        if entry.terminal:
                            yield out
                            return "job_ended"
                        if len(out) >= HISTORY_BATCH:
                            yield out
                            out = []
                    if out:
                        yield out
                        out = []
                    if not fresh and joblog.ended():
                        # The terminal entry is at or before the cursor (or has expired).
                        return "job_ended"
                    outage_since = None
                except RedisError as exc:
                    if out:  # the cursor has moved past these: hand them over first
                        yield out
                    # Redis is unreachable (a restart?): keep the viewer and read again soon.
                    outage_since = outage_since or time.monotonic()
                    if time.monotonic() - outage_since > MAX_OUTAGE:
                        log.warning("giving up on %s: Redis down for %ss", joblog.job_id, MAX_OUTAGE)
                        return "redis_down"
                    log.info("viewer of %s waits for Redis: %s", joblog.job_id, exc)
                    catch_up = "redis"
                    yield HEARTBEAT
                    sub.get(min(heartbeat, 1.0))  # anything it returns is re-read from the log
                    continue
            batch = sub.get(heartbeat)
            if batch is SHUTDOWN:
                return "server_shutdown"
            if batch is OVERFLOW or batch is RESYNC:
                catch_up = "overflow" if batch is OVERFLOW else "resync"
                continue
            if not batch:
                if alive is not None and not alive():
                    log.info("viewer of %s went away; freeing it", joblog.job_id)
                    return "client_gone"
                metrics.HEARTBEATS.inc()
                yield HEARTBEAT
                # A quiet spell is also when a lost announcement would hide: check the log.
                catch_up = "quiet"
                continue
            out = []
            for entry in batch:
                if entry.seq <= cursor:
                    continue
                if entry.seq != cursor + 1:
                    catch_up = "gap"
                    break
                cursor = entry.seq
                out.append(entry)
                if entry.terminal:
                    yield out
                    return "job_ended"
            if out:
                yield out
