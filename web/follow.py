"""Follow one job for one viewer: history from the log, then live entries, without gaps.

The viewer keeps a cursor, the seq of the last entry it was given. Every entry it is handed
has seq == cursor + 1. Live entries come from the hub; whenever the hub cannot vouch for
continuity (a skipped seq, an overflowing buffer, a reconnect, a quiet spell) the log is read
from the cursor on. So the seam between history and live values has no gap and no duplicate.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

from worker.joblog import Entry, JobLog
from web.hub import OVERFLOW, RESYNC, Hub

log = logging.getLogger(__name__)

HEARTBEAT = None
"""Yielded by :func:`follow` when the job was quiet for a heartbeat interval."""


def follow(hub: Hub, joblog: JobLog, after: int = 0, *, heartbeat: float = 15.0,
           alive: Callable[[], bool] | None = None) -> Iterator[Entry | None]:
    """Yield the job's entries with ``seq > after`` in order, ending after the terminal one.

    Yields :data:`HEARTBEAT` (None) after ``heartbeat`` quiet seconds. ``alive`` is asked on
    each quiet spell; when it says False the generator stops, freeing the viewer's resources.
    """
    cursor = after
    with hub.subscribe(joblog.job_id) as sub:
        # History first: subscribing before reading means nothing can fall between the two.
        catch_up = True
        while True:
            if catch_up:
                catch_up = False
                fresh = False
                for entry in joblog.entries(after=cursor):
                    if entry.seq <= cursor:
                        continue
                    fresh = True
                    cursor = entry.seq
                    yield entry
                    if entry.terminal:
                        return
                if not fresh and joblog.ended():
                    # The terminal entry is at or before the cursor (or has expired).
                    return
            batch = sub.get(heartbeat)
            if batch is OVERFLOW or batch is RESYNC:
                catch_up = True
                continue
            if not batch:
                if alive is not None and not alive():
                    log.info("viewer of %s went away; freeing it", joblog.job_id)
                    return
                yield HEARTBEAT
                # A quiet spell is also when a lost announcement would hide: check the log.
                catch_up = True
                continue
            for entry in batch:
                if entry.seq <= cursor:
                    continue
                if entry.seq != cursor + 1:
                    catch_up = True
                    break
                cursor = entry.seq
                yield entry
                if entry.terminal:
                    return
