"""Health, readiness, metrics, schema, OpenAPI and write keys."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from shared.events import EVENT_SCHEMA_FILE, event_json_schema
from tests.ingestion.conftest import WRITE_KEY, event

pytestmark = pytest.mark.kafka


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/v1/healthz").status_code == 200
    ready = client.get("/v1/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "partitions": 4}
    assert client.post("/v1/analytics/track", json=event()).status_code == 202
    assert client.post("/v1/analytics/track", json={}).status_code == 400
    text = client.get("/metrics").text
    for name in ("rtap_ingestion_events_accepted_total{endpoint=\"track\"}", "rtap_ingestion_rejected_total{reason=\"invalid\"}",
                 "rtap_ingestion_request_seconds_bucket", "rtap_ingestion_produce_seconds_bucket", "rtap_ingestion_producer_queue_depth",
                 "rtap_ingestion_heartbeats_total"):
        assert name in text


def test_served_and_committed_event_schema_match_the_model(client):
    assert client.get("/v1/schema/event.json").json() == event_json_schema()
    assert json.loads(EVENT_SCHEMA_FILE.read_text()) == event_json_schema(), "run python -m shared.events to regenerate"


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/analytics/track", "/v1/analytics/batch", "/v1/track", "/v1/batch", "/healthz", "/v1/healthz", "/v1/readyz",
            "/metrics", "/v1/schema/event.json"} <= set(spec["paths"])
    track = spec["paths"]["/v1/analytics/track"]["post"]
    assert {"202", "400", "401", "413", "415", "503"} <= set(track["responses"])
    assert track["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TrackEvent"}
    assert "TrackEvent" in spec["components"]["schemas"]


def test_write_key_required_when_configured(keyed_ingestion):
    with httpx.Client(base_url=keyed_ingestion, timeout=15) as c:
        missing = c.post("/v1/analytics/track", json=event())
        assert missing.status_code == 401 and missing.json()["field"] == "X-Write-Key"
        assert c.post("/v1/analytics/track", json=event(), headers={"X-Write-Key": "wrong"}).status_code == 401
        assert c.post("/v1/analytics/track", json=event(), headers={"X-Write-Key": WRITE_KEY}).status_code == 202
        assert c.post("/v1/analytics/track", json=event(), headers={"Authorization": f"Bearer {WRITE_KEY}"}).status_code == 202
        basic = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        assert c.post("/v1/analytics/batch", json={"events": [event()]}, headers={"Authorization": f"Basic {basic}"}).status_code == 202
        assert c.post(f"/v1/analytics/track?write_key={WRITE_KEY}", json=event()).status_code == 202


def test_api_docs_list_every_served_endpoint(client):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = text.split("## Ingestion API", 1)[1].split("\n## ", 1)[0]
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert f"{method.upper()} {path}" in section, f"{method.upper()} {path} is served but not in docs/api.md"
            for status in op["responses"]:
                if status != "422":
                    assert status in section, f"{status} of {method.upper()} {path} not documented"
