"""A clock the tests move by hand, for code that takes ``clock=`` (the relay, the broker)."""

from __future__ import annotations


class FakeClock:
    """``time.monotonic`` as a test decides it: it moves only with :meth:`advance`."""

    def __init__(self, now: float = 1000.0):
        """Start at ``now``."""
        self.now = now

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.now += seconds
