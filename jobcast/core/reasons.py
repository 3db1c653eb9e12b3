"""What viewers are told when a job fails (``JOBCAST_FAILURE_REASON``).

A failure's reason goes into the job's log, which every viewer of the job reads: anyone with
a view link, or anyone at all on a public server. An exception's message can hold what only
operators should see (a connection string, a path, a customer's data), so how much of it is
shown is a setting: its type and the first line of its message (the default), its type
alone, or only that the job failed. RQ keeps the whole traceback for operators either way.
"""

from __future__ import annotations

import re

MAX_REASON = 500
"""Longest reason logged, in characters."""

# A traceback's exception line: "ValueError: boom", "mymodule.BillingError: card 4242 refused".
_QUALIFIED = re.compile(r"[A-Za-z_][\w.]*")


def failure_reason(kind: str, message: str, shown: str) -> str:
    """The reason viewers see for an exception of type ``kind`` with ``message``.

    ``shown`` is JOBCAST_FAILURE_REASON: ``message`` (``ValueError: boom``: the type and the
    first line of the message), ``type`` (``ValueError``) or ``none`` (``job failed``).
    """
    if shown == "none":
        return "job failed"
    if _QUALIFIED.fullmatch(kind):
        kind = kind.rpartition(".")[2]  # the class's name, as type(exc).__name__ gives it
    lines = message.strip().splitlines()
    first = lines[0].strip() if lines else ""
    if shown == "type" or not first:
        return kind[:MAX_REASON]
    return f"{kind}: {first}"[:MAX_REASON]


def reason_from_traceback(text: str, shown: str) -> str:
    """The reason viewers see for a failure RQ describes by its traceback's text.

    The exception is the last one of the text (a chained exception's traceback comes last):
    the first unindented line after its ``Traceback`` header, ``Type: message``. A text with
    no traceback (RQ's "Work-horse terminated unexpectedly...") is its own first line.
    """
    text = (text or "").strip()
    if not text:
        return "job failed"
    last = text.rpartition("Traceback (most recent call last):")[2]
    head = next((line for line in last.splitlines() if line.strip() and not line[0].isspace()),
                text.splitlines()[0])
    kind, _, message = head.partition(": ")
    return failure_reason(kind.strip(), message, shown)
