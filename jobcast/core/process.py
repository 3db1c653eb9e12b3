"""Processes of this machine, by pid."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent dies (Linux)."""


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists here (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``); None
    where there is no /proc, or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: count the fields after it.
    return int(stat.rpartition(")")[2].split()[19])


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> bool:
    """Have this process get ``sig`` once its parent ``parent`` dies (Linux's
    ``PR_SET_PDEATHSIG``), or at once if it already has; False where the system cannot."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False  # not Linux
    if prctl(PR_SET_PDEATHSIG, sig) != 0:
        return False
    if os.getppid() != parent:  # it died before the call above
        os.kill(os.getpid(), sig)
    return True
