"""The newest entries of each watched job, kept in memory by the relay.

A burst of newcomers to a busy job reads its recent history here rather than each from Redis,
and the frames of that history are built once for all of them.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

from jobcast.core.epoch import continues
from jobcast.core.joblog import Entry
from jobcast.web.frames import Transport

RECENT = 512
"""Newest entries of each watched job kept in memory, so newcomers need not read Redis."""

RECENT_BYTES = 1 << 20
"""At most this many bytes of entries kept per job (a job of large values keeps fewer)."""

FRAMED_BYTES = 8 << 20
"""At most this many bytes of framed history kept for newcomers, all jobs together."""


class ReadMark(NamedTuple):
    """Where a log read began (:meth:`RecentEntries.reading`): the subscriptions' generation,
    and when its job was last taken in."""

    generation: int
    since: int


class RecentEntries:
    """The newest entries of each watched job this process has seen, contiguous by seq.

    Filled from live batches and from the log reads of catching-up viewers, so a burst of
    newcomers to a busy job reads its recent history here rather than each from Redis. It is
    exact by construction: every entry is a log entry, and a batch or read that does not follow
    on, or is of another incarnation of the log (its entries' epoch differs) that did not begin
    right after what is kept (its first entry names the epoch before it), replaces what is kept
    instead of joining it. It serves a viewer only in the incarnation the viewer follows (the
    newest kept entry's, or that of the kept entry at the viewer's position). It is *current*
    for a viewer at seq ``cursor`` when it ends at that cursor and the broker has delivered
    nothing newer: the viewer can then rejoin the fast path without asking Redis. That holds
    only within one unbroken subscription, so a lost or renewed subscription clears it, and a
    log read that spans a change (a new ``generation``) adds nothing; nor does one that spans
    the job being forgotten (its last viewer left: no live batch would ever follow it). Memory
    is capped in entries and in bytes, per job and for the frames.
    """

    def __init__(self, maxlen: int = RECENT, max_bytes: int = RECENT_BYTES,
                 framed_bytes: int = FRAMED_BYTES):
        """Keep up to ``maxlen`` entries and ``max_bytes`` per job."""
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self.framed_bytes = framed_bytes
        self._tails: dict[str, list[Entry]] = {}
        self._sizes: dict[str, int] = {}  # bytes kept per job
        # Values logged before a job's oldest kept entry, when known and no value is kept to
        # say it (values_through): what the entries trimmed from memory held.
        self._before: dict[str, int] = {}
        self._dispatched: dict[str, int] = {}
        # The frames of "everything kept after seq c" per (job, transport, c), valid while the
        # kept entries end with the same entry: a burst of newcomers is framed once.
        self._framed: dict[tuple[str, Transport, int], tuple[Entry, bytes]] = {}
        self._framed_size = 0
        self.generation = 0
        # When each job was first read or kept since it was last forgotten (see reading()).
        self._since: dict[str, int] = {}
        self._marks = itertools.count(1)

    def after(self, job_id: str, cursor: int, epoch: str | None = None) -> list[Entry]:
        """The kept entries after ``cursor`` of incarnation ``epoch``, if they follow on from
        it, else []."""
        tail = self._tails.get(job_id)
        if not tail or not tail[0].seq <= cursor + 1 <= tail[-1].seq or \
                not _serves(tail, cursor, epoch):
            return []
        return tail[cursor + 1 - tail[0].seq:]

    def values_through(self, job_id: str, seq: int, epoch: str | None = None) -> int | None:
        """How many values the job had logged at entry ``seq`` (of incarnation ``epoch``):
        one more than the newest kept value at or before it; None when none is kept."""
        tail = self._tails.get(job_id)
        if not tail or not tail[0].seq <= seq <= tail[-1].seq or not _serves(tail, seq, epoch):
            return None
        for k in range(seq - tail[0].seq, -1, -1):
            if tail[k].kind == "value":
                return tail[k].i + 1
        # No value kept at or before it: as many as before the oldest kept entry (a job that
        # printed more lines since its last value than memory keeps).
        return 0 if tail[0].seq == 1 else self._before.get(job_id)

    def framed_after(self, job_id: str, cursor: int, transport: Transport,
                     start: int = 0, epoch: str | None = None) -> tuple[bytes, Entry] | None:
        """The frames of the kept entries after ``cursor`` (of incarnation ``epoch``) and the
        last of them, or None."""
        kept = self.after(job_id, cursor, epoch)
        if not kept:
            return None
        last = kept[-1]
        if start:
            return transport.frames(kept, start), last
        key = (job_id, transport, cursor)
        hit = self._framed.get(key)
        if hit is not None and hit[0] is last:
            return hit[1], last
        data = transport.frames(kept)
        if self._framed_size + len(data) > self.framed_bytes:
            self._framed.clear()
            self._framed_size = 0
        if len(data) <= self.framed_bytes:
            old = self._framed.get(key)
            if old is not None:
                self._framed_size -= len(old[1])
            self._framed[key] = (last, data)
            self._framed_size += len(data)
        return data, last

    def is_current(self, job_id: str, cursor: int, epoch: str | None = None) -> bool:
        """True if nothing newer than ``cursor`` (of incarnation ``epoch``) has been logged that
        the broker has not yet dispatched to the fast path."""
        tail = self._tails.get(job_id)
        return (bool(tail) and tail[-1].seq == cursor
                and tail[-1].ep in (epoch, None) and cursor >= self._dispatched.get(job_id, 0))

    def add_live(self, job_id: str, entries: list[Entry]) -> None:
        """The broker delivered ``entries``."""
        self._dispatched[job_id] = entries[-1].seq
        tail = self._tails.get(job_id)
        if (tail is not None and tail[-1].seq + 1 == entries[0].seq
                and continues(tail[-1].ep, entries)):
            tail.extend(entries)
            self._sizes[job_id] += _size(entries)
            self._trim(job_id)
        else:
            # A gap, or another incarnation (its seqs may even go back): start again from
            # what is known.
            self._keep(job_id, list(entries))

    def reading(self, job_id: str) -> ReadMark:
        """The mark of a log read of ``job_id`` about to start, for :meth:`add_read`."""
        since = self._since.get(job_id)
        if since is None:
            since = self._since[job_id] = next(self._marks)
        return ReadMark(self.generation, since)

    def add_read(self, job_id: str, entries: list[Entry], mark: ReadMark) -> None:
        """A viewer read ``entries`` from the log, in a read marked ``mark`` (:meth:`reading`)
        when it began: kept only if neither the subscriptions changed nor the job was
        forgotten since."""
        if (not entries or mark.generation != self.generation
                or self._since.get(job_id) != mark.since):
            return
        tail = self._tails.get(job_id)
        if tail is None:
            self._keep(job_id, list(entries))
            return
        first, last = tail[0].seq, tail[-1].seq
        if entries[-1].seq + 1 < first or entries[0].seq > last + 1:
            return  # not adjacent: nothing is known between the two, keep what we have
        oldest, newest = max(first, entries[0].seq), min(last, entries[-1].seq)
        if oldest <= newest and any(tail[seq - first].raw != entries[seq - entries[0].seq].raw
                                    for seq in (newest, oldest)):
            # The same seq, another entry: the log was reset between the two (a failover
            # renews the subscription too, so this is a second line of defence). A lossy
            # failover loses a suffix: the newest entries both hold are the ones that differ.
            self._keep(job_id, list(entries))
            return
        # Both are exact runs of the log that touch: their union is one.
        before = entries[:max(0, first - entries[0].seq)]
        after = entries[max(0, last + 1 - entries[0].seq):]
        if any(e.kind == "value" for e in before):
            # Counted before what was the oldest entry: a kept value says it now.
            self._before.pop(job_id, None)
        tail[:0] = before
        tail.extend(after)
        self._sizes[job_id] += _size(before) + _size(after)
        self._trim(job_id)

    def last(self, job_id: str) -> Entry | None:
        """The newest kept entry of ``job_id``, if this process keeps any."""
        tail = self._tails.get(job_id)
        return tail[-1] if tail else None

    def forget(self, job_id: str) -> None:
        """Nobody here watches ``job_id`` any more."""
        self._since.pop(job_id, None)
        self._tails.pop(job_id, None)
        self._before.pop(job_id, None)
        self._sizes.pop(job_id, None)
        self._dispatched.pop(job_id, None)
        for key in [k for k in self._framed if k[0] == job_id]:
            self._framed_size -= len(self._framed.pop(key)[1])

    def lost(self, job_ids) -> None:
        """The subscriptions of these jobs were lost or renewed: forget what is kept of them,
        and let no read that spans the change add to it."""
        self.generation += 1
        for job_id in job_ids:
            self.forget(job_id)

    def _keep(self, job_id: str, tail: list[Entry]) -> None:
        """Make ``tail`` the job's kept entries."""
        self._tails[job_id] = tail
        self._before.pop(job_id, None)  # of what was kept before
        self._sizes[job_id] = _size(tail)
        self._trim(job_id)

    def _trim(self, job_id: str) -> None:
        """Drop the job's oldest entries beyond ``maxlen`` entries or ``max_bytes`` (the
        newest one stays, however large)."""
        tail = self._tails[job_id]
        drop = max(0, len(tail) - self.maxlen)
        size = self._sizes[job_id] - _size(tail[:drop])
        while size > self.max_bytes and drop < len(tail) - 1:
            size -= len(tail[drop].raw)
            drop += 1
        if drop:
            dropped = next((e for e in reversed(tail[:drop]) if e.kind == "value"), None)
            if dropped is not None:
                self._before[job_id] = dropped.i + 1
            elif tail[0].seq == 1:
                self._before[job_id] = 0  # from the log's start, and no value yet
            # (else the values before the new oldest entry are those before the old one)
            del tail[:drop]
            self._sizes[job_id] = size


def _serves(tail: list[Entry], cursor: int, epoch: str | None) -> bool:
    """Whether the kept entries ``tail`` (one exact run of the log) may be read on from a
    position at ``cursor`` of incarnation ``epoch``: they end in it; or the kept entry at that
    position is of it (an incarnation that began after it names the one before, and joins what
    is kept: :func:`continues`); or they begin just after it, in it or in one that names it."""
    if tail[-1].ep in (epoch, None):
        return True
    k = cursor - tail[0].seq
    if 0 <= k < len(tail):
        return tail[k].ep == epoch
    return k == -1 and continues(epoch, tail[:1])


def _size(entries: list[Entry]) -> int:
    """The bytes of ``entries`` as stored."""
    return sum(len(e.raw) for e in entries)
