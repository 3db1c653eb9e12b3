"""Who is watching: each web process publishes its viewer counts per job to Redis.

A viewer is attached to one gunicorn worker, so no process knows the total by itself. Every
few seconds each process writes ``<process>: "<count> <time>"`` into the job's viewers hash
(:meth:`jobcast.core.joblog.JobLog.publish_viewers`); readers add up the fresh fields. A
process that dies stops refreshing its fields, and they are ignored once stale.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Protocol

from jobcast.core.feed import FEED
from jobcast.core.joblog import JobLog
from jobcast.core.logstore import LogStore
from jobcast.core.wait import in_pages
from jobcast.web.periodic import Periodic

STALE_AFTER = 30.0  # seconds without a refresh before a process's count is ignored
REFRESH_AFTER = STALE_AFTER / 3  # an unchanged count is written again after this long
PAGE = 100  # jobs per pipeline: the process's loop gets a turn between two


class Watched(Protocol):
    """What presence asks of the relay."""

    def jobs(self) -> list[str]:
        """Jobs with at least one viewer here."""

    def viewers(self, job_id: str) -> int:
        """Viewers of one job here."""


def total_viewers(jlog: JobLog, now: float | None = None) -> int:
    """Viewers of the job across all web processes."""
    now = time.time() if now is None else now
    total = 0
    for value in jlog.viewer_counts().values():
        count, _, stamp = value.decode().partition(" ")
        if now - float(stamp or 0) < STALE_AFTER:
            total += int(count)
    return total


class Presence(Periodic):
    """Publishes this process's per-job viewer counts, read every ``interval`` s."""

    thread_name = "jobcast-presence"
    immediate = True

    def __init__(self, logs: LogStore, watched: Watched, interval: float = 3.0):
        """Prepare; :meth:`start` runs it."""
        super().__init__(interval)
        self.logs = logs
        self.watched = watched
        self.name = f"{socket.gethostname()}:{os.getpid()}"  # its field in each job's hash
        self.written: dict[str, tuple[int, float]] = {}  # job id -> (count, when) written

    @property
    def published(self) -> set[str]:
        """The jobs whose count this process has in Redis."""
        return set(self.written)

    def round(self) -> None:
        """Publish the counts."""
        self.publish()

    def publish(self, now: float | None = None) -> None:
        """Write the counts that changed, or that were last written ``REFRESH_AFTER`` ago,
        and remove the jobs nobody here watches any more.

        A round writes what changed, and an unchanged count only every ``REFRESH_AFTER`` s,
        ``PAGE`` jobs per pipeline, with a turn of the loop between two (this runs in a greenlet
        under gevent, beside every viewer): writing every count each round cost a process
        watching 1,000 jobs 2,000 commands and 16 ms of its loop every 3 s.
        """
        now = time.time() if now is None else now
        # The job list's viewers are the relay's too, under the feed's name; it is no job and
        # has no viewers hash (its name is not even a valid job id).
        counts = {job_id: self.watched.viewers(job_id) for job_id in self.watched.jobs()
                  if job_id != FEED}
        written = self.written
        due = [(job_id, count) for job_id, count in counts.items()
               if (job_id not in written or written[job_id][0] != count
                   or now - written[job_id][1] >= REFRESH_AFTER)]
        gone = [(job_id, None) for job_id in written if job_id not in counts]
        for page in in_pages(due + gone, PAGE):
            pipe = self.logs.redis.pipeline(transaction=False)
            for job_id, count in page:
                if count is None:
                    self.logs.log(job_id).forget_viewers(pipe, self.name)
                else:
                    self.logs.log(job_id).publish_viewers(pipe, self.name, count, now,
                                                          int(STALE_AFTER * 2))
            pipe.execute()
            # What Redis has now (a round that fails half-way leaves the rest due).
            for job_id, count in page:
                if count is None:
                    del written[job_id]
                else:
                    written[job_id] = (count, now)
