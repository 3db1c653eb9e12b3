"""Job ids, and the names of a job's keys and channel: what a caller needs to check an id or
name a key, without the log's reads and writes (:mod:`jobcast.core.joblog`).

Every key is derived from a validated job id, never from raw user input:

- ``jobcast:job:<id>``          a hash with the job's metadata and counters;
- ``jobcast:job:<id>:log``      a stream, one entry per event, with stream id ``0-<seq>``;
- ``jobcast:job:<id>:ch``       the pub/sub channel that announces each new entry;
- ``jobcast:job:<id>:viewers``  each web process's count of the job's viewers;
- ``jobcast:job:<id>:chart``    the worker's downsampled chart of the job's values.

On a Redis Cluster (see :mod:`jobcast.core.store`) the id is a hash tag, ``jobcast:job:{<id>}``
and so on, so one job's keys and channel share a slot, and the channel is a shard channel
(``SPUBLISH``). A single Redis keeps the plain names, so its data and tools stay as they were.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from jobcast.core.store import is_cluster

PREFIX = "jobcast"
JOBS_INDEX = f"{PREFIX}:jobs"
# The jobs of the index that may still be queued or running (a sorted set by creation time,
# not capped: a backlog longer than the index must still be watched): the watchdog reads
# these, not the whole index. A job leaves the set with its end on a single Redis (the append
# script); the watchdog drops those it finds ended (a Cluster's, whose set is in another slot,
# and those whose metadata expired) (jobcast.core.logstore.LogStore.open_jobs).
OPEN_JOBS = f"{PREFIX}:jobs:open"
CHANNEL_PATTERN = f"{PREFIX}:job:*:ch"  # (one pattern for every job: bench/scaling.py compares)

# RQ's own rule for job ids (letters, digits, "_" and "-"), bounded in length. Jobcast's ids
# (32 hex characters), RQ's (a UUID with dashes) and ids users choose all fit; ":" and every
# other character stay out, so an id can never reach into another key's namespace.
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class InvalidJobId(ValueError):
    """The string is not a well-formed job id."""


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is well formed, else raise InvalidJobId."""
    # fullmatch, not match with "$": "$" would also accept a trailing newline.
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidJobId("job id must be 1 to 128 letters, digits, '_' or '-'")
    return job_id


def _job(job_id: str, tagged: bool) -> str:
    """The job's part of its key names: the id, in braces (a hash tag) when ``tagged``."""
    check_job_id(job_id)
    return f"{PREFIX}:job:{{{job_id}}}" if tagged else f"{PREFIX}:job:{job_id}"


def meta_key(job_id: str, tagged: bool = False) -> str:
    """Key of the job's metadata hash (``tagged``: its Redis Cluster name)."""
    return _job(job_id, tagged)


def log_key(job_id: str, tagged: bool = False) -> str:
    """Key of the job's log stream (``tagged``: its Redis Cluster name)."""
    return _job(job_id, tagged) + ":log"


def channel(job_id: str, tagged: bool = False) -> str:
    """Pub/sub channel on which the job's new entries are announced (``tagged``: the shard
    channel of a Redis Cluster)."""
    return _job(job_id, tagged) + ":ch"


def job_id_from_channel(name: str) -> str | None:
    """Inverse of :func:`channel`; None for a name that is not a job channel."""
    parts = name.split(":")
    if len(parts) == 4 and parts[0] == PREFIX and parts[1] == "job" and parts[3] == "ch":
        job_id = parts[2]
        if job_id[:1] == "{" and job_id[-1:] == "}":
            job_id = job_id[1:-1]
        return job_id if JOB_ID_RE.fullmatch(job_id) else None
    return None


class JobKeys(NamedTuple):
    """The names of one job's keys and channel on a given Redis."""

    meta: str
    log: str
    channel: str

    @property
    def viewers(self) -> str:
        """The hash of each web process's count of the job's viewers."""
        return self.meta + ":viewers"

    @property
    def chart(self) -> str:
        """The worker's downsampled chart of the job's values (a JSON string)."""
        return self.meta + ":chart"


def job_keys(redis, job_id: str) -> JobKeys:
    """Names of ``job_id``'s keys on ``redis``: hash-tagged on a Redis Cluster."""
    base = _job(job_id, is_cluster(redis))
    return JobKeys(base, base + ":log", base + ":ch")
