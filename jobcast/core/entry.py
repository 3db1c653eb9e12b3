"""One entry of a log as stored and announced: a job's log, or the job feed."""

from __future__ import annotations

import json
from dataclasses import dataclass

TERMINAL = frozenset({"finished", "failed", "cancelled"})
"""The kinds that end a job's log: it has exactly one of them, last."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One decoded log entry; ``raw`` is its JSON exactly as stored and published. ``ep`` is
    the epoch it was written in (None for an entry from before epochs): ``(seq, ep)`` names it
    across the log's incarnations (jobcast.core.epoch)."""

    seq: int
    kind: str
    i: int | None
    text: str | None
    data: dict
    raw: bytes
    ep: str | None = None

    @property
    def values_before(self) -> int | None:
        """How many values the log had before this entry: a value's index, else the count its
        write recorded (None for an entry written before entries carried it)."""
        return self.i if self.kind == "value" else self.data.get("values")

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
            ep=data.get("ep"),
        )


def stream_id_text(stream_id) -> str:
    """A stream id as text."""
    return stream_id.decode() if isinstance(stream_id, bytes) else stream_id


def stream_field(fields) -> bytes:
    """The entry in a stream row's fields: a dict, or a flat [name, value] list where
    redis-py leaves a reply unparsed (XRANGE inside a Cluster transaction)."""
    if isinstance(fields, dict):
        return fields[b"e"]
    return dict(zip(fields[::2], fields[1::2]))[b"e"]
