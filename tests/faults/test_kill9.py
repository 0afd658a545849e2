"""kill -9 of each component under sustained load, then restart: every accepted event counted exactly once.

One full local stack for the module; one scenario per component, in turn: `rtap load` runs at a steady rate,
the component is killed with SIGKILL a few seconds in and started again at once, the load finishes (its
senders retry what was not acknowledged, with the same event ids), and every layer (raw topic, metric topics,
ClickHouse raw and metric tables, cache API) is reconciled against the manifest. Scenarios use disjoint time
ranges.

The watermark delay is 45 s here: while ingestion or Kafka is down, senders hold their events and retry them
when it is back, so those events arrive up to the outage's length (plus Retry-After) behind the heartbeats. A
broker killed late in the session takes ~20 s to come back (log recovery), which a 20 s delay did not cover. A
production operator sizes the delay the same way; events later than it are late by policy (counted, repairable
with `rtap backfill`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.loadgen.manifest import read_manifest
from services.loadgen.reconcile import Layers, reconcile_run
from services.processing.registry import load_schemas
from tests.e2e.stack import full_stack
from tests.faults.load import KILL_AFTER_EVENTS, LOAD_SECONDS, RATE, finish_load, start_load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.flink,
    pytest.mark.redis,
    pytest.mark.clickhouse,
]

SETTLE_TIMEOUT_S = 300  # for every layer together (one deadline): watermark delay + a Flink restart + storage
# processing is the supervisor that submits the Flink job; flink-jobmanager loses the job (no HA), the
# supervisor resubmits it from the newest retained checkpoint
COMPONENTS = (
    "ingestion",
    "flink-taskmanager",
    "flink-jobmanager",
    "processing",
    "storage",
    "cache",
    "kafka",
    "redis",
)
SENDERS_SEE_THE_OUTAGE = {"ingestion", "kafka"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator:
    with full_stack(
        tmp_path_factory.mktemp("faults") / "state",
        RTAP_PROCESSING__WINDOW_SECONDS="2",
        RTAP_PROCESSING__SESSION_GAP_SECONDS="3",
        RTAP_PROCESSING__WATERMARK_DELAY_MS="45000",
        RTAP_PROCESSING__CHECKPOINT_INTERVAL_MS="2000",
        RTAP_CACHE__MAX_LIMIT="50000",
        RTAP_CACHE__WINDOWS_PER_KEY="100000",
    ) as running:
        yield running


def kill_and_restart(component) -> float:
    """SIGKILL, then start again at once; returns the seconds until it was back (start() waits for health)."""
    pid = component.pid()
    component.kill9()
    killed = time.monotonic()
    component.start()
    assert component.pid() not in (None, pid), f"{component.name} did not come back as a new process"
    return time.monotonic() - killed


def accepted_so_far(s) -> float:
    text = httpx.get(f"http://127.0.0.1:{s.ingestion.port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rtap_ingestion_events_accepted_total{")
    )


def wait_for_load(s, load, events: int, timeout: float = 60.0) -> None:
    """Block until ingestion has accepted `events` more events (spawning the senders can take seconds
    when busy)."""
    start, deadline = accepted_so_far(s), time.monotonic() + timeout
    while accepted_so_far(s) - start < events:
        assert load.poll() is None, f"rtap load ended before the kill:\n{load.stdout.read()}"
        assert time.monotonic() < deadline, f"ingestion accepted fewer than {events} events in {timeout} s"
        time.sleep(0.2)


def running_jobs(s) -> list[str]:
    jobs = httpx.get(f"http://127.0.0.1:{s.flink.rest_port}/jobs/overview", timeout=10).json()["jobs"]
    return [
        j["jid"]
        for j in jobs
        if j["state"] == "RUNNING" and j["name"].startswith(s.processing.job_name + ":")
    ]


@pytest.mark.parametrize("name", COMPONENTS)
def test_kill9_under_load_loses_nothing_and_counts_nothing_twice(stack, name, tmp_path: Path):
    s, harness, services = stack
    component = services.get(name) or harness.stack.component(name)
    manifest = tmp_path / "run.jsonl"
    load = start_load(s, manifest)
    wait_for_load(s, load, KILL_AFTER_EVENTS)
    outage = kill_and_restart(component)
    output = finish_load(load)
    assert load.returncode == 0, output
    entries = read_manifest(manifest)
    not_accepted = [e for e in entries if not e["accepted"]]
    assert len(entries) == RATE * LOAD_SECONDS and not not_accepted, (
        f"{len(not_accepted)} never accepted:\n{output}"
    )
    retried = sum(1 for e in entries if e["failed_sends"] > 0)
    if name in SENDERS_SEE_THE_OUTAGE:
        assert retried > 0, f"the senders never saw {name} down: the kill missed the load"
    print(f"kill -9 {name}: back in {outage:.1f} s, {retried} events re-sent after failed attempts")

    problems = reconcile_run(Layers(s), load_schemas(), entries, SETTLE_TIMEOUT_S)
    assert problems == [], (
        f"after kill -9 of {name} (back in {outage:.1f} s; watermark delay "
        f"{s.processing.watermark_delay_ms / 1000:g} s): {len(problems)} differences\n"
        + "\n".join(problems[:30])
    )
    assert len(running_jobs(s)) == 1, "exactly one pipeline job runs after the restart"
