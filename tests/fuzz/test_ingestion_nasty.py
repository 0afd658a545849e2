"""Hand-picked nasty inputs against the real ingestion process: each gets a 4xx whose JSON body names the
problem, the service keeps answering, and nothing of them reaches Kafka. A few inputs that are legitimate
(duplicate keys, padding up to the limit, escaped NUL) are accepted, and their records must be exact.

The module's last test reads the events topic from where the module started: it must hold exactly the
events answered as accepted here, so run the module as a whole.
"""

from __future__ import annotations

import gzip
import socket
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.fuzz.conftest import (
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    WRITE_KEY,
    EventsWindow,
    accepted_ids,
    assert_topic_holds_exactly,
)
from tests.ingestion.conftest import event, expected_loc, refused_at

pytestmark = pytest.mark.kafka
TRACK, BATCH, SEGMENT_TRACK, SEGMENT_BATCH = (
    "/v1/analytics/track",
    "/v1/analytics/batch",
    "/v1/track",
    "/v1/batch",
)
JSON = {"Content-Type": "application/json"}
ACCEPTED: list[str] = []


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def splice(path: str, raw: bytes, base: dict[str, Any] | None = None) -> bytes:
    """A valid event whose value at path (dotted) is replaced by raw JSON text that orjson could not write."""
    marker = "__SPLICE__"
    body = base or event()
    *parents, last = path.split(".")
    target = body
    for name in parents:
        target = target.setdefault(name, {})
    target[last] = marker
    return dumps(body).replace(f'"{marker}"'.encode(), raw)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def segment_message(**changes: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Signed Up",
        "userId": "u-1",
        "messageId": None,
        "properties": {"plan": "pro"},
        **changes,
    }


def gzip_bomb() -> bytes:
    return gzip.compress(b'{"a":"' + b"0" * (MAX_BODY_BYTES * 40) + b'"}', 9)


@dataclass
class Nasty:
    name: str
    path: str
    body: bytes
    status: int
    field: str
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def over_limit_event() -> bytes:
    body = event()
    body["padding"] = "x" * MAX_BODY_BYTES
    return dumps(body)


NASTY = [
    Nasty("properties nested 10,000 levels", TRACK, splice("properties.deep", nested(10_000)), 400, "body"),
    Nasty(
        "arrays nested 10,000 levels",
        TRACK,
        splice("properties.deep", b"[" * 10_000 + b"]" * 10_000),
        400,
        "body",
    ),
    Nasty("batch nested 10,000 levels", BATCH, b'{"events":[' + nested(10_000) + b"]}", 400, "body"),
    Nasty(
        "segment properties nested 10,000 levels",
        SEGMENT_TRACK,
        dumps(segment_message()).replace(b'"plan":"pro"', b'"deep":' + nested(10_000)),
        400,
        "body",
    ),
    Nasty(
        "string over its field limit, body under the body limit",
        TRACK,
        dumps(event(user={"id": "u" * (MAX_BODY_BYTES - 2_000)})),
        400,
        "user.id",
    ),
    Nasty("body over the limit", TRACK, over_limit_event(), 413, "body"),
    Nasty(
        "batch body over the limit",
        BATCH,
        dumps({"events": [event()], "padding": "x" * MAX_BODY_BYTES}),
        413,
        "body",
    ),
    Nasty("invalid UTF-8 in a string", TRACK, dumps(event()).replace(b'"u-1"', b'"u-\xff\xfe"'), 400, "body"),
    Nasty(
        "invalid UTF-8 in a batch",
        BATCH,
        b'{"events":[' + dumps(event()).replace(b'"u-1"', b'"\xc3\x28"') + b"]}",
        400,
        "body",
    ),
    Nasty("UTF-8-encoded surrogate", TRACK, dumps(event()).replace(b'"u-1"', b'"\xed\xa0\x80"'), 400, "body"),
    Nasty("lone surrogate escape", TRACK, splice("user.id", rb'"\ud800"'), 400, "body"),
    Nasty(
        "lone surrogate escape in a batch",
        BATCH,
        b'{"events":[' + splice("user.id", rb'"a\udfff"') + b"]}",
        400,
        "body",
    ),
    Nasty(
        "lone surrogate escape, Segment",
        SEGMENT_TRACK,
        dumps(segment_message(userId="X")).replace(b'"X"', rb'"\ud800"'),
        400,
        "body",
    ),
    Nasty("NaN property", TRACK, splice("properties.x", b"NaN"), 400, "properties.x"),
    Nasty("Infinity metric", TRACK, splice("metrics.load_time", b"Infinity"), 400, "metrics.load_time"),
    Nasty(
        "-Infinity metric in a batch",
        BATCH,
        b'{"events":[' + splice("metrics.interaction_time", b"-Infinity") + b"]}",
        400,
        "body",
    ),
    Nasty("1e400 metric", TRACK, splice("metrics.load_time", b"1e400"), 400, "metrics.load_time"),
    Nasty("1e400 property", TRACK, splice("properties.x", b"1e400"), 400, "properties.x"),
    Nasty("1e400 timestamp", TRACK, splice("timestamp", b"1e400"), 400, "timestamp"),
    Nasty("2**70 timestamp", TRACK, splice("timestamp", str(2**70).encode()), 400, "timestamp"),
    Nasty(
        "2**70 screen_width",
        TRACK,
        splice("device.screen_width", str(2**70).encode()),
        400,
        "device.screen_width",
    ),
    Nasty("1e400 screen_width", TRACK, splice("device.screen_width", b"1e400"), 400, "device.screen_width"),
    Nasty(
        "negative screen_width",
        TRACK,
        dumps(event(device={"user_agent": "", "screen_width": -1, "screen_height": 1})),
        400,
        "device.screen_width",
    ),
    Nasty("negative load_time", TRACK, dumps(event(metrics={"load_time": -0.5})), 400, "metrics.load_time"),
    Nasty("negative timestamp", TRACK, dumps(event(timestamp=-1)), 400, "timestamp"),
    Nasty("true as timestamp", TRACK, dumps(event(timestamp=True)), 400, "timestamp"),
    Nasty(
        "string as screen_width",
        TRACK,
        dumps(event(device={"user_agent": "", "screen_width": "1920", "screen_height": 1})),
        400,
        "device.screen_width",
    ),
    Nasty(
        "string as load_time", TRACK, dumps(event(metrics={"load_time": "12.5"})), 400, "metrics.load_time"
    ),
    Nasty(
        "raw NUL byte between tokens", TRACK, dumps(event()).replace(b',"user"', b',\x00"user"'), 400, "body"
    ),
    Nasty("raw NUL byte inside a string", TRACK, dumps(event()).replace(b'"u-1"', b'"u\x00"'), 400, "body"),
    Nasty("array as the event", TRACK, b"[]", 400, "body"),
    Nasty("array as event.user", TRACK, dumps(event(user=[{"id": "u-1"}])), 400, "user"),
    Nasty("array as properties", TRACK, dumps(event(properties=[1, 2])), 400, "properties"),
    Nasty("object as a property value", TRACK, dumps(event(properties={"x": {"y": 1}})), 400, "properties.x"),
    Nasty("object as events", BATCH, dumps({"events": {"0": event()}}), 400, "events"),
    Nasty("array of arrays as a batch", BATCH, b"[[]]", 400, "[0]"),  # the first rejected item, by its path
    Nasty("batch of 0", BATCH, dumps({"events": []}), 400, "events"),
    Nasty(
        f"batch of {MAX_BATCH_EVENTS + 1}",
        BATCH,
        dumps({"events": [event() for _ in range(MAX_BATCH_EVENTS + 1)]}),
        413,
        "events",
    ),
    Nasty("Segment batch of 0", SEGMENT_BATCH, dumps({"batch": []}), 400, "batch"),
    Nasty(
        f"Segment batch of {MAX_BATCH_EVENTS + 1}",
        SEGMENT_BATCH,
        dumps({"batch": [segment_message() for _ in range(MAX_BATCH_EVENTS + 1)]}),
        413,
        "batch",
    ),
    Nasty("reserved heartbeat type", TRACK, dumps(event(event={"type": "__heartbeat"})), 400, "event.type"),
    Nasty(
        "reserved heartbeat type in a batch",
        BATCH,
        dumps({"events": [event(event={"type": "__heartbeat"})]}),
        400,
        "events[0].event.type",
    ),
    Nasty("empty body", TRACK, b"", 400, "body"),
    Nasty("empty body, batch", BATCH, b"", 400, "body"),
    Nasty("empty body, Segment", SEGMENT_BATCH, b"", 400, "body"),
    Nasty("application/xml", TRACK, b"<event/>", 415, "Content-Type", {"Content-Type": "application/xml"}),
    Nasty(
        "multipart form",
        TRACK,
        b'--b\r\nContent-Disposition: form-data; name="e"\r\n\r\n{}\r\n--b--\r\n',
        415,
        "Content-Type",
        {"Content-Type": "multipart/form-data; boundary=b"},
    ),
    Nasty("no Content-Type, XML body", TRACK, b"<event/>", 400, "body", {}),
    Nasty("gzip bomb", TRACK, gzip_bomb(), 413, "body", {**JSON, "Content-Encoding": "gzip"}),
    Nasty(
        "truncated gzip",
        TRACK,
        gzip.compress(dumps(event()))[:-12],
        400,
        "Content-Encoding",
        {**JSON, "Content-Encoding": "gzip"},
    ),
    Nasty(
        "says gzip, sends plain JSON",
        TRACK,
        dumps(event()),
        400,
        "Content-Encoding",
        {**JSON, "Content-Encoding": "gzip"},
    ),
    Nasty("says br", TRACK, dumps(event()), 415, "Content-Encoding", {**JSON, "Content-Encoding": "br"}),
    Nasty(
        "says identity, sends gzip",
        TRACK,
        gzip.compress(dumps(event())),
        400,
        "body",
        {**JSON, "Content-Encoding": "identity"},
    ),
    Nasty("no write key", TRACK, dumps(event()), 401, "X-Write-Key", {**JSON, "X-Write-Key": ""}),
    Nasty(
        "wrong write key", TRACK, dumps(event()), 401, "X-Write-Key", {**JSON, "X-Write-Key": WRITE_KEY + "x"}
    ),
    Nasty(
        "Basic auth that is not base64",
        SEGMENT_BATCH,
        dumps({"batch": [segment_message()]}),
        401,
        "X-Write-Key",
        {**JSON, "X-Write-Key": "", "Authorization": "Basic %%%"},
    ),
    Nasty(
        "Segment writeKey that is a number",
        SEGMENT_TRACK,
        dumps(segment_message(writeKey=5)),
        401,
        "X-Write-Key",
        {**JSON, "X-Write-Key": ""},
    ),
    Nasty(
        "Segment writeKey that is an object",
        SEGMENT_BATCH,
        dumps({"batch": [segment_message()], "writeKey": {"k": 1}}),
        400,
        "writeKey",
        {**JSON, "X-Write-Key": ""},
    ),
]


@pytest.fixture(scope="module")
def window(kafka, ingestion) -> EventsWindow:
    return EventsWindow(kafka)


@pytest.mark.parametrize("nasty", NASTY, ids=[n.name for n in NASTY])
def test_nasty_input_gets_a_4xx_naming_the_problem(nasty: Nasty, ingestion, window):
    r = ingestion.client.post(nasty.path, content=nasty.body, headers=nasty.headers)
    assert r.status_code == nasty.status, f"{r.status_code} {r.text[:500]}\n{ingestion.log_tail(15)}"
    assert r.headers["content-type"] == "application/json"
    assert refused_at(r) == (nasty.status, expected_loc(nasty.field)), r.text
    assert ingestion.client.get("/v1/healthz").status_code == 200


def test_content_length_lies_are_refused_by_the_server(ingestion, window):
    """Malformed framing never reaches the app (uvicorn answers 400 itself); the service keeps serving."""
    host, port = ingestion.url.removeprefix("http://").split(":")
    for length in (b"-1", b"abc", b"99999999999999999999999"):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/analytics/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-Write-Key: " + WRITE_KEY.encode() + b"\r\nContent-Length: " + length + b"\r\n\r\n{}"
            )
            status_line = s.recv(4096).split(b"\r\n", 1)[0]
        assert status_line.split()[1][:1] == b"4", (length, status_line)
    assert ingestion.client.get("/v1/healthz").status_code == 200


def test_chunked_body_over_the_limit_is_cut_off(ingestion, window):
    chunks = (b"x" * 8192 for _ in range(MAX_BODY_BYTES // 8192 + 2))
    r = ingestion.client.post(TRACK, content=chunks, headers=JSON)
    assert refused_at(r) == (413, ["body"])


def post_accepted(ingestion, path: str, body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = ingestion.client.post(path, content=body, headers=headers or JSON)
    assert r.status_code in (200, 202), r.text
    ids = accepted_ids(r.status_code, r.json())
    ACCEPTED.extend(ids)
    return r.json()


def test_duplicate_keys_take_the_last_value_consistently(ingestion, window):
    """Validation and the stored record read one parse of the body, so a duplicate cannot smuggle a value."""
    raw = dumps(event(event={"type": "dup_keys"})).replace(
        b'"user":{"id":"u-1"}', b'"user":{"id":"first","id":"last"}'
    )
    post_accepted(ingestion, TRACK, raw)
    rejected = ingestion.client.post(TRACK, content=raw.replace(b'"id":"last"', b'"id":""'), headers=JSON)
    assert refused_at(rejected) == (400, ["body", "user.id"])


def test_legitimate_edge_inputs_are_accepted(ingestion, window):
    padded = event(event={"type": "padded"})
    padded["padding"] = "x" * (
        MAX_BODY_BYTES - len(dumps(padded)) - 20
    )  # unknown keys are ignored, not stored
    post_accepted(ingestion, TRACK, dumps(padded))
    post_accepted(
        ingestion,
        TRACK,
        dumps(event(event={"type": "nul"}, user={"id": "u\u0000"}, properties={"\u0000": "\u0000"})),
    )
    post_accepted(
        ingestion,
        TRACK,
        dumps(
            event(
                event={"type": "whole_float"},
                timestamp=None,
                device={"user_agent": "", "screen_width": 1920.0, "screen_height": 0},
            )
        ),
    )
    post_accepted(
        ingestion,
        TRACK,
        dumps(event(event={"type": "big_numbers"}, properties={"i": 2**63 - 1, "f": 1.7e308})),
    )
    post_accepted(
        ingestion,
        BATCH,
        dumps({"events": [event(event={"type": "at_limit"}) for _ in range(MAX_BATCH_EVENTS)]}),
    )
    post_accepted(ingestion, SEGMENT_BATCH, dumps({"batch": [segment_message()] * MAX_BATCH_EVENTS}))


def test_topic_holds_exactly_the_accepted_events(ingestion, window):
    assert len(ACCEPTED) == 1 + 4 + 2 * MAX_BATCH_EVENTS, (
        "run the whole module: the accepting tests above feed this check"
    )
    records = assert_topic_holds_exactly(window, ACCEPTED)
    by_type = {r["event"]["type"]: r for r in records}
    assert by_type["dup_keys"]["user"]["id"] == "last"
    assert "padding" not in by_type["padded"]
    assert by_type["nul"]["user"]["id"] == "u\u0000" and by_type["nul"]["properties"] == {"\u0000": "\u0000"}
    assert by_type["whole_float"]["device"]["screen_width"] == 1920
    assert by_type["big_numbers"]["properties"] == {"i": 2**63 - 1, "f": 1.7e308}
    assert ingestion.healthy()
