"""Resident memory of every process of the stack, sampled once a second: each component's process and all
its children (the Kafka and Flink JVMs under their launch scripts, Python workers, the processing
supervisor's gateway)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from infrastructure.bench.periodic import Periodic

PidOf = Callable[[], "int | None"]
MB = 1024 * 1024


def tree_rss(pid: int | None) -> int:
    """RSS in bytes of a process and all its descendants (0 when it is gone)."""
    if not pid:
        return 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


@dataclass
class MemorySampler(Periodic):
    """Samples every named process tree each `interval` seconds on a thread until stop()."""

    processes: dict[str, PidOf]
    interval: float = 1.0
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def sample(self) -> None:
        self.samples.append(
            (time.time(), {name: tree_rss(pid_of()) for name, pid_of in self.processes.items()})
        )

    def summary(self) -> dict[str, Any]:
        """Peak and mean MB per process and of the total (the total's peak is the peak of the per-sample
        sums)."""
        out: dict[str, Any] = {"processes": {}, "samples": len(self.samples)}
        for name in self.processes:
            values = [sample[name] for _, sample in self.samples if sample.get(name)]
            out["processes"][name] = {
                "peak_mb": max(values, default=0) / MB,
                "mean_mb": sum(values) / len(values) / MB if values else 0.0,
            }
        totals = [sum(sample.values()) for _, sample in self.samples]
        out["total"] = {
            "peak_mb": max(totals, default=0) / MB,
            "mean_mb": sum(totals) / len(totals) / MB if totals else 0.0,
        }
        return out

    def series(self) -> dict[str, list[float]]:
        """Per-process MB over time (seconds since the first sample), for the plot."""
        if not self.samples:
            return {"t": []}
        t0 = self.samples[0][0]
        out: dict[str, list[float]] = {"t": [t - t0 for t, _ in self.samples]}
        for name in self.processes:
            out[name] = [sample.get(name, 0) / MB for _, sample in self.samples]
        return out
