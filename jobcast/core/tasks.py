"""The built-in tasks. Each value a task yields is one step of its job."""

from __future__ import annotations

import math
import random
import time
from typing import Annotated, Iterator

from pydantic import Field

from jobcast.core.task import task


@task(total=lambda p: p["n"], duration=lambda p: p["n"] * p["interval"])
def sqrt(
    n: Annotated[int, Field(ge=0, le=1_000_000, description="how many values")] = 500,
    interval: Annotated[float, Field(ge=0, le=3600, description="seconds between values")] = 1.0,
    *,
    start: int = 0,
) -> Iterator[float]:
    """The original example: sqrt(i) for i in range(n), one value every interval seconds."""
    for i in range(start, n):
        yield math.sqrt(i)
        if i < n - 1:
            time.sleep(interval)


@task(total=lambda p: int(p["rate"] * p["duration"]), duration=lambda p: p["duration"])
def clock(
    rate: Annotated[float, Field(gt=0, le=10_000, description="values per second")] = 10.0,
    duration: Annotated[float, Field(gt=0, le=86_400, description="seconds to run")] = 10.0,
    *,
    start: int = 0,
) -> Iterator[float]:
    """Latency probe: the wall-clock time, rate times a second for duration seconds."""
    total = int(rate * duration)
    # Values are scheduled on a fixed grid so sleeping never accumulates drift.
    t0 = time.monotonic() - start / rate
    for k in range(start, total):
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield time.time()


@task(total=lambda p: math.ceil(p["samples"] / p["batch"]))
def pi(
    samples: Annotated[int, Field(ge=1, le=1_000_000_000, description="random points in all")] = 5_000_000,
    batch: Annotated[int, Field(ge=1, le=10_000_000, description="points per value")] = 20_000,
    seed: Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed")] = 0,
) -> Iterator[float]:
    """Monte-Carlo estimate of pi: the running estimate after each batch of points."""
    # A fixed seed makes a retried job recompute the same values, so the log's dedupe holds.
    rng = random.Random(seed)
    inside = done = 0
    while done < samples:
        k = min(batch, samples - done)
        rnd = rng.random
        inside += sum(1 for _ in range(k) if rnd() ** 2 + rnd() ** 2 <= 1.0)
        done += k
        yield 4.0 * inside / done
