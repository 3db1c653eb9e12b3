"""Where a job's output capture (:mod:`jobcast.worker.capture`) takes what the job prints.

- :class:`FdSource` (fd mode, a work-horse of its own): descriptors 1 and 2 become pipes, read
  by a thread of their own, so C extensions and subprocesses are captured too;
- :class:`SysSource` (sys mode, the worker's own process): only ``sys.stdout`` and
  ``sys.stderr`` are replaced, by :class:`StreamProxy` objects.

Either feeds the bytes it takes to its capture, under the capture's lock.
"""

from __future__ import annotations

import codecs
import ctypes
import fcntl
import io
import logging
import os
import select
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

from jobcast.core.values import ESCAPE_SURROGATES
from jobcast.worker.logrecords import all_handlers

if TYPE_CHECKING:
    from jobcast.worker.capture import Capture

TICK = 0.1
"""Seconds between two sends of the flush thread; the reader thread looks at unfinished lines
at least as often."""
PIPE_SIZE = 1 << 20
"""Capacity asked for each pipe: room for a burst while the reader waits for the GIL."""
READ_SIZE = 65536
"""Bytes read from a pipe at once, and the buffer of the job's ``sys.stdout`` in fd mode."""
DRAIN_MAX = 1 << 20
"""Bytes one barrier drains at most (a subprocess may never stop writing)."""
JOIN_TIMEOUT = 2.0
"""Seconds to wait for one of the capture's threads to end."""

_libc: ctypes.CDLL | None | bool = None  # loaded at the first flush; False: it cannot be


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


class Source(Protocol):
    """What a capture asks of where the job's output comes from (:class:`FdSource`,
    :class:`SysSource`)."""

    def start(self) -> None:
        """Begin taking the job's output."""

    def console_streams(self) -> list[IO[str]]:
        """Streams of the console besides the standard ones."""

    def flush(self) -> None:
        """Push what the job has buffered towards the capture (may wait for a reader)."""

    def waiting(self) -> bool:
        """Whether output waits to be drained."""

    def drain(self) -> None:
        """Under the capture's lock: take what waits into lines, without waiting."""

    def restore(self) -> None:
        """Put the console back as it was, after taking what is left."""

    def close(self) -> None:
        """Release what :meth:`start` took, whatever happened before."""

    def console(self, stream: str, text: str) -> None:
        """Write ``text`` on the worker's own console: its ``stream`` (stdout or stderr)."""


class StreamProxy(io.TextIOBase):
    """Stands in for ``sys.stdout`` or ``sys.stderr``: what Python code writes becomes lines."""

    def __init__(self, capture: Capture, stream: str, original: IO[str]):
        """Feed ``stream``'s lines to ``capture``; ``original`` is the stream replaced."""
        super().__init__()
        self.capture = capture
        self.stream = stream
        self.original = original
        self._buffer: BytesProxy | None = None

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

    @property
    def buffer(self) -> "BytesProxy":
        """The binary stream under it, as a real ``sys.stdout`` has (``sys.stdout.buffer.write``
        of UTF-8 bytes): what is written there is captured as text too."""
        if self._buffer is None:
            self._buffer = BytesProxy(self)
        return self._buffer

    def finish(self) -> None:
        """The job has ended: what its binary stream holds of an unfinished character goes
        in, as U+FFFD (a byte sequence that is not UTF-8)."""
        if self._buffer is not None:
            rest = self._buffer.decoder.decode(b"", final=True)
            if rest:
                self.capture.write(self.stream, rest)  # (the capture is closing: no write() now)

    def reconfigure(self, **options: Any) -> None:
        """Accepted and ignored, as there is nothing to reconfigure: lines are taken as they
        are written, and encoded as UTF-8 (code that sets ``line_buffering`` or an encoding
        on ``sys.stdout`` must not fail inside a job)."""


class BytesProxy(io.RawIOBase):
    """``StreamProxy.buffer``: bytes written are decoded as UTF-8 (a character split between
    two writes is kept until it is whole; bytes that are not UTF-8 show as U+FFFD) and
    written to the text proxy."""

    def __init__(self, text: StreamProxy):
        """Under ``text``."""
        super().__init__()
        self.text = text
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Capture ``data``; all of it is taken."""
        self.text.write(self.decoder.decode(bytes(data)))
        return len(data)

    def writable(self) -> bool:
        """It is."""
        return True

    def fileno(self) -> int:
        """The replaced stream's descriptor."""
        return self.text.fileno()


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
            sys.stdout.finish()
            sys.stdout = self.stdout
        if isinstance(sys.stderr, StreamProxy) and sys.stderr.capture is self.capture:
            sys.stderr.finish()
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
        # Line-buffered, as Python's stdout is on a terminal: a line printed before a
        # subprocess (or a C extension) writes to descriptor 1 reaches the pipe first, so it
        # comes first. Block-buffered, it waited for the next value or the flush thread and
        # came after the child's lines; a print costs one write() more (~3 µs). A
        # BufferedWriter, whose lock keeps chunks in order when the flush thread flushes.
        self.buffered = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False),
                                                           READ_SIZE),
                                         encoding="utf-8", errors=ESCAPE_SURROGATES,
                                         write_through=False,
                                         line_buffering=True)
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
        if isinstance(sys.stderr, StreamProxy) and sys.stderr.capture is self.capture:
            sys.stderr.finish()
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
