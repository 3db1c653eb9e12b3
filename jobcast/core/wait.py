"""Wait for a condition with a deadline: the one polling loop that the launchers, the
supervisor, the benchmark and the tests share."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition", sleep: Callable[[float], object] = time.sleep) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy, and
    return that; raise TimeoutError after ``timeout`` seconds. An exception that
    ``condition`` raises (a child process that died) ends the wait at once. ``sleep`` is
    gevent's in code that must keep gevent's loop running meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        sleep(interval)
