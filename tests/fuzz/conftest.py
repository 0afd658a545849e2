"""Fuzzing fixtures: each HTTP API as a real process on the session's real Kafka, Redis and chDB, with
write/read keys configured, a reproducible schemathesis configuration, and a window on the events topic.

Every service gets its own state directory (own run/pid files, own chDB path, own log) so a fuzz run
never shares a process with another test module.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from pydantic import TypeAdapter

from infrastructure.local.isolated import free_ports
from infrastructure.local.stack import Service
from services.ingestion.records import HEARTBEAT_KEY
from shared.events import EVENT_SCHEMA_FILE, HEARTBEAT_TYPE, RawEvent
from shared.settings import Settings
from tests.cache.conftest import RunningCache, cache_settings
from tests.ingestion.conftest import ingestion_settings
from tests.storage.conftest import storage_settings
from tests.topics import EVENTS

WRITE_KEY = "fuzz-write-key-5d21"
READ_KEY = "fuzz-read-key-93be"
MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_EVENTS = 20
FUZZ_DIR = Path(__file__).parent
FUZZ_TIMEOUT_S = 240
RAW_EVENT = TypeAdapter(RawEvent)
EVENT_SCHEMA = jsonschema.Draft202012Validator(orjson.loads(EVENT_SCHEMA_FILE.read_bytes()))


def run_schemathesis(
    config: str, base_url: str, headers: dict[str, str], report_dir: Path, *extra: str
) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]]]:
    """`schemathesis run` (the CLI: its report names each failure with a curl line to reproduce it) against a
    running service, with the settings of tests/fuzz/<config>.toml. Returns the finished process and every
    request/response pair it made (its HAR report)."""
    har = report_dir / "requests.har"
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(FUZZ_DIR / f"{config}.toml"),
        "run",
        f"{base_url}/openapi.json",
        "--no-color",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        *extra,
    ]
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    done = subprocess.run(argv, cwd=report_dir, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S)
    entries = orjson.loads(har.read_bytes())["log"]["entries"] if har.exists() else []
    return done, entries


class RunningService:
    """One `python -m services.<name>` process and a client for it."""

    def __init__(self, settings: Settings, name: str, headers: dict[str, str]):
        self.service = Service(settings, name)
        self.url = self.service.url()
        self.log = settings.state_path / "logs" / f"{name}.log"
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )

    def healthy(self) -> bool:
        return self.client.get("/healthz").status_code == 200

    def stop(self) -> None:
        self.client.close()
        self.service.stop()


def own_state(settings: Settings, state_dir: Path) -> Settings:
    return settings.model_copy(update={"state_dir": state_dir})


@pytest.fixture(scope="module")
def ingestion(settings: Settings, kafka: str, tmp_path_factory) -> Iterator[RunningService]:
    s = ingestion_settings(
        settings,
        write_keys=[WRITE_KEY],
        port=free_ports(1)[0],
        max_body_bytes=MAX_BODY_BYTES,
        max_batch_events=MAX_BATCH_EVENTS,
    )
    running = RunningService(
        own_state(s, tmp_path_factory.mktemp("fuzz-ingestion")), "ingestion", {"X-Write-Key": WRITE_KEY}
    )
    running.service.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def storage(settings: Settings, kafka: str, tmp_path_factory) -> Iterator[RunningService]:
    s = storage_settings(settings, read_keys=[READ_KEY], port=free_ports(1)[0])
    running = RunningService(
        own_state(s, tmp_path_factory.mktemp("fuzz-storage")), "storage", {"X-Read-Key": READ_KEY}
    )
    running.service.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cache(settings: Settings, kafka: str, redis_url: str, tmp_path_factory) -> Iterator[RunningCache]:
    s = cache_settings(settings, read_keys=[READ_KEY], port=free_ports(1)[0])
    running = RunningCache(own_state(s, tmp_path_factory.mktemp("fuzz-cache"))).start()
    yield running
    running.stop()


class EventsWindow:
    """The events topic from the end offsets it had when the window opened: every record written since."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.start = self._end_offsets()

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"fuzz-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )

    def _end_offsets(self) -> dict[int, int]:
        consumer = self._consumer()
        try:
            meta = consumer.list_topics(EVENTS.name, timeout=10).topics[EVENTS.name]
            return {
                p: consumer.get_watermark_offsets(TopicPartition(EVENTS.name, p), timeout=10)[1]
                for p in meta.partitions
            }
        finally:
            consumer.close()

    def records(self, timeout_s: float = 30) -> list[tuple[bytes | None, bytes]]:
        """(key, value) of every record between the window's start and the topic's current end."""
        end = self._end_offsets()
        todo = {p: e for p, e in end.items() if e > self.start.get(p, 0)}
        consumer = self._consumer()
        consumer.assign([TopicPartition(EVENTS.name, p, self.start.get(p, 0)) for p in todo])
        out: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while todo and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                if msg.partition() in todo and msg.offset() < todo[msg.partition()]:
                    out.append((msg.key(), msg.value()))
                if msg.offset() >= todo.get(msg.partition(), 0) - 1:
                    todo.pop(msg.partition(), None)
        finally:
            consumer.close()
        assert not todo, (
            f"could not read partitions {sorted(todo)} of {EVENTS.name} to their end within {timeout_s}s"
        )
        return out

    def client_records(self) -> list[dict[str, Any]]:
        """Every non-heartbeat record since the window opened, each checked against the wire format."""
        found = []
        for key, value in self.records():
            record = orjson.loads(value)  # strict JSON: no NaN, Infinity or lone surrogates
            if (
                record["event"]["type"] == HEARTBEAT_TYPE
                and key == HEARTBEAT_KEY
                and record["user"]["id"] == ""
            ):
                continue
            assert_valid_record(key, record)
            found.append(record)
        return found


def assert_valid_record(key: bytes | None, record: dict[str, Any]) -> None:
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in EVENT_SCHEMA.iter_errors(record)]
    assert not errors, (
        f"record in {EVENTS.name} breaks event_schema_v1.json: {errors[:3]}; record: {record!r:.500}"
    )
    RAW_EVENT.validate_python(record, strict=True)
    assert key == record["context"]["session_id"].encode(), (
        f"key {key!r} is not context.session_id of {record!r:.300}"
    )


def accepted_ids(status: int, body: dict[str, Any]) -> list[str]:
    """event ids an ingestion answer reports as durably written (202/200 and per-item 'accepted')."""
    if status not in (200, 202):
        return []
    if body.get("status") == "accepted":
        return [body["id"]]
    return [r["id"] for r in body.get("results", []) if r["status"] == "accepted"]


def har_body(entry: dict[str, Any]) -> Any:
    content = entry["response"]["content"]
    text = content.get("text") or ""
    raw = base64.b64decode(text) if content.get("encoding") == "base64" else text.encode()
    return orjson.loads(raw) if "json" in content.get("mimeType", "") and raw else None


def server_errors(entries: list[dict[str, Any]]) -> list[str]:
    return [
        f"{e['request']['method']} {e['request']['url']} -> {e['response']['status']}"
        for e in entries
        if e["response"]["status"] >= 500
    ]


def assert_topic_holds_exactly(window: EventsWindow, ids: list[str]) -> list[dict[str, Any]]:
    records = window.client_records()
    written = Counter(r["event"]["id"] for r in records)
    assert written == Counter(ids), (
        f"{len(records)} client records in {EVENTS.name}, {len(ids)} accepted; "
        f"written but not accepted: {list((written - Counter(ids)).items())[:5]}, "
        f"accepted but missing: {list((Counter(ids) - written).items())[:5]}"
    )
    return records
