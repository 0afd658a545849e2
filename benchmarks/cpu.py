"""What the benchmarks meter of a process: the CPU it and its descendants used, and how long their threads
waited for a core. Only psutil and /proc: importing this pulls in neither PyFlink nor a service."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import psutil


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User and system CPU-seconds of the process and its descendants (a JVM's, uvicorn's workers)."""
    return sum(sum(p.cpu_times()[:2]) for p in tree(pid))


def waiting_seconds(pid: int) -> float:
    """Seconds the threads of the process and its descendants spent runnable without a core (the second field
    of Linux's /proc/<pid>/task/<tid>/schedstat), summed over the threads: the cores went to other processes,
    or to its own other threads when more of them were runnable than it had cores."""
    waited_ns = 0
    for process in tree(pid):
        for stat in Path(f"/proc/{process.pid}/task").glob("*/schedstat"):
            with suppress(OSError):  # a thread that ended meanwhile
                waited_ns += int(stat.read_text().split()[1])
    return waited_ns / 1e9
