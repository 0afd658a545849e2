"""Ingestion's trust boundary (issue 14): whatever a client sends gets a precise answer, never a 5xx, and the
events topic holds exactly what was answered as written.

Against real ingestion processes and the session's real Kafka broker: one with write keys and the default body
and record limits (`ingest`), one whose Kafka is unreachable (`ingest_without_kafka`), and one whose record
limit is set above the broker's, so that Kafka itself refuses a record (`ingest_above_broker_limit`).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException
from prometheus_client.parser import text_string_to_metric_families

from infrastructure.local.isolated import free_ports
from infrastructure.local.stack import Service
from services.ingestion.producer import producer_config
from shared.settings import Settings
from tests.fuzz.conftest import EventsWindow
from tests.ingestion.conftest import WRITE_KEY, event, expected_loc, ingestion_settings, problem, refused_at

pytestmark = pytest.mark.kafka
TRACK, BATCH, SEGMENT_TRACK, SEGMENT_BATCH = (
    "/v1/analytics/track",
    "/v1/analytics/batch",
    "/v1/track",
    "/v1/batch",
)
ORIGIN = "https://shop.example"
BODY_LIMIT = 1_048_576  # the default RTAP_INGESTION__MAX_BODY_BYTES, as in the hostile-user report
OVER_THE_RECORD_LIMIT = (
    1_010_000  # a property this long: the body stays under BODY_LIMIT, the record is over Kafka's
)
COMPOSE_FILE = Path(__file__).resolve().parents[2] / "infrastructure" / "compose" / "docker-compose.yml"


@dataclass
class Ingest:
    settings: Settings
    client: httpx.Client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingestion.port}"

    @property
    def log(self) -> Path:
        return self.settings.state_path / "logs" / "ingestion.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample of one metric on /metrics, by its sorted labels."""
        text = self.client.get("/metrics").text
        return {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        }


def running_ingestion(
    settings: Settings, state_dir: Path, kafka_changes: dict[str, Any] | None = None, **changes: Any
) -> Iterator[Ingest]:
    s = ingestion_settings(
        settings,
        **{
            "write_keys": [WRITE_KEY],
            "port": free_ports(1)[0],
            "max_body_bytes": BODY_LIMIT,
            "cors_origins": [ORIGIN],
            **changes,
        },
    )
    s = s.model_copy(update={"state_dir": state_dir, "kafka": s.kafka.model_copy(update=kafka_changes or {})})
    service = Service(s, "ingestion")
    service.start()
    with httpx.Client(base_url=service.url(), headers={"X-Write-Key": WRITE_KEY}, timeout=30) as client:
        yield Ingest(s, client)
    service.stop()


@pytest.fixture(scope="module")
def ingest(settings, kafka, tmp_path_factory) -> Iterator[Ingest]:
    yield from running_ingestion(settings, tmp_path_factory.mktemp("security-ingest"))


@pytest.fixture(scope="module")
def ingest_without_kafka(settings, kafka, tmp_path_factory) -> Iterator[Ingest]:
    nothing_listens = f"127.0.0.1:{free_ports(1)[0]}"
    yield from running_ingestion(
        settings,
        tmp_path_factory.mktemp("security-no-kafka"),
        {"bootstrap": nothing_listens},
        produce_timeout_ms=1_000,
    )


@pytest.fixture(scope="module")
def ingest_above_broker_limit(settings, kafka, tmp_path_factory) -> Iterator[Ingest]:
    """Misconfigured on purpose: ingestion's record limit three times the broker's, so the broker
    refuses the record."""
    limit = broker_limit(settings)
    yield from running_ingestion(
        settings,
        tmp_path_factory.mktemp("security-above-limit"),
        {"max_record_bytes": 3 * limit},
        max_body_bytes=4 * limit,
    )


def broker_limit(settings: Settings) -> int:
    """message.max.bytes of the session's broker, as its server.properties sets it."""
    lines = (settings.state_path / "kafka" / "server.properties").read_text().splitlines()
    return int(next(line for line in lines if line.startswith("message.max.bytes=")).partition("=")[2])


@pytest.fixture
def window(kafka) -> EventsWindow:
    """The events topic from now on (retried while a just-created topic still elects its leaders)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return EventsWindow(kafka)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def client_ids(window: EventsWindow) -> set[str]:
    return {r["event"]["id"] for r in window.client_records()}


def tagged(tag: str, name: str, **overrides: Any) -> dict[str, Any]:
    return event(event={"type": "security_probe", "id": f"{tag}-{name}"}, **overrides)


def blob(n: int) -> dict[str, str]:
    """A property of n random hex digits: lz4 cannot shrink it, so its record reaches the broker at
    full size."""
    return {"blob": secrets.token_hex(n // 2 + 1)[:n]}


def segment_message(tag: str, name: str, **changes: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Signed Up",
        "userId": "u-1",
        "messageId": f"{tag}-{name}",
        "properties": {"plan": "pro"},
        **changes,
    }


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


# 1. One record limit: an event over it is a 413 naming the property; one just under it is written.


def test_event_over_the_record_limit_is_413_naming_the_property(ingest, window):
    tag = uuid.uuid4().hex
    big = tagged(tag, "big", properties=blob(OVER_THE_RECORD_LIMIT))
    assert len(orjson.dumps(big)) < BODY_LIMIT
    r = ingest.client.post(TRACK, json=big)
    assert r.status_code == 413, r.text
    assert refused_at(r) == (413, ["body", "properties.blob"]) and "Retry-After" not in r.headers
    assert str(ingest.settings.kafka.max_event_bytes) in problem(r)["msg"]

    limit = ingest.settings.kafka.max_event_bytes
    at_limit = tagged(tag, "at-limit", properties=blob(0), timestamp=None)
    # the server adds received_at, the absent keys (identity fields among them) and the enrichment group
    at_limit["properties"] = blob(limit - len(orjson.dumps(at_limit)) - 520)
    r = ingest.client.post(TRACK, json=at_limit)
    assert r.status_code == 202, r.text

    [record] = [value for _, value in window.records() if f"{tag}-".encode() in value[:200]]
    assert limit - 200 < len(record) <= limit, "the broker accepts a record at ingestion's limit"
    assert client_ids(window) == {f"{tag}-at-limit"}


def test_one_record_limit_for_ingestion_producer_local_broker_and_compose(kafka, settings):
    limit = broker_limit(settings)
    assert producer_config(settings)["message.max.bytes"] == limit == settings.kafka.max_record_bytes
    assert settings.kafka.max_event_bytes < limit
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    broker, ingestion = services["kafka"]["environment"], services["ingestion"]["environment"]
    assert broker["KAFKA_MESSAGE_MAX_BYTES"] == ingestion["RTAP_KAFKA__MAX_RECORD_BYTES"]


# 2. The oversized event with "timestamp": 0 (a record with a header: produce(), not produce_batch()).


def test_oversized_event_with_timestamp_zero_is_a_4xx_not_500(ingest, ingest_above_broker_limit, window):
    tag = uuid.uuid4().hex
    r = ingest.client.post(
        TRACK, json=tagged(tag, "big", properties=blob(OVER_THE_RECORD_LIMIT), timestamp=0)
    )
    assert refused_at(r) == (413, ["body", "properties.blob"]), r.text

    refused_by_kafka = tagged(tag, "refused", properties=blob(int(1.5 * OVER_THE_RECORD_LIMIT)), timestamp=0)
    r = ingest_above_broker_limit.client.post(TRACK, json=refused_by_kafka)
    assert refused_at(r) == (413, ["body", "event"]), r.text
    assert "Retry-After" not in r.headers

    r = ingest.client.post(TRACK, json=tagged(tag, "epoch", timestamp=0))
    assert r.status_code == 202 and r.json()["timestamp_adjusted"] is True, r.text
    assert client_ids(window) == {f"{tag}-epoch"}


# 3. A Segment item that cannot be mapped is rejected alone.


def test_segment_item_nested_too_deep_is_rejected_alone(ingest, window):
    tag = uuid.uuid4().hex
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    batch = [
        segment_message(tag, "first"),
        segment_message(tag, "deep", properties={"deep": "DEEP"}),
        segment_message(tag, "last"),
    ]
    body = orjson.dumps({"batch": batch}).replace(b'"DEEP"', deep)
    r = ingest.client.post(SEGMENT_BATCH, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["accepted"], answer["rejected"], answer["failed"]) == (2, 1, 0)
    item = answer["results"][1]
    assert (item["status"], item["field"]) == ("rejected", "properties.deep") and "nested" in item["error"]
    assert client_ids(window) == {f"{tag}-first", f"{tag}-last"}


# 4. Per-record producer errors classified; an item's own problem never stops or half-writes its batch.


def test_an_oversize_item_is_rejected_alone_and_its_siblings_are_written(ingest, window):
    tag = uuid.uuid4().hex
    items = [
        tagged(tag, "first"),
        tagged(tag, "big", properties=blob(OVER_THE_RECORD_LIMIT)),
        tagged(tag, "epoch", timestamp=0),
    ]
    r = ingest.client.post(BATCH, json={"events": items})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert (answer["accepted"], answer["rejected"], answer["failed"]) == (2, 1, 0)
    assert [x["status"] for x in answer["results"]] == ["accepted", "rejected", "accepted"]
    assert answer["results"][1]["field"] == "properties.blob"
    assert client_ids(window) == {f"{tag}-first", f"{tag}-epoch"}


def test_a_record_kafka_refuses_is_a_4xx_for_that_item_not_a_retry(ingest_above_broker_limit, window):
    tag = uuid.uuid4().hex
    refused = tagged(tag, "refused", properties=blob(int(1.5 * OVER_THE_RECORD_LIMIT)))
    r = ingest_above_broker_limit.client.post(TRACK, json=refused)
    assert refused_at(r) == (413, ["body", "event"]), r.text
    assert "Retry-After" not in r.headers

    r = ingest_above_broker_limit.client.post(BATCH, json={"events": [refused]})
    assert refused_at(r) == (413, ["body", "events[0].event"]), r.text
    assert [(x["status"], x["field"]) for x in r.json()["results"]] == [("rejected", "event")]

    r = ingest_above_broker_limit.client.post(TRACK, json=tagged(tag, "after"))
    assert r.status_code == 202, f"the producer keeps working after a refusal: {r.text}"
    assert client_ids(window) == {f"{tag}-after"}


def test_records_the_producer_cannot_queue_are_refused_alone_and_the_rest_written(settings, kafka, window):
    """Below the HTTP layer, without the size check: librdkafka refuses to queue a record over
    message.max.bytes, by produce_batch() (no header) or produce() (a header: skewed timestamp); each is that
    record's permanent error, and its siblings are written and acknowledged."""
    from services.ingestion.enrichment import Enricher
    from services.ingestion.producer import EventProducer
    from services.ingestion.records import SkewPolicy, now_ms, to_record
    from shared.events import TRACK_EVENT
    from tests.topics import EVENTS

    tag, now, policy = uuid.uuid4().hex, now_ms(), SkewPolicy.from_settings(settings.ingestion)
    too_big = broker_limit(settings) + 1_000
    events = [
        tagged(tag, "plain"),
        tagged(tag, "big-plain", properties=blob(too_big)),
        tagged(tag, "big-header", properties=blob(too_big), timestamp=0),
        tagged(tag, "header", timestamp=0),
    ]
    enricher = Enricher(settings.ingestion.ip_truncation)
    records = [to_record(TRACK_EVENT.validate_python(e), now, policy, enricher) for e in events]
    assert [r.headers is not None for r in records] == [False, False, True, True]

    async def send() -> list:
        producer = EventProducer(settings, EVENTS.name)
        producer.start()
        try:
            return await producer.send(records)
        finally:
            await asyncio.to_thread(producer.close)

    errors = asyncio.run(send())
    too_large = KafkaError.MSG_SIZE_TOO_LARGE
    assert [err and err.code() for err in errors] == [None, too_large, too_large, None], errors
    assert client_ids(window) == {f"{tag}-plain", f"{tag}-header"}


# 5. A 503 carries the id the event was given, so the client retries it idempotently.


def test_a_503_carries_the_ids_to_retry_with(ingest_without_kafka, ingest, window):
    r = ingest_without_kafka.client.post(TRACK, json=event())
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    assert uuid.UUID(r.json()["id"]).version == 7 and refused_at(r) == (503, ["kafka"])

    tag = uuid.uuid4().hex
    r = ingest_without_kafka.client.post(TRACK, json=tagged(tag, "mine"))
    assert (r.status_code, r.json()["id"]) == (503, f"{tag}-mine"), r.text

    r = ingest_without_kafka.client.post(
        BATCH, json={"events": [event(), tagged(tag, "in-batch"), {"user": {}}]}
    )
    assert r.status_code == 503, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["failed", "failed", "rejected"]
    assert uuid.UUID(results[0]["id"]).version == 7 and results[1]["id"] == f"{tag}-in-batch"

    server_id = ingest_without_kafka.client.post(TRACK, json=event()).json()["id"]
    retry = event(event={"type": "page_view", "id": server_id})
    assert ingest.client.post(TRACK, json=retry).json()["id"] == server_id
    assert client_ids(window) == {server_id}


# 6. Auth before parsing: a key outside the body is checked before the body is read.


@pytest.mark.parametrize("path", [SEGMENT_BATCH, SEGMENT_TRACK])
def test_segment_routes_check_a_key_outside_the_body_before_parsing_it(ingest, window, path):
    anonymous = httpx.Client(base_url=ingest.url, timeout=30)
    json_type = {"Content-Type": "application/json"}
    for wrong in ({"X-Write-Key": "wrong"}, basic("wrong"), {"Authorization": "Bearer wrong"}):
        for body in (b"{not json", b'{"batch": "not a list", "type": 5}', b"[]"):
            r = anonymous.post(path, content=body, headers={**json_type, **wrong})
            assert refused_at(r) == (401, ["header", "X-Write-Key"]), (wrong, body, r.text)
    r = anonymous.post(f"{path}?write_key=wrong", content=b"{not json", headers=json_type)
    assert r.status_code == 401, r.text

    tag = uuid.uuid4().hex
    message = segment_message(tag, "body-key")
    body = (
        {"batch": [message], "writeKey": WRITE_KEY}
        if path == SEGMENT_BATCH
        else {**message, "writeKey": WRITE_KEY}
    )
    r = anonymous.post(path, json=body)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    r = anonymous.post(path, json={**body, "writeKey": "wrong"})
    assert r.status_code == 401, r.text
    anonymous.close()
    assert client_ids(window) == {f"{tag}-body-key"}


# 7. A client that disconnects mid-body: counted as such, no 5xx, no traceback, nothing produced.


@pytest.mark.parametrize("origin", [None, ORIGIN], ids=["direct", "cors-middleware-stack"])
def test_a_client_that_disconnects_mid_body_is_not_a_server_error(ingest, window, origin):
    tag = uuid.uuid4().hex
    body = orjson.dumps(tagged(tag, "cut-off"))
    log_before = len(ingest.log_text())
    statuses_before = track_statuses(ingest)
    host, port = ingest.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/analytics/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (f"Origin: {origin}\r\n".encode() if origin else b"")
            + f"X-Write-Key: {WRITE_KEY}\r\nContent-Length: {len(body) + 100}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 15
    while track_statuses(ingest) == statuses_before and time.monotonic() < deadline:
        time.sleep(0.2)
    counted = {
        status: n - statuses_before.get(status, 0)
        for status, n in track_statuses(ingest).items()
        if n != statuses_before.get(status, 0)
    }
    assert counted == {"499": 1}, counted
    assert ingest.samples("rtap_ingestion_rejected_total").get((("reason", "client_disconnect"),), 0) >= 1
    new_log = ingest.log_text()[log_before:]
    assert "Traceback" not in new_log and "request failed" not in new_log, new_log[-2000:]
    assert f"{tag}-cut-off" not in client_ids(window)


def track_statuses(ingest: Ingest) -> dict[str, float]:
    return {
        dict(labels)["status"]: n
        for labels, n in ingest.samples("rtap_http_requests_total").items()
        if dict(labels)["route"] == TRACK
    }


# 8. Never a 5xx for what a client can send: other cases found by reading the routes.


def nested_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def splice(message: dict[str, Any], raw: bytes) -> bytes:
    return orjson.dumps(message).replace(b'"SPLICE"', raw)


ODD_INPUT = [
    (
        "Segment sessionId nested 1,000 deep",
        SEGMENT_TRACK,
        splice(
            {"type": "track", "event": "x", "userId": "u", "context": {"sessionId": "SPLICE"}},
            nested_list(1_000),
        ),
        400,
        "context.sessionId",
    ),
    (
        "Segment property nested 1,000 deep",
        SEGMENT_TRACK,
        splice(
            {"type": "track", "event": "x", "userId": "u", "properties": {"p": "SPLICE"}}, nested_list(1_000)
        ),
        400,
        "properties.p",
    ),
    (
        "Segment timestamp in year 1 without offset",
        SEGMENT_TRACK,
        orjson.dumps({"type": "track", "event": "x", "userId": "u", "timestamp": "0001-01-01T00:00:00"}),
        400,
        "timestamp",
    ),
    (
        "Segment batch envelope sentAt nested deep",
        SEGMENT_BATCH,
        splice(
            {"batch": [{"type": "track", "event": "x", "userId": "u"}], "sentAt": "SPLICE"},
            nested_list(1_000),
        ),
        400,
        "sentAt",
    ),
    ("batch item nested 1,000 deep", BATCH, b'{"events":[' + nested_list(1_000) + b"]}", 400, "events[0]"),
    ("integer of 5,000 digits", TRACK, splice(event(properties={"n": "SPLICE"}), b"9" * 5_000), 400, "body"),
    (
        "integer of 5,000 digits in a batch",
        BATCH,
        b'{"events":[' + splice(event(properties={"n": "SPLICE"}), b"9" * 5_000) + b"]}",
        400,
        "body",
    ),
    ("timestamp 2**64", TRACK, splice(event(timestamp="SPLICE"), str(2**64).encode()), 400, "timestamp"),
]


@pytest.mark.parametrize("name, path, body, status, field", ODD_INPUT, ids=[case[0] for case in ODD_INPUT])
def test_odd_input_gets_a_precise_4xx(ingest, name, path, body, status, field):
    r = ingest.client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert refused_at(r) == (status, expected_loc(field)), r.text


ODD_FRAMING = [
    ("Content-Length 0 with a body", b"Content-Length: 0\r\n\r\n{}"),
    ("Content-Length with leading zeros", b"Content-Length: 0002\r\n\r\n{}"),
    (
        "Content-Length and chunked",
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ),
    ("two Content-Lengths", b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
    ("Content-Length with a sign", b"Content-Length: +2\r\n\r\n{}"),
    ("chunk size not hex", b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("name, framing", ODD_FRAMING, ids=[case[0] for case in ODD_FRAMING])
def test_odd_framing_gets_a_400(ingest, name, framing):
    statuses_before = track_statuses(ingest)
    host, port = ingest.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/analytics/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Write-Key: "
            + WRITE_KEY.encode()
            + b"\r\n"
            + framing
        )
        status_line = s.recv(4096).split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 400 Bad Request", status_line
    assert ingest.client.get("/healthz").status_code == 200
    server_errors = {
        status: n
        for status, n in track_statuses(ingest).items()
        if status[0] == "5" and n != statuses_before.get(status)
    }
    assert not server_errors, server_errors
