"""Health, readiness, metrics, schema, OpenAPI and write keys."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from infrastructure.local.isolated import free_ports
from infrastructure.local.stack import Service
from shared.events import EVENT_SCHEMA_FILE, event_json_schema
from tests.ingestion.conftest import WRITE_KEY, event, ingestion_settings, problem, refused_at

pytestmark = pytest.mark.kafka


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/v1/healthz").status_code == 200
    ready = client.get("/v1/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "partitions": 4}
    assert client.get("/readyz").json() == ready.json()
    assert client.post("/v1/analytics/track", json=event()).status_code == 202
    assert client.post("/v1/analytics/track", json={}).status_code == 400
    text = client.get("/metrics").text
    for name in (
        'rtap_ingestion_events_accepted_total{endpoint="track"}',
        'rtap_ingestion_rejected_total{reason="invalid"}',
        "rtap_ingestion_request_seconds_bucket",
        "rtap_ingestion_produce_seconds_bucket",
        "rtap_ingestion_producer_queue_depth",
        "rtap_ingestion_heartbeats_total",
        "rtap_ingestion_heartbeat_errors_total",
    ):
        assert name in text


def http_requests(client, route: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.labels["status"]: s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        if f.name == "rtap_http_requests"
        for s in f.samples
        if s.name == "rtap_http_requests_total"
        and s.labels["route"] == route
        and s.labels["method"] == "POST"
    }


def test_event_posts_skip_the_middleware_stack_but_are_still_counted(client):
    before = http_requests(client, "/v1/analytics/track")
    assert client.post("/v1/analytics/track", json=event()).status_code == 202
    assert (
        client.post(
            "/v1/analytics/track", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    after = http_requests(client, "/v1/analytics/track")
    assert after["202"] - before.get("202", 0) == 1 and after["400"] - before.get("400", 0) == 1


def request_seconds_count(client, endpoint: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        if f.name == "rtap_ingestion_request_seconds"
        for s in f.samples
        if s.name == "rtap_ingestion_request_seconds_count" and s.labels["endpoint"] == endpoint
    )


def test_event_requests_are_timed_on_the_short_path_and_through_the_middleware_stack(client):
    """A browser request (Origin, CORS configured) takes the middleware stack; both feed the histogram."""
    before = {name: request_seconds_count(client, name) for name in ("track", "batch")}
    assert client.post("/v1/analytics/track", json=event()).status_code == 202
    browser = {"Origin": "https://shop.example"}
    stacked = client.post("/v1/analytics/track", json=event(), headers=browser)
    assert stacked.status_code == 202 and stacked.headers["access-control-allow-origin"] == browser["Origin"]
    assert client.post("/v1/analytics/batch", json={"events": []}).status_code == 400
    assert request_seconds_count(client, "track") - before["track"] == 2
    assert request_seconds_count(client, "batch") - before["batch"] == 1


def test_served_and_committed_event_schema_match_the_model(client):
    assert client.get("/v1/schema/event.json").json() == event_json_schema()
    assert json.loads(EVENT_SCHEMA_FILE.read_text()) == event_json_schema(), (
        "run python -m shared.events to regenerate"
    )


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/analytics/track",
        "/v1/analytics/batch",
        "/v1/track",
        "/v1/batch",
        "/healthz",
        "/v1/healthz",
        "/v1/readyz",
        "/metrics",
        "/v1/schema/event.json",
    } <= set(spec["paths"])
    track = spec["paths"]["/v1/analytics/track"]["post"]
    assert {"202", "400", "401", "413", "415", "503"} <= set(track["responses"])
    assert track["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TrackEvent"
    }
    assert "TrackEvent" in spec["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert track["responses"]["400"]["content"]["application/json"]["schema"] == error
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]
    unavailable = spec["components"]["schemas"]["TrackUnavailable"]
    assert {"detail", "id"} <= set(unavailable["properties"]) and "error" not in unavailable["properties"]


def test_write_key_required_when_configured(keyed_ingestion):
    with httpx.Client(base_url=keyed_ingestion, timeout=15) as c:
        missing = c.post("/v1/analytics/track", json=event())
        assert refused_at(missing) == (401, ["header", "X-Write-Key"])
        assert "X-Write-Key header, Bearer token, Basic username or ?write_key=" in problem(missing)["msg"]
        assert (
            c.post("/v1/analytics/track", json=event(), headers={"X-Write-Key": "wrong"}).status_code == 401
        )
        assert (
            c.post("/v1/analytics/track", json=event(), headers={"X-Write-Key": WRITE_KEY}).status_code == 202
        )
        assert (
            c.post(
                "/v1/analytics/track", json=event(), headers={"Authorization": f"Bearer {WRITE_KEY}"}
            ).status_code
            == 202
        )
        basic = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        assert (
            c.post(
                "/v1/analytics/batch", json={"events": [event()]}, headers={"Authorization": f"Basic {basic}"}
            ).status_code
            == 202
        )
        assert c.post(f"/v1/analytics/track?write_key={WRITE_KEY}", json=event()).status_code == 202


def test_api_docs_list_every_served_endpoint(client):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = text.split("## Ingestion API", 1)[1].split("\n## ", 1)[0]
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert f"{method.upper()} {path}" in section, (
                f"{method.upper()} {path} is served but not in docs/api.md"
            )
            for status in op["responses"]:
                if status != "422":
                    assert status in section, f"{status} of {method.upper()} {path} not documented"


def test_two_workers_answer_metrics_with_one_process_wide_view(settings, kafka, tmp_path_factory):
    """RTAP_INGESTION__WORKERS=2: requests spread over both workers, /metrics from either counts them all."""
    two = ingestion_settings(settings, workers=2, port=free_ports(1)[0])
    svc = Service(two.model_copy(update={"state_dir": tmp_path_factory.mktemp("two-workers")}), "ingestion")
    svc.start()
    try:
        workers = [
            p
            for p in psutil.Process(svc.pid()).children()
            if "multiprocessing.spawn" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2, [p.cmdline() for p in psutil.Process(svc.pid()).children()]
        with ThreadPoolExecutor(
            8
        ) as pool:  # a new connection per request, so the kernel hands them to both workers
            statuses = list(
                pool.map(
                    lambda _: (
                        httpx.post(f"{svc.url()}/v1/analytics/track", json=event(), timeout=15).status_code
                    ),
                    range(40),
                )
            )
        assert statuses == [202] * 40
        totals = [accepted_track(httpx.get(f"{svc.url()}/metrics", timeout=15).text) for _ in range(10)]
        assert totals == [40.0] * 10
    finally:
        svc.stop()


def accepted_track(exposition: str) -> float:
    line = next(
        x
        for x in exposition.splitlines()
        if x.startswith('rtap_ingestion_events_accepted_total{endpoint="track"}')
    )
    return float(line.rsplit(" ", 1)[1])
