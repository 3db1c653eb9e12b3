"""Jobs written straight to their logs, and the server's open stream connections sampled:
for the browser tests that count streams (tests/web/test_browser_shared.py,
test_browser_resume.py)."""

from __future__ import annotations

import bisect
import threading
import time
import uuid

import httpx

from jobcast.core.joblog import JobLog


class Writer:
    """Jobs written straight to their logs: every 0.1 s a value of each, until :meth:`finish`
    (or, for some of them, :meth:`end`)."""

    def __init__(self, redis, count: int, interval: float = 0.1):
        """Create ``count`` running jobs and start writing."""
        self.logs = [JobLog(redis, uuid.uuid4().hex) for _ in range(count)]
        for log in self.logs:
            log.create("sqrt", {}, None)
            log.started("test-writer", 1)
        self.ids = [log.job_id for log in self.logs]
        self.written = {job_id: [] for job_id in self.ids}
        self.interval = interval
        self.stop = threading.Event()
        self.lock = threading.Lock()  # a round of values, or ending some jobs, at a time
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            with self.lock:
                for log in self.logs:
                    text = f"{log.job_id[:6]}:{i}"
                    log.value(i, text)
                    self.written[log.job_id].append(text)
            i += 1
            self.stop.wait(self.interval)
        with self.lock:
            for log in self.logs:
                log.finished()

    def end(self, ids: list[str]) -> None:
        """End these jobs now: no value of theirs after this; the others go on."""
        with self.lock:
            for log in [log for log in self.logs if log.job_id in ids]:
                log.finished()
                self.logs.remove(log)

    def finish(self) -> None:
        """Stop writing, and end every job."""
        self.stop.set()
        self.thread.join(10)


def open_streams(base: str) -> int:
    """The server's open stream connections (all its processes)."""
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith("jobcast_streams "):
            return int(float(line.split()[1]))
    return 0


class Sampler:
    """Samples the server's open stream connections every 100 ms, in a thread."""

    def __init__(self, base: str):
        """Start sampling ``base``."""
        self.base = base
        self.samples: list[tuple[float, int]] = []
        self.error: Exception | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                n = self.count()
                self.samples.append((time.monotonic(), n))  # as answered, not as asked
                self.stop.wait(0.1)
        except Exception as exc:  # said by the readers below, not lost with the thread
            self.error = exc

    def count(self) -> int:
        """One sample: the server's open stream connections."""
        return open_streams(self.base)

    def most(self, since: float = 0.0) -> int:
        """The most connections seen since ``since`` (time.monotonic())."""
        assert self.error is None, f"sampling stopped: {self.error!r}"
        return max([n for t, n in self.samples if t >= since] or [0])

    def most_held(self, since: float = 0.0, hold: float = 0.5) -> int:
        """The most connections seen in every sample over ``hold`` seconds or more, since
        ``since``.

        A browser that changes its set of jobs closes one stream and then opens the next, but
        the server may take the new request before it sees the old one's close (the close
        travels on its own connection, and may reach another of its processes): a sample or
        two may catch a hand-over midway. A connection held for longer shows in every sample
        of ``hold``.
        """
        assert self.error is None, f"sampling stopped: {self.error!r}"
        samples = [(t, n) for t, n in self.samples if t >= since]
        times = [t for t, _ in samples]
        most = 0
        for i, t in enumerate(times):
            past = bisect.bisect_right(times, t + hold)  # the first sample past the span
            if past < len(samples):
                most = max(most, min(n for _, n in samples[i:past + 1]))
        return most

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
