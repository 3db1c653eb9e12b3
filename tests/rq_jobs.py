"""Plain RQ job functions for the tests: not generators, not registered, they call emit()."""

from __future__ import annotations

import os
import time

from rq import get_current_job

from jobcast import emit, resume


def emit_lines(n: int = 20, interval: float = 0.0) -> int:
    """Emit ``n`` text lines, then return."""
    for i in range(n):
        emit(f"line {i}", total=n)
        time.sleep(interval)
    return n


def crash_once(n: int = 6, crash_at: int = 3, resumable: bool = False) -> int:
    """Emit 0..n-1; the first attempt dies after ``crash_at`` values. With ``resumable`` the
    retry skips what is logged (resume()), else it replays from 0."""
    job = get_current_job()
    first = int(job.connection.hget(f"jobcast:job:{job.id}", "attempt") or 1) == 1
    for i in range(resume() if resumable else 0, n):
        if i == crash_at and first:
            raise ConnectionError(f"simulated crash at value {i}")
        emit(i)
    return n


def ask_retry_once(n: int = 4):
    """Emit 0..n-1; the first run then returns rq.Retry (RQ's way for a job to ask for one)."""
    from rq import Retry

    job = get_current_job()
    first = int(job.connection.hget(f"jobcast:job:{job.id}", "attempt") or 1) == 1
    for i in range(n):
        emit(i)
    return Retry(max=1) if first else n


# -- jobs that print (output capture, tests/worker/test_capture.py) ----------------------------

def chatty() -> int:
    """Print, write to stderr, log, run a subprocess and C's printf, between 3 values."""
    import ctypes
    import logging
    import subprocess
    import sys

    print("out 1")
    emit(1)
    print("err 1", file=sys.stderr)
    logging.getLogger("user").warning("warn 1")
    logging.getLogger("user").debug("hidden")
    logging.getLogger("rq.x").warning("internal")
    subprocess.run(["echo", "sub"], check=True)
    emit(2)
    libc = ctypes.CDLL(None)
    libc.printf(b"from C\n")
    emit(3)
    return 3


def print_around_children() -> int:
    """Print before and after subprocesses that write to descriptor 1 themselves, then emit."""
    import os
    import subprocess

    print("1 before child")
    subprocess.run(["echo", "2 from child"], check=True)
    print("3 after child")
    os.system("echo 4 from os.system")
    print("5 last")
    emit(1)
    return 1


def flood(lines: int = 1_000_000, every: int = 100_000) -> int:
    """Print ``lines`` numbered lines in a tight loop, emitting a value every ``every`` lines."""
    for i in range(lines):
        if i % every == 0:
            emit(i // every)
        print(i)
    return lines


def long_line(size: int = 1_000_000) -> int:
    """One line of ``size`` bytes, a value, then an unfinished last line ("end", no newline)."""
    import sys

    sys.stdout.write("x" * size + "\n")
    emit(0)
    sys.stdout.write("end")
    return size


def wait_for_go(job_id: str, timeout: float = 30.0) -> None:
    """Block until the test pushes to ``test:go:<job id>`` (a handshake, not a sleep)."""
    job = get_current_job()
    if job.connection.blpop(f"test:go:{job_id}", timeout=timeout) is None:
        raise TimeoutError("the test never said go")


def tick_then_wait() -> int:
    """Write "tick" without a newline, then wait for the test: the line must come meanwhile."""
    import sys

    sys.stdout.write("tick")
    wait_for_go(get_current_job().id)
    emit(0)
    return 0


def progress() -> int:
    """Print a step's name without its newline, emit, then finish the line: what a progress
    report does."""
    import sys

    print("step 1...", end="")
    emit(1)
    print(" ok")
    sys.stderr.write("step 2...")
    emit(2)
    sys.stderr.write(" ok\n")
    return 2


def print_then_hang_once() -> int:
    """Attempt 1 prints and emits 0 and 1, says "ready", then waits to be killed; attempt 2
    prints and emits 0, 1 and 2."""
    job = get_current_job()
    first = int(job.connection.hget(f"jobcast:job:{job.id}", "attempt") or 1) == 1
    print("a1" if first else "a2")
    for i in range(2 if first else 3):
        emit(i)
    if first:
        print("ready", flush=True)
        wait_for_go(job.id, timeout=120)
    return 3


def fail_naming_an_undecodable_file() -> None:
    """Fail with a message naming a file whose name is not UTF-8 (a lone surrogate, as
    ``os.fsdecode`` leaves it)."""
    raise ValueError("cannot parse " + os.fsdecode(b"report-\xff.csv"))


def cancelled_midway(n: int = 5, at: int = 2) -> int:
    """Emit 0..n-1, the job's log cancelled (as ``POST .../cancel`` does) after value ``at``:
    the next emit() stops the job."""
    from jobcast.core.joblog import JobLog

    job = get_current_job()
    for i in range(n):
        if i == at + 1:
            JobLog(job.connection, job.id).cancelled("alice")
        emit(i)
    return n
