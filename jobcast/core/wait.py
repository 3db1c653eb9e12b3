"""Wait for a condition with a deadline: the one polling loop that the launchers, the
supervisor, the benchmark and the tests share; and work cut into pages with a pause between
two, for the periodic rounds that run inside a web process's event loop."""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence, TypeVar

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


def in_pages(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` ``size`` at a time, with ``time.sleep(0)`` between two pages: under gevent (a
    periodic round in a web process) that is a turn of the loop, so the round's Redis
    pipelines never hold the viewers' writes up for longer than one page."""
    for start in range(0, len(items), size):
        if start:
            time.sleep(0)
        yield items[start:start + size]
