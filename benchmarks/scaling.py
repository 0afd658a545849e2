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

Per run it prints throughput, the stage's CPU-seconds and the time its threads were runnable without a core
(Linux schedstat, summed over its threads: cores taken by the processes beside it, or by its own other
threads); then per stage the ratio of the medians (2 cores
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
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cache_consumer, ingestion, processing, storage  # noqa: E402
from benchmarks.cpu import cpu_seconds, waiting_seconds  # noqa: E402
from infrastructure.local.isolated import Harness, isolated_settings  # noqa: E402
from infrastructure.local.stack import Service  # noqa: E402
from services.processing.backfill import bounds_for  # noqa: E402
from shared.settings import STATE_MARKER, Settings  # noqa: E402
from tests.processing.conftest import create_topics, processing_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORES = (1, 2)
TARGET = 1.8


@dataclass(frozen=True)
class Run:
    stage: str
    cores: int
    round: int
    units: int  # events, requests' events or records handled
    seconds: float
    cpu: float  # the stage's own CPU-seconds
    others: dict[str, float] = field(default_factory=dict)  # cores busy of the processes beside the stage
    note: str = ""
    waiting: float = 0.0  # seconds the stage's threads were runnable but had no core

    @property
    def rate(self) -> float:
        return self.units / self.seconds

    @property
    def per_cpu(self) -> float:
        return self.units / max(self.cpu, 1e-9)

    def line(self) -> str:
        others = ", ".join(f"{name} {cores:.2f}" for name, cores in self.others.items())
        return (
            f"{self.stage:<17} cores={self.cores} {self.units:>9,} in {self.seconds:6.1f}s = "
            f"{self.rate:>9,.0f}/s | stage CPU {self.cpu:6.1f}s ({self.per_cpu:>8,.0f} per CPU-second, "
            f"{self.cpu / self.seconds:.2f} cores busy, {self.waiting / self.seconds:.2f} waiting for a "
            f"core) | beside it (cores busy): {others or '-'} | "
            f"load average {os.getloadavg()[0]:.1f} {self.note}"
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


class Meter:
    """CPU-seconds of the stage's process trees, and of named others beside it, since the last start()."""

    def __init__(self, stage: list[int], others: dict[str, int]):
        self.stage, self.others = stage, others
        self.start()

    def read(self) -> tuple[float, float, dict[str, float]]:
        others = {name: cpu_seconds(pid) for name, pid in self.others.items()}
        return sum(map(cpu_seconds, self.stage)), sum(map(waiting_seconds, self.stage)), others

    def start(self) -> None:
        self.before = self.read()

    def run(self, stage: str, cores: int, round_: int, units: int, seconds: float) -> Run:
        """The Run since start(): the stage's CPU-seconds and seconds waiting for a core, each other's cores
        busy over `seconds`."""
        (cpu_before, waited_before, others_before) = self.before
        cpu_now, waited_now, others_now = self.read()
        others = {name: (others_now[name] - others_before[name]) / seconds for name in self.others}
        cpu, waited = cpu_now - cpu_before, waited_now - waited_before
        return Run(stage, cores, round_, units, seconds, cpu, others, waiting=waited)


def pids(harness: Harness, *names: str) -> dict[str, int]:
    return {name: harness.stack.component(name).pid() or 0 for name in names}


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
        taskmanager = harness.stack.component("flink-taskmanager").pid() or 0
        meter = Meter([taskmanager], pids(harness, "kafka", "flink-jobmanager"))

        def jobs(cores: int) -> float:
            """Run the jobs at parallelism = cores on that many cores; Flink's job seconds."""
            pin(taskmanager, cores)
            s = one.model_copy(
                update={"processing": one.processing.model_copy(update={"parallelism": cores})}
            )
            return float(processing.finished(s, processing.submit_jobs(s, bounds, {}))["duration"]) / 1000

        jobs(2)  # warm-up (JIT), not measured
        runs = []
        for round_ in range(1, rounds + 1):
            for cores in CORES:
                meter.start()
                runs.append(meter.run("processing", cores, round_, n, jobs(cores)))
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
        servers: dict[int, tuple[int, int]] = {}
        for cores in CORES:
            settings = ingestion.bench_settings(
                root / f"ingestion-{cores}", harness.settings.kafka.bootstrap, cores
            )
            service = Service(settings, "ingestion")
            with inherited_affinity(cores):
                stack.enter_context(ingestion.running(service))
            servers[cores] = (settings.ingestion.port, service.pid() or 0)
        client = ingestion.Wrk(root, threads=1, timeout_s=10)
        todo = ingestion.phases(args)
        for port, _ in servers.values():
            client(port, todo[0], ingestion.WARM_UP_S)
        runs = []
        for round_ in range(1, rounds + 1):
            for phase in todo:
                for cores, (port, pid) in servers.items():
                    meter = Meter([pid], pids(harness, "kafka"))
                    seen = client(port, phase, seconds)
                    if seen.failed:
                        raise SystemExit(f"ingestion: {seen.failed} requests without a 202")
                    run = meter.run(
                        f"ingestion {phase.name}",
                        cores,
                        round_,
                        seen.ok * phase.events_per_request,
                        seen.elapsed_s,
                    )
                    runs.append(
                        replace(run, others={**run.others, "wrk": seen.client_cpu_s / seen.elapsed_s})
                    )
                    print(runs[-1].line(), flush=True)
        return runs


# --- consumers: cache and storage ---


def drain(
    services: list[Service], meter: Meter, written: Callable[[str], float], units: int
) -> tuple[int, float]:
    """Wait until the started services have written `units` records between them. Measured from the moment
    every service has written (each holds its partitions; the group's start-up and first rebalance excluded)
    to the last record: (records written in that span, its seconds); the meter starts with the span."""
    start = last = None
    before = 0.0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and last is None:
        counts = [written(s.url()) for s in services]
        now = time.perf_counter()
        if start is None and all(counts):
            start, before = now, sum(counts)
            meter.start()
        last = now if sum(counts) >= units else None
        time.sleep(0.2)
    if start is None or last is None:
        raise SystemExit(f"{services[0].service}: not all {units} records were written within 600 s")
    return int(units - before), last - start


def consumer_runs(
    stage: str, harness: Harness, root: Path, rounds: int, units: int, written: Callable[[str], float]
) -> list[Run]:
    """Per round and core count: fresh services of the stage (instances = cores for the cache, one writer for
    storage), pinned, draining the preloaded topics from the start."""
    runs = []
    others = pids(harness, *(["kafka", "redis"] if stage == "cache" else ["kafka"]))
    for round_ in range(1, rounds + 1):
        for cores in CORES:
            update = {"instances": cores} if stage == "cache" else {}
            settings = fresh(harness.settings, root, stage, **update)
            services = [Service(settings, stage, k) for k in range(Service.instances(settings, stage))]
            with inherited_affinity(cores), ThreadPoolExecutor(len(services)) as pool:
                list(pool.map(Service.start, services))  # together: one consumer group join
            try:
                meter = Meter([s.pid() or 0 for s in services], others)
                measured, seconds = drain(services, meter, written, units)
                runs.append(meter.run(stage, cores, round_, measured, seconds))
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
        return consumer_runs("cache", harness, root, rounds, n, cache_consumer.written)
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
        return consumer_runs("storage", harness, root, rounds, rows, lambda url: storage.scrape(url)[0])
    finally:
        harness.close()


# --- the whole stack ---


def stack_runs(root: Path, rates: dict[int, float], seconds: float) -> list[Run]:
    """`rtap bench` (a private full stack, its load client included, reconciled against the load's manifest)
    with every process on 1 core, then on 2; the rate is what the senders sustained. Its CPU is the cores
    available over the load: the stack's processes are not all children of one process."""
    runs = []
    for cores in CORES:
        out = root / f"bench-{cores}"
        argv = ["bench", "--skip-ingest", "--rate", f"{rates[cores]:g}", "--duration", f"{seconds:g}"]
        with inherited_affinity(cores):
            cli = [sys.executable, "-m", "infrastructure.cli"]
            subprocess.run([*cli, *argv, "--out", str(out)], check=False, cwd=REPO)
        result = orjson.loads((out / "results.json").read_bytes())["end_to_end"]
        load_seconds = result["accepted"] / result["sustained_accepted_per_s"]
        exact = "exact" if result["reconciled_exactly"] else f"NOT exact: {result['differences']} differences"
        note = f"{exact}, {rates[cores]:g}/s asked"
        runs.append(
            Run("whole stack", cores, 1, result["accepted"], load_seconds, cores * load_seconds, note=note)
        )
        print(runs[-1].line(), flush=True)
    return runs


# --- the summary ---


def medians(runs: list[Run], stage: str, value: Callable[[Run], float]) -> dict[int, float]:
    """Per core count, the median of value() over the stage's runs."""
    return {c: statistics.median(value(r) for r in runs if r.stage == stage and r.cores == c) for c in CORES}


def ratios(runs: list[Run], stage: str, value: Callable[[Run], float]) -> list[float]:
    """value(2 cores) / value(1 core) of each round: the two runs of a pair ran back to back."""
    by = {(r.round, r.cores): value(r) for r in runs if r.stage == stage}
    return [by[round_, 2] / by[round_, 1] for round_ in sorted({r for r, _ in by})]


def others_cell(runs: list[Run], stage: str) -> str:
    """Median cores busy of each process beside the stage in its 2-core runs."""
    two = [r for r in runs if r.stage == stage and r.cores == 2]
    names = dict.fromkeys(name for r in two for name in r.others)
    return ", ".join(f"{n} {statistics.median(r.others[n] for r in two):.2f}" for n in names) or "-"


def summary(runs: list[Run]) -> list[str]:
    """A Markdown table: medians per core count, and the medians of the rounds' paired ratios."""
    lines = [
        "| stage | 1 core /s | 2 cores /s | 2/1 throughput (each round) | stage cores busy (1; 2) "
        "| stage waiting for a core (1; 2) | beside it on 2 cores (cores busy) | per stage CPU-s (1; 2) "
        "| 2/1 per CPU-s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for stage in dict.fromkeys(r.stage for r in runs):
        rate = medians(runs, stage, lambda r: r.rate)
        busy = medians(runs, stage, lambda r: r.cpu / r.seconds)
        waiting = medians(runs, stage, lambda r: r.waiting / r.seconds)
        per_cpu = medians(runs, stage, lambda r: r.per_cpu)
        each = ratios(runs, stage, lambda r: r.rate)
        per_cpu_ratio = statistics.median(ratios(runs, stage, lambda r: r.per_cpu))
        lines.append(
            f"| {stage} | {rate[1]:,.0f} | {rate[2]:,.0f} | **{statistics.median(each):.2f}** "
            f"({', '.join(f'{x:.2f}' for x in each)}) | {busy[1]:.2f}; {busy[2]:.2f} | "
            f"{waiting[1]:.2f}; {waiting[2]:.2f} | {others_cell(runs, stage)} | "
            f"{per_cpu[1]:,.0f}; {per_cpu[2]:,.0f} | {per_cpu_ratio:.2f} |"
        )
    return lines


def plot(runs: list[Run], path: Path) -> None:
    """Per stage, throughput and events per CPU-second on 2 cores over 1 core, against the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r.stage for r in runs))
    throughput = [statistics.median(ratios(runs, s, lambda r: r.rate)) for s in stages]
    per_cpu = [statistics.median(ratios(runs, s, lambda r: r.per_cpu)) for s in stages]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = range(len(stages))
    ax.bar([i - 0.2 for i in x], throughput, 0.4, label="throughput, 2 cores / 1 core")
    ax.bar([i + 0.2 for i in x], per_cpu, 0.4, label="events per CPU-second, 2 cores / 1 core")
    ax.axhline(TARGET, color="red", linestyle="--", label=f"target {TARGET}")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(list(x), stages)
    ax.set_ylabel("2 cores / 1 core")
    ax.set_title("Scaling from 1 to 2 cores (benchmarks/scaling.py, medians)")
    ax.set_ylim(0, max(2.2, *throughput, *per_cpu) + 0.1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", default="processing,ingestion,cache,storage,stack")
    parser.add_argument("--rounds", type=int, default=2, help="runs per core count, alternating")
    parser.add_argument("--events", type=int, default=300_000, help="processing: events preloaded")
    parser.add_argument("--records", type=int, default=200_000, help="cache: metric records preloaded")
    parser.add_argument("--backlog", type=int, default=200_000, help="storage: raw events preloaded")
    parser.add_argument("--duration", type=float, default=10.0, help="ingestion: seconds per phase")
    parser.add_argument(
        "--connections", type=int, default=128, help="ingestion: connections of the single-event phase"
    )
    parser.add_argument(
        "--stack-rates", default="2500,5000", help="stack: events/s asked of rtap bench on 1 core, on 2 cores"
    )
    parser.add_argument("--stack-duration", type=float, default=60, help="stack: seconds of load")
    parser.add_argument("--plot", type=Path, help="also draw the 2/1 ratios into this PNG")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 cores in this process's affinity")
    uvloop.install()
    stages: dict[str, Callable[[Path], list[Run]]] = {
        "processing": lambda root: processing_runs(root, args.events, args.rounds),
        "ingestion": lambda root: ingestion_runs(root, args.rounds, min(args.duration, 60), args.connections),
        "cache": lambda root: cache_runs(root, args.rounds, args.records),
        "storage": lambda root: storage_runs(root, args.rounds, args.backlog),
        "stack": lambda root: stack_runs(
            root, dict(zip(CORES, map(float, args.stack_rates.split(",")), strict=True)), args.stack_duration
        ),
    }
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="rtap-scaling-") as tmp:
        for name in args.stages.split(","):
            runs += stages[name](Path(tmp) / name)
    print(f"target: 2/1 throughput >= {TARGET}")
    print("\n".join(summary(runs)))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
