"""Each stage's throughput with 1 core against 2 cores, interleaved in one session.

For each stage the stage's own processes are pinned (Linux CPU affinity, every thread) to core 0, or to cores
0 and 1, with the stage's parallelism equal to its cores; everything else (Kafka, the JobManager, Redis, the
load client) runs unpinned, as on any machine. Each stage runs --rounds times per core count, alternating:

- processing: the built-in jobs over a preloaded topic (benchmarks/processing.py's bounded run), one
  TaskManager pinned, parallelism 1 or 2; throughput = events / Flink's job duration;
- ingestion: benchmarks/ingestion.py's single-event and batch phases driven by wrk, against 1 worker pinned to
  one core and 2 workers pinned to two (both services up, one loaded at a time);
- cache: 1 or 2 cache processes (one consumer group, a fresh one per run) draining a preloaded metric topic;
  throughput = records / time from the first to the last written;
- storage: the single chDB writer (a fresh consumer group and state per run) draining a preloaded backlog of
  raw events and metric records, on 1 or 2 cores (it cannot run several writers on embedded chDB).

Per run it prints throughput and the stage's CPU-seconds; then per stage the ratio of the medians (2 cores
over 1; target 1.8) and the ratio of events per stage CPU-second (2 over 1: 1.0 means the second core is
used as well as the first, whatever else shares the machine). On a 2-core machine the 2-core runs share both
cores with Kafka and the load client, so the throughput ratio is a lower bound of what two dedicated cores
give.

    .venv/bin/python benchmarks/scaling.py [--stages processing,ingestion,cache,storage] [--rounds 2]
        [--events 300000] [--records 200000] [--backlog 200000] [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cache_consumer, ingestion, processing, storage  # noqa: E402
from infrastructure.local.isolated import Harness, isolated_settings  # noqa: E402
from infrastructure.local.stack import Service  # noqa: E402
from services.processing.backfill import bounds_for  # noqa: E402
from shared.settings import STATE_MARKER, Settings  # noqa: E402
from tests.processing.conftest import create_topics, processing_settings  # noqa: E402

CORES = (1, 2)
TARGET = 1.8


@dataclass(frozen=True)
class Run:
    stage: str
    cores: int
    units: int  # events, requests' events or records handled
    seconds: float
    cpu: float  # the stage's own CPU-seconds

    @property
    def rate(self) -> float:
        return self.units / self.seconds

    @property
    def per_cpu(self) -> float:
        return self.units / max(self.cpu, 1e-9)

    def line(self) -> str:
        return (
            f"{self.stage:<17} cores={self.cores} {self.units:>9,} in {self.seconds:6.1f}s = "
            f"{self.rate:>9,.0f}/s | stage CPU {self.cpu:6.1f}s ({self.per_cpu:>8,.0f} per CPU-second, "
            f"{self.cpu / self.seconds:.2f} cores busy) | "
            f"load average {os.getloadavg()[0]:.1f}"
        )


def cpus(cores: int) -> set[int]:
    return set(range(cores))


def pin(pid: int, cores: int) -> None:
    """Pin every thread of the process and of its descendants (a JVM's too) to the first `cores` cores."""
    root = psutil.Process(pid)
    for process in (root, *root.children(recursive=True)):
        for thread in process.threads():
            with suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(thread.id, cpus(cores))


@contextmanager
def inherited_affinity(cores: int) -> Iterator[None]:
    """Processes started inside inherit this thread's affinity: the first `cores` cores."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus(cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def tree_cpu(pid: int) -> float:
    return ingestion.cpu_seconds(psutil.Process(pid))


def fresh(settings: Settings, root: Path, section: str, **update: object) -> Settings:
    """The settings with their own state directory (pid files, logs, chDB) and a new consumer group."""
    state = root / uuid.uuid4().hex[:8]
    state.mkdir(parents=True)
    (state / STATE_MARKER).write_text('{"format": 1}')
    group = f"scaling-{section}-{uuid.uuid4().hex[:8]}"
    changed = getattr(settings, section).model_copy(update={"consumer_group": group, **update})
    return settings.model_copy(update={"state_dir": state, section: changed})


# --- processing ---


def processing_runs(root: Path, n: int, rounds: int) -> list[Run]:
    harness = Harness(isolated_settings(root / "processing"))
    try:
        harness.ensure("kafka", "flink-jobmanager", "flink-taskmanager")
        one = processing_settings(harness.settings, parallelism=1, session_gap_seconds=30)
        create_topics(one)
        start_ms = int(time.time() * 1000) - n - 3_600_000
        processing.preload(one, n, start_ms)
        bounds = bounds_for(one, start_ms, start_ms + n)
        taskmanager = psutil.Process(harness.stack.component("flink-taskmanager").pid())
        runs = []
        for _ in range(rounds):
            for cores in CORES:
                s = one.model_copy(
                    update={"processing": one.processing.model_copy(update={"parallelism": cores})}
                )
                pin(taskmanager.pid, cores)
                cpu_before = processing.cpu_seconds(taskmanager)
                detail = processing.finished(s, processing.submit_jobs(s, bounds, {}))
                seconds = detail["duration"] / 1000
                runs.append(
                    Run("processing", cores, n, seconds, processing.cpu_seconds(taskmanager) - cpu_before)
                )
                print(runs[-1].line(), flush=True)
        return runs
    finally:
        harness.close()


# --- ingestion ---


def ingestion_runs(root: Path, rounds: int, seconds: float, connections: int) -> list[Run]:
    args = argparse.Namespace(batch_size=500, connections=connections, batch_connections=8)
    with ExitStack() as stack:
        harness = Harness(isolated_settings(root / "kafka"))
        stack.callback(harness.close)
        harness.ensure("kafka")
        bootstrap = harness.settings.kafka.bootstrap
        servers: dict[int, tuple[int, int]] = {}
        for cores in CORES:
            settings = ingestion.bench_settings(root / f"ingestion-{cores}", bootstrap, workers=cores)
            service = Service(settings, "ingestion")
            with inherited_affinity(cores):
                stack.enter_context(ingestion.running(service))
            servers[cores] = (settings.ingestion.port, service.pid() or 0)
        client = ingestion.Wrk(root, threads=1, timeout_s=10)
        todo = ingestion.phases(args)
        runs = []
        for port, _ in servers.values():
            client(port, todo[0], ingestion.WARM_UP_S)
        for _ in range(rounds):
            for phase in todo:
                for cores, (port, pid) in servers.items():
                    cpu_before = tree_cpu(pid)
                    seen = client(port, phase, seconds)
                    if seen.failed:
                        raise SystemExit(f"ingestion: {seen.failed} requests without a 202")
                    events = seen.ok * phase.events_per_request
                    runs.append(
                        Run(
                            f"ingestion {phase.name}",
                            cores,
                            events,
                            seen.elapsed_s,
                            tree_cpu(pid) - cpu_before,
                        )
                    )
                    print(runs[-1].line(), flush=True)
        return runs


# --- consumers: cache and storage ---


def drain(services: list[Service], cores: int, written: Callable[[str], float], units: int) -> Run:
    """Wait until the started services have written `units` records between them; time and their CPU from the
    first record written to the last (start-up excluded)."""
    pids = [pid for s in services if (pid := s.pid())]
    first = last = None
    cpu_first = 0.0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and last is None:
        count = sum(written(s.url()) for s in services)
        now = time.perf_counter()
        if first is None and count > 0:
            first, cpu_first = now, sum(map(tree_cpu, pids))
        last = now if count >= units else None
        time.sleep(0.2)
    if first is None or last is None:
        raise SystemExit(f"{services[0].service}: not all {units} records were written within 600 s")
    return Run(services[0].service, cores, units, last - first, sum(map(tree_cpu, pids)) - cpu_first)


def consumer_runs(
    stage: str, base: Settings, root: Path, rounds: int, units: int, written: Callable[[str], float]
) -> list[Run]:
    runs = []
    for _ in range(rounds):
        for cores in CORES:
            update = {"instances": cores} if stage == "cache" else {}
            settings = fresh(base, root, stage, **update)
            services = [Service(settings, stage, k) for k in range(Service.instances(settings, stage))]
            with inherited_affinity(cores), ThreadPoolExecutor(len(services)) as pool:
                list(pool.map(Service.start, services))  # together: one consumer group join
            try:
                runs.append(drain(services, cores, written, units))
            finally:
                for service in services:
                    service.stop()
            print(runs[-1].line(), flush=True)
    return runs


def cache_runs(root: Path, rounds: int, n: int) -> list[Run]:
    harness = Harness(isolated_settings(root / "cache", RTAP_LOG_LEVEL="WARNING"))
    try:
        harness.ensure("kafka", "redis")
        cache_consumer.produce(harness.settings, n)
        return consumer_runs("cache", harness.settings, root, rounds, n, cache_consumer.written)
    finally:
        harness.close()


def storage_runs(root: Path, rounds: int, n: int) -> list[Run]:
    harness = Harness(isolated_settings(root / "storage", RTAP_LOG_LEVEL="WARNING"))
    try:
        harness.ensure("kafka")
        producer = processing.bulk_producer(harness.settings)
        storage.produce(producer, 0, n)
        producer.flush(120)
        rows = n + (n + 19) // 20
        return consumer_runs(
            "storage", harness.settings, root, rounds, rows, lambda url: storage.scrape(url)[0]
        )
    finally:
        harness.close()


# --- the summary ---


def summary(runs: list[Run]) -> list[str]:
    lines = [
        "| stage | 1 core /s | 2 cores /s | 2/1 throughput | cores busy (1; 2) "
        "| 1 core per CPU-s | 2 cores per CPU-s | 2/1 per CPU-s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage in dict.fromkeys(r.stage for r in runs):
        rate = {
            c: statistics.median(r.rate for r in runs if r.stage == stage and r.cores == c) for c in CORES
        }
        busy = {
            c: statistics.median(r.cpu / r.seconds for r in runs if r.stage == stage and r.cores == c)
            for c in CORES
        }
        per_cpu = {
            c: statistics.median(r.per_cpu for r in runs if r.stage == stage and r.cores == c) for c in CORES
        }
        lines.append(
            f"| {stage} | {rate[1]:,.0f} | {rate[2]:,.0f} | **{rate[2] / rate[1]:.2f}** | "
            f"{busy[1]:.2f}; {busy[2]:.2f} | "
            f"{per_cpu[1]:,.0f} | {per_cpu[2]:,.0f} | {per_cpu[2] / per_cpu[1]:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", default="processing,ingestion,cache,storage")
    parser.add_argument("--rounds", type=int, default=2, help="runs per core count, alternating")
    parser.add_argument("--events", type=int, default=300_000, help="processing: events preloaded")
    parser.add_argument("--records", type=int, default=200_000, help="cache: metric records preloaded")
    parser.add_argument("--backlog", type=int, default=200_000, help="storage: raw events preloaded")
    parser.add_argument("--duration", type=float, default=10.0, help="ingestion: seconds per phase")
    parser.add_argument(
        "--connections", type=int, default=128, help="ingestion: connections of the single-event phase"
    )
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 cores in this process's affinity")
    uvloop.install()
    stages: dict[str, Callable[[Path], list[Run]]] = {
        "processing": lambda root: processing_runs(root, args.events, args.rounds),
        "ingestion": lambda root: ingestion_runs(root, args.rounds, min(args.duration, 60), args.connections),
        "cache": lambda root: cache_runs(root, args.rounds, args.records),
        "storage": lambda root: storage_runs(root, args.rounds, args.backlog),
    }
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="rtap-scaling-") as tmp:
        for name in args.stages.split(","):
            runs += stages[name](Path(tmp) / name)
    print(f"target: 2/1 throughput >= {TARGET}")
    print("\n".join(summary(runs)))


if __name__ == "__main__":
    main()
