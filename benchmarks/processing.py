"""Throughput of the built-in jobs together on this machine, against a floor job on the same data.

Starts a private Kafka + Flink (state in a temp dir, free ports), preloads N events into a fresh topic, then
runs, interleaved and --rounds times each, two bounded Flink jobs over that topic:

- floor: the processing source table exactly as services/processing declares it (Kafka, JSON decoding of the
  fields the jobs read, watermark) -> one tumbling COUNT(*) per window -> an upsert-kafka sink: the cost of
  Kafka, JSON and Flink;
- jobs: every built-in job in one statement set (the backfill path: same SQL, same sinks).

Even rounds run in the reverse order, so no run always follows the same one. Per run it prints job seconds
and events/s (N / Flink's job duration, submission excluded), the TaskManager's CPU-seconds and events per
TaskManager CPU-second; then jobs / floor per TaskManager CPU-second, the median of the warm rounds (round 1
runs on a fresh cluster: JIT warm-up).

--vertices adds each vertex's share of the operators' busy time. --variant NAME:KEY=VALUE,... adds to every
round a jobs run with those Flink table options (a lever measured against the jobs in the same session).
--all-fields adds to every round a jobs run on a source declaring every raw event field (the code before
JobCoordinator.read_fields).
--breakdown adds to every round a jobs run without the de-duplication (RTAP_PROCESSING__DEDUP_SECONDS=0) and
one run per built-in job alone (with the de-duplication): where the jobs' cost over the floor goes. All of
them read the source the jobs together read, so only the operators differ.
--jfr FILE adds one more jobs run, recorded by Java Flight Recorder on the TaskManager (not in the ratio: the
recording costs CPU too).

    .venv/bin/python benchmarks/processing.py [--events 500000] [--rounds 2] [--vertices] [--jfr FILE]
        [--variant NAME:KEY=VALUE,...] [--all-fields] [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu import cpu_seconds  # noqa: E402
from infrastructure.local.isolated import Harness, isolated_settings  # noqa: E402
from services.processing.backfill import bounds_for  # noqa: E402
from services.processing.coordinator import SOURCE_TABLE, Bounds, JobCoordinator  # noqa: E402
from services.processing.driver import remote_config, table_env  # noqa: E402
from services.processing.job import BaseJob, epoch_ms, interval  # noqa: E402
from shared.events import HEARTBEAT_TYPE, EventField  # noqa: E402
from shared.kafka_admin import ensure_topics  # noqa: E402
from shared.metric_schema import Column, MetricSchema  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import topics  # noqa: E402
from tests.processing.conftest import DESKTOP_UA, IPHONE_UA, create_topics, processing_settings  # noqa: E402

TYPES = ["page_view"] * 6 + ["product_view"] * 2 + ["click", "add_to_cart", "purchase"]
# what ingestion's enrichment adds to a record (the code before it ignores the group): a few sources
ENRICHMENTS = [
    {
        "utm_source": source,
        "utm_medium": medium,
        "utm_campaign": campaign,
        "utm_term": None,
        "utm_content": None,
        "referrer_host": host,
        "referrer_class": referrer_class,
        "browser": "Chrome",
        "browser_version": "124",
        "os": "Windows",
        "os_version": "10",
        "country": "US",
    }
    for source, medium, campaign, host, referrer_class in (
        (None, None, None, None, "direct"),
        (None, None, None, "google.com", "search"),
        ("newsletter", "email", "spring", "mail.example", "email"),
        (None, None, None, "shop.example", "internal"),
    )
]


def bulk_producer(s: Settings) -> Producer:
    """A producer tuned for preloading a topic as fast as the broker takes it."""
    return Producer(
        {
            "bootstrap.servers": s.kafka.bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def preload(s: Settings, n: int, start_ms: int) -> None:
    producer = bulk_producer(s)
    rng = random.Random(1)
    for i in range(n):
        ts = start_ms + i  # 1,000 events per second of event time
        session = f"s{rng.randrange(20_000)}"
        value = {
            "event": {"type": rng.choice(TYPES), "id": uuid.uuid4().hex},
            "user": {"id": f"u{rng.randrange(50_000)}"},
            "device": {
                "user_agent": rng.choice((DESKTOP_UA, IPHONE_UA)),
                "screen_width": 1920,
                "screen_height": 1080,
            },
            "context": {
                "url": f"https://shop.example/p{rng.randrange(40)}",
                "referrer": None,
                "ip_address": None,
                "session_id": session,
            },
            "enrichment": rng.choice(ENRICHMENTS),
            "properties": {"revenue": 10.5},
            "metrics": {"load_time": rng.uniform(50, 3000), "interaction_time": rng.uniform(1, 300)},
            "timestamp": ts,
            "received_at": ts,
        }
        producer.produce(topics(s).events.name, key=session, value=json.dumps(value), timestamp=ts)
        if i % 10_000 == 0:
            producer.poll(0)
    hb = json.dumps(
        {
            "event": {"type": HEARTBEAT_TYPE, "id": "hb"},
            "timestamp": start_ms + n,
            "received_at": start_ms + n,
        }
    )
    for partition in range(4):
        producer.produce(topics(s).events.name, value=hb, partition=partition, timestamp=start_ms + n)
    assert producer.flush(120) == 0


# The floor's output, declared like a job's so its sink is built by the same code (JobCoordinator.sink_ddl).
FLOOR = MetricSchema(
    name="floor",
    columns=(
        Column("window_start", "timestamp_ms"),
        Column("window_end", "timestamp_ms"),
        Column("events", "int64"),
    ),
    key=("window_start",),
)
FLOOR_NAME = "floor"
JOBS_NAME = "jobs"
ALL_FIELDS_NAME = "all-fields"


def floor_statements(coordinator: JobCoordinator) -> list[str]:
    """The floor job's SQL: the processing source table as the jobs get it (Kafka, JSON decoding of the fields
    they read, watermark), one tumbling COUNT(*) per window, an upsert-kafka sink. Every record counts
    (heartbeats too): no view, no de-duplication."""
    window = interval(coordinator.settings.processing.window_seconds)
    insert = f"""INSERT INTO {coordinator.sink_table(FLOOR)}
SELECT {epoch_ms("window_start")}, {epoch_ms("window_end")}, COUNT(*)
FROM TABLE(TUMBLE(TABLE {SOURCE_TABLE}, DESCRIPTOR(event_time), {window}))
GROUP BY window_start, window_end"""
    return [coordinator.source_ddl(coordinator.read_fields()), coordinator.sink_ddl(FLOOR), insert]


def submit_floor(s: Settings, bounds: Bounds) -> str:
    """Submit the floor job over the bounded range, with the table config processing uses; return its id."""
    coordinator = JobCoordinator(s, bounds)
    t_env = table_env(remote_config(s, None))
    for key, value in {
        **coordinator.table_config(),
        "pipeline.name": f"{FLOOR_NAME} {bounds.start_ms}",
    }.items():
        t_env.get_config().set(key, value)
    *tables, insert = floor_statements(coordinator)
    for ddl in tables:
        t_env.execute_sql(ddl)
    return str(t_env.execute_sql(insert).get_job_client().get_job_id())


class AllFields(JobCoordinator):
    """The jobs on a source that declares every raw event field, as before `read_fields`."""

    def read_fields(self) -> tuple[EventField, ...]:
        return self.event.wire_fields


NO_DEDUP_NAME = "no-dedup"


def with_processing(s: Settings, **changes: Any) -> Settings:
    """s with these processing settings changed."""
    return s.model_copy(update={"processing": s.processing.model_copy(update=changes)})


def only_job(job: str | BaseJob) -> type[JobCoordinator]:
    """A coordinator running one job (a built-in job's name, or any job, registered or not) on the source all
    the built-in jobs read together."""

    class OnlyJob(JobCoordinator):
        def __init__(self, settings: Settings, bounds: Bounds | None = None):
            super().__init__(settings, bounds)
            self.all_jobs_fields = super().read_fields()
            self.jobs = [job] if isinstance(job, BaseJob) else [j for j in self.jobs if j.name == job]

        def read_fields(self) -> tuple[EventField, ...]:
            return self.all_jobs_fields

    return OnlyJob


def breakdown_submits(s: Settings, bounds: Bounds) -> dict[str, Callable[[], str]]:
    """The jobs without de-duplication, then each job alone."""
    submits: dict[str, Callable[[], str]] = {
        NO_DEDUP_NAME: partial(submit_jobs, with_processing(s, dedup_seconds=0), bounds, {})
    }
    for job in JobCoordinator(s).jobs:
        submits[f"only-{job.name}"] = partial(submit_jobs, s, bounds, {}, only_job(job.name))
    return submits


def submit_jobs(
    s: Settings, bounds: Bounds, options: dict[str, str], coordinator: type[JobCoordinator] = JobCoordinator
) -> str:
    """Submit the built-in jobs as the backfill driver does, with `options` added to Flink's table config
    (a key that JobCoordinator.table_config sets keeps the coordinator's value)."""
    t_env = table_env({**remote_config(s, None), **options})
    return str(coordinator(s, bounds).run(t_env).get_job_client().get_job_id())


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """ "name:key=value,key=value" -> (name, options)."""
    name, _, pairs = text.partition(":")
    return name, dict(pair.split("=", 1) for pair in pairs.split(",") if pair)


@dataclass(frozen=True)
class Run:
    name: str
    round: int
    events: int
    seconds: float  # Flink's job duration
    cpu: float  # TaskManager CPU-seconds from submission to the job's end
    load_average: float
    detail: dict[str, Any]

    @property
    def per_cpu(self) -> float:
        return self.events / self.cpu

    def line(self) -> str:
        return (
            f"{self.name:<5} round={self.round} state={self.detail['state']} events={self.events} "
            f"job_seconds={self.seconds:.1f} throughput={self.events / self.seconds:,.0f} events/s "
            f"taskmanager_cpu={self.cpu:.1f}s ({self.per_cpu:,.0f} events per TaskManager CPU-second) "
            f"load_average={self.load_average:.1f}"
        )


def finished(s: Settings, job_id: str) -> dict[str, Any]:
    """Flink's job detail once the job has ended."""
    rest = f"{s.flink.rest_url}/jobs/{job_id}"
    while (detail := httpx.get(rest, timeout=5).json())["state"] not in ("FINISHED", "FAILED", "CANCELED"):
        time.sleep(0.5)
    result: dict[str, Any] = detail
    return result


def vertex_lines(detail: dict[str, Any]) -> list[str]:
    """Each vertex's busy time (summed over its subtasks) and share of all vertices' busy time."""
    busy = {v["name"]: v["metrics"].get("accumulated-busy-time", 0) for v in detail["vertices"]}
    total = sum(busy.values()) or 1
    return [
        f"    {ms / 1000:7.1f}s busy {100 * ms / total:5.1f}%  {name[:150]}"
        for name, ms in sorted(busy.items(), key=lambda item: -item[1])
    ]


def measure(
    name: str, round_: int, s: Settings, taskmanager: psutil.Process, submit: Callable[[], str], n: int
) -> Run:
    cpu_before = cpu_seconds(taskmanager.pid)
    detail = finished(s, submit())
    return Run(
        name=name,
        round=round_,
        events=n,
        seconds=detail["duration"] / 1000,
        cpu=cpu_seconds(taskmanager.pid) - cpu_before,
        load_average=os.getloadavg()[0],
        detail=detail,
    )


def ratio_lines(runs: list[Run]) -> list[str]:
    """Each jobs run's events per TaskManager CPU-second over the floor's, and its TaskManager CPU per event
    beyond the floor's: medians of the warm rounds (round 1 when there is only one)."""
    warm = [r for r in runs if r.round > 1] or runs
    rounds = sorted({r.round for r in warm})
    floor = statistics.median(r.per_cpu for r in warm if r.name == FLOOR_NAME)
    lines = []
    for name in dict.fromkeys(r.name for r in warm if r.name != FLOOR_NAME):
        jobs = statistics.median(r.per_cpu for r in warm if r.name == name)
        lines.append(
            f"{name}/floor per TaskManager CPU-second = {jobs / floor:.3f} "
            f"(medians of rounds {rounds}: {name} {jobs:,.0f}, floor {floor:,.0f}; "
            f"{1e6 / jobs - 1e6 / floor:.1f} us of TaskManager CPU per event beyond the floor's "
            f"{1e6 / floor:.1f})"
        )
    return lines


def recorded(taskmanager: psutil.Process, path: Path, measure_run: Callable[[], Run]) -> Run:
    """measure_run() while Java Flight Recorder samples the TaskManager (profile settings) into path."""
    jcmd = ["jcmd", str(taskmanager.pid)]
    subprocess.run([*jcmd, "JFR.start", "name=bench", "settings=profile"], check=True, capture_output=True)
    try:
        result: Run = measure_run()
    finally:
        subprocess.run([*jcmd, "JFR.stop", "name=bench", f"filename={path.resolve()}"], check=True)
    return result


def run(
    n: int,
    rounds: int,
    vertices: bool,
    jfr: Path | None,
    variants: list[str],
    all_fields: bool,
    extra_runs: Callable[[Settings, Bounds], dict[str, Callable[[], str]]] | None = None,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = isolated_settings(Path(tmp) / "state")
        harness = Harness(base)
        try:
            harness.ensure("kafka", "flink-jobmanager", "flink-taskmanager")
            s = processing_settings(base, parallelism=0, session_gap_seconds=30)
            create_topics(s)
            ensure_topics(s.kafka.bootstrap, [topics(s).metric(FLOOR)])
            start_ms = int(time.time() * 1000) - n - 3_600_000
            t0 = time.perf_counter()
            preload(s, n, start_ms)
            print(
                f"preloaded {n} events in {time.perf_counter() - t0:.1f}s "
                f"parallelism={base.flink.parallelism}"
            )
            bounds = bounds_for(s, start_ms, start_ms + n)
            taskmanager = psutil.Process(harness.stack.component("flink-taskmanager").pid())
            submits: dict[str, Callable[[], str]] = {
                FLOOR_NAME: partial(submit_floor, s, bounds),
                JOBS_NAME: partial(submit_jobs, s, bounds, {}),
            }
            for name, options in map(parse_variant, variants):
                submits[name] = partial(submit_jobs, s, bounds, options)
            if all_fields:
                submits[ALL_FIELDS_NAME] = partial(submit_jobs, s, bounds, {}, AllFields)
            if extra_runs:
                submits.update(extra_runs(s, bounds))
            runs = []
            for round_ in range(1, rounds + 1):
                order = list(submits.items())
                for name, submit in order if round_ % 2 else reversed(order):  # no run always goes first
                    runs.append(measure(name, round_, s, taskmanager, submit, n))
                    print(runs[-1].line(), flush=True)
                    if vertices:
                        print("\n".join(vertex_lines(runs[-1].detail)), flush=True)
            print("\n".join(ratio_lines(runs)))
            if jfr:
                profiled = recorded(
                    taskmanager,
                    jfr,
                    lambda: measure(JOBS_NAME, rounds + 1, s, taskmanager, submits[JOBS_NAME], n),
                )
                print(f"{profiled.line()} (recorded into {jfr})")
        finally:
            harness.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="floor then jobs, this many times (round 1: cold)"
    )
    parser.add_argument("--vertices", action="store_true", help="print each vertex's share of the busy time")
    parser.add_argument(
        "--jfr", type=Path, help="then one jobs run recorded by Java Flight Recorder into this file"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE,...: each round, also the jobs with these Flink table options",
    )
    parser.add_argument(
        "--all-fields",
        action="store_true",
        help="each round, also the jobs on a source declaring every raw field (as before read_fields)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="each round, also the jobs without de-duplication and each job alone",
    )
    args = parser.parse_args()
    extra = breakdown_submits if args.breakdown else None
    run(args.events, args.rounds, args.vertices, args.jfr, args.variant, args.all_fields, extra)
