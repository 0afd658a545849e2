"""Our own identity routes (POST /v1/analytics/identify, /alias, /group and identity items of
/v1/analytics/batch): the mapping onto the raw event, and the real service writing them to Kafka."""

from __future__ import annotations

import uuid

import httpx
import pytest
from pydantic import ValidationError

from services.ingestion.identity import IdentityCall, MappingError, from_call
from shared.events import ALIAS_TYPE, GROUP_TYPE, IDENTIFY_TYPE
from tests.ingestion.conftest import WRITE_KEY, event, read_events, refused_at, with_ids


def mapped(**call) -> dict:
    return dict(from_call(IdentityCall.model_validate(call)))


def test_each_call_maps_onto_the_raw_event():
    identify = mapped(type="identify", user_id="u1", anonymous_id="a1", traits={"plan": "pro", "seats": 3})
    assert (identify["event"]["type"], identify["user"]) == (
        IDENTIFY_TYPE,
        {"id": "u1", "anonymous_id": "a1"},
    )
    assert identify["properties"] == {"plan": "pro", "seats": 3}
    assert identify["context"]["session_id"] == "a1"  # the anonymous visitor's session by default
    anonymous = mapped(type="identify", anonymous_id="a2", traits={"seen": True}, session_id="s-9")
    assert (anonymous["user"], anonymous["context"]["session_id"]) == (
        {"id": "a2", "anonymous_id": "a2"},
        "s-9",
    )
    alias = mapped(type="alias", user_id="u1", previous_id="a1", traits={"ignored": 1})
    assert (alias["event"]["type"], alias["user"], alias["properties"]) == (
        ALIAS_TYPE,
        {"id": "u1", "anonymous_id": "a1"},
        {},
    )
    group = mapped(type="group", user_id="u1", group_id="acme", traits={"name": "Acme"})
    assert (group["event"]["type"], group["context"]["group_id"], group["user"]["anonymous_id"]) == (
        GROUP_TYPE,
        "acme",
        None,
    )


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"type": "identify"}, "user_id"),
        ({"type": "alias", "user_id": "u"}, "previous_id"),
        ({"type": "alias", "previous_id": "a"}, "user_id"),
        ({"type": "group", "user_id": "u"}, "group_id"),
    ],
)
def test_a_call_without_its_ids_names_the_missing_one(call, field):
    with pytest.raises(MappingError) as caught:
        mapped(**call)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("call", "loc"),
    [
        ({"type": "merge", "user_id": "u"}, ("type",)),
        ({"type": "identify", "user_id": 7}, ("user_id",)),
        ({"type": "identify", "user_id": "u", "traits": {"x": {"nested": 1}}}, ("traits", "x")),
        ({"type": "identify", "user_id": "u", "traits": [1]}, ("traits",)),
        ({"type": "identify", "user_id": "u", "timestamp": "yesterday"}, ("timestamp",)),
        ({"type": "group", "user_id": "u", "group_id": ""}, ("group_id",)),
    ],
)
def test_wrong_types_are_refused_at_their_field(call, loc):
    with pytest.raises(ValidationError) as caught:
        IdentityCall.model_validate(call)
    assert caught.value.errors()[0]["loc"][: len(loc)] == loc


@pytest.mark.kafka
def test_identity_routes_and_batch_items_reach_kafka(client: httpx.Client, kafka):
    tag = uuid.uuid4().hex
    r = client.post(
        "/v1/analytics/identify",
        json={"id": f"{tag}-i", "user_id": "u-1", "anonymous_id": f"a-{tag}", "traits": {"plan": "pro"}},
    )
    assert r.status_code == 202 and r.json()["id"] == f"{tag}-i", r.text
    r = client.post("/v1/analytics/alias", json={"id": f"{tag}-a", "user_id": "u-1", "previous_id": "a-0"})
    assert r.status_code == 202, r.text
    items = [
        event(event={"type": "page_view", "id": f"{tag}-e"}, user={"id": "u-1", "anonymous_id": f"a-{tag}"}),
        {"type": "group", "id": f"{tag}-g", "user_id": "u-1", "group_id": "acme", "traits": {"name": "Acme"}},
        {"type": "group", "user_id": "u-1"},
        {"type": "identify", "user_id": "u-1", "traits": {"deep": {"x": 1}}},
    ]
    r = client.post("/v1/analytics/batch", json={"events": items})
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "accepted", "rejected", "rejected"]
    assert [x.get("field") for x in results[2:]] == ["group_id", "traits.deep"]
    ids = {f"{tag}-{k}" for k in "iaeg"}
    found = {rec["value"]["event"]["id"]: rec["value"] for rec in read_events(kafka, with_ids(ids), 4)}
    assert found.keys() == ids
    assert found[f"{tag}-i"]["user"] == {"id": "u-1", "anonymous_id": f"a-{tag}"}
    assert found[f"{tag}-e"]["user"]["anonymous_id"] == f"a-{tag}"
    assert found[f"{tag}-g"]["context"]["group_id"] == "acme"


@pytest.mark.kafka
def test_identity_routes_refuse_precisely(client: httpx.Client):
    assert refused_at(client.post("/v1/analytics/identify", json={"traits": {}})) == (
        400,
        ["body", "user_id"],
    )
    assert refused_at(client.post("/v1/analytics/alias", json={"type": "group", "user_id": "u"})) == (
        400,
        ["body", "type"],
    )
    assert refused_at(client.post("/v1/analytics/group", json=[1])) == (400, ["body"])
    many = {f"t{i}": i for i in range(257)}
    assert refused_at(client.post("/v1/analytics/identify", json={"user_id": "u", "traits": many})) == (
        400,
        ["body", "traits"],
    )
    reserved = event(event={"type": IDENTIFY_TYPE})
    assert refused_at(client.post("/v1/analytics/track", json=reserved)) == (400, ["body", "event.type"])
    huge = {"user_id": "u", "traits": {f"t{i}": "x" * 1_000 for i in range(70)}}
    assert client.post("/v1/analytics/identify", json=huge).status_code == 413


@pytest.mark.kafka
@pytest.mark.parametrize("path", ["/v1/analytics/identify", "/v1/analytics/alias", "/v1/analytics/group"])
def test_identity_routes_need_a_write_key_before_the_body_is_read(keyed_ingestion: str, path: str):
    with httpx.Client(base_url=keyed_ingestion, timeout=15) as c:
        assert refused_at(c.post(path, content=b"{not json")) == (401, ["header", "X-Write-Key"])
        wrong = c.post(path, json={"user_id": "u"}, headers={"X-Write-Key": "wrong"})
        assert refused_at(wrong) == (401, ["header", "X-Write-Key"])
        call = {"user_id": "u", "anonymous_id": "a", "previous_id": "p", "group_id": "g"}
        assert c.post(path, json=call, headers={"X-Write-Key": WRITE_KEY}).status_code == 202
