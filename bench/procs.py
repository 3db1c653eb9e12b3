"""The benchmark's view of processes, from /proc: CPU time, memory, children, and pinning.

Shared by the runner (:mod:`bench.run`) and the servers it starts (:mod:`bench.nchan`).
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def proc_stat(pid: int) -> tuple[int, float, int]:
    """(ppid, cpu seconds user+system, rss KiB) of ``pid`` from /proc."""
    ppid, user, system, rss = proc_stat4(pid)
    return ppid, user + system, rss


def proc_stat4(pid: int) -> tuple[int, float, float, int]:
    """(ppid, user cpu seconds, system cpu seconds, rss KiB) of ``pid`` from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK, int(rest[21]) * PAGE_KIB


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if proc_stat(int(name))[0] == pid:
                    out.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """Summed (user, system) cpu seconds of ``pids``."""
    user = system = 0.0
    for pid in pids:
        try:
            _, u, s_, _ = proc_stat4(pid)
        except OSError:
            continue
        user += u
        system += s_
    return user, system


def run_time(pids: list[int]) -> float:
    """Summed on-CPU seconds of every thread of ``pids``, to the nanosecond
    (``/proc/<pid>/task/<tid>/schedstat``; /proc/<pid>/stat counts in ticks of 10 ms)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9


def usage(pids: list[int]) -> tuple[float, int]:
    """Summed (cpu seconds, rss KiB) of ``pids`` (gone ones count 0)."""
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            _, c, r = proc_stat(pid)
        except OSError:
            continue
        cpu += c
        rss += r
    return cpu, rss


def pin(pids: list[int], cpus: set[int]) -> None:
    """Keep ``pids`` on ``cpus``, away from the load generators': every thread of each (an
    affinity is a thread's: redis-server's background and I/O threads, and any thread a
    server started before it was pinned, would keep every CPU)."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            tids = [pid]
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass
