"""The replicated topology (RTAP_PROFILE=ha) on one machine: three KRaft brokers (replication factor 3,
min.insync.replicas 2 on every topic), two TaskManagers running the job at parallelism 2, two ingestion
workers on one port, two cache processes in one consumer group, storage as the one chDB writer.

One stack for the module, in a state directory of its own. The first tests check the topology is what
the profile promises; then `rtap load` with duplicate sends is reconciled on every layer; then, one scenario
each, a broker, a TaskManager, a cache process and an ingestion worker are killed with SIGKILL under load:
every event is accepted (the senders retry what was refused, with the same ids), nothing is lost or
counted twice, and the window in which ingestion answered anything but 202 is measured and printed
(docs/operations.md, "The ha profile").

The watermark delay is 45 s as in test_kill9.py: events refused while the partition leaders move are sent
again after Retry-After, behind the heartbeats.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from infrastructure.local.components import Status
from infrastructure.local.stack import Service, Stack
from services.loadgen.manifest import read_manifest
from services.loadgen.reconcile import Layers, reconcile_run
from services.processing.registry import load_schemas
from shared.settings import Settings
from shared.topics import topics
from tests.e2e.stack import full_stack, reconciled_env, rtap_load, wait_for_flink_job
from tests.faults.load import KILL_AFTER_EVENTS, LOAD_SECONDS, RATE, finish_load, start_load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.flink,
    pytest.mark.redis,
    pytest.mark.clickhouse,
]

WINDOW_S, GAP_S, WATERMARK_DELAY_MS = 2, 3, 45_000
SETTLE_TIMEOUT_S = 300
SAMPLE_INTERVAL_S = 0.1
INGESTION_WORKER = "ingestion-worker"
# One scenario each: a broker (node 1, also the first bootstrap address), a TaskManager, a cache process (each
# brought back only after the reconciliation: the others carry the load alone), one ingestion worker.
VICTIMS = ("kafka", "flink-taskmanager-2", "cache-2", INGESTION_WORKER)


# Every process of the profile the module's stack runs (full_stack starts no monitoring: no Prometheus, no
# Redis exporter).
PROCESSES = (
    "kafka",
    "kafka-2",
    "kafka-3",
    "flink-jobmanager",
    "flink-taskmanager",
    "flink-taskmanager-2",
    "ingestion",
    "storage",
    "cache",
    "cache-2",
    "processing",
)


def unhealthy(local: Stack) -> list[Status]:
    return [status for status in local.status() if status.name in PROCESSES and not status.healthy]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[Settings, Stack]]:
    with full_stack(
        tmp_path_factory.mktemp("ha") / "state",
        RTAP_PROFILE="ha",
        **reconciled_env(WINDOW_S, GAP_S, WATERMARK_DELAY_MS),
    ) as (s, harness, _):
        yield s, harness.stack


def test_every_process_of_the_profile_runs(stack):
    s, local = stack
    statuses = {status.name: status for status in local.status()}
    assert set(PROCESSES) <= set(statuses), f"missing from rtap status: {set(PROCESSES) - set(statuses)}"
    assert not unhealthy(local)
    assert "2 of 2 workers" in statuses["ingestion"].detail, "ingestion runs two worker processes on one port"


def test_every_topic_has_three_replicas_and_needs_two_in_sync(stack):
    s, _ = stack
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})
    declared = [t.name for t in topics(s).all(load_schemas().values())]
    metadata = admin.list_topics(timeout=10).topics
    for name in declared:
        replicas = {len(p.replicas) for p in metadata[name].partitions.values()}
        assert replicas == {3}, f"{name}: replicas per partition {replicas}"
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in declared]
    for resource, future in admin.describe_configs(resources).items():
        assert future.result(timeout=10)["min.insync.replicas"].value == "2", resource.name


def test_the_job_runs_at_parallelism_two_across_both_taskmanagers(stack):
    s, _ = stack
    job = httpx.get(f"{s.flink.rest_url}/jobs/{wait_for_flink_job(s)}", timeout=10).json()
    parallelism = {v["name"][:80]: v["parallelism"] for v in job["vertices"]}
    # the planner runs a global step (one ranking over all groups) at parallelism 1 whatever the default
    sources = {name: p for name, p in parallelism.items() if "Source" in name}
    assert sources and set(sources.values()) == {2}, parallelism
    hosts = {
        tm["taskmanager-id"]
        for v in job["vertices"]
        for tm in httpx.get(
            f"{s.flink.rest_url}/jobs/{job['jid']}/vertices/{v['id']}/taskmanagers", timeout=10
        )
        .json()
        .get("taskmanagers", [])
    }
    assert len(hosts) == 2, f"the job's subtasks run on {hosts}"


def test_both_cache_processes_consume_in_one_group(stack):
    s, _ = stack
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})
    deadline = time.monotonic() + 60
    members: list[object] = []
    while time.monotonic() < deadline:
        group = admin.describe_consumer_groups([s.cache.consumer_group])[s.cache.consumer_group]
        members = list(group.result(timeout=10).members)
        if len(members) == 2:
            break
        time.sleep(1)
    assert len(members) == 2, f"cache group {s.cache.consumer_group}: {members}"


def test_load_with_duplicates_reconciles_on_every_layer(stack, tmp_path: Path):
    s, _ = stack
    entries = rtap_load(
        s, tmp_path / "run.jsonl", "--events", "3000", "--rate", "1000", "--duplicate-fraction", "0.05"
    )
    assert all(e["accepted"] for e in entries) and any(e["duplicate"] for e in entries)
    problems = reconcile_run(Layers(s), load_schemas(), entries, SETTLE_TIMEOUT_S)
    assert problems == [], f"{len(problems)} differences\n" + "\n".join(problems[:30])


@dataclass
class IngestionSampler:
    """Samples ingestion's accepted and refused counters (one view over its workers) every
    SAMPLE_INTERVAL_S in a thread, to time the window of refusals and the longest pause in acceptance."""

    url: str
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (time, accepted, refused)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> IngestionSampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self.stop.is_set():
                try:
                    text = client.get(self.url).text
                except httpx.HTTPError:
                    continue
                self.samples.append((time.monotonic(), counter(text, "accepted"), counter(text, "rejected")))
                self.stop.wait(SAMPLE_INTERVAL_S)

    def refusal_window(self, since: float) -> tuple[float, float]:
        """(first, last) seconds after `since` at which the refused count had grown; (0, 0) when it never
        did."""
        grew = [
            t for (t, _, r), (_, _, before) in zip(self.samples[1:], self.samples, strict=False) if r > before
        ]
        grew = [t - since for t in grew if t >= since]
        return (grew[0], grew[-1]) if grew else (0.0, 0.0)

    def longest_pause(self, since: float) -> float:
        """The longest time after `since` in which the accepted count did not grow."""
        pause, last_growth = 0.0, since
        for (t, a, _), (_, before, _) in zip(self.samples[1:], self.samples, strict=False):
            if t < since:
                continue
            if a > before:
                pause, last_growth = max(pause, t - last_growth), t
        return pause


def counter(text: str, name: str) -> float:
    """The sum of rtap_ingestion_events_<name>_total or rtap_ingestion_<name>_total over its labels."""
    prefixes = (f"rtap_ingestion_events_{name}_total{{", f"rtap_ingestion_{name}_total{{")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefixes))


def kill9(local: Stack, victim: str) -> Callable[[], None]:
    """SIGKILL the victim; returns how to bring it back."""
    if victim == INGESTION_WORKER:
        ingestion = local.component("ingestion")
        assert isinstance(ingestion, Service)
        os.kill(ingestion.worker_pids()[0], signal.SIGKILL)
        return lambda: None  # uvicorn's supervisor starts another worker
    component = local.component(victim)
    component.kill9()
    return component.start


@pytest.mark.parametrize("victim", VICTIMS)
def test_kill9_of_one_replica_under_load_loses_nothing(stack, victim, tmp_path: Path):
    s, local = stack
    sampler = IngestionSampler(f"{s.ingestion.url}/metrics").start()
    manifest = tmp_path / "run.jsonl"
    load = start_load(s, manifest)
    try:
        while not sampler.samples or sampler.samples[-1][1] - sampler.samples[0][1] < KILL_AFTER_EVENTS:
            assert load.poll() is None, f"rtap load ended before the kill:\n{load.stdout.read()}"
            time.sleep(0.2)
        restore = kill9(local, victim)
        killed = time.monotonic()
        output = finish_load(load)
    finally:
        sampler.stop.set()
    assert load.returncode == 0, f"rtap load exited {load.returncode} after kill -9 of {victim}:\n{output}"
    entries = read_manifest(manifest)
    refused = sum(e["failed_sends"] for e in entries)
    first, last = sampler.refusal_window(killed)
    print(
        f"kill -9 {victim}: {refused} sends not answered 202 (all retried and accepted), "
        f"refusals from {first:.1f} s to {last:.1f} s after the kill, longest pause in acceptance "
        f"{sampler.longest_pause(killed):.1f} s"
    )
    accepted = sum(1 for e in entries if e["accepted"])
    assert len(entries) == accepted == RATE * LOAD_SECONDS, (
        f"after kill -9 of {victim}: {accepted} of {len(entries)} manifest entries accepted, "
        f"{RATE * LOAD_SECONDS} sent:\n{output}"
    )
    problems = reconcile_run(Layers(s), load_schemas(), entries, SETTLE_TIMEOUT_S)
    restore()  # the topology whole again for the next scenario
    assert problems == [], f"after kill -9 of {victim}: {len(problems)} differences\n" + "\n".join(
        problems[:30]
    )
    assert not unhealthy(local), f"after {victim} was brought back"
