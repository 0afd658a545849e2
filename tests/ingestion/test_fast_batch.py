"""The msgspec batch path against the pydantic schema it is derived from (pure logic, no services).

Contract: the fast path may refuse what pydantic accepts (that batch then takes the pydantic path), but
whatever it accepts, pydantic accepts too, and both write the same Kafka records: values (with the same
types), keys and headers. Only a server-assigned event id differs (a fresh UUIDv7 on each path).
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Annotated, Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from services.ingestion import fast_batch
from services.ingestion.enrichment import Enricher
from services.ingestion.records import Record, SkewPolicy, to_record
from shared.events import HEARTBEAT_TYPE, TRACK_EVENT, TrackEvent

FULL = {
    "event": {"type": "purchase", "id": "evt-1"},
    "user": {"id": "u-1"},
    "device": {
        "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X)",
        "screen_width": 390,
        "screen_height": 844,
    },
    "context": {
        "url": "https://shop.example/checkout",
        "referrer": None,
        "ip_address": "203.0.113.9",
        "session_id": "s-1",
    },
    "properties": {"revenue": 42.5, "items": 2, "gift": False, "coupon": "SPRING"},
    "metrics": {"load_time": 812.0, "interaction_time": 35},
    "timestamp": 1_764_000_000_000,
}
MINIMAL = {
    "event": {"type": "page_view"},
    "user": {"id": "u-2"},
    "device": {"user_agent": "", "screen_width": 0, "screen_height": 0},
    "context": {"url": "", "session_id": "s-2"},
}
PATHS = [
    (),
    ("event",),
    ("event", "type"),
    ("event", "id"),
    ("user",),
    ("user", "id"),
    ("device",),
    ("device", "user_agent"),
    ("device", "screen_width"),
    ("device", "screen_height"),
    ("context",),
    ("context", "url"),
    ("context", "referrer"),
    ("context", "ip_address"),
    ("context", "session_id"),
    ("properties",),
    ("properties", "revenue"),
    ("properties", "k"),
    ("metrics",),
    ("metrics", "load_time"),
    ("metrics", "interaction_time"),
    ("timestamp",),
    ("extra",),
    ("device", "extra"),
    ("received_at",),
]
OUT_OF_RANGE = "__1e400__"  # replaced by the raw JSON number 1e400 (a float Python cannot hold)
TRICKY = [
    None,
    True,
    False,
    0,
    -1,
    5,
    5.0,
    5.5,
    -0.0,
    1e308,
    OUT_OF_RANGE,
    2**63,
    2**63 - 1,
    -(2**63) - 1,
    100_001,
    "",
    "x",
    "5",
    "true",
    HEARTBEAT_TYPE,
    "a" * 64,
    "a" * 65,
    "a" * 128,
    "a" * 129,
    "a" * 257,
    "é" * 128,
    "\ud800",
    "\x00",
    [],
    [1],
    {},
    {"k": "v"},
    {"k": None},
    {"k": [1]},
    {"k": 2**64},
    {"type": "x"},
    {"id": "y"},
]
DELETE = object()
POLICY = SkewPolicy(max_past_ms=10**15, max_future_ms=10**15)
ENRICHER = Enricher("network")


def mutate(event: Any, path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return {} if value is DELETE else value
    if not isinstance(event, dict):
        return event
    event = copy.deepcopy(event)
    parent = event
    for key in path[:-1]:
        if not isinstance(parent.get(key), dict):
            return event
        parent = parent[key]
    if value is DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return event


def body_of(events: Any) -> bytes:
    return json.dumps({"events": events}).replace(f'"{OUT_OF_RANGE}"', "1e400").encode()


ENVELOPE = TypeAdapter(TypedDict("BatchEnvelope", {"events": list[TrackEvent]}))


def pydantic_path(body: bytes) -> list[dict] | None:
    """The same body validated by the pydantic schema (pydantic's own JSON parser)."""
    try:
        return ENVELOPE.validate_json(body)["events"]
    except ValidationError:
        return None


RECEIVED = 1_765_000_000_000  # FULL was stamped 11.6 days before


def wire(records: list[Record]) -> list[tuple[bytes, Any, bytes]]:
    """Key, headers and canonical value of each record; a server-assigned id (UUIDv7) becomes "assigned"."""
    out = []
    for record in records:
        value = orjson.loads(record.value)
        if value["event"]["id"] == record.id and _is_uuid7(record.id):
            value["event"]["id"] = "assigned"
        out.append(
            (record.key, record.headers, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
        )  # 5 != 5.0 here
    return out


def _is_uuid7(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 7
    except ValueError:
        return False


def both_paths(body: bytes, policy: SkewPolicy = POLICY) -> tuple[list | None, list | None]:
    fast = fast_batch.records(body, 100, RECEIVED, policy, ENRICHER)
    reference = pydantic_path(body)
    return (
        None if fast is None else wire(fast),
        None if reference is None else wire([to_record(e, RECEIVED, policy, ENRICHER) for e in reference]),
    )


mutations = st.lists(
    st.tuples(st.sampled_from(PATHS), st.sampled_from([DELETE, *TRICKY])), min_size=1, max_size=3
)


def single_paths(body: bytes) -> tuple[list | None, list | None]:
    """POST /v1/analytics/track: one event, fast path and pydantic path."""
    fast = fast_batch.record(body, RECEIVED, POLICY, ENRICHER)
    try:
        reference = TRACK_EVENT.validate_json(body)
    except ValidationError:
        reference = None
    return (
        None if fast is None else wire([fast]),
        None if reference is None else wire([to_record(reference, RECEIVED, POLICY, ENRICHER)]),
    )


@settings(max_examples=600, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([FULL, MINIMAL]), changes=mutations, siblings=st.integers(0, 2))
def test_fast_path_never_accepts_what_pydantic_refuses_nor_changes_a_value(base, changes, siblings):
    event = base
    for path, value in changes:
        event = mutate(event, path, value)
    body = body_of([FULL] * siblings + [event])
    fast, reference = both_paths(body)
    if fast is not None:
        assert reference is not None, f"fast path accepted a batch pydantic refuses: {body[-500:]!r}"
        assert fast == reference
    single = body_of(event)[len(b'{"events": ') : -1]
    fast_single, reference_single = single_paths(single)
    if fast_single is not None:
        assert reference_single is not None, (
            f"fast path accepted an event pydantic refuses: {single[-500:]!r}"
        )
        assert fast_single == reference_single


@pytest.mark.parametrize("events", [[FULL], [MINIMAL], [FULL, MINIMAL] * 50])
def test_fast_path_takes_valid_batches_and_writes_the_records_pydantic_gives(events):
    fast, reference = both_paths(body_of(events))
    assert fast is not None
    assert fast == reference


def test_the_clock_skew_policy_is_applied_the_same_way():
    strict = SkewPolicy(max_past_ms=1_000, max_future_ms=1_000)
    fast, reference = both_paths(body_of([FULL, MINIMAL]), strict)
    assert fast == reference
    assert fast[0][1] == [("rtap-original-timestamp", str(FULL["timestamp"]).encode())]
    assert orjson.loads(fast[0][2])["timestamp"] == RECEIVED


@pytest.mark.parametrize("event", [FULL, MINIMAL])
def test_a_single_valid_event_takes_the_fast_path_with_the_record_pydantic_gives(event):
    fast, reference = single_paths(orjson.dumps(event))
    assert fast is not None
    assert fast == reference


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps(mutate(FULL, ("event", "type"), HEARTBEAT_TYPE)),
        orjson.dumps(mutate(FULL, ("device", "screen_width"), 390.0)),
        orjson.dumps([FULL]),
        b"{",
    ],
)
def test_single_events_the_fast_path_leaves_to_pydantic(body):
    assert fast_batch.record(body, RECEIVED, POLICY, ENRICHER) is None


def test_both_paths_enrich_and_replace_what_a_client_sends_as_enrichment():
    forged = {**FULL, "enrichment": {"country": "ZZ", "browser": "Forged", "referrer_class": "paid"}}
    fast, reference = both_paths(body_of([forged]))
    assert fast == reference and fast is not None
    value = orjson.loads(fast[0][2])
    assert (
        value["enrichment"]["browser"] == "Mobile Safari UI/WKWebView" and value["enrichment"]["os"] == "iOS"
    )
    assert value["enrichment"]["country"] is None and value["enrichment"]["referrer_class"] == "direct"
    assert value["context"]["ip_address"] == "203.0.113.0"


def test_a_bare_array_is_a_batch_too():
    assert fast_batch.decode(orjson.dumps([FULL, MINIMAL]), max_events=100) is not None


@pytest.mark.parametrize(
    "body",
    [
        body_of([]),  # empty: the pydantic path names the error
        body_of([FULL] * 101),  # over the limit: 413 from the pydantic path
        body_of([FULL, mutate(FULL, ("event", "type"), HEARTBEAT_TYPE)]),  # reserved type, named by pydantic
        body_of(
            [mutate(FULL, ("device", "screen_width"), 390.0)]
        ),  # valid for pydantic, refused here: still accepted there
        b'{"events": [',
        b'{"events": ['
        + b'{"a": ' * 10_000
        + b"1"
        + b"}" * 10_000
        + b"]}",  # msgspec raises RecursionError here
    ],
)
def test_batches_the_fast_path_leaves_to_pydantic(body):
    assert fast_batch.decode(body, max_events=100) is None


def test_a_model_setting_without_a_fast_path_equivalent_fails_at_import():
    class Closed(TypedDict):
        __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
        name: str

    with pytest.raises(TypeError, match="Closed"):
        fast_batch.msgspec_type(Closed)


def test_a_validator_without_a_fast_path_equivalent_fails_at_import():
    class Strange(TypedDict):
        name: Annotated[str, AfterValidator(str.strip)]

    with pytest.raises(TypeError, match="strip"):
        fast_batch.msgspec_type(Strange)


def test_a_batch_with_an_identity_call_keeps_the_fast_path_for_its_events():
    """Per item: each valid event's record is the one the whole-batch fast path writes; the identity call
    and the invalid event are left to pydantic (None)."""
    identify = {"type": "identify", "user_id": "u-1", "anonymous_id": "a-1", "traits": {"plan": "pro"}}
    invalid = mutate(FULL, ("user", "id"), "")
    body = body_of([FULL, identify, MINIMAL, invalid])
    split = fast_batch.each_record(body, 100, RECEIVED, POLICY, ENRICHER)
    assert split is not None and [orjson.loads(raw) for raw, _ in split] == [FULL, identify, MINIMAL, invalid]
    assert [record is None for _, record in split] == [False, True, False, True]
    events_only = fast_batch.records(body_of([FULL, MINIMAL]), 100, RECEIVED, POLICY, ENRICHER)
    assert events_only is not None
    assert wire([split[0][1], split[2][1]]) == wire(events_only)  # type: ignore[list-item]
    assert (
        fast_batch.each_record(body_of([FULL] * 3), 2, RECEIVED, POLICY, ENRICHER) is None
    )  # over the limit
    assert fast_batch.each_record(b'{"events": [}', 100, RECEIVED, POLICY, ENRICHER) is None
