"""The job log: the single source of truth for what a job produced.

Every job has three Redis keys, all derived from a validated job id (never from raw user
input):

- ``jobcast:job:<id>``       a hash with the job's metadata and counters;
- ``jobcast:job:<id>:log``   a stream, one entry per event, with stream id ``0-<seq>``;
- ``jobcast:job:<id>:ch``    the pub/sub channel that announces each new entry.

On a Redis Cluster (see :mod:`jobcast.streams`) the id is a hash tag, ``jobcast:job:{<id>}``,
``jobcast:job:{<id>}:log`` and ``jobcast:job:{<id>}:ch``, so one job's keys and channel share
a slot, and the channel is a shard channel (``SPUBLISH``). A single Redis keeps the plain
names, so its existing data and tools stay as they were.

An event is appended to the log and published in one Lua script, so an entry is in the log
if and only if it was announced. Readers treat pub/sub as a wake-up with a payload: the log
stays the truth and fills any gap (late join, reconnect, slow reader, restart).

Each entry is a small JSON object. ``seq`` numbers every entry of a job from 1 without gaps;
``kind`` is one of ``queued``, ``started``, ``value``, ``retrying``, ``finished``, ``failed``,
``cancelled`` (the last three are terminal: a job's log ends with exactly one of them).
Value entries also carry ``i`` (the value's index, from 0), ``v`` (``"{}".format(value)``) and
``j`` (the value as JSON).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

from redis import Redis

from jobcast.streams import is_cluster

PREFIX = "jobcast"
JOBS_INDEX = f"{PREFIX}:jobs"
CHANNEL_PATTERN = f"{PREFIX}:job:*:ch"

# RQ's own rule for job ids (letters, digits, "_" and "-"), bounded in length. Jobcast's ids
# (32 hex characters), RQ's (a UUID with dashes) and ids users choose all fit; ":" and every
# other character stay out, so an id can never reach into another key's namespace.
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")

TERMINAL = frozenset({"finished", "failed", "cancelled"})
STATUS_BY_KIND = {
    "queued": "queued",
    "started": "running",
    "retrying": "queued",
    "finished": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
}


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


def job_keys(redis, job_id: str) -> JobKeys:
    """Names of ``job_id``'s keys on ``redis``: hash-tagged on a Redis Cluster."""
    tagged = is_cluster(redis)
    return JobKeys(meta_key(job_id, tagged), log_key(job_id, tagged), channel(job_id, tagged))


# KEYS: meta hash, log stream, and on a single Redis the jobs index. On a Redis Cluster (no
#       index key: it lives in another slot) the entry is announced with SPUBLISH on the job's
#       shard channel, and JobLog.create adds the job to the index itself.
# ARGV: channel, kind, value index (-1 if none), JSON body without seq (starts after "{"),
#       log maxlen, ttl after the end, now, jobs-index max, then field/value pairs for the hash.
# Returns the new entry's seq, or a negative code: -1 already ended, -2 unknown job,
# -3 value index not the next one (a retried job repeating a value), -4 job id exists.
APPEND_LUA = """
local meta, log, index = KEYS[1], KEYS[2], KEYS[3]
local kind = ARGV[2]
local status = redis.call('HGET', meta, 'status')
if kind == 'queued' then
  if status then return -4 end
else
  if not status then return -2 end
  if status == 'finished' or status == 'failed' or status == 'cancelled' then return -1 end
end
if kind == 'value' then
  local i = tonumber(ARGV[3])
  local nv = tonumber(redis.call('HGET', meta, 'values') or '0')
  if i ~= nv then return -3 end
  redis.call('HSET', meta, 'values', nv + 1)
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local entry = '{"seq":' .. seq .. ',' .. ARGV[4]
redis.call('XADD', log, 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'e', entry)
if index then
  redis.call('PUBLISH', ARGV[1], entry)
else
  redis.call('SPUBLISH', ARGV[1], entry)
end
if #ARGV > 8 then
  redis.call('HSET', meta, unpack(ARGV, 9))
end
if kind == 'queued' and index then
  redis.call('ZADD', index, ARGV[7], string.match(meta, ':job:(.*)$'))
  local extra = redis.call('ZCARD', index) - tonumber(ARGV[8])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', index, 0, extra - 1) end
end
if kind == 'finished' or kind == 'failed' or kind == 'cancelled' then
  redis.call('EXPIRE', meta, ARGV[6])
  redis.call('EXPIRE', log, ARGV[6])
end
return seq
"""


class JobExists(RuntimeError):
    """A job with this id was already created."""


class UnknownJob(LookupError):
    """No job with this id exists (or its log has expired)."""


def encode_value(value: Any) -> tuple[str, str]:
    """Return (text, json) for a task value: text as ``"{}".format(value)``."""
    text = "{}".format(value)
    if isinstance(value, float) and not math.isfinite(value):
        as_json = "null"  # JSON has no NaN/Infinity; the text form still carries it
    else:
        try:
            as_json = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError):
            as_json = json.dumps(text)
    return text, as_json


@dataclass(frozen=True, slots=True)
class Entry:
    """One decoded log entry; ``raw`` is its JSON exactly as stored and published."""

    seq: int
    kind: str
    i: int | None
    text: str | None
    data: dict
    raw: bytes

    @property
    def terminal(self) -> bool:
        """True for the job's last entry (finished, failed or cancelled)."""
        return self.kind in TERMINAL

    @classmethod
    def parse(cls, raw: bytes | str) -> "Entry":
        """Decode an entry from its stored JSON."""
        if isinstance(raw, str):
            raw = raw.encode()
        data = json.loads(raw)
        return cls(
            seq=int(data["seq"]),
            kind=data["kind"],
            i=data.get("i"),
            text=data.get("v"),
            data=data,
            raw=raw,
        )


class JobLog:
    """Append to and read one job's log. Writers are the producer and the worker."""

    def __init__(self, redis: Redis, job_id: str, *, maxlen: int = 100_000, ttl: int = 604800,
                 index_max: int = 1000):
        """Bind to the job ``job_id`` (validated) on ``redis``."""
        self.redis = redis
        self.job_id = check_job_id(job_id)
        self.keys = job_keys(redis, job_id)
        self.maxlen = maxlen
        self.ttl = ttl
        self.index_max = index_max
        self._append = None  # the Lua script, registered on the first write (readers need none)

    # -- writing ---------------------------------------------------------------------------

    def _write(self, kind: str, body: dict[str, Any] | None = None, *, index: int = -1,
               value_json: str | None = None, meta: dict[str, Any] | None = None) -> int:
        """Append one entry atomically and return its seq (or a negative code)."""
        keys, args = self.script_args(kind, body, index=index, value_json=value_json, meta=meta)
        return int(self.script()(keys=keys, args=args))

    def script(self):
        """The append script, registered on the first write (readers need none)."""
        if self._append is None:
            self._append = self.redis.register_script(APPEND_LUA)
        return self._append

    def script_args(self, kind: str, body: dict[str, Any] | None = None, *, index: int = -1,
                    value_json: str | None = None,
                    meta: dict[str, Any] | None = None) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of the append script for one entry (also for a pipeline)."""
        now = time.time()
        parts = [f'"kind":{json.dumps(kind)}', f'"ts":{now:.6f}']
        for k, v in (body or {}).items():
            parts.append(f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}")
        if value_json is not None:
            parts.append(f'"j":{value_json}')
        fields: list[Any] = []
        hash_fields = dict(meta or {})
        if kind in STATUS_BY_KIND:
            hash_fields["status"] = STATUS_BY_KIND[kind]
        for k, v in hash_fields.items():
            fields += [k, v if isinstance(v, (str, int, float)) else json.dumps(v)]
        keys = [self.keys.meta, self.keys.log]
        if not is_cluster(self.redis):
            keys.append(JOBS_INDEX)  # on a Cluster, create() indexes the job (another slot)
        return (keys,
                [self.keys.channel, kind, index, ",".join(parts) + "}", self.maxlen,
                 self.ttl, f"{now:.6f}", self.index_max, *fields])

    def create(self, task: str, params: dict[str, Any], total: int | None,
               extra: dict[str, str] | None = None) -> int:
        """Create the job's metadata and write its ``queued`` entry.

        ``extra`` adds fields to the metadata hash in the same script (e.g. the RQ queue of a
        job that Jobcast did not enqueue).
        """
        if is_cluster(self.redis):
            index_job(self.redis, self.job_id, time.time(), self.index_max)
        seq = self._write("queued", {"task": task, "params": params, "n": total}, meta={
            "task": task,
            "params": json.dumps(params),
            "n": "" if total is None else total,
            "created_at": f"{time.time():.6f}",
            "values": 0,
            **(extra or {}),
        })
        if seq == -4:
            raise JobExists(self.job_id)
        return seq

    def started(self, worker: str, attempt: int) -> int:
        """Record that ``worker`` started (or restarted) the job."""
        return self._write("started", {"worker": worker, "attempt": attempt},
                           meta={"worker": worker, "started_at": f"{time.time():.6f}",
                                 "attempt": attempt})

    def value(self, index: int, value: Any, total: int | None = None) -> int:
        """Record value number ``index``; returns -3 if it was already logged (a retry).

        ``total``, when given, also sets the job's progress total (the entry carries it as ``n``).
        """
        text, as_json = encode_value(value)
        if total is None:
            return self._write("value", {"i": index, "v": text}, index=index, value_json=as_json)
        return self._write("value", {"i": index, "v": text, "n": total}, index=index,
                           value_json=as_json, meta={"n": total})

    def retrying(self, reason: str) -> int:
        """Record that the attempt failed and the job goes back on the queue."""
        return self._write("retrying", {"reason": reason})

    def finished(self) -> int:
        """Write the terminal ``finished`` entry (a no-op returning -1 if already ended)."""
        return self._write("finished", meta={"ended_at": f"{time.time():.6f}"})

    def failed(self, reason: str) -> int:
        """Write the terminal ``failed`` entry (a no-op returning -1 if already ended)."""
        return self._write("failed", {"reason": reason},
                           meta={"ended_at": f"{time.time():.6f}", "reason": reason})

    def cancelled(self, by: str) -> int:
        """Write the terminal ``cancelled`` entry, naming who asked; -1 if already ended."""
        now = f"{time.time():.6f}"
        return self._write("cancelled", {"by": by},
                           meta={"ended_at": now, "cancelled_by": by, "reason": f"cancelled by {by}"})

    # -- reading ---------------------------------------------------------------------------

    def values_logged(self) -> int:
        """How many values are logged: a retried task resumes from here."""
        return int(self.redis.hget(self.keys.meta, "values") or 0)

    def status(self) -> str | None:
        """The job's status (``queued``, ``running``, ``cancelled``…), None once expired."""
        status = self.redis.hget(self.keys.meta, "status")
        return status.decode() if status is not None else None

    def ended(self) -> bool:
        """True once the job has its terminal entry, or its log has expired."""
        status = self.redis.hget(self.keys.meta, "status")
        return status is None or status.decode() in TERMINAL

    def entries(self, after: int = 0, page: int = 1000) -> Iterator[Entry]:
        """Yield the logged entries with ``seq > after``, oldest first, in pages."""
        key = self.keys.log
        start = f"0-{after + 1}"
        while True:
            batch = self.redis.xrange(key, min=start, max="+", count=page)
            for _id, fields in batch:
                yield Entry.parse(fields[b"e"])
            if len(batch) < page:
                return
            last = batch[-1][0]
            last = last.decode() if isinstance(last, bytes) else last
            start = "(" + last


    def page(self, after: int, count: int) -> tuple[list[Entry], bool]:
        """Up to ``count`` entries with ``seq > after``, and whether the job has ended, in one
        round trip (a viewer catching up needs both).

        Both reads run in one MULTI/EXEC: were the job to end between them, an empty read
        followed by "ended" would hide the terminal entry.
        """
        pipe = self.redis.pipeline(transaction=True)
        pipe.xrange(self.keys.log, min=f"0-{after + 1}", max="+", count=count)
        pipe.hget(self.keys.meta, "status")
        rows, status = pipe.execute()
        ended = status is None or status.decode() in TERMINAL
        return [Entry.parse(_field(fields)) for _id, fields in rows], ended

    def position(self) -> tuple[bool, int] | None:
        """(ended, last seq) of the job, or None if it does not exist (or has expired)."""
        status, seq = self.redis.hmget(self.keys.meta, "status", "seq")
        if status is None:
            return None
        return status.decode() in TERMINAL, int(seq or 0)

    def queue_last_seq(self, pipe) -> None:
        """Add the read of the job's last seq to ``pipe`` (its reply: bytes or None)."""
        pipe.hget(self.keys.meta, "seq")


def _field(fields) -> bytes:
    """The entry in a stream row's fields: a dict, or a flat [name, value] list where
    redis-py leaves a reply unparsed (XRANGE inside a Cluster transaction)."""
    if isinstance(fields, dict):
        return fields[b"e"]
    return dict(zip(fields[::2], fields[1::2]))[b"e"]


def index_job(redis, job_id: str, created: float, index_max: int) -> None:
    """Add a new job to the jobs index on a Redis Cluster, keeping the newest ``index_max``.

    The index (``jobcast:jobs``, a sorted set by creation time) is one key, so it lives on one
    slot. Only a job's creation writes it: values, the hot path, never touch it, so it does
    not pull every append onto one shard. On a single Redis the append script adds the job
    atomically with its ``queued`` entry; on a Cluster the index is in another slot than the
    job's keys, so it is written here just before that script (``NX``: a job id that exists
    keeps its place). Should the job then not be created (a crash in between, or the id
    exists), ``recent_jobs`` (web/jobs.py) drops the id once its metadata is found missing.
    """
    pipe = redis.pipeline(transaction=True)
    pipe.zadd(JOBS_INDEX, {check_job_id(job_id): created}, nx=True)
    pipe.zremrangebyrank(JOBS_INDEX, 0, -index_max - 1)
    pipe.execute()


def first_kept(redis: Redis, job_id: str) -> dict[str, int | None]:
    """The oldest entry still in a capped log: its seq, and the index of its first value.

    ``{"seq": None, "i": None}`` when the log is empty (or expired); ``i`` is None when no
    value is kept. The log's first entries are ``queued`` and ``started``, so a few suffice.
    """
    seq = i = None
    for _id, fields in redis.xrange(job_keys(redis, job_id).log, min="-", max="+", count=8):
        entry = Entry.parse(fields[b"e"])
        seq = entry.seq if seq is None else seq
        if entry.kind == "value":
            i = entry.i
            break
    if seq is not None and i is None:
        # More than a few lifecycle entries first (retries): look further, in one call.
        for entry in JobLog(redis, job_id).entries(after=seq - 1, page=256):
            if entry.kind == "value":
                i = entry.i
                break
            if entry.seq > seq + 256:
                break
    return {"seq": seq, "i": i}


# -- the chart snapshot, and logs opened for jobs Jobcast did not enqueue -----------------


def chart_key(job_id: str) -> str:
    """Key of the job's chart snapshot (a JSON string)."""
    return f"{PREFIX}:job:{check_job_id(job_id)}:chart"


def task_label(description: str | None, fallback: str = "rq job") -> str:
    """A short name for an RQ job: its description up to the first "(".

    RQ's default description is the call with its arguments, e.g. ``jobs.count(20)``; the
    arguments are left out, since job pages may be public.
    """
    head = (description or "").split("(", 1)[0].strip()
    return head[:100] or fallback


def ensure_log(jlog: JobLog, description: str | None, origin: str | None) -> bool:
    """Create the job's log with its ``queued`` entry unless it exists; True if created here.

    The existence check and the creation are one script, so the worker, ``emit()`` and the web
    may all try at once: exactly one creates it.
    """
    try:
        jlog.create(task_label(description), {}, None, extra={"origin": origin or ""})
    except JobExists:
        return False
    return True
