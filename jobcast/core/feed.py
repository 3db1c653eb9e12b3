"""The job feed: every job's creation and changes of state, as one log the home page follows.

Shaped like a job's log (a hash holding ``seq``, a stream with ids ``0-<seq>``, a channel
announcing each item), so the web's relay serves it to a page like a job, with the same
resume, catch-up and heartbeats, under the name :data:`FEED`. An item says which job changed
and how: ``{"seq", "kind": "job", "job", "change", "jseq" (the job entry's seq), "ts",
"values", "n"}`` plus ``task`` and ``created_at`` (queued), ``worker`` and ``attempt``
(started), ``reason`` (retrying, failed) or ``by`` (cancelled). ``change`` is a lifecycle kind
or ``progress``; the item's own kind is always ``job``, so no item ever ends the feed as a
terminal entry would.

Progress is throttled where values are written (:class:`ProgressGate`): at most one item per
``PROGRESS_EVERY`` seconds per job, the last count always following within that time. The feed
is capped at ``FEED_MAXLEN`` items (a page that falls further behind reads a fresh snapshot).
Items are appended right after the job's own entry: a writer that dies in between loses the
item, never the job's entry (the log stays the truth; a page's next snapshot shows it).

The feed has an epoch too (:mod:`jobcast.core.epoch`), carried by each item as ``ep``: a
failover that loses items makes its seq go back, and a writer that finds the feed behind an
item it wrote (or a web process behind one it served) begins a new epoch. So does the first
item a promoted replica takes, whoever writes it (the feed keeps the replication id of the
Redis that wrote it, see ``feed.lua``): a writer that wrote none of the lost items could not
tell otherwise, and would reuse their seqs. A page whose cursor is in another epoch, or past
the feed's end, gets a fresh snapshot: never a silent skip.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from importlib.resources import files
from typing import Any, Callable

from jobcast.core.entry import Entry, stream_field, stream_id_text
from jobcast.core.epoch import EPOCH_LUA, HEAD_FIELDS, Head, Position, new_epoch, rebase
from jobcast.core.store import is_cluster

log = logging.getLogger(__name__)

FEED = "~jobs"
"""The feed's name where job ids are expected (the relay, the broker): never a job id."""

FEED_MAXLEN = 10_000
"""Items the feed keeps."""

PROGRESS_EVERY = 0.25
"""Seconds between two progress items of one job."""

LIFECYCLE = frozenset({"queued", "started", "retrying", "finished", "failed", "cancelled"})

FEED_LUA = EPOCH_LUA + files(__package__).joinpath("feed.lua").read_text()


class Feed:
    """The feed on one Redis (hash-tagged on a Cluster, where it lives on one slot)."""

    def __init__(self, redis, maxlen: int = FEED_MAXLEN):
        """The feed on ``redis``."""
        self.redis = redis
        base = "jobcast:{feed}" if is_cluster(redis) else "jobcast:feed"
        self.meta, self.log, self.channel = base, base + ":log", base + ":ch"
        self.maxlen = maxlen
        self._script = None
        self.high = 0  # the highest seq this writer got: a feed found behind it lost items

    def append(self, job_id: str, change: str, jseq: int, fields: dict[str, Any]) -> int:
        """Announce that ``job_id`` changed (``change``: its entry ``jseq``'s kind, or
        ``progress``); the item's seq."""
        if self._script is None:
            self._script = self.redis.register_script(FEED_LUA)
        body = {"kind": "job", "job": job_id, "change": change, "jseq": jseq,
                "ts": round(time.time(), 6), **fields}
        encoded = json.dumps(body, separators=(",", ":"))[1:]
        seq = int(self._script(keys=[self.meta, self.log],
                               args=[self.channel, encoded, self.maxlen,
                                     "1" if is_cluster(self.redis) else "0", self.high,
                                     new_epoch()]))
        self.high = max(self.high, seq)
        return seq

    def read(self, after: int, count: int) -> tuple[list[Entry], Head]:
        """Up to ``count`` items with ``seq > after``, and where the feed stands (its seq and
        epoch), in one round trip (one slot on a Cluster: the keys share a hash tag)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xrange(self.log, min=f"0-{after + 1}", max="+", count=count)
        pipe.hmget(self.meta, *HEAD_FIELDS)
        rows, head = pipe.execute()
        return ([Entry.parse(stream_field(fields)) for _id, fields in rows],
                Head.from_reply(head, always=True))

    def head(self) -> Head:
        """Where the feed stands (it always exists, and never ends)."""
        return Head.from_reply(self.redis.hmget(self.meta, *HEAD_FIELDS), always=True)

    def rebase(self, seen: Head) -> Head:
        """Begin a new epoch of the feed if it still stands as ``seen``; where it stands now
        (it always exists)."""
        return rebase(self.redis, self.meta, seen, always=True)

    def position(self) -> Position:
        """(False, the last item's seq, the feed's epoch): the feed always exists and never
        ends."""
        return self.read_position(self.redis.hmget(self.meta, "seq", "epoch"))

    def queue_position(self, pipe) -> None:
        """Add the read of :meth:`position` to ``pipe`` (its reply: see :meth:`read_position`)."""
        pipe.hmget(self.meta, "seq", "epoch")

    @staticmethod
    def read_position(reply) -> Position:
        """:meth:`position` from the reply of its read."""
        seq, epoch = reply
        return Position(False, int(seq or 0), epoch.decode() if epoch is not None else None)

    def queue_last_seq(self, pipe) -> None:
        """Add the read of the last item's seq to ``pipe``."""
        pipe.hget(self.meta, "seq")

    def first_kept(self) -> int | None:
        """The seq of the oldest item still kept, or None when the feed is empty."""
        rows = self.redis.xrange(self.log, min="-", max="+", count=1)
        return int(stream_id_text(rows[0][0]).split("-")[1]) if rows else None


class ProgressGate:
    """Lets a job's progress into the feed at most once per ``every`` seconds, and always
    lets the last count in within that time: a value held back arms a timer that sends its
    item then (a daemon thread in the writer's process).

    A held item keeps the seq of its own value (``jseq``). Read at send time, the log's seq
    could already be the job's end, whose item, coming next, would then look no newer to a
    page than that progress, and be dropped: the job would stay "running" there.
    """

    def __init__(self, send: Callable[[int, dict[str, Any]], None],
                 every: float = PROGRESS_EVERY, clock: Callable[[], float] = time.monotonic):
        """``send(jseq, fields)`` appends a progress item to the feed."""
        self.send = send
        self.every = every
        self.clock = clock
        self.last = float("-inf")
        self._held: tuple[int, dict[str, Any]] | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def value(self, jseq: int, fields: dict[str, Any], last: bool = False) -> bool:
        """The value ``jseq`` was logged (``fields``: the count it brings): its item goes to
        the feed now, and True is returned (always with ``last``: the job's final value);
        else the item is held, and the latest held follows within ``every`` seconds."""
        now = self.clock()
        with self._lock:
            if last or now - self.last >= self.every:
                self.last = now
                self._cancel()
                go = True
            else:
                go = False
                self._held = (jseq, fields)
                if self._timer is None:
                    self._timer = threading.Timer(self.every - (now - self.last), self._flush)
                    self._timer.daemon = True
                    self._timer.start()
        if go:
            self.send(jseq, fields)
        return go

    def _flush(self) -> None:
        """The held-back item, now."""
        with self._lock:
            held, self._held, self._timer = self._held, None, None
            self.last = self.clock()
        if held is None:
            return
        try:
            self.send(*held)
        except Exception as exc:  # (a Redis error, or a Cluster's refusal, which is not one)
            # The feed is a view: a lost count shows again with the job's next one, or its end.
            log.debug("job feed: a held progress item was not sent: %r", exc)

    def close(self) -> None:
        """The job ended (its terminal item carries the final count): no count to follow."""
        with self._lock:
            self._cancel()

    def _cancel(self) -> None:
        """Forget a pending count (caller holds the lock)."""
        self._held = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
