"""What a job prints goes to its log: stdout, stderr and logging records, line by line.

The worker hook (:mod:`jobcast.worker.hook`) starts a :class:`Capture` for each job, right after
its ``started`` entry, and closes it before the job's terminal entry. Each line becomes a ``log``
entry, appended by the same script as every entry (:meth:`jobcast.core.joblog.JobLog.append_many`),
so it takes its place among the values by seq.

Two ways to capture, picked by where the job runs:

- **fd** (a forked work-horse, a fresh process per job): file descriptors 1 and 2 become pipes
  that a reader thread splits into lines, so C extensions and subprocesses are captured too.
  Python's ``sys.stdout`` is block-buffered over the pipe for the job (a million prints take
  under a second), ``sys.stderr`` feeds its lines in directly, after what stdout printed
  before. Logging handlers that wrote to the console are pointed at the saved console.
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
the job printed and sends it first, so a line printed before a value has a lower seq; when those
lines wait for a retry (Redis did not take them), it raises, and the value waits too. A value
that ``emit()`` holds while Redis is away puts a mark in the queue (:func:`hold`): the lines
printed after it wait behind the mark until the value is written (:func:`release`), so they
never come before it. Locks are always taken ``send_lock`` then ``lock``; no thread holds
``lock`` across a write that can block.

One job runs in a process at a time, so the active capture is module state (:func:`current`).

The capture writes through the JobLog that the attempt's value writer began (the hook's, or the
runner's: :func:`set_attempt`), so the lines are checked against the incarnation the attempt
began and raise the seq that its values are checked against (:mod:`jobcast.core.epoch`). Once
the log is reset under the attempt (a failover lost entries), the capture stops logging, and
:func:`seal` says so: the hook (or the runner) then fails the attempt with LogReset, as its
next value would have, even when it emits none (RQ retries it, or fails it; never ``finished``).
"""

from __future__ import annotations

import ctypes
import fcntl
import io
import logging
import os
import select
import sys
import threading
import time
from typing import IO, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from jobcast.core.epoch import LogReset
from jobcast.core.joblog import JobLog
from jobcast.core.output import line_text
from jobcast.core.settings import Settings
from jobcast.worker.lines import LineSplitter, OutputLine, RateWindow, clip
from jobcast.worker.logrecords import CaptureHandler, all_handlers

log = logging.getLogger(__name__)

TICK = 0.1
"""Seconds between two sends of the flush thread."""
FINAL_RETRY = 0.5
"""Seconds before the last send is tried once more, when Redis did not take it."""
BATCH = 500
"""Entries per pipelined send."""
PIPE_SIZE = 1 << 20
"""Capacity asked for each pipe: room for a burst while the reader waits for the GIL."""
READ_SIZE = 65536
DRAIN_MAX = 1 << 20
"""Bytes one barrier drains at most (a subprocess may never stop writing)."""
BACKLOG_BYTES = 2 << 20
"""Bytes of lines waiting to be sent before more are dropped (Redis is slow or away)."""
JOIN_TIMEOUT = 2.0
HOLD = OutputLine("hold", "", 0.0)
"""The mark of a held value in the queue of lines (:meth:`Capture.hold`): never sent."""

Sink = Callable[[list[tuple[str, dict, float]]], list[int]]

_current: Capture | None = None
_libc: ctypes.CDLL | None | bool = None


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


def flush_libc() -> None:
    """Flush C's stdio buffers (a C extension's printf), where libc can be loaded."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None)
        except OSError:
            _libc = False
    if _libc:
        _libc.fflush(None)


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
        self.source: FdSource | SysSource | None = None
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
            for line in splitter.feed(data, now):
                self._admit(line)
        self._notice(now)

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
                "lines or 256 KiB a second)", now, dropped=dropped))

    def write(self, stream: str, text: str) -> None:
        """Text that Python code wrote to ``sys.stderr`` (or, in sys mode, ``sys.stdout``).

        What stdout printed before a stderr line comes first: the barrier that brings it in
        is needed only where a stderr line ends (a line is logged when it ends), so a
        ``print(x, file=sys.stderr)`` (its text, then its newline) pays for one, not two."""
        if stream == "stderr" and "\n" in text:
            self.barrier()
        with self.lock:
            self.ingest(stream, text.encode("utf-8", "replace"), self.clock())

    def record(self, record: logging.LogRecord, text: str) -> None:
        """A logging record, after whatever was printed before it."""
        self.barrier()
        body, cut = clip(text.encode("utf-8", "replace"))
        line = OutputLine("logging", body, self.clock(), cut=cut, level=record.levelname,
                          logger=record.name)
        with self.lock:
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
        except (RedisError, RedisClusterException) as exc:
            # (A Cluster's "slot not covered" and the like are no RedisError.) A first failure
            # is tried again: at the next tick, or by close() for the last send.
            if self.retry:
                self.retry = False
                lost = len(lines) + len(rest)
                self.lost += lost
                log.warning("jobcast: %d output lines of job %s were lost: %s",
                            lost, self.job_id, exc)
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
        if any(seq in (-1, -2, -5) for seq in seqs):
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


class StreamProxy(io.TextIOBase):
    """Stands in for ``sys.stdout`` or ``sys.stderr``: what Python code writes becomes lines."""

    def __init__(self, capture: Capture, stream: str, original: IO[str]):
        """Feed ``stream``'s lines to ``capture``; ``original`` is the stream replaced."""
        super().__init__()
        self.capture = capture
        self.stream = stream
        self.original = original

    def write(self, text: str) -> int:
        """Capture ``text`` (in a forked child of the job: write it where it went before)."""
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if os.getpid() != self.capture.pid or self.capture.closed:
            return self.original.write(text)
        self.capture.write(self.stream, text)
        return len(text)

    def writable(self) -> bool:
        """It is."""
        return True

    def fileno(self) -> int:
        """The replaced stream's descriptor (for code that hands it to a subprocess)."""
        return self.original.fileno()

    @property
    def encoding(self) -> str:
        """What the job writes is encoded as UTF-8."""
        return "utf-8"


class SysSource:
    """sys mode: ``sys.stdout`` and ``sys.stderr`` replaced by proxies; nothing else touched."""

    def __init__(self, capture: Capture):
        """For ``capture``."""
        self.capture = capture
        self.stdout: IO[str] | None = None
        self.stderr: IO[str] | None = None

    def start(self) -> None:
        """Swap the proxies in."""
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = StreamProxy(self.capture, "stdout", self.stdout)
        sys.stderr = StreamProxy(self.capture, "stderr", self.stderr)

    def console_streams(self) -> list[IO[str]]:
        """Streams of the console besides the standard ones: none."""
        return []

    def flush(self) -> None:
        """Nothing is buffered: proxies feed lines in as they are written."""

    def waiting(self) -> bool:
        """Nothing waits in a pipe."""
        return False

    def drain(self) -> None:
        """Nothing waits in a pipe."""

    def restore(self) -> None:
        """Put the streams back (only ours: a job that replaced them again keeps its own)."""
        if isinstance(sys.stdout, StreamProxy) and sys.stdout.capture is self.capture:
            sys.stdout = self.stdout
        if isinstance(sys.stderr, StreamProxy) and sys.stderr.capture is self.capture:
            sys.stderr = self.stderr

    def close(self) -> None:
        """Make sure the streams are back, whatever happened before."""
        self.restore()

    def console(self, stream: str, text: str) -> None:
        """Write ``text`` on the worker's own stdout or stderr."""
        if text:
            target = self.stdout if stream == "stdout" else self.stderr
            target.write(text)
            target.flush()


class FdSource:
    """fd mode: descriptors 1 and 2 are pipes for the job, read by a thread of their own."""

    def __init__(self, capture: Capture):
        """For ``capture``."""
        self.capture = capture
        self.saved: dict[int, int] = {}         # 1 and 2 -> a copy of the console's descriptor
        self.reads: dict[int, str] = {}         # read end -> stream
        # The reader thread waits on one (poll, not select: any descriptor number); writers
        # ask the other (a poll object is polled by one thread at a time).
        self.poller, self.probe = select.poll(), select.poll()
        self.consoles: dict[int, IO[str]] = {}  # text streams on the saved descriptors
        self.stdout: IO[str] | None = None      # the streams replaced
        self.stderr: IO[str] | None = None
        self.buffered: io.TextIOWrapper | None = None
        self.moved: list[tuple[logging.StreamHandler, IO[str]]] = []
        self.reader: threading.Thread | None = None
        self.stop_reading = threading.Event()

    def start(self) -> None:
        """Pipes onto 1 and 2, Python's streams over them, console handlers moved aside."""
        sys.stdout.flush()
        sys.stderr.flush()
        flush_libc()
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            self.saved[fd] = os.dup(fd)
            read, write = os.pipe()
            try:
                fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except (OSError, AttributeError):
                pass  # the default 64 KiB works, with shorter bursts
            os.set_blocking(read, False)
            self.reads[read] = stream
            self.poller.register(read, select.POLLIN)
            self.probe.register(read, select.POLLIN)
            os.dup2(write, fd)  # inheritable: subprocesses write into the pipe too
            os.close(write)
            self.consoles[fd] = open(self.saved[fd], "w", buffering=1, encoding="utf-8",
                                     errors="backslashreplace", closefd=False)
        self.stdout, self.stderr = sys.stdout, sys.stderr
        # Block-buffered (a BufferedWriter, whose lock keeps chunks in order when the flush
        # thread flushes): with PYTHONUNBUFFERED every print would cost its own system calls.
        self.buffered = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False),
                                                           READ_SIZE),
                                         encoding="utf-8", errors="replace", write_through=False)
        sys.stdout = self.buffered
        sys.stderr = StreamProxy(self.capture, "stderr", self.stderr)
        self._move_handlers()
        self.reader = self.capture.spawn("jobcast-capture-read", self._read_loop)

    def _move_handlers(self) -> None:
        """Point the logging handlers that wrote to the console at the saved console, so the
        worker's own logs are not taken for the job's stderr."""
        targets = {}
        for original, fd in ((self.stdout, 1), (self.stderr, 2), (sys.__stdout__, 1),
                             (sys.__stderr__, 2)):
            if original is not None:
                targets[id(original)] = self.consoles[fd]
        for handler in all_handlers():
            if type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler) \
                    and id(handler.stream) in targets:
                self.moved.append((handler, handler.setStream(targets[id(handler.stream)])))

    def console_streams(self) -> list[IO[str]]:
        """The text streams on the saved console, where the logging handlers now write."""
        return list(self.consoles.values())

    def flush(self) -> None:
        """Push what Python and C have buffered into the pipes (may wait for the reader)."""
        if self.buffered is not None:
            try:
                self.buffered.flush()
            except ValueError:
                pass    # closed by close()
        flush_libc()

    def waiting(self) -> bool:
        """Whether a pipe holds output (or its writers are gone): one system call, where a
        drain would cost a read of each pipe."""
        try:
            return bool(self.reads) and bool(self.probe.poll(0))
        except RuntimeError:  # another thread of the job is asking: drain, to be sure
            return True

    def drain(self, limit: int = DRAIN_MAX) -> None:
        """Under the capture's lock: read what the pipes hold into lines, without waiting."""
        now = self.capture.clock()
        for fd, stream in list(self.reads.items()):
            taken = 0
            while taken < limit:
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    del self.reads[fd]  # every writer is gone
                    self.poller.unregister(fd)
                    self.probe.unregister(fd)
                    os.close(fd)
                    break
                taken += len(data)
                self.capture.ingest(stream, data, now)

    def _read_loop(self) -> None:
        """Wait for output, read it into lines; send unfinished lines on time."""
        while self.reads:
            deadline = self.capture.next_deadline()
            timeout = TICK if deadline is None else max(0.0, min(TICK, deadline - time.time()))
            stopping = self.stop_reading.is_set()
            try:
                self.poller.poll(0 if stopping else 1000 * timeout)
            except OSError:
                return
            with self.capture.lock:
                self.drain()
                self.capture.expire(self.capture.clock())
            if stopping:
                return  # drained to "nothing now", not to the end: a daemon may keep a pipe open

    def restore(self) -> None:
        """Flush, give 1 and 2 back to the console, read what is left, restore the streams."""
        self.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
        if self.stdout is not None:
            sys.stdout = self.stdout
        if isinstance(sys.stderr, StreamProxy) and sys.stderr.capture is self.capture:
            sys.stderr = self.stderr
        self.stop_reading.set()
        if self.reader is not None:
            self.reader.join(JOIN_TIMEOUT)
        for handler, stream in self.moved:
            handler.setStream(stream)
        self.moved.clear()

    def close(self) -> None:
        """Close the pipes and the saved descriptors (after a failed start too)."""
        if self.reader is None or not self.reader.is_alive():
            for fd in list(self.reads):
                os.close(fd)
            self.reads.clear()
        for fd, saved in list(self.saved.items()):
            if os.fstat(fd).st_ino != os.fstat(saved).st_ino:
                os.dup2(saved, fd)  # a start that failed halfway
            console = self.consoles.pop(fd, None)  # (none yet, if it failed before)
            if console is not None:
                console.close()
            os.close(saved)
        self.saved.clear()
        if self.stdout is not None and sys.stdout is self.buffered:
            sys.stdout = self.stdout

    def console(self, stream: str, text: str) -> None:
        """Write ``text`` on the worker's console (the saved descriptor)."""
        if text:
            data = text.encode("utf-8", "backslashreplace")
            fd = self.saved[1 if stream == "stdout" else 2]
            while data:
                data = data[os.write(fd, data):]
