"""A plain RQ job that reports its values with jobcast.emit: no generator, no task registry."""

import time

from jobcast import emit


def squares(n: int = 20, interval: float = 0.25) -> int:
    """Emit i * i for i in range(n), one every ``interval`` seconds; return how many."""
    for i in range(n):
        time.sleep(interval)
        emit(i * i, total=n)  # appended to the job's log and streamed to every viewer
    return n
