"""Tasks used only by the tests; loaded by services through JOBCAST_TASKS=tests.tasks."""

from __future__ import annotations

import os
import signal
import time
from typing import Annotated, Iterator

from pydantic import Field
from rq import get_current_job

from jobcast.core.registry import task


def first_attempt() -> bool:
    """True during a job's first attempt (the worker records the attempt before running)."""
    job = get_current_job()
    return job is None or int(job.connection.hget(f"jobcast:job:{job.id}", "attempt") or 1) == 1


@task(total=lambda p: p["n"])
def html(n: Annotated[int, Field(ge=1, le=100)] = 3) -> Iterator[str]:
    """Values that are HTML/JS payloads, to prove they are shown as text."""
    payloads = ['</p><script>window.pwned=1</script>', '<img src=x onerror="window.pwned=2">',
                '"><svg onload=alert(1)>']
    for i in range(n):
        yield payloads[i % len(payloads)]


@task()
def boom(after: Annotated[int, Field(ge=0, le=100)] = 2) -> Iterator[int]:
    """Yield ``after`` values, then raise: every attempt fails."""
    for i in range(after):
        yield i
    raise RuntimeError("boom after %d values" % after)


@task(total=lambda p: p["n"])
def flaky(n: Annotated[int, Field(ge=1, le=1000)] = 10,
          fail_at: Annotated[int, Field(ge=0, le=1000)] = 5,
          interval: Annotated[float, Field(ge=0, le=1)] = 0.0) -> Iterator[int]:
    """Not resumable: replays from 0 on retry; the first attempt dies at value ``fail_at``."""
    for i in range(n):
        if i == fail_at and first_attempt():
            raise ConnectionError("simulated crash at value %d" % i)
        yield i
        time.sleep(interval)


@task(total=lambda p: p["n"])
def flaky_resumable(n: Annotated[int, Field(ge=1, le=1000)] = 10,
                    fail_at: Annotated[int, Field(ge=0, le=1000)] = 5, *,
                    start: int = 0) -> Iterator[int]:
    """Resumable: continues at ``start`` on retry; the first attempt dies at ``fail_at``."""
    for i in range(start, n):
        if i == fail_at and first_attempt():
            raise ConnectionError("simulated crash at value %d" % i)
        yield i


@task(total=lambda p: p["n"])
def sleepy(n: Annotated[int, Field(ge=1, le=100)] = 3,
           interval: Annotated[float, Field(ge=0, le=600)] = 60.0) -> Iterator[int]:
    """Yield a value, then sleep ``interval`` seconds before the next: a job to cancel."""
    for i in range(n):
        yield i
        time.sleep(interval)


@task()
def burn(seconds: Annotated[float, Field(ge=0, le=600)] = 60.0) -> Iterator[int]:
    """Yield 0, then burn the CPU for ``seconds`` inside the next value (no yield meanwhile)."""
    yield 0
    deadline = time.monotonic() + seconds
    k = 0
    while time.monotonic() < deadline:
        k += 1
    yield k


@task()
def chatty() -> Iterator[int]:
    """Print, write to stderr and log between its values; end on an unfinished line."""
    import logging
    import sys

    print("out 1")
    yield 1
    print("err 1", file=sys.stderr)
    logging.getLogger("user").warning("warn 1")
    yield 2
    print("bye", end="")


@task()
def printer(lines: Annotated[int, Field(ge=0, le=1000)] = 100) -> Iterator[int]:
    """Print markup, ANSI colours, a stderr line, a warning and ``lines`` numbered lines; then
    wait for the test (``test:go:<job id>``) and print once more."""
    import logging
    import sys

    print('<img src=x onerror="window.pwned=1">')
    print("\x1b[31mred\x1b[0m plain \x1b]0;title\x07done")
    print("to stderr", file=sys.stderr)
    logging.getLogger("user").warning("careful")
    for i in range(lines):
        print(f"line {i}")
    yield 0
    job = get_current_job()
    if job is not None:
        job.connection.blpop(f"test:go:{job.id}", timeout=60)
    print("after go")
    yield 1


@task()
def progress_bar(frames: Annotated[int, Field(ge=1, le=20)] = 3) -> Iterator[int]:
    """Draw a progress bar on stderr as tqdm does (each frame after a "\\r", no newline until
    the end), each frame waiting longer than a line waits for its newline; then print a line."""
    import sys

    from jobcast.worker.lines import PARTIAL_AFTER

    for k in range(frames):
        sys.stderr.write(f"\rprogress {100 * k // (frames - 1 or 1)}%")
        sys.stderr.flush()
        time.sleep(PARTIAL_AFTER + 0.1)  # the job's pace: each frame is sent partial
    sys.stderr.write("\n")
    print("after")
    yield 1


@task()
def untidy(n: Annotated[int, Field(ge=1, le=100)] = 3) -> Iterator[float]:
    """Yield ``n`` values; its cleanup (a generator's ``finally``) raises, however it ends."""
    try:
        for i in range(n):
            yield float(i)
    finally:
        raise RuntimeError("cleanup failed")


@task()
def dies() -> Iterator[int]:
    """Yield 0; then, in its first attempt, die as the OOM killer kills (SIGKILL of its own
    process: a forking worker's work-horse, the worker living on); a later attempt yields 1."""
    yield 0
    if first_attempt():
        os.kill(os.getpid(), signal.SIGKILL)
    yield 1
