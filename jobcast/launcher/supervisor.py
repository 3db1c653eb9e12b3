"""A small process supervisor for `jobcast up`: restart with backoff, give up on a crash loop,
and print every child's output foreman-style (``HH:MM:SS web.1 | …``).

Why our own rather than a library:

- honcho (the Python foreman) prints exactly this way, but stops every process as soon as one
  exits: it has no restart policy, which is the point here.
- supervisor (supervisord) has the policy (``startretries``/``startsecs``, ``killasgroup``),
  but it is a daemon configured by an ini file and driven over XML-RPC, not something a CLI
  embeds, prints through and stops with one Ctrl-C.
- circus restarts and detects flapping, but brings ZeroMQ, tornado and an arbiter with
  control sockets.

What `jobcast up` needs is about 300 lines: spawn, watch, restart with backoff, kill what a
dead child left behind, stop in order. The policy is circus's flapping rule in supervisord's
terms: a service may exit unexpectedly ``retries`` times within ``window`` seconds; the next
exit in that window gives up on it. Each restart waits ``backoff`` seconds, doubled for each
recent exit, up to ``max_backoff``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Callable, Iterable

from rich.console import Console
from rich.text import Text

from jobcast.core.process import PR_SET_PDEATHSIG
from jobcast.core.wait import wait_until

log = logging.getLogger(__name__)

# A leading timestamp in a child's line ("2026-11-24 08:25:55,594 …", gunicorn's
# "[2026-11-24 08:25:55 +0000] …"): the prefix already carries the time.
LEADING_TIMESTAMP = re.compile(
    r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?(?: ?(?:[+-]\d\d:?\d\d|Z))?\]? ")

# One colour per service, in order of appearance (foreman's palette, minus red for errors).
COLORS = ["cyan", "yellow", "green", "magenta", "blue", "bright_cyan", "bright_yellow",
          "bright_green", "bright_magenta", "bright_blue"]
SYSTEM = "jobcast"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""The signals that stop `jobcast up` and everything it started."""

BAD_INPUT = 2
"""The exit status of a Jobcast command given a bad setting or argument (argparse's too)."""

def _child_setup(parent: int, mask: set[int]) -> Callable[[], None]:
    """What a service's child runs between fork and exec: the signal mask it should have, and
    (on Linux) SIGTERM once `jobcast up` dies, even by SIGKILL, which leaves no time to stop
    anything: its Redis, web and workers would go on, orphaned, and the next `jobcast up`
    would start a second Redis on the same data directory. Resolved before the fork: the
    child calls no import and takes no lock."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None  # not Linux: a killed `jobcast up` leaves its services running

    def setup() -> None:
        """In the child: unblock what the parent blocked around the fork; die with it."""
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # it died before the line above
                os.kill(os.getpid(), signal.SIGTERM)

    return setup


@dataclass(frozen=True)
class RestartPolicy:
    """How often a service may crash before we give up, and how long to wait in between."""

    retries: int = 5
    window: float = 60.0
    backoff: float = 0.5
    max_backoff: float = 5.0

    def delay(self, exits: list[float]) -> float | None:
        """Seconds to wait before restarting, given the times of the recent unexpected exits
        (the latest included and already pruned to the window); None means give up."""
        if len(exits) > self.retries:
            return None
        return min(self.max_backoff, self.backoff * 2 ** (len(exits) - 1))

    def prune(self, exits: list[float], now: float) -> list[float]:
        """The exits still inside the window at ``now``."""
        return [t for t in exits if now - t < self.window]


class ServiceFailed(RuntimeError):
    """A service kept crashing and was given up on."""

    def __init__(self, service: "Service", message: str):
        """Name the service in the message."""
        super().__init__(message)
        self.service = service


@dataclass
class Service:
    """One supervised child process, restarted under the same name (``worker.2``)."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    # True once the service is up (answers, registered); checked while it is "starting".
    ready: Callable[["Service"], bool] | None = None
    # Signals sent in turn to stop it, 1.2 s apart (RQ: two SIGTERMs are its cold shutdown).
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)
    # Descriptors it inherits (Redis: the lock on its data directory, held while it lives).
    pass_fds: tuple[int, ...] = ()
    # Set while it runs.
    proc: subprocess.Popen | None = None
    state: str = "stopped"  # starting, running, backoff, stopped, fatal
    restarts: int = 0
    started_at: float | None = None
    exits: list[float] = field(default_factory=list)
    restart_at: float | None = None
    last_exit: str = ""

    @property
    def pid(self) -> int | None:
        """The pid of the current process, if any."""
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """True while the current process runs (an exit is noticed, not reaped: see
        :func:`has_exited`)."""
        return self.proc is not None and not has_exited(self.proc)


def has_exited(proc: subprocess.Popen) -> bool:
    """True once ``proc`` has exited, leaving it unreaped (a zombie) if it was not already.

    A service's pid is also its session's and process group's id. Reaped, that number may be
    handed to a new process, and killing "what the service left behind" by it could then hit
    a stranger; a zombie keeps it taken. So an exit is only noticed here
    (``waitid(WNOWAIT)``), and the process is reaped by :func:`reap` once its session is dealt
    with.
    """
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):  # macOS before Python 3.13: noticed by reaping, as before
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already (by Popen's own bookkeeping)
        return proc.poll() is not None


def reap(proc: subprocess.Popen) -> int:
    """Kill what is left in ``proc``'s session while its exited leader still holds the id,
    then reap the leader; returns its exit status. A leader reaped already (a service
    stopped while it waits to restart, or stopped twice) no longer holds the id: nothing is
    killed by it."""
    if proc.returncode is None:
        kill_session(proc.pid)
    return proc.wait()


def describe_exit(returncode: int) -> str:
    """``exit status 1`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def session_members(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (Linux /proc; empty elsewhere).

    Every service runs in a session of its own, so this finds what a dead service left
    behind: an RQ work-horse (which moves to its own process group, not its own session),
    RQ's scheduler process, gunicorn's workers.
    """
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session …"; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != b"Z":  # not zombies
            pids.append(int(entry))
    return pids


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process of session ``sid``, and to its process group."""
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        os.killpg(sid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Printer:
    """Prints ``HH:MM:SS name | line``, one colour per name on a terminal, none elsewhere."""

    def __init__(self, file: IO[str] | None = None, color: bool | None = None,
                 quiet: re.Pattern | None = None, verbose: bool = False):
        """``color`` None: colour only on a terminal (rich also honours NO_COLOR and
        FORCE_COLOR). Child lines matching ``quiet`` are dropped unless ``verbose``."""
        self.console = Console(file=file or sys.stdout, force_terminal=color,
                               no_color=color is False or None, highlight=False, markup=False,
                               emoji=False, soft_wrap=True)
        self.quiet = None if verbose else quiet
        self.width = len(SYSTEM)
        self.colors: dict[str, str] = {SYSTEM: "bold"}
        self.lock = threading.Lock()

    def add(self, name: str) -> None:
        """Reserve a colour and column width for ``name``."""
        with self.lock:
            if name not in self.colors:
                self.colors[name] = COLORS[(len(self.colors) - 1) % len(COLORS)]
            self.width = max(self.width, len(name))

    def line(self, name: str, text: str) -> None:
        """Print one line under ``name``."""
        self.add(name)
        stamp = datetime.now().strftime("%H:%M:%S")
        with self.lock:
            prefix = f"{stamp} {name:<{self.width}} | "
            try:
                self.console.print(Text.assemble((prefix, self.colors[name]), text))
            except (OSError, ValueError):
                # Our stdout was closed, or its terminal hung up (EIO): keep supervising, and
                # stop everything cleanly when told to.
                pass

    def child_line(self, name: str, raw: str) -> None:
        """Print a line a child wrote, minus its own timestamp; skip housekeeping noise."""
        text = raw.rstrip("\r\n")
        if self.quiet and self.quiet.search(text):
            return
        self.line(name, LEADING_TIMESTAMP.sub("", text, count=1))

    def system(self, text: str) -> None:
        """Print a line of the supervisor's own."""
        self.line(SYSTEM, text)


class Supervisor:
    """Starts services, restarts them when they exit unexpectedly, stops them all."""

    def __init__(self, printer: Printer, policy: RestartPolicy | None = None,
                 on_change: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic):
        """No services yet; :meth:`add` and :meth:`start` them."""
        self.printer = printer
        self.policy = policy or RestartPolicy()
        self.on_change = on_change or (lambda: None)
        self.clock = clock
        self.services: list[Service] = []
        self.stopping = False

    def add(self, service: Service) -> Service:
        """Supervise ``service`` (not started yet)."""
        self.services.append(service)
        self.printer.add(service.name)
        return service

    def spawn(self, service: Service) -> None:
        """Start the service's process in a session of its own, its output piped to us.

        Its own session means Ctrl-C at the terminal reaches only `jobcast up`, which then
        stops the services in order, and lets us find and kill whatever it leaves behind.
        """
        env = dict(service.env if service.env is not None else os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # each line as it is written, not in 8 KiB blocks
        # A signal to stop that came between the fork and ``service.proc`` would leave a child
        # that stop() never sees: they wait until it is recorded (the child unblocks them).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            service.proc = subprocess.Popen(
                service.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=service.pass_fds,
                preexec_fn=_child_setup(os.getpid(), blocked))
            # Its output's reader is started here, so that it keeps them blocked for good (a
            # thread inherits the mask): a thread that took them would have the handler run
            # in this one at once, even between the fork and ``service.proc``.
            threading.Thread(target=self._pump, args=(service.name, service.proc.stdout),
                             name=f"output-{service.name}", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        service.state = "starting" if service.ready else "running"
        service.started_at = time.time()
        service.restart_at = None
        self.on_change()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        """Copy a child's output to the printer, line by line, until it closes."""
        try:
            for raw in stream:
                self.printer.child_line(name, raw.decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def start(self, services: Iterable[Service]) -> None:
        """Start each of ``services``."""
        for service in services:
            self.spawn(service)

    def poll(self) -> None:
        """Notice exits, restart what is due, mark services ready; raise
        :class:`ServiceFailed` when a service has crashed too often."""
        if self.stopping:
            return  # exits are expected now
        now = self.clock()
        for s in self.services:
            if s.state in ("starting", "running") and s.proc and has_exited(s.proc):
                self._exited(s, now)
            elif s.state == "backoff" and s.restart_at is not None and now >= s.restart_at:
                s.restarts += 1
                self.spawn(s)
                self.printer.system(f"{s.name} restarted (pid {s.pid}, restart {s.restarts})")
            elif s.state == "starting" and s.ready and self._is_ready(s):
                s.state = "running"
                self.on_change()

    def _is_ready(self, service: Service) -> bool:
        """Run the service's readiness check; a check that errors means "not yet"."""
        try:
            return bool(service.ready(service))
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means not ready yet
            log.debug("%s not ready: %s", service.name, exc)
            return False

    def _exited(self, s: Service, now: float) -> None:
        """Handle an unexpected exit: clean up after it, then schedule a restart or give up."""
        # Whatever it left running (work-horse, gunicorn workers holding the port) goes too,
        # so the next start begins clean.
        s.last_exit = describe_exit(reap(s.proc))
        s.exits = self.policy.prune(s.exits, now) + [now]
        delay = self.policy.delay(s.exits)
        if s.proc.returncode == BAD_INPUT:
            # Jobcast's commands exit 2 for a bad setting or argument: every restart would
            # meet it again (five restarts, with their backoff, before saying so).
            s.state = "fatal"
            self.on_change()
            message = f"{s.name} exited with status 2 (a bad setting or argument); giving up"
            self.printer.system(message)
            raise ServiceFailed(s, message)
        if delay is None:
            s.state = "fatal"
            self.on_change()
            message = (f"{s.name} exited {len(s.exits)} times within {self.policy.window:g}s "
                       f"(last: {s.last_exit}); giving up")
            self.printer.system(message)
            raise ServiceFailed(s, message)
        s.state = "backoff"
        s.restart_at = now + delay
        self.printer.system(f"{s.name} exited ({s.last_exit}); restarting in {delay:g}s")
        self.on_change()

    def wait_ready(self, services: Iterable[Service], timeout: float, interval: float = 0.2) -> None:
        """Supervise until every one of ``services`` is running and ready; TimeoutError
        after ``timeout`` seconds, ServiceFailed if one is given up on."""
        services = list(services)

        def all_running() -> bool:
            """Supervise once; True when every service is running."""
            self.poll()
            return all(s.state == "running" for s in services)

        try:
            wait_until(all_running, timeout, interval, what="the services")
        except TimeoutError:
            late = ", ".join(s.name for s in services if s.state != "running")
            raise TimeoutError(f"not ready after {timeout:g}s: {late}") from None

    def run(self, interval: float = 0.2) -> None:
        """Supervise until interrupted (KeyboardInterrupt) or a service is given up on."""
        while True:
            self.poll()
            time.sleep(interval)

    def stop(self, services: Iterable[Service], timeout: float = 10.0) -> None:
        """Stop ``services`` together: each gets its stop signals, then ``timeout`` seconds,
        then SIGKILL for everything left in its session."""
        self.stopping = True
        services = [s for s in services if s.proc]
        if not services:
            return
        for k in range(max((len(s.stop_signals) for s in services), default=0)):
            due = [s for s in services if k < len(s.stop_signals)]
            if k and any(s.alive() for s in due):
                time.sleep(1.2)  # RQ ignores a second signal within a second of the first
            for s in due:
                if s.alive():
                    # os.kill, not Popen.send_signal: that reaps a leader that has just exited
                    # (it polls first), and reap() would then leave what is left in its session.
                    # Unreaped, the pid is still the leader's (a zombie takes the signal).
                    with contextlib.suppress(ProcessLookupError):  # (reaped by another)
                        os.kill(s.proc.pid, s.stop_signals[k])
        deadline = time.monotonic() + timeout
        for s in services:
            try:
                wait_until(lambda s=s: has_exited(s.proc), max(0.1, deadline - time.monotonic()),
                           interval=0.02, what=s.name)
            except TimeoutError:
                self.printer.system(f"{s.name} did not stop within {timeout:g}s; killing it")
            reap(s.proc)
            s.state = "stopped"
        self.on_change()
