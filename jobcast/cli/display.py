"""What ``jobcast follow`` shows on a terminal: values, notes and the progress bar.

:class:`Display` writes values to stdout and notes to stderr, or every entry as a JSON line;
a progress bar (rich) shows i of n, the rate (:class:`Rate`, from the job's own timestamps) and
the time left. What the job or the server wrote is shown as text, never as commands to the
terminal (:func:`printable`, :data:`ESCAPES`). :func:`trimmed_note` and :func:`reset_note` say
what a ``trimmed`` or ``reset`` event means to the one watching.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field
from typing import IO, Any, Iterable

from jobcast.core.output import line_text

# Escape sequences (CSI, OSC, others) and control characters but tab and newline: output is
# printed as text, never as commands to the terminal.
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?"
                     r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# C0 and C1 control characters and DEL (ESC opens a terminal's escape sequences: move the
# cursor, rewrite earlier lines, set the window title...), line and paragraph separators, and
# the bidirectional overrides that reorder what a terminal shows. A tab is harmless.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` as a terminal may show it: each control character replaced by U+FFFD."""
    return CONTROL.sub("\ufffd", text)


class OutputFailed(Exception):
    """Standard output could not be written (a full disk, ``> /dev/full``, an I/O error): the
    command stops with one line and exit 1. Its reader leaving (a closed pipe) is not this,
    but a :class:`BrokenPipeError`, which ends a command quietly."""


class GuardedOutput:
    """A text stream (standard output) whose failed writes raise :class:`OutputFailed`, so
    that they are told from the other OSErrors a command may meet; all else is the stream's."""

    def __init__(self, stream: IO[str]):
        """Guard ``stream``."""
        self.stream = stream

    def write(self, text: str) -> int:
        """Write ``text``; raise :class:`OutputFailed` when the stream cannot take it."""
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputFailed(exc.strerror or str(exc)) from exc

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each of ``lines``."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush; raise :class:`OutputFailed` when what was buffered cannot be written."""
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputFailed(exc.strerror or str(exc)) from exc

    def __getattr__(self, name: str) -> Any:
        """Anything else (``isatty``, ``fileno``, ``encoding``, ``reconfigure``) is the
        stream's own."""
        return getattr(self.stream, name)


@dataclass
class Rate:
    """Values per second over the last ``window`` seconds of the job's own clock."""

    window: float = 30.0
    samples: collections.deque = field(default_factory=collections.deque)

    def add(self, ts: float, count: int) -> None:
        """Record that ``count`` values were logged by time ``ts`` (server time)."""
        self.samples.append((ts, count))
        while len(self.samples) > 2 and ts - self.samples[0][0] > self.window:
            self.samples.popleft()

    def per_second(self) -> float | None:
        """The recent rate, or None until two samples are apart in time."""
        if len(self.samples) < 2:
            return None
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None


class Display:
    """Where values, notes and the progress bar go."""

    def __init__(self, output: str, progress: bool | None, out: IO[str], err: IO[str],
                 show_output: bool = True):
        """``progress`` None means: a bar when the output is plain and a terminal shows it.
        ``show_output``: print what the job prints (on stderr)."""
        self.output = output
        self.show_output = show_output
        self.attempt: int | None = None   # of the last output line shown
        self.out = out
        self.err = err
        if progress is None:
            progress = output == "plain" and (_isatty(out) or _isatty(err))
        self.want_bar = progress
        self.bar = None
        self.bar_task = None
        self.values_to_console = False
        self.rate = Rate()
        self.total: int | None = None
        self.task_name = ""

    # -- progress bar ------------------------------------------------------------------------

    def start(self, task: str, total: int | None, done: int) -> None:
        """Open the bar (when wanted) for a job of ``total`` values, ``done`` logged already."""
        self.total = total
        self.task_name = printable(task)
        if not self.want_bar or self.bar is not None:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn)

        # The bar shares the terminal with the values when stdout is one; otherwise it goes
        # to stderr and stdout stays clean for a pipe or a file.
        self.values_to_console = _isatty(self.out)
        console = Console(file=self.out if self.values_to_console else self.err, highlight=False)
        if total is not None:
            # The task's name is text, not rich markup: an adopted RQ job's label ("[link=…]")
            # must not become a link, nor a stray "[/x]" an error.
            columns = [TextColumn("{task.description}", markup=False), BarColumn(),
                       MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                       TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}")]
        else:
            columns = [SpinnerColumn(), TextColumn("{task.description}", markup=False),
                       TextColumn("{task.completed:,.0f} values"), TextColumn("{task.fields[rate]}"),
                       TextColumn("elapsed"), TimeElapsedColumn()]
        self.bar = Progress(*columns, console=console, redirect_stdout=False, redirect_stderr=False,
                            refresh_per_second=8)
        self.bar.start()
        self.bar_task = self.bar.add_task(self.task_name, total=total, completed=done, rate="",
                                          eta="")

    def progress(self, done: int, ts: float | None) -> None:
        """Move the bar to ``done`` values; ``ts`` is the server time of the latest value."""
        if ts is not None:
            self.rate.add(ts, done)
        if self.bar is None:
            return
        rate = self.rate.per_second()
        fields: dict[str, Any] = {"rate": "" if rate is None else f"{_si(rate)} values/s"}
        if self.total is not None:
            left = max(0, self.total - done)
            fields["eta"] = "ETA " + (_clock(left / rate) if rate else "-:--:--")
        self.bar.update(self.bar_task, completed=done, **fields)

    def stop(self, status: str | None = None) -> None:
        """Close the bar, leaving its last state on screen."""
        if self.bar is not None:
            if status is not None:
                self.bar.update(self.bar_task, description=f"{self.task_name} {status}", eta="")
            self.bar.stop()
            self.bar = None

    # -- lines -------------------------------------------------------------------------------

    def value(self, text: str) -> None:
        """One value: its text on its own line (control characters shown as U+FFFD)."""
        text = printable(text)
        if self.bar is not None and self.values_to_console:
            self.bar.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def printed(self, entry: dict, prefix: str = "") -> None:
        """A line the job printed: on stderr (dimmed on a terminal; above the bar, if any), its
        escape sequences and control characters removed. ``prefix`` (a job's short id, when
        several are followed) begins each line shown."""
        attempt = entry.get("attempt")
        if self.attempt is not None and attempt != self.attempt:
            self.note(f"{prefix}(attempt {attempt})")
        self.attempt = attempt
        text = ESCAPES.sub("", line_text(entry))
        if entry.get("stream") == "logging":
            # A record's own lines (a traceback) stay lines, indented: none can pass for a
            # line of its own or a note. Each is prefixed, so that none passes for another
            # job's either.
            text = f"\n{prefix}    ".join(printable(part) for part in text.split("\n"))
        else:
            text = printable(text)  # (bidi overrides, U+2028 too)
        text = prefix + text
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, emoji=False, style="dim",
                                   soft_wrap=True)
        else:
            self.err.write(f"\x1b[2m{text}\x1b[22m\n" if _isatty(self.err) else text + "\n")
            self.err.flush()

    def entry(self, raw: str) -> None:
        """One log entry as a JSON line (``--output json``)."""
        self.out.write(raw + "\n")
        self.out.flush()

    def event(self, kind: str, data: dict) -> None:
        """A stream's ``trimmed`` or ``reset`` as a JSON line of its own (``--output json``
        only: plain output says it in a note)."""
        if self.output == "json":
            self.entry(json.dumps({"kind": kind, **data}, separators=(",", ":")))

    def note(self, text: str) -> None:
        """A message for the person watching, on stderr (above the bar, if there is one); it
        may quote the server (a failure's reason), so control characters are shown as U+FFFD."""
        text = printable(text)
        if self.bar is not None and not self.values_to_console:
            self.bar.console.print(text, markup=False, highlight=False, emoji=False)
        elif self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, emoji=False, style="dim")
        else:
            self.err.write(text + "\n")
            self.err.flush()


def _isatty(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal; False for one that cannot say (a stand-in without
    ``isatty``, or a closed file)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _si(x: float) -> str:
    """A rate in few digits: 0.52, 9.8, 120, 12.3k."""
    if x >= 10_000:
        return f"{x / 1000:.1f}k"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _clock(seconds: float) -> str:
    """A duration as the bar's ETA shows it: H:MM:SS, whole seconds, never negative."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def trimmed_note(data: dict, values: int) -> str:
    """What a ``trimmed`` event tells one who has had ``values`` values: how many values
    (or, when the log keeps none to count from, entries) are gone; "" when none."""
    first = data.get("first_value")
    if first is not None:
        lost, what = max(0, int(first) - values), "values"
    else:
        lost, what = int(data.get("lost") or 0), "entries"
    return f"{lost:,} earlier {what} are no longer kept" if lost else ""


def reset_note(data: dict, values: int) -> tuple[str, bool]:
    """What a ``reset`` event tells one who has had ``values`` values, and whether it
    replaced some of them (a follow then exits 5 however the job ends)."""
    goes_on = int(data.get("values") or 0)
    replaced = goes_on < values
    text = (f"values from #{goes_on:,} on were replaced" if replaced
            else f"it goes on from value #{goes_on:,}")
    reason = data.get("reason")
    return f"the job's log was reset after a Redis failover ({reason}): {text}", replaced


def end_note(entry: dict) -> str:
    """How a job ended, from its terminal entry (or its status, as one): "Done", "Cancelled"
    (by whom, when the entry says), or "Failed" and the reason."""
    kind = entry.get("kind")
    if kind == "finished":
        return "Done"
    if kind == "cancelled":
        return "Cancelled" + (f" by {entry['by']}" if entry.get("by") else "")
    return f"Failed: {entry.get('reason') or 'unknown reason'}"
