"""What a job prints goes to its log: stdout, stderr and logging records, line by line.

The worker hook (:mod:`jobcast.worker.hook`) starts a :class:`Capture` for each job, right after
its ``started`` entry, and closes it before the job's terminal entry. Each line becomes a ``log``
entry, appended by the same script as every entry (:meth:`jobcast.core.joblog.JobLog.append_many`),
so it takes its place among the values by seq.

Two ways to capture, picked by where the job runs (:mod:`jobcast.worker.sources`):

- **fd** (a forked work-horse, a fresh process per job): file descriptors 1 and 2 become pipes
  that a reader thread splits into lines, so C extensions and subprocesses are captured too.
  Python's ``sys.stdout`` is line-buffered over the pipe for the job, as on a terminal (a
  line printed before a subprocess writes comes first), ``sys.stderr`` feeds its lines in
  directly, after what stdout printed before. Logging handlers that wrote to the console are pointed at the saved console.
- **sys** (``SimpleWorker``, which runs jobs in its own long-lived process): only
  ``sys.stdout`` and ``sys.stderr`` are replaced, so the worker's own threads and file
  descriptors are never touched; C and subprocess output is not captured.

Logging records (the root logger, from ``JOBCAST_CAPTURE_LEVEL`` up; not RQ's, redis' or
Jobcast's own) are captured in both modes, and alone with ``JOBCAST_CAPTURE=logging``
(:mod:`jobcast.worker.logrecords`).

Bounds: a line is kept up to 8 KiB, at most ``JOBCAST_CAPTURE_RATE`` lines (and 256 KiB) a
second are logged and the rest counted and announced, and a line without its newline is sent
after 200 ms (see :mod:`jobcast.worker.lines`). A flush thread sends the admitted lines every
100 ms, one pipelined round trip for many lines.

Order: :func:`before_value` (called by ``emit()`` and the runner before each value) flushes what
the job printed and sends it first, an unfinished line as partial (at most one a stream per
200 ms), so a line printed before a value has a lower seq; an unfinished line goes as partial
before a logging record or a line of the other stream, too. When those lines wait for a retry
(Redis did not take them), it raises, and the value waits too. A value that ``emit()`` holds
while Redis is away puts a mark in the queue (:func:`hold`): the lines printed after it wait
behind the mark until the value is written (:func:`release`), so they never come before it.
Locks are always taken ``send_lock`` then ``lock``; no thread holds ``lock`` across a write
that can block.

One job runs in a process at a time, so the active capture is module state (:func:`current`).

The capture writes through the JobLog that the attempt's value writer began (the hook's, or the
runner's: :func:`set_attempt`), so the lines are checked against the incarnation the attempt
began and raise the seq that its values are checked against (:mod:`jobcast.core.epoch`). Once
the log is reset under the attempt (a failover lost entries), the capture stops logging, and
:func:`seal` says so: the hook (or the runner) then fails the attempt with LogReset, as its
next value would have, even when it emits none (RQ retries it, or fails it; never ``finished``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable

from redis.exceptions import ConnectionError as RedisConnectionError

from jobcast.core.epoch import LogReset
from jobcast.core.joblog import FINAL, JobLog
from jobcast.core.output import line_text
from jobcast.core.settings import Settings
from jobcast.core.store import REDIS_ERRORS
from jobcast.core.values import ESCAPE_SURROGATES
from jobcast.worker.lines import LineSplitter, OutputLine, RateWindow, clip
from jobcast.worker.logrecords import CaptureHandler
from jobcast.worker.sources import JOIN_TIMEOUT, TICK, FdSource, Source, SysSource

log = logging.getLogger(__name__)

FINAL_RETRY = 0.5
"""Seconds before the last send is tried once more, when Redis did not take it."""
BATCH = 500
"""Entries per pipelined send."""
BACKLOG_BYTES = 2 << 20
"""Bytes of lines waiting to be sent before more are dropped (Redis is slow or away)."""
HOLD = OutputLine("hold", "", 0.0)
"""The mark of a held value in the queue of lines (:meth:`Capture.hold`): never sent."""

Sink = Callable[[list[tuple[str, dict, float]]], list[int]]

_current: Capture | None = None


def current() -> Capture | None:
    """The capture of the job running in this process, if any."""
    return _current


def before_value() -> None:
    """Send everything the job printed so far, so it comes before the value about to be
    logged; a no-op without a capture."""
    capture = _current
    if capture is not None:
        capture.before_value()


def hold() -> None:
    """A value could not be logged and is held (``emit()``): what the job prints from now on
    waits until it is written (:func:`release`); a no-op without a capture."""
    capture = _current
    if capture is not None:
        capture.hold()


def release() -> None:
    """The oldest held value has been logged: the lines printed after it may go."""
    capture = _current
    if capture is not None:
        capture.release()


def set_attempt(attempt: int, jlog: JobLog | None = None) -> None:
    """Label the job's output with ``attempt`` (the runner knows it only after ``started``),
    and send it through ``jlog`` when given: the log the attempt began, shared with its values."""
    capture = _current
    if capture is not None:
        with capture.lock:  # the sink before the attempt: a send goes once the attempt is known
            if jlog is not None:
                capture.sink = jlog.append_many
            capture.attempt = attempt


def seal() -> bool:
    """Stop capturing and send every line, before the job's terminal entry; idempotent.

    True when the log was reset under the attempt as its output was sent (the write raised
    LogReset, at the last flush too): the attempt must end as one whose value met the reset.
    Only the call that closes the capture says so.
    """
    capture = _current
    if capture is None:
        return False
    capture.close()
    return capture.reset


def start(job_id: str, jlog: JobLog, settings: Settings, *, attempt: int | None,
          fds: bool) -> Capture | None:
    """Capture the output of the job about to run, as ``JOBCAST_CAPTURE`` says, into ``jlog``
    (the log the attempt began, shared with its value writer).

    ``fds``: the job runs in a work-horse of its own (fd mode); else in the worker (sys
    mode). ``attempt`` None holds the lines until :func:`set_attempt` (which may also give
    the log to write them to). A capture that cannot start only warns: the job runs uncaptured.
    """
    global _current
    seal()  # a previous job's, should its worker have missed the end (never twice at once)
    if settings.capture == "off":
        return None
    capture = Capture(job_id, jlog.append_many, rate=settings.capture_rate,
                      level=logging.getLevelName(settings.capture_level),
                      echo=settings.capture_echo, attempt=attempt,
                      mode="logging" if settings.capture == "logging" else "fd" if fds else "sys")
    try:
        capture.start()
    except (OSError, ValueError, AttributeError, RuntimeError) as exc:
        # (RuntimeError: a thread that cannot start.) What was set up is put back.
        log.warning("jobcast: cannot capture the output of job %s: %s", job_id, exc)
        try:
            capture.close()
        except Exception:  # the job must run whatever its capture's cleanup meets
            log.exception("jobcast: cleaning up the capture of job %s failed", job_id)
        return None
    _current = capture
    return capture


class Capture:
    """One job's output capture: sources in, lines queued under the bounds, sent in batches."""

    def __init__(self, job_id: str, sink: Sink, *, rate: int, level: int, echo: bool,
                 attempt: int | None, mode: str, clock: Callable[[], float] = time.time):
        """Configure; :meth:`start` begins. ``sink`` appends entries and returns their seqs."""
        self.job_id = job_id
        self.sink = sink
        self.level = level
        self.echo = echo
        self.attempt = attempt
        self.mode = mode
        self.clock = clock
        self.lock = threading.Lock()        # splitters, window, pending
        self.send_lock = threading.Lock()   # one send at a time, so batches stay in order
        self.window = RateWindow(rate)
        self.splitters = {"stdout": LineSplitter("stdout"), "stderr": LineSplitter("stderr")}
        self.pending: list[OutputLine] = []
        self.pending_bytes = 0
        self.pid = os.getpid()
        self.ended = False                  # the log takes no more (the job ended, or expired)
        self.reset = False                  # a write raised LogReset: the attempt must be retried
        self.retry = False                  # the last send failed; the next is its retry
        self.lost = 0                       # lines Redis never took
        self.closed = False
        self.source: Source | None = None
        self.handler: CaptureHandler | None = None
        self.stopping = threading.Event()
        self.flusher: threading.Thread | None = None
        self.idents: set[int] = set()       # the capture's own threads: their records are not the job's

    # -- starting and stopping ---------------------------------------------------------------

    def start(self) -> None:
        """Install the sources, the logging handler and the flush thread."""
        consoles = [sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__]
        if self.mode == "fd":
            self.source = FdSource(self)
        elif self.mode == "sys":
            self.source = SysSource(self)
        if self.source is not None:
            self.source.start()
            consoles += self.source.console_streams()
        self.handler = CaptureHandler(self)
        self.handler.install({id(stream) for stream in consoles if stream is not None})
        self.flusher = self.spawn("jobcast-capture-flush", self._flush_loop)

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Start one of the capture's threads."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.idents.add(thread.ident)
        return thread

    def close(self) -> None:
        """Stop capturing, send every line left (the unfinished ones as partial) and the drop
        notice, and put everything back as it was. Only the process that started it acts."""
        global _current
        if self.closed or os.getpid() != self.pid:
            return
        self.closed = True
        try:
            if self.handler is not None:
                self.handler.remove()
            self.stopping.set()
            if self.flusher is not None:
                self.flusher.join(JOIN_TIMEOUT)
            if self.source is not None:
                self.source.restore()
            now = self.clock()
            with self.lock:
                for splitter in self.splitters.values():
                    self._admit(splitter.flush(now))
                self._notice(now, final=True)
            self.send(final=True)
            if self.retry:
                # The last send failed: nothing after it would tell of its lines. Redis may be
                # back in a moment (a failover); one more try, then they are counted as lost.
                time.sleep(FINAL_RETRY)
                self.send(final=True)
        finally:
            if self.source is not None:
                self.source.close()
            if _current is self:
                _current = None

    # -- lines in ----------------------------------------------------------------------------

    def ingest(self, stream: str, data: bytes, now: float) -> None:
        """Bytes of ``stream``, under ``lock``: split, admitted or counted."""
        splitter = self.splitters[stream]
        if self.window.full(now):
            self.window.drop(splitter.skip(data, now))
        else:
            lines = splitter.feed(data, now)
            if lines:
                self._end_partials(now, but=splitter)  # printed before these lines
            for line in lines:
                self._admit(line)
        self._notice(now)

    def _end_partials(self, now: float, but: LineSplitter | None = None,
                      value: bool = False) -> None:
        """Under ``lock``: queue the unfinished lines (but ``but``'s) as partial, before what
        was printed after them: a logging record, a line of the other stream, or (``value``)
        a value. Before a value, at most one a stream per PARTIAL_AFTER
        (:meth:`LineSplitter.cut`): values may come thousands a second, lines are capped."""
        for splitter in self.splitters.values():
            if splitter is not but:
                self._admit(splitter.cut(now) if value else splitter.flush(now, whole=True))

    def expire(self, now: float) -> None:
        """Under ``lock``: send lines that waited too long for their newline as partial."""
        for splitter in self.splitters.values():
            self._admit(splitter.expire(now))
        self._notice(now)

    def next_deadline(self) -> float | None:
        """The earliest time a pending line is due to be sent unfinished."""
        deadlines = [d for d in (s.deadline() for s in self.splitters.values()) if d is not None]
        return min(deadlines, default=None)

    def _admit(self, line: OutputLine | None) -> None:
        """Under ``lock``: queue ``line`` if the rate cap and the backlog allow, else count it."""
        if line is None:
            return
        if self.ended or len(self.pending) >= 2 * self.window.lines or \
                self.pending_bytes >= BACKLOG_BYTES:
            self.window.drop(1)
        elif self.window.admit(line.size, line.ts):
            self.pending.append(line)
            self.pending_bytes += line.size

    def _notice(self, now: float, final: bool = False) -> None:
        """Under ``lock``: queue the one line that says how many lines were dropped."""
        dropped = self.window.notice(now, final)
        if dropped and not self.ended:
            self.pending.append(OutputLine(
                "stderr", f"[jobcast] {dropped:,} lines dropped (over {self.window.lines:,} "
                f"lines or {self.window.max_bytes // 1024:,} KiB a second)", now, dropped=dropped))

    def write(self, stream: str, text: str) -> None:
        """Text that Python code wrote to ``sys.stderr`` (or, in sys mode, ``sys.stdout``).

        What stdout printed before a stderr line began comes first: the barrier that brings
        it in is taken where a stderr line begins (its first piece may be sent unfinished,
        before a value or another line), so a ``print(x, file=sys.stderr)`` (its text, then
        its newline) pays for one, not two. (In fd mode, stdout that Python buffered while a
        stderr line was written in pieces comes after that line.)"""
        if stream == "stderr" and text:
            with self.lock:
                begins = self.splitters["stderr"].since is None
            if begins:
                self.barrier()
        with self.lock:
            self.ingest(stream, text.encode("utf-8", ESCAPE_SURROGATES), self.clock())

    def record(self, record: logging.LogRecord, text: str) -> None:
        """A logging record, after whatever was printed before it."""
        self.barrier()
        body, cut = clip(text.encode("utf-8", ESCAPE_SURROGATES))
        line = OutputLine("logging", body, self.clock(), cut=cut, level=record.levelname,
                          logger=record.name)
        with self.lock:
            self._end_partials(line.ts)
            self._admit(line)

    # -- lines out ---------------------------------------------------------------------------

    def barrier(self) -> None:
        """Bring in everything the job has printed so far (queued, not sent)."""
        if self.source is not None:
            self.source.flush()         # no lock held: this may wait for the reader
            # (Output the reader thread has taken is taken under the lock, which the line
            # about to be logged waits for: it comes after that output even when no pipe
            # holds anything now.)
            if self.source.waiting():
                with self.lock:
                    self.source.drain()

    def before_value(self) -> None:
        """Send everything printed so far (up to a held value's mark), before the value about
        to be logged; RedisError when those lines wait for a retry: the value must wait too."""
        if self.closed or os.getpid() != self.pid:
            return
        self.barrier()
        with self.lock:
            # A line printed without its newline (a progress report's "step 1...") was printed
            # before the value: it goes now, as partial, not after the value once its 200 ms
            # are up. The download joins a partial line to the rest of it.
            self._end_partials(self.clock(), value=True)
        self.send()
        if self.retry:
            raise RedisConnectionError(f"the output of job {self.job_id} before this value "
                                       "waits for Redis")

    def hold(self) -> None:
        """Mark the queue where a held value belongs: the lines after the mark wait for it."""
        with self.lock:
            self.pending.append(HOLD)

    def release(self) -> None:
        """The oldest held value is logged: drop its mark (the lines after it may go)."""
        with self.lock:
            for k, line in enumerate(self.pending):
                if line is HOLD:
                    del self.pending[k]
                    return

    def send(self, final: bool = False) -> None:
        """Send the queued lines, in order, in pipelined batches; echo them on the console.

        Lines wait while the attempt is unknown, and behind the mark of a held value (but
        for the ``final`` send, which drops the marks). A failed send is tried once more (at
        the next tick, or by :meth:`close` after FINAL_RETRY), then its lines are counted as
        lost.
        """
        with self.send_lock:
            with self.lock:
                if final:
                    self.pending = [line for line in self.pending if line is not HOLD]
                if final and self.attempt is None and self.pending:
                    # The run ended before its attempt was known (it failed to start): its
                    # lines have no log to go to. They reach the worker's console, counted.
                    unsent, self.pending, self.pending_bytes = self.pending, [], 0
                    self.lost += len(unsent)
                    if self.echo:
                        self.echo_lines([line for line in unsent if not line.echoed])
                    log.warning("jobcast: job %s ended before its attempt began: %d line(s) "
                                "it printed are not in its log", self.job_id, len(unsent))
                    return
                if self.attempt is None or not self.pending:
                    return
                cut = next((k for k, line in enumerate(self.pending) if line is HOLD),
                           len(self.pending))
                if not cut:
                    return
                batch, self.pending = self.pending[:cut], self.pending[cut:]
                self.pending_bytes = sum(line.size for line in self.pending)
            if self.echo:
                # (a batch sent again after a failure was printed the first time)
                self.echo_lines([line for line in batch if not line.echoed])
                for line in batch:
                    line.echoed = True
            for k in range(0, len(batch), BATCH):
                if not self._deliver(batch[k:k + BATCH], batch[k + BATCH:], final):
                    return

    def _deliver(self, lines: list[OutputLine], rest: list[OutputLine], final: bool) -> bool:
        """Append ``lines``; False when the rest must wait (or is dropped)."""
        if self.ended:
            return False
        try:
            seqs = self.sink([("log", line.body(self.attempt), line.ts) for line in lines])
        except LogReset:
            # The log is not the incarnation the attempt began (a new epoch was announced):
            # this attempt's lines stop here. Its viewers were told of the reset, so the
            # attempt must run again even if it emits no other value: seal() tells the hook.
            self.ended = True
            self.reset = True
            self.retry = False
            self.lost += len(lines) + len(rest)
            log.warning("jobcast: the log of job %s was reset under its attempt (Redis lost "
                        "entries): its output is no longer logged and the attempt will not "
                        "finish", self.job_id)
            return False
        except REDIS_ERRORS as exc:
            # (A Cluster's "slot not covered" and the like are no RedisError.) A first failure
            # is tried again: at the next tick, or by close() for the last send.
            if self.retry:
                self.retry = False
                dropped = lines + rest
                # An earlier notice among them stands for the lines it counted: the new one
                # carries them on (one line each otherwise, and they were counted then).
                new = sum(1 for line in dropped if not line.lost)
                lost = new + sum(line.lost for line in dropped)
                self.lost += new
                log.warning("jobcast: %d output lines of job %s were lost: %s",
                            new, self.job_id, exc)
                if not final:
                    # Its viewers are told, as they are of the lines the rate cap drops.
                    notice = OutputLine("stderr", f"[jobcast] {lost:,} lines lost: Redis did "
                                        "not take them", self.clock(), lost=lost)
                    with self.lock:
                        self.pending.insert(0, notice)
                        self.pending_bytes += notice.size
            else:
                self.retry = True
                self._put_back(lines + rest)
            return False
        except BaseException:
            # Anything else (the job's timeout, raised in its thread mid-send): the lines are
            # not lost untold; they go at the next send, or the last.
            self._put_back(lines + rest)
            raise
        self.retry = False
        if any(seq in FINAL for seq in seqs):
            # The job has ended (cancelled, or failed by the watchdog) or its log is gone.
            self.ended = True
            return False
        return True

    def _put_back(self, lines: list[OutputLine]) -> None:
        """Queue ``lines`` again, first (they were taken for a send that did not go)."""
        with self.lock:
            self.pending[:0] = lines
            self.pending_bytes += sum(line.size for line in lines)

    def echo_lines(self, lines: list[OutputLine]) -> None:
        """Print ``lines`` on the worker's console, each after the job's id: stdout's on its
        stdout, the others on its stderr, in order."""
        runs: list[tuple[str, list[str]]] = []
        for line in lines:
            stream = "stdout" if line.stream == "stdout" else "stderr"
            if not runs or runs[-1][0] != stream:
                runs.append((stream, []))
            runs[-1][1].append(f"[{self.job_id}] {line_text(line.body(None))}\n")
        try:
            for stream, texts in runs:
                if self.source is not None:
                    self.source.console(stream, "".join(texts))
                else:
                    sys.stderr.write("".join(texts))
                    sys.stderr.flush()
        except (OSError, ValueError):
            pass    # a closed console loses the echo, never the job's lines

    def _flush_loop(self) -> None:
        """Every tick: flush what the job printed, expire unfinished lines, send."""
        while not self.stopping.wait(TICK):
            try:
                if self.source is not None:
                    self.source.flush()
                with self.lock:
                    self.expire(self.clock())
                self.send()
            except Exception:  # the thread must live on: a lost tick is retried at the next
                log.exception("jobcast: output capture of job %s", self.job_id)
