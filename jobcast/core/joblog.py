"""The job log: the single source of truth for what a job produced.

:class:`JobLog` owns one job's keys and every read and write of them, as RQ's ``Job`` owns its
own. The keys are named, from a validated job id, by :mod:`jobcast.core.keys`.

An event is appended to the log and published in one Lua script (``append.lua``), so an entry
is in the log if and only if it was announced. Readers treat pub/sub as a wake-up with a
payload: the log stays the truth and fills any gap (late join, reconnect, slow reader, restart).

Each entry is a small JSON object. ``seq`` numbers every entry of a job from 1 without gaps;
``kind`` is one of ``queued``, ``started``, ``value``, ``log``, ``retrying``, ``finished``,
``failed``, ``cancelled`` (the last three are terminal: a job's log ends with exactly one of
them).
Value entries also carry ``i`` (the value's index, from 0), ``v`` (its text, see
:func:`jobcast.core.values.encode_value`) and ``j`` (the value as JSON). Every entry also
carries ``ep``, the epoch of the log's incarnation it was written in
(:mod:`jobcast.core.epoch`), and the entry whose write began one also ``pe``, the epoch before
it: a writer that began the log
(:meth:`JobLog.begin`) has its appends refused once the log is not that incarnation.

``log`` entries are what the job printed or logged, captured by its worker
(:mod:`jobcast.worker.capture`): ``stream`` (``stdout``, ``stderr`` or ``logging``), ``text``
(one line), ``attempt``, ``level`` and ``logger`` for logging, and ``partial``, ``cut`` or
``dropped`` where a line was sent unfinished, cut at the length cap, or stands for lines the
rate cap dropped. ``ts`` is when the line was captured. They are neither values nor terminal
and leave the status alone; they count against the log's cap like any entry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from enum import IntEnum
from importlib.resources import files
from typing import Any, Iterator

from pydantic import BaseModel
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from jobcast.core.entry import TERMINAL, Entry, stream_field, stream_id_text
from jobcast.core.epoch import EPOCH_LUA, HEAD_FIELDS, Head, LogReset, Position, new_epoch, rebase
from jobcast.core.feed import LIFECYCLE, Feed, ProgressGate
from jobcast.core.keys import JOBS_INDEX, OPEN_JOBS, check_job_id, job_keys
from jobcast.core.store import REDIS_ERRORS, is_cluster
from jobcast.core.values import PreparedValue, encode_value, json_text, valid_text

log = logging.getLogger(__name__)

STATUS_BY_KIND = {
    "queued": "queued",
    "started": "running",
    "retrying": "queued",
    "finished": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
}

APPEND_LUA = EPOCH_LUA + files(__package__).joinpath("append.lua").read_text()
"""The append script (``append.lua``, shipped with the package, after ``epoch.lua``)."""

_forks = 0
"""How many forks made this process (its writers' locks are a forked parent's until they see
it change): counted by a hook, rather than asking ``os.getpid()`` on every write."""


def _forked() -> None:
    """After a fork, in the child: every writer's lock is the parent's."""
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)

CHECKED = frozenset({"started", "value", "finished", "log"})
"""The entries a writer that began the log writes only into the incarnation it began. The
others (``retrying``, ``failed``, ``cancelled``) are written whatever the epoch: they are how a
reset job is retried or failed, and how a cancel or the watchdog ends a job. A began writer's
one still begins a new epoch when the log is behind what it wrote, so no seq is reused. Output lines
(``log``) are checked too: a failover that lost some would otherwise have their seqs reused."""


class Refused(IntEnum):
    """The append script's answers for an entry it did not append (append.lua says when):
    negative, where an appended entry's answer is its seq."""

    ENDED = -1
    """The log has ended: nothing more is appended to it."""
    UNKNOWN = -2
    """No such job (its log is gone, or was never made)."""
    NOT_NEXT = -3
    """A value whose index is not the next one: a retried job repeating a value."""
    EXISTS = -4
    """A new job's log, under an id that has one."""
    BEHIND = -5
    """The log is not the incarnation its writer began: a failover lost entries."""
    STALE = -6
    """A write sent again that came before its writer's last."""


FINAL = frozenset({Refused.ENDED, Refused.UNKNOWN, Refused.BEHIND})
"""The answers after which a batch's later entries are refused too (sent one by one on a
Cluster, the rest are not sent)."""

DESCRIBE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
"""
"""Set fields of a log's hash that still exists (:meth:`JobLog.describe`)."""

UNPROVEN = frozenset({"retrying", "failed", "cancelled", "finished"})
"""The entries that begin a new epoch when a writer that did not begin the log writes them (a
cancel, the web's watchdog, RQ's failure callback for a killed work-horse). Only the writer of
the log's last entries could tell that a failover lost them; any other would append at a seq
viewers may have seen with another entry, in the same epoch. Its entry begins an epoch instead,
and names the one before it (``pe``), so a viewer whose position survived just goes on."""

TAIL_PAGE = 5000
"""Entries read per step while looking back for the tail's first value."""
VALUES_PAGE = 16
"""Entries read at a time forwards from a position to its next value (see
:meth:`JobLog._values_through`)."""

OUTPUT_PAGE = 500
"""Entries read per step while reading a job's output."""

EARLIER_PAGE = 16
"""Entries of the first read of :meth:`JobLog.values_before`; each read after it doubles."""

VALUES_BYTES = 1 << 20
"""The most bytes of values one answer of :meth:`JobLog.values_before` gathers."""

FIRST_VALUE_LOOKAHEAD = 5000
"""How far past the oldest kept entry :meth:`JobLog.first_kept` looks for a value: a job that
prints may log thousands of lines before its first value."""

# What an entry is, read from its first bytes (the script writes seq, the epoch, the epoch
# before it when the entry begins one, the count of values before it when it is no value,
# then kind), so no text inside it (a value, a job's params) can pass for another kind.
_HEAD = rb'\{"seq":\d+(?:,"ep":"[^"]*")?(?:,"pe":"[^"]*")?(?:,"values":\d+)?'
_LOG_ENTRY = re.compile(_HEAD + rb',"kind":"log"')
_VALUE_ENTRY = re.compile(_HEAD + rb',"kind":"value"')


class JobExists(RuntimeError):
    """A job with this id was already created."""


class UnknownJob(LookupError):
    """No job with this id exists (or its log has expired)."""


class LinesUnsent(RedisConnectionError):
    """A value is not written: a batch of lines before it awaits its resend (its reply was
    lost, :meth:`JobLog.append_many`). A ConnectionError, so that the caller holds the value
    (``emit()``) or retries the attempt (the runner) as for Redis away."""


class Progress(BaseModel):
    """How far a job has come: ``i`` values logged of ``n`` (None when unknown)."""

    i: int
    n: int | None


class JobInfo(BaseModel):
    """A job as its metadata hash describes it: what the API, the pages and the CLI show."""

    id: str
    task: str | None
    params: dict[str, Any]
    status: str | None
    progress: Progress
    worker: str | None
    attempt: int
    created_at: float | None
    started_at: float | None
    ended_at: float | None
    reason: str | None
    last_seq: int
    cancelled_by: str | None

    @classmethod
    def from_hash(cls, job_id: str, raw: dict) -> "JobInfo":
        """Read a metadata hash as returned by HGETALL."""
        m = {k.decode(): v.decode() for k, v in raw.items()}

        def num(name: str) -> float | None:
            """A float field, or None when empty."""
            return float(m[name]) if m.get(name) else None

        return cls(
            id=job_id,
            task=m.get("task"),
            params=json.loads(m.get("params") or "{}"),
            status=m.get("status"),
            progress=Progress(i=int(m.get("values") or 0), n=int(m["n"]) if m.get("n") else None),
            worker=m.get("worker") or None,
            attempt=int(m["attempt"]) if m.get("attempt") else 0,
            created_at=num("created_at"),
            started_at=num("started_at"),
            ended_at=num("ended_at"),
            reason=m.get("reason") or None,
            last_seq=int(m.get("seq") or 0),
            cancelled_by=m.get("cancelled_by") or None,
        )


class JobLog:
    """One job's log: its keys, and every read and write of them."""

    def __init__(self, redis: Redis, job_id: str, *, maxlen: int = 100_000, ttl: int = 604800,
                 index_max: int = 1000, value_max: int = 65536, terminal_replicas: int = 0,
                 terminal_wait_ms: int = 500):
        """Bind to the job ``job_id`` (validated) on ``redis``.

        ``maxlen``, ``ttl``, ``index_max``, ``value_max`` and the terminal entries' durability
        (``WAIT`` for ``terminal_replicas`` replicas, up to ``terminal_wait_ms``) matter to
        writers only; services build their logs from the settings with
        :meth:`jobcast.core.logstore.LogStore.log`.
        """
        self.redis = redis
        self.job_id = check_job_id(job_id)
        self.keys = job_keys(redis, job_id)
        # The append script's keys. On a Cluster, create() indexes the job itself (the index
        # keys are in other slots).
        self._script_keys = ((self.keys.meta, self.keys.log) if is_cluster(redis) else
                             (self.keys.meta, self.keys.log, JOBS_INDEX, OPEN_JOBS))
        self.maxlen = maxlen
        self.ttl = ttl
        self.index_max = index_max
        self.value_max = value_max
        self._append = None  # the Lua script, registered on the first write (readers need none)
        self._feed: Feed | None = None
        self._gate: ProgressGate | None = None  # throttles the job's progress in the feed
        self._total: int | None = None  # the progress total, when this writer set it
        self.terminal_replicas = terminal_replicas
        self.terminal_wait_ms = terminal_wait_ms
        # The incarnation this writer began (begin()), and the highest seq it wrote: its
        # checked entries (CHECKED) go only into that incarnation. One began log is shared by
        # a job attempt's writers (its values, and the output capture's thread), so high is
        # the highest seq any of them wrote.
        self.began = False
        self.epoch: str | None = None
        self.high = 0
        self.named: str | None = None  # the task the log named when begun
        # Held from reading epoch and high to recording the seqs a write got: a write that
        # ran on a high not yet raised by another thread's could pass the check with seqs
        # that thread wrote lost, and reuse them in the same epoch.
        self._lock = threading.Lock()
        self._forks = _forks
        # Who writes, and how many writes it has sent: the script appends a write once
        # however often a lost reply makes the client send it (append.lua). Drawn at the
        # first write: the web makes a JobLog per read, which never needs one.
        self._writer: str | None = None
        self._writes = 0
        # The epoch the next write offers the script to mint, drawn again once one may have
        # been minted with it (drawing one costs a value a system call and more).
        self._spare: str | None = None
        # append_many's last batch, when its reply was lost: (entry, its script call) each.
        self._unsent: list[tuple[tuple, tuple]] = []

    # -- writing ---------------------------------------------------------------------------

    def _write(self, kind: str, body: dict[str, Any] | None = None, *, index: int = -1,
               value_json: str | None = None, meta: dict[str, Any] | None = None,
               new_era: bool = False, replacing: str = "") -> int:
        """Append one entry atomically and return its seq (or a negative code); tell the
        job feed of a change of state, and of progress (throttled).

        A writer that began the log raises LogReset when the log is not that incarnation any
        more (or is gone) for an entry it checks (:data:`CHECKED`).
        """
        with self._locked():
            if not self.began and kind in UNPROVEN:
                new_era = True
            # The script mints with ``epoch`` only for a new log, a new era, a log without
            # one, a log behind this writer (then seq <= high, or BEHIND), or a start on a Redis
            # other than the one that wrote the log (see started()): otherwise it stays
            # unused, and the next write offers it again.
            spare = (self.began and self.epoch is not None and not new_era
                     and kind not in ("queued", "started"))
            epoch = (self._spare if spare else None) or new_epoch()
            if self._unsent and kind == "value":
                # Lines whose reply was lost (another thread's batch, sent while this value
                # waited for the lock) go again first, with their write numbers: a value
                # written now would come before them, and they, sent as new, land twice.
                raise LinesUnsent(f"job {self.job_id}: lines before value {index} await "
                                  "their resend")
            high, self._spare = self.high, None  # (not offered again if this write fails)
            self._unsent = []  # a batch sent after this write would not be in order
            keys, args = self.script_args(kind, body, index=index, value_json=value_json,
                                          meta=meta, new_era=new_era, epoch=epoch,
                                          replacing=replacing)
            # A new run's queued entry replaces an ended log: lost in a failover, the old end
            # would come back and refuse the new run's values. It waits as an end does.
            durable = kind in TERMINAL or bool(replacing)
            if durable and self.terminal_replicas and not is_cluster(self.redis):
                seq = self._write_durably(kind, keys, args)
            else:
                seq = self._append_one(keys, args)
            self._spare = epoch if spare and seq > high else None
            if seq > 0:
                if seq <= self.high and self.began:
                    # The log was behind what this writer wrote (a lossy failover), and this
                    # write minted ``epoch`` there: it goes on in it, from this seq.
                    self.epoch = epoch
                self.high = seq
                if new_era and self.began:
                    self.epoch = epoch  # this writer began it
                elif kind == "started" and self.began and self._epoch_of(seq) == epoch:
                    self.epoch = epoch  # the script began it: another Redis wrote the log
            elif seq == Refused.BEHIND:
                # A newer epoch holds the log now (minted by this write, or before it): the
                # seqs this writer wrote were the old one's, and its next write (the attempt's
                # retrying or failed) must not mint yet another.
                self.high = 0
        if seq == Refused.BEHIND or (seq == Refused.UNKNOWN and self.began and kind in CHECKED):
            raise LogReset(self.job_id)
        if seq > 0:
            try:
                self._announce(kind, seq, body or {}, meta or {})
            except REDIS_ERRORS as exc:  # the feed is a view: the log, written, is the truth
                log.warning("job %s: the feed missed its %s (%s)", self.job_id, kind, exc)
        return seq

    def _epoch_of(self, seq: int) -> str | None:
        """The epoch entry ``seq`` was written in (None when the log no longer has it)."""
        rows = self.redis.xrange(self.keys.log, min=f"0-{seq}", max=f"0-{seq}")
        return Entry.parse(stream_field(rows[0][1])).ep if rows else None

    def _locked(self) -> threading.Lock:
        """The lock of this writer's incarnation (a new one in a forked child: a hold by
        another thread of the parent would never be released there)."""
        if self._forks != _forks:
            self._lock, self._forks = threading.Lock(), _forks
            self._spare = None  # the parent may offer it too
            # A writer of its own: numbers the parent goes on using must not pass for its own.
            self._writer, self._writes = None, 0
        return self._lock

    def _write_durably(self, kind: str, keys: list[str], args: list[Any]) -> int:
        """Append a terminal entry, then ``WAIT`` for the replicas to have it (a separate
        command on the same connection: inside a script or MULTI, WAIT does not block). Fewer
        acknowledgements in time only warn: the job's end is never held up by a replica."""
        pipe = self.redis.pipeline(transaction=False)
        self.script()(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.terminal_replicas, self.terminal_wait_ms)
        seq, acked = pipe.execute()
        seq = int(seq)
        if seq > 0 and int(acked) < self.terminal_replicas:
            log.warning("job %s: its %s entry reached %s of %s replica(s) within %s ms; a "
                        "failover now could lose it", self.job_id, kind, acked,
                        self.terminal_replicas, self.terminal_wait_ms)
        return seq

    def _announce(self, kind: str, seq: int, body: dict[str, Any], meta: dict[str, Any]) -> None:
        """Append the feed's item for the entry ``seq`` just written (see jobcast.core.feed)."""
        if kind == "value":
            if "n" in body:
                self._total = body["n"]
            total = self._total
            if self._gate is None:
                self._gate = ProgressGate(self._progress)
            fields = {"values": body["i"] + 1}
            if total is not None:
                fields["n"] = total
            self._gate.value(seq, fields, last=total is not None and body["i"] + 1 >= total)
            return
        if kind not in LIFECYCLE:
            return
        if kind == "queued":
            # created_at as the job's row has it: a later one is a new run of the id (reopen),
            # whose seqs start again at 1, where a page takes the same one for a duplicate.
            fields = {"task": body.get("task"), "values": 0, "n": body.get("n"),
                      "created_at": float(meta["created_at"])}
        else:
            values, total = self.redis.hmget(self.keys.meta, "values", "n")
            fields = {"values": int(values or 0), "n": int(total) if total else None}
            fields.update({k: body[k] for k in ("worker", "attempt", "reason", "by") if k in body})
        if kind in TERMINAL and self._gate is not None:
            self._gate.close()
        self.feed().append(self.job_id, kind, seq, fields)

    def _progress(self, jseq: int, fields: dict[str, Any]) -> None:
        """Tell the feed the job's count as of its entry ``jseq`` (sent by the gate)."""
        self.feed().append(self.job_id, "progress", jseq, fields)

    def feed(self) -> Feed:
        """The job feed on this log's Redis."""
        if self._feed is None:
            self._feed = Feed(self.redis)
        return self._feed

    def script(self):
        """The append script, registered on the first write (readers need none)."""
        if self._append is None:
            self._append = self.redis.register_script(APPEND_LUA)
        return self._append

    def _append_one(self, keys: tuple[str, ...], args: list[Any]) -> int:
        """Run the append script once: ``EVALSHA``, and on a server that lacks the script
        (restarted, or failed over) ``SCRIPT LOAD`` and again, as redis-py's ``Script``
        does. Called directly: the ``Script`` object's own call costs a value 30-50 µs of a
        cold CPU before it is sent."""
        script = self.script()
        try:
            return int(self.redis.evalsha(script.sha, len(keys), *keys, *args))
        except NoScriptError:
            script.sha = self.redis.script_load(script.script)
            return int(self.redis.evalsha(script.sha, len(keys), *keys, *args))

    def script_args(self, kind: str, body: dict[str, Any] | None = None, *, index: int = -1,
                    value_json: str | None = None, meta: dict[str, Any] | None = None,
                    new_era: bool = False, epoch: str | None = None,
                    ts: float | None = None,
                    replacing: str = "") -> tuple[tuple[str, ...], list[Any]]:
        """The KEYS and ARGV of the append script for one entry (also for a pipeline):
        ``new_era`` begins a new epoch with it (``epoch``, or a new one); ``ts`` is the entry's
        time, by default now (an output line carries when it was printed); ``replacing`` (a
        ``queued`` entry's) is the ``ended_at`` of the earlier run whose log it replaces."""
        # Every value a job yields comes through here on its way to the viewers, on a CPU
        # that has usually gone cold since the last one: the work is kept short.
        now = f"{time.time():.6f}"
        encode = json_text
        parts = [f'"kind":{encode(kind)},"ts":{now if ts is None else format(ts, ".6f")}']
        if body:
            for k, v in body.items():
                if isinstance(v, str):
                    v = valid_text(v)
                parts.append(f"{encode(k)}:{encode(v)}")
        if value_json is not None:
            parts.append(f'"j":{value_json}')
        fields: list[Any] = []
        status = STATUS_BY_KIND.get(kind)
        if meta or status:
            hash_fields = dict(meta or {})
            if status:
                hash_fields["status"] = status
            for k, v in hash_fields.items():
                if isinstance(v, str):
                    v = valid_text(v)  # redis-py encodes strictly: a lone surrogate would raise
                fields += [k, v if isinstance(v, (str, int, float)) else json.dumps(v)]
        # Every write of a began writer says the highest seq it wrote, so that a log found
        # behind it (a failover lost entries) begins a new epoch; a checked one is refused.
        checked = self.began and kind in CHECKED
        if self._writer is None:
            self._writer = new_epoch()
        self._writes += 1  # (under the writer's lock: numbered in the order they are sent)
        return (self._script_keys,
                [self.keys.channel, kind, index, ",".join(parts) + "}", self.maxlen,
                 self.ttl, now, self.index_max, (self.epoch or "") if checked else "",
                 self.high if self.began else 0, epoch or new_epoch(), "1" if new_era else "",
                 self._writer, self._writes, "1" if checked else "", replacing, *fields])

    def create(self, task: str, params: dict[str, Any], total: int | None,
               extra: dict[str, str] | None = None, *, replacing: str = "") -> int:
        """Create the job's metadata and write its ``queued`` entry.

        ``extra`` adds fields to the metadata hash in the same script (e.g. the RQ queue of a
        job that Jobcast did not enqueue). ``replacing`` is the ``ended_at`` of an earlier run
        of the job id, whose ended log this one replaces (:meth:`reopen`); JobExists if the
        log is not that run's.
        """
        cluster = is_cluster(self.redis)
        created = time.time()
        if cluster:
            self._index(JOBS_INDEX, created, keep=self.index_max)
        seq = self._write("queued", {"task": task, "params": params, "n": total}, meta={
            "task": task,
            "params": json.dumps(params),
            "n": "" if total is None else total,
            "created_at": f"{time.time():.6f}",
            "values": 0,
            **(extra or {}),
        }, replacing=replacing)
        if seq == Refused.EXISTS:
            raise JobExists(self.job_id)
        if cluster and seq > 0:
            # Once it exists, and no longer NX: a reopened job moves to its new creation time
            # (as the append script moves it on a single Redis), and an id that a listing
            # dropped meanwhile, its metadata not written yet, comes back.
            self._index(JOBS_INDEX, created, keep=self.index_max, nx=False)
            # A watchdog round that came before its metadata would drop it as ended. (On a
            # single Redis the append script adds it with the queued entry.)
            self._index(OPEN_JOBS, time.time())
        return seq

    def describe(self, task: str, params: dict[str, Any], total: int | None) -> None:
        """Record which task the job runs, with its parameters and total, in a log that
        another opened for it: the web, adopting a pending job whose log the stream store had
        lost, knows only RQ's description of the call. Nothing is written once the log is
        gone (its end expired it)."""
        self.redis.eval(DESCRIBE_LUA, 1, self.keys.meta, "task", task, "params",
                        json.dumps(params), "n", "" if total is None else total)

    def ensure(self, description: str | None, origin: str | None) -> bool:
        """Create the log of an RQ job that Jobcast did not enqueue, unless it exists; True
        if created here.

        The existence check and the creation are one script, so the worker, ``emit()`` and the
        web may all try at once: exactly one creates it.
        """
        try:
            self.create(task_label(description), {}, None, extra={"origin": origin or ""})
        except JobExists:
            return False
        return True

    def reopen(self, task: str, params: dict[str, Any], total: int | None,
               extra: dict[str, str] | None = None) -> bool:
        """Open the log anew for a new run of its job id (RQ's ``Repeat``, a requeue, the id
        enqueued again), in place of the earlier run's log, which has finished or failed: True
        if opened here, False if the log is not such an end any more (another reopened it).

        The earlier run's entries and chart give way, in one script with the new ``queued``
        entry, so no reader finds the log missing in between. The new log has an epoch of its
        own: a viewer who resumes from the earlier run is told by a ``reset``
        (``unknown_epoch``) and starts over, as after a re-created log.
        """
        status, ended_at = self.redis.hmget(self.keys.meta, "status", "ended_at")
        if status not in (b"finished", b"failed") or ended_at is None:
            return False
        try:
            self.create(task, params, total, extra, replacing=ended_at.decode())
        except JobExists:
            return False
        # (a reader between the two sees the new run with the earlier run's chart, once)
        self.redis.delete(self.keys.chart)
        if self.began:
            self.begin()  # a writer of the earlier run goes on in the new one, as it is now
        return True

    def reopen_as_before(self) -> bool:
        """:meth:`reopen` as the same task, with the same parameters, total and RQ queue as
        the run that ended (a cancel of the next run, before any worker took it)."""
        task, params, total, origin = self.redis.hmget(self.keys.meta, "task", "params", "n",
                                                       "origin")
        if task is None:
            return False
        return self.reopen(task.decode(), json.loads(params or b"{}"),
                           int(total) if total else None,
                           {"origin": origin.decode()} if origin is not None else None)

    def _index(self, key: str, created: float, keep: int | None = None, nx: bool = True) -> None:
        """Add the job to the sorted set ``key`` on a Redis Cluster (keeping the newest
        ``keep`` when given): the jobs index (:data:`JOBS_INDEX`), capped at ``index_max``, or
        the open jobs (:data:`OPEN_JOBS`), which are not capped (each leaves it once ended).

        The index (``jobcast:jobs``, a sorted set by creation time) is one key, so it lives on
        one slot. Only a job's creation writes it: values, the hot path, never touch it, so it
        does not pull every append onto one shard. On a single Redis the append script adds
        the job atomically with its ``queued`` entry; on a Cluster the index is in another
        slot than the job's keys, so it is written here just before that script (``NX``: a job
        id that exists keeps its place). Should the job then not be created (a crash in
        between, or the id exists), :meth:`LogStore.recent` drops the id once its metadata is
        found missing, and the job's creation adds it again once the script is done (``nx``
        False). The open jobs are written just after the script.
        """
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(key, {self.job_id: created}, nx=nx)
        if keep is not None:
            pipe.zremrangebyrank(key, 0, -keep - 1)
        pipe.execute()

    def begin(self) -> tuple[bool, int, int]:
        """Begin writing the log as it is now: its incarnation (epoch) and seq become this
        writer's expectations. Returns (it exists, values logged, the attempt starting: one
        more than the log has seen), read at once, with the task it names (:attr:`named`)."""
        status, seq, values, attempt, epoch, task = self.redis.hmget(
            self.keys.meta, "status", "seq", "values", "attempt", "epoch", "task")
        with self._locked():
            self.began = True
            self.epoch = epoch.decode() if epoch is not None else None
            self.high = int(seq or 0)
            self.named = task.decode() if task is not None else None
        return status is not None, int(values or 0), int(attempt or 0) + 1

    def intact(self) -> bool:
        """Whether the log is still the incarnation this writer began, holding every entry
        it wrote: False once a failover lost some (or a reader began a new epoch), read now."""
        position = self.position()
        with self._locked():
            return (self.began and position is not None and position.epoch == self.epoch
                    and position.seq >= self.high)

    def started(self, worker: str, attempt: int, run: str = "") -> int:
        """Record that ``worker`` started (or restarted) the job; ``run`` names which run of
        the job id, and which retry of it, the attempt is (the worker's hook, from RQ's
        repeats and retries left), which :meth:`run_end` gives back.

        A restart (``attempt`` > 1) begins a new epoch: the attempt before it is gone, and
        nothing proves the log is all it wrote (Redis may have lost its last entries, with
        the worker that could tell). A viewer whose position survived just goes on.

        So does a first attempt's start on a Redis other than the one that wrote the log (the
        script compares replication ids): a failover that lost an attempt's ``started`` and
        values lost the count of attempts with them, so the job run again is attempt 1 once
        more, and its entries would take the lost ones' seqs in the epoch viewers saw those
        in. On the same Redis a first start begins none: a text reader told the epoch while
        the job was queued then resumes in it without a reset (its count of values cannot say
        which epoch they came from). One more read, once per start, tells this writer which.
        """
        return self._write("started", {"worker": worker, "attempt": attempt},
                           meta={"worker": worker, "started_at": f"{time.time():.6f}",
                                 "attempt": attempt, "run": run}, new_era=attempt > 1)

    def value(self, index: int, value: Any, total: int | None = None) -> int:
        """Record value number ``index``; returns -3 if it was already logged (a retry).

        ``total``, when given, also sets the job's progress total (the entry carries it as ``n``).
        A value whose text or JSON is over ``value_max`` bytes is refused: its entry keeps its
        index (so the job's later values keep theirs), says why in ``v``, and carries
        ``refused`` (its size in bytes) and a null ``j``.
        """
        prepared = self.prepare(value)
        body: dict[str, Any] = {"i": index, "v": prepared.text}
        if prepared.refused is not None:
            body["refused"] = prepared.refused
        as_json = prepared.json
        if total is None:
            return self._write("value", body, index=index, value_json=as_json)
        body["n"] = total
        return self._write("value", body, index=index, value_json=as_json, meta={"n": total})

    def prepare(self, value: Any) -> PreparedValue:
        """``value`` as its entry will show it (:class:`PreparedValue`; one already prepared is
        returned as it is): at most ``value_max`` bytes, however large the value. Raises what
        the value's ``__str__`` raises."""
        if isinstance(value, PreparedValue):
            return value
        text, as_json = encode_value(value)
        size = max(len(text.encode()), len(as_json.encode()))
        if size > self.value_max:
            return PreparedValue(
                f"[value refused: {size:,} bytes, over the {self.value_max:,}-byte limit]",
                "null", size)
        return PreparedValue(text, as_json)

    def append_many(self, entries: list[tuple[str, dict[str, Any], float]]) -> list[int]:
        """Append ``(kind, body, ts)`` entries in order, in one round trip; their seqs (or
        negative codes, as :meth:`_write` returns; it raises LogReset alike).

        Each entry is still its own script call, so each is checked against the job's state
        (none lands after the terminal entry) and, for a writer that began the log, against
        its incarnation (:data:`CHECKED`); the seqs raise :attr:`high`. A Redis Cluster has no
        pipeline of scripts here: the entries go one by one (one job's keys share a slot, so
        order holds), up to the first that finds the log ended, gone or reset (the rest would
        be refused alike).
        """
        script = self.script()
        with self._locked():
            # A batch sent again after its reply was lost (the caller keeps it and tries once
            # more) goes with the write numbers it had, so what had landed is not appended twice.
            resent, self._unsent = self._unsent, []
            if entries[:len(resent)] != [entry for entry, _call in resent]:
                resent = []
            calls = [call for _, call in resent] + [
                self.script_args(kind, body, ts=ts) for kind, body, ts in entries[len(resent):]]
            try:
                seqs = self._append_calls(script, calls)
            except BaseException:
                # Whatever cut the round trip (a Redis error, a Cluster's refusal, which is no
                # RedisError, the job's timeout while the reply was on its way), what had
                # landed must not be appended twice when the batch is sent again.
                self._unsent = list(zip(entries, calls))
                raise
            # (after BEHIND a newer epoch holds the log: see _write)
            self.high = 0 if Refused.BEHIND in seqs else max([self.high, *seqs])
        if Refused.BEHIND in seqs or (Refused.UNKNOWN in seqs and self.began and
                                      any(kind in CHECKED for kind, _body, _ts in entries)):
            raise LogReset(self.job_id)
        return seqs

    def _append_calls(self, script, calls: list[tuple[list[str], list[Any]]]) -> list[int]:
        """Run the append script's ``calls`` in order, in one round trip (one by one on a
        Cluster, up to the first refused as ended, gone or reset); their replies."""
        if is_cluster(self.redis):
            seqs: list[int] = []
            for keys, args in calls:
                seqs.append(int(script(keys=keys, args=args)))
                if seqs[-1] in FINAL:
                    return seqs + [seqs[-1]] * (len(calls) - len(seqs))
            return seqs
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return [int(seq) for seq in pipe.execute()]

    def retrying(self, reason: str) -> int:
        """Record that the attempt failed and the job goes back on the queue."""
        return self._write("retrying", {"reason": reason})

    def finished(self) -> int:
        """Write the terminal ``finished`` entry (a no-op answering ``Refused.ENDED`` if
        already ended)."""
        return self._write("finished", meta={"ended_at": f"{time.time():.6f}"})

    def failed(self, reason: str) -> int:
        """Write the terminal ``failed`` entry (a no-op answering ``Refused.ENDED`` if already
        ended)."""
        return self._write("failed", {"reason": reason},
                           meta={"ended_at": f"{time.time():.6f}", "reason": reason})

    def cancelled(self, by: str) -> int:
        """Write the terminal ``cancelled`` entry, naming who asked; ``Refused.ENDED`` if
        already ended."""
        now = f"{time.time():.6f}"
        return self._write("cancelled", {"by": by},
                           meta={"ended_at": now, "cancelled_by": by, "reason": f"cancelled by {by}"})

    def save_chart(self, snapshot: str) -> None:
        """Store the worker's downsampled chart of the job (expires with the log)."""
        self.redis.set(self.keys.chart, snapshot, ex=self.ttl)

    def publish_viewers(self, pipe, process: str, count: int, now: float, ttl: int) -> None:
        """Add to ``pipe``: this web ``process`` has ``count`` viewers of the job at ``now``."""
        pipe.hset(self.keys.viewers, process, f"{count} {now:.0f}")
        pipe.expire(self.keys.viewers, ttl)

    def forget_viewers(self, pipe, process: str) -> None:
        """Add to ``pipe``: this web ``process`` has no viewer of the job any more."""
        pipe.hdel(self.keys.viewers, process)

    # -- reading ---------------------------------------------------------------------------

    def info(self) -> JobInfo:
        """The job's metadata, or UnknownJob."""
        raw = self.redis.hgetall(self.keys.meta)
        if not raw:
            raise UnknownJob(self.job_id)
        return JobInfo.from_hash(self.job_id, raw)

    def values_logged(self) -> int:
        """How many values are logged: a retried task resumes from here."""
        return int(self.redis.hget(self.keys.meta, "values") or 0)

    def next_attempt(self) -> int:
        """The number of the attempt that is starting: one more than the log has seen."""
        return int(self.redis.hget(self.keys.meta, "attempt") or 0) + 1

    def run_end(self) -> tuple[float | None, str | None]:
        """When the log ended (None: it has not), and which run and retry of the job id last
        started in it, as :meth:`started` was told (None: none was named)."""
        ended_at, run = self.redis.hmget(self.keys.meta, "ended_at", "run")
        return (float(ended_at) if ended_at else None), (run.decode() if run else None)

    def status(self) -> str | None:
        """The job's status (``queued``, ``running``, ``cancelled``…), None once expired."""
        status = self.redis.hget(self.keys.meta, "status")
        return status.decode() if status is not None else None

    def entries(self, after: int = 0, page: int = 1000) -> Iterator[Entry]:
        """Yield the logged entries with ``seq > after``, oldest first, in pages."""
        for batch in self._pages(f"0-{after + 1}", "+", page):
            for _id, fields in batch:
                yield Entry.parse(stream_field(fields))

    def _pages(self, start: str, end: str, count: int, *, backwards: bool = False,
               then: int | None = None, grow_to: int | None = None,
               ) -> Iterator[list[tuple[Any, Any]]]:
        """The log's rows from stream id ``start`` to ``end`` (``(`` before an id leaves it
        out), oldest first (XRANGE) or, ``backwards``, newest first (XREVRANGE): the
        ``(stream id, fields)`` rows of each read of ``count`` (after the first, of ``then``
        when given, or twice the last, up to ``grow_to``), up to the first read that comes
        back short.

        Lazy: a caller that stops early reads no further.
        """
        key = self.keys.log
        while True:
            if backwards:
                batch = self.redis.xrevrange(key, max=start, min=end, count=count)
            else:
                batch = self.redis.xrange(key, min=start, max=end, count=count)
            yield batch
            if len(batch) < count:
                return
            start = "(" + stream_id_text(batch[-1][0])  # the next read begins past this one
            if then is not None:
                count = then
            elif grow_to is not None:
                count = min(count * 2, grow_to)

    def read(self, after: int, count: int) -> tuple[list[Entry], Head]:
        """Up to ``count`` entries with ``seq > after``, and where the log stands (its status,
        seq and epoch), in one round trip: a viewer catching up needs both.

        Both reads run in one MULTI/EXEC: were the job to end between them, an empty read
        followed by "ended" would hide the terminal entry; and the entries are of the
        incarnation the head names.
        """
        pipe = self.redis.pipeline(transaction=True)
        pipe.xrange(self.keys.log, min=f"0-{after + 1}", max="+", count=count)
        pipe.hmget(self.keys.meta, *HEAD_FIELDS)
        rows, head = pipe.execute()
        return [Entry.parse(stream_field(fields)) for _id, fields in rows], Head.from_reply(head)

    def head(self) -> Head:
        """Where the log stands: status, seq, values, epoch and its recent eras."""
        return Head.from_reply(self.redis.hmget(self.keys.meta, *HEAD_FIELDS))

    def rebase(self, seen: Head) -> Head:
        """Begin a new epoch of the log if it still stands as ``seen`` (it was found behind
        what was served from it); where it stands now (:func:`~jobcast.core.epoch.rebase`)."""
        return rebase(self.redis, self.keys.meta, seen)

    def position(self) -> Position | None:
        """(ended, last seq, epoch) of the job, or None if it does not exist (or has expired)."""
        return self.read_position(self.redis.hmget(self.keys.meta, "status", "seq", "epoch"))

    def queue_position(self, pipe) -> None:
        """Add the read of :meth:`position` to ``pipe`` (its reply: see :meth:`read_position`)."""
        pipe.hmget(self.keys.meta, "status", "seq", "epoch")

    @staticmethod
    def read_position(reply) -> Position | None:
        """:meth:`position` from the reply of its read."""
        status, seq, epoch = reply
        if status is None:
            return None
        return Position(status.decode() in TERMINAL, int(seq or 0),
                        epoch.decode() if epoch is not None else None)

    def queue_last_seq(self, pipe) -> None:
        """Add the read of the job's last seq to ``pipe`` (its reply: bytes or None)."""
        pipe.hget(self.keys.meta, "seq")

    def values_before(self, before: int, limit: int, max_bytes: int = VALUES_BYTES) -> list[bytes]:
        """The stored JSON of up to ``limit`` value entries logged before entry ``before`` (a
        seq), oldest first: the job page's "load earlier values".

        Fewer when the newest of them already come to ``max_bytes`` (at least one is
        returned): a value may be 64 KiB, and a page of 5,000 would be built in memory at
        once. The caller asks again before the oldest one it got. The log is read in pages
        that begin small and double, so a read of large values stops soon after the budget,
        not after ``limit`` of them came from Redis.
        """
        raws: list[bytes] = []
        if before <= 1 or limit < 1:
            return raws  # nothing before the first entry, or nothing asked: no read
        size = 0
        for batch in self._pages(f"0-{before - 1}", "-", min(limit, EARLIER_PAGE),
                                 backwards=True, grow_to=limit):
            for _id, fields in batch:
                raw = stream_field(fields)
                if not _VALUE_ENTRY.match(raw):
                    continue
                if raws and size + len(raw) > max_bytes:
                    return raws[::-1]
                raws.append(raw)
                size += len(raw)
                if len(raws) == limit:
                    return raws[::-1]
        return raws[::-1]

    def tail_start(self, n: int, last_seq: int) -> tuple[int, int]:
        """``(after, skipped)`` for a stream of the last ``n`` values.

        Reads the log backwards from its newest entry until the n-th last value; ``after`` is
        the seq just before it and ``skipped`` its index. When the tail holds every value, or
        fewer than n are kept: the whole log, from ``queued`` on (a trimmed log then says what
        is missing).
        """
        if n == 0:
            # The job's count of values may be past ``last_seq`` by now (a position read from
            # memory, or a moment ago): the values up to it are what the stream skips.
            return last_seq, self._values_through(last_seq)
        values = self.values_logged()
        if n >= values:
            return 0, 0  # the tail is the whole log: no need to look for its start
        count = 0
        for _stream_id, raw in self._newest_first("+", min(TAIL_PAGE, n + 8)):
            if _VALUE_ENTRY.match(raw):
                count += 1
                if count == n:
                    entry = Entry.parse(raw)
                    return (0, 0) if not entry.i else (entry.seq - 1, entry.i)
        return 0, 0

    def _values_through(self, seq: int) -> int:
        """How many values the log held at entry ``seq``: the index of the first value after
        it, else (none has come since) the job's count, read with it in one MULTI.

        Forwards from ``seq``, a position read a moment ago: few entries, however much the
        job printed before it, and right when a capped log no longer holds the values before
        it (a read backwards, to the newest value at or before ``seq``, would read the whole
        log when there is none, and miscount a trimmed one).
        """
        # Not _pages: each page is read in one MULTI with the job's count, so that the count
        # it falls back on is the log's as of that page, not one read after it.
        start = f"(0-{seq}"
        while True:
            pipe = self.redis.pipeline(transaction=True)
            pipe.xrange(self.keys.log, min=start, max="+", count=VALUES_PAGE)
            pipe.hget(self.keys.meta, "values")
            rows, values = pipe.execute()
            for _stream_id, fields in rows:
                raw = stream_field(fields)
                if _VALUE_ENTRY.match(raw):
                    return Entry.parse(raw).i
            if len(rows) < VALUES_PAGE:
                return int(values or 0)
            start = "(" + stream_id_text(rows[-1][0])

    def _newest_first(self, newest: str, page: int) -> Iterator[tuple[str, bytes]]:
        """The log's entries from stream id ``newest`` back to the oldest it keeps, each as
        (its stream id, its raw entry): read in pages of ``page``, then of TAIL_PAGE."""
        for batch in self._pages(newest, "-", page, backwards=True, then=TAIL_PAGE):
            for stream_id, fields in batch:
                yield stream_id_text(stream_id), stream_field(fields)

    def first_kept(self) -> tuple[int | None, int | None]:
        """The oldest entry still in a capped log: ``(seq, index of its first value)``.

        The index is that of the first value the log still holds, or, holding none yet, of the
        next one: every value before it is gone. The oldest entry says it (a value its index,
        any other entry the count of values before it). ``(None, None)`` when the log is empty
        (or expired). An entry written before that count (an older log) has none: then the
        first value is looked for, and the index is None when none is kept nearby.
        """
        seq = i = None
        for _id, fields in self.redis.xrange(self.keys.log, min="-", max="+", count=8):
            entry = Entry.parse(stream_field(fields))
            if seq is None:
                seq, i = entry.seq, entry.values_before
                if i is not None:
                    break
            if entry.kind == "value":
                i = entry.i
                break
        if seq is not None and i is None:
            # More than a few lifecycle entries first (retries, or output lines): look further.
            for entry in self.entries(after=seq - 1, page=1000):
                if entry.kind == "value":
                    i = entry.i
                    break
                if entry.seq > seq + FIRST_VALUE_LOOKAHEAD:
                    break
        return seq, i

    def output(self, upto: int, page: int = OUTPUT_PAGE) -> Iterator[list[dict]]:
        """The job's ``log`` entries with ``seq <= upto``, oldest first, one list per page read.

        Only the entries the script wrote as ``log`` are decoded; values and the rest are
        skipped by their first bytes.
        """
        for batch in self._pages("0-1", f"0-{upto}", page):
            yield [json.loads(raw) for raw in (stream_field(fields) for _id, fields in batch)
                   if _LOG_ENTRY.match(raw)]

    def chart(self) -> bytes | None:
        """The worker's chart snapshot (JSON), or None when there is none yet."""
        return self.redis.get(self.keys.chart)

    def viewer_counts(self) -> dict[bytes, bytes]:
        """Each web process's ``"<count> <time>"`` for the job."""
        return self.redis.hgetall(self.keys.viewers)


def task_label(description: str | None, fallback: str = "rq job") -> str:
    """A short name for an RQ job: its description up to the first "(".

    RQ's default description is the call with its arguments, e.g. ``jobs.count(20)``; the
    arguments are left out, since job pages may be public.
    """
    head = (description or "").split("(", 1)[0].strip()
    return head[:100] or fallback
