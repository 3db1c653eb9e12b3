"""A round of work repeated in the background: the watchdog, presence and the relay's heartbeat.

Each runs in a daemon thread, which gevent's worker patches into a greenlet, until stopped. A
Redis outage only delays the next round; any other error is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class Periodic:
    """Call :meth:`round` every ``interval`` seconds until :meth:`stop`."""

    thread_name = "jobcast-periodic"
    """The thread's name, and the word its log lines start with."""

    immediate = False
    """True to run a first round at once rather than after one interval."""

    def __init__(self, interval: float):
        """Prepare; :meth:`start` runs it."""
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def round(self) -> None:
        """One round of work."""
        raise NotImplementedError

    def start(self) -> None:
        """Run in the background, once per process."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current round."""
        self._stop.set()

    def _run(self) -> None:
        """Repeat the round until stopped; it must outlive any one bad round."""
        if self.immediate:
            self._safe_round()
        while not self._stop.wait(self.interval):
            self._safe_round()

    def _safe_round(self) -> None:
        """One round, whose failure is logged rather than raised."""
        try:
            self.round()
        except RedisError as exc:
            log.info("%s: Redis unavailable (%s)", self.thread_name, exc)
        except Exception:  # a bug here must not end the loop; it is logged
            log.exception("%s: round failed", self.thread_name)
