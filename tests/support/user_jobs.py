"""Job functions of a user's own app (not Jobcast tasks), for tests whose real RQ workers run
them: the worker imports them from here."""

from __future__ import annotations

import os
import time

from jobcast import emit


def emits(n: int, interval: float) -> int:
    """Emit 0..n-1, ``interval`` seconds apart, as the README's own example does."""
    for i in range(n):
        emit(i, total=n)
        time.sleep(interval)
    return n


def sleeps(seconds: float) -> str:
    """Work for ``seconds``, emitting nothing: a plain RQ job."""
    time.sleep(seconds)
    return "done"


def dies(seconds: float) -> None:
    """Work for ``seconds``, then end its process at once, as a crash does (a C extension's,
    the OOM killer): nothing of RQ's records how the job ended."""
    time.sleep(seconds)
    os._exit(1)
