"""Epochs: which incarnation of a log a position belongs to.

A job's ``seq`` numbers its entries without gaps, so a viewer resumes after the last seq it
saw. That holds while the log only grows. Redis replicates asynchronously, so a failover can
promote a replica that lacks the primary's last writes: the log's seq goes back, and the next
entries would reuse seqs a viewer already saw with other values. A restart without persistence
loses the whole log. The epoch makes that visible.

- **The token.** A log's hash holds ``epoch``, 8 random characters made when the log is created
  (:func:`new_epoch`), and ``epochs``, its recent eras (``<epoch>@<first seq>@<values before>``,
  see ``epoch.lua``). Every entry carries the epoch it was written in (``"ep"``), so an entry is
  named by ``(seq, ep)`` across incarnations.
- **A new epoch** begins whenever Jobcast cannot prove the log is the same incarnation:
  a writer finds the log's seq behind the highest it wrote (``append.lua``, which then refuses
  the append: the job is retried through RQ's normal path), or a reader finds it behind what it
  served from it, the writer silent (``rebase.lua``, a compare-and-set). A log re-created after
  it was lost has a new epoch of its own. So **no seq is ever reused within one epoch**.
- **Resuming** (:func:`resolve`): a position is a seq (SSE) or a count of values (text, HTML),
  with the epoch it was taken in. In the current epoch, or in an older one whose entries up to
  that position survived into the next, the viewer simply continues. Otherwise it gets one
  :class:`Reset`: drop what you hold after seq ``after`` (values from index ``values`` on), the
  stream goes on in epoch ``epoch`` from there.

A position without an epoch (an id from before epochs, ``?after=N``, ``?start=K``) is trusted
unless it is past the log's end.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from importlib.resources import files
from typing import Iterable, NamedTuple

from redis.exceptions import RedisError

from jobcast.core.entry import TERMINAL, Entry

EPOCH_LUA = files(__package__).joinpath("epoch.lua").read_text()
"""The ``mint`` function that the scripts writing a log's hash share."""

REBASE_LUA = EPOCH_LUA + files(__package__).joinpath("rebase.lua").read_text()

EPOCH = re.compile(r"[A-Za-z0-9_-]{1,16}")
"""What an epoch may look like (8 URL-safe characters when Jobcast makes it): never ``:``, ``.``
or ``~``, so it can follow a seq in an SSE id or a cursor."""

LOST, PAST_END, UNKNOWN = "lost", "past_end", "unknown_epoch"
"""Why a viewer is reset: entries it had were lost; it was past the log's end; its epoch is not
in the log's history (the log was re-created)."""


class LogReset(RedisError):
    """The job's log is not the incarnation this writer began: Redis lost entries (a failover,
    a restart without persistence). The job is retried, or failed, through RQ's normal path."""

    def __init__(self, job_id: str):
        """The log of ``job_id`` was reset."""
        super().__init__(f"the log of job {job_id} was reset (Redis lost entries in a failover)")


def new_epoch() -> str:
    """A new epoch: 8 random URL-safe characters."""
    return secrets.token_urlsafe(6)


class Era(NamedTuple):
    """One incarnation of a log: its epoch, its first seq, and how many values came before."""

    epoch: str
    first_seq: int
    values: int


def parse_eras(text: bytes | str | None) -> tuple[Era, ...]:
    """The ``epochs`` field of a log's hash, oldest first (malformed items are skipped)."""
    if not text:
        return ()
    if isinstance(text, bytes):
        text = text.decode()
    eras = []
    for item in text.split():
        parts = item.split("@")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            eras.append(Era(parts[0], int(parts[1]), int(parts[2])))
    return tuple(eras)


class Position(NamedTuple):
    """Where a log ends: whether it has ended, its last seq, its epoch."""

    ended: bool
    seq: int
    epoch: str | None = None


HEAD_FIELDS = ("status", "seq", "values", "epoch", "epochs")
"""The hash fields of a :class:`Head`, in the order they are read."""


@dataclass(frozen=True)
class Head:
    """Where a log stands: what a reader needs to place a viewer in it."""

    exists: bool
    status: str | None = None
    seq: int = 0
    values: int = 0
    epoch: str | None = None
    eras: tuple[Era, ...] = ()

    @classmethod
    def from_reply(cls, reply, *, always: bool = False) -> "Head":
        """Read an ``HMGET`` of :data:`HEAD_FIELDS`. A job's log exists while it has a status;
        ``always`` for a log that always exists (the job feed)."""
        status, seq, values, epoch, epochs = reply
        text = [v.decode() if isinstance(v, bytes) else v for v in (status, epoch)]
        return cls(exists=always or status is not None, status=text[0], seq=int(seq or 0),
                   values=int(values or 0), epoch=text[1], eras=parse_eras(epochs))

    @property
    def ended(self) -> bool:
        """True once the job has its terminal entry, or its log is gone."""
        return not self.exists or self.status in TERMINAL


@dataclass(frozen=True)
class Reset:
    """A viewer's position is not in the log as it is: where its stream goes on instead."""

    epoch: str | None   # the epoch the stream goes on in
    after: int          # drop what you hold after this seq; entries follow from after + 1
    values: int         # … that is, values from this index on
    reason: str         # LOST, PAST_END or UNKNOWN
    was_seq: int | None = None
    was_values: int | None = None
    was_epoch: str | None = None

    def data(self, **extra) -> dict:
        """The ``reset`` event's data (``extra`` first: a multi-job stream names the job)."""
        was = {"seq": self.was_seq} if self.was_seq is not None else {"values": self.was_values}
        return {**extra, "epoch": self.epoch, "after": self.after, "values": self.values,
                "reason": self.reason, "was": {**was, "epoch": self.was_epoch}}

    def header(self) -> str:
        """The ``Jobcast-Reset`` header of the text and HTML streams."""
        return (f"epoch={self.epoch or ''}; after={self.after}; values={self.values}; "
                f"reason={self.reason}")

    def notice(self) -> str:
        """What the person watching is told."""
        if self.reason == PAST_END:
            return (f"the job's log was reset (Redis lost entries): it goes on from value "
                    f"#{self.values}")
        return (f"the job's log was reset (Redis lost entries): values from #{self.values} on "
                "were replaced")


def resolve(head: Head, epoch: str | None, *, seq: int | None = None,
            values: int | None = None) -> Reset | None:
    """Where a viewer at ``seq`` (or having ``values`` values) of ``epoch`` stands in the log
    ``head`` describes: None to continue as it is, else the :class:`Reset` it needs.

    A past-the-end reset names the log's current epoch; a reader that holds the viewer (so
    vouches that its position was in the log) mints a new one first (:func:`rebase`).
    """
    was = {"was_seq": seq, "was_values": values, "was_epoch": epoch}
    if epoch is None or epoch == head.epoch:
        if (seq is not None and seq > head.seq) or (values is not None and values > head.values):
            return Reset(head.epoch, head.seq, head.values, PAST_END, **was)
        return None
    index = next((n for n in range(len(head.eras) - 1, -1, -1)
                  if head.eras[n].epoch == epoch), None)
    if index is None or index + 1 >= len(head.eras):
        return Reset(head.epoch, 0, 0, UNKNOWN, **was)
    after = head.eras[index + 1]  # the next incarnation began here: before it, all survived
    if seq is not None and seq < after.first_seq or values is not None and values <= after.values:
        return None
    return Reset(head.epoch, after.first_seq - 1, after.values, LOST, **was)


def continues(epoch: str | None, entries: Iterable[Entry]) -> bool:
    """Whether ``entries``, which follow an entry of incarnation ``epoch`` by seq, are of that
    incarnation, or begin the ones after it: an entry whose write began an epoch names the one
    before it (``pe``), so nothing was lost between. A position just before them then goes on
    as it is, with no read of the log's eras (a cancel or a retry's start begins an epoch)."""
    for entry in entries:
        if entry.ep != epoch:
            before = entry.data.get("pe")
            if before is None or before != epoch:
                return False
            epoch = entry.ep
    return True


def rebase(redis, meta_key: str, seen: Head, *, always: bool = False) -> Head:
    """Begin a new epoch of the log whose hash is ``meta_key`` if it still stands where
    ``seen`` says (a compare-and-set: concurrent callers mint once); the head as it is now
    (``always``: as :meth:`Head.from_reply`). Rare, so the script is not kept."""
    reply = redis.register_script(REBASE_LUA)(
        keys=[meta_key], args=[seen.epoch or "", seen.seq, new_epoch()])
    return Head.from_reply(reply, always=always)


def parse_position(raw: str) -> tuple[int, str | None] | None:
    """``<seq>`` or ``<seq>:<epoch>`` (an SSE id, ``?after=``) as (seq, epoch); None if
    malformed."""
    number, colon, epoch = raw.strip().partition(":")
    if not number.isascii() or not number.isdigit() or len(number) > 16:
        return None
    if colon and not EPOCH.fullmatch(epoch):
        return None
    return int(number), epoch if colon else None


def sse_id(seq: int, epoch: str | None) -> bytes:
    """An SSE id naming a position: ``<seq>:<epoch>``, or ``<seq>`` without an epoch."""
    return b"%d:%s" % (seq, epoch.encode()) if epoch else b"%d" % seq
