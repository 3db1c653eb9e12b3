"""Waiting on a condition with a deadline, as the product's own wait loop does."""

from __future__ import annotations

import time
from typing import Callable

from jobcast.core.wait import wait_until


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition", sleep: Callable[[float], object] = time.sleep):
    """Poll ``condition`` until it returns something truthy (the product's one wait loop);
    fail the test after ``timeout`` seconds."""
    try:
        return wait_until(condition, timeout, interval, what, sleep)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None
