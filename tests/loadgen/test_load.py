"""`rtap load` as a real subprocess against the real ingestion service and Kafka broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer

from infrastructure.local.isolated import free_ports
from infrastructure.local.stack import Service
from services.loadgen.manifest import read_manifest, summary
from shared.events import HEARTBEAT_TYPE
from shared.settings import Settings, settings_env
from tests.ingestion.conftest import event_id
from tests.topics import EVENTS

pytestmark = pytest.mark.kafka
WRITE_KEY = "loadgen-test-key-91c2"
RTAP = Path(sys.executable).with_name("rtap")


@pytest.fixture(scope="module")
def ingestion(settings: Settings, kafka: str, tmp_path_factory) -> Iterator[Settings]:
    section = settings.ingestion.model_copy(update={"port": free_ports(1)[0], "write_keys": [WRITE_KEY]})
    own = settings.model_copy(
        update={"ingestion": section, "state_dir": tmp_path_factory.mktemp("loadgen-ingestion")}
    )
    svc = Service(own, "ingestion")
    svc.start()
    yield own
    svc.stop()


def rtap_load(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings), "RTAP_WRITE_KEY": WRITE_KEY}
    return subprocess.run([str(RTAP), "load", *args], env=env, capture_output=True, text=True, timeout=180)


def event_ids_in_topic(bootstrap: str, wanted: set[str], timeout_s: float = 60) -> dict[str, int]:
    """How often each wanted id appears in the events topic (heartbeats ignored), read until all are seen."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"loadgen-test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([EVENTS.name])
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while not wanted <= seen.keys() and time.monotonic() < deadline:
            for msg in consumer.consume(1_000, 0.5):
                if msg.error():
                    continue
                value = orjson.loads(msg.value())
                found = event_id(value)  # None: a malformed record another suite wrote on purpose
                if found in wanted and value["event"]["type"] != HEARTBEAT_TYPE:
                    seen[found] = seen.get(found, 0) + 1
    finally:
        consumer.close()
    return seen


def test_every_accepted_event_of_the_manifest_is_in_kafka(ingestion: Settings, kafka: str, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    result = rtap_load(
        ingestion,
        "--events",
        "500",
        "--processes",
        "2",
        "--duplicate-fraction",
        "0.05",
        "--batch-size",
        "50",
        "--rate",
        "1000",
        "--seed",
        str(uuid.uuid4().int % 2**31),
        "--manifest",
        str(manifest),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    entries = read_manifest(manifest)
    counts = summary(entries)
    assert (counts["events"], counts["accepted"], counts["not_accepted"]) == (500, 500, 0), counts
    assert counts["duplicates"] > 0 and counts["sends"] > 500
    assert {e["session_id"].split("-")[1] for e in entries} == {"0", "1"}  # both sender processes contributed
    accepted = {e["id"] for e in entries if e["accepted"]}
    seen = event_ids_in_topic(kafka, accepted)
    assert accepted - seen.keys() == set()
    assert any(seen[e["id"]] > 1 for e in entries if e["duplicate"])  # duplicate sends really were sent twice


def test_not_accepted_events_are_listed_as_such(ingestion: Settings, tmp_path):
    manifest = tmp_path / "rejected.jsonl"
    result = rtap_load(
        ingestion,
        "--events",
        "20",
        "--batch-size",
        "10",
        "--seed",
        "5",
        "--manifest",
        str(manifest),
        "--write-key",
        "wrong-key",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    entries = read_manifest(manifest)
    assert len(entries) == 20
    assert all(not e["accepted"] and e["status"] == 401 and e["sends"] == 1 for e in entries)
    assert "20 events were not accepted" in result.stdout


def test_a_remote_target_is_refused_without_allow_remote(settings: Settings):
    result = rtap_load(settings, "--events", "1", "--url", "http://198.51.100.7:8000")
    assert result.returncode == 2
    assert "--allow-remote" in result.stdout + result.stderr
