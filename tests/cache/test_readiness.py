"""/readyz turns unready while the consumer cannot write (here: its Redis is unreachable), and says why."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from infrastructure.local.isolated import free_ports
from services.cache.api import create_app
from tests.cache.conftest import cache_settings, event_record, produce, wait_for, window_base

pytestmark = [pytest.mark.kafka]


def test_readyz_unready_when_consumer_dies(settings, kafka):
    produce(kafka, "event_metrics", [event_record(window_base(), "readiness", "desktop", 1, 1)])
    closed_port = free_ports(1)[0]  # nothing listens here
    s = cache_settings(settings)
    s = s.model_copy(update={"redis": s.redis.model_copy(update={"port": closed_port})})
    with TestClient(create_app(s)) as client:
        body = wait_for(lambda: consumer_error(client), 60, 0.2, "consumer error")
        assert client.get("/readyz").status_code == 503
        assert body["ready"] is False and body["running"] is False
        assert "ConnectionError" in body["error"]
        assert client.get("/healthz").status_code == 503
        latest = client.get("/v1/jobs/event_metrics/latest")
        assert latest.status_code == 503 and latest.headers["retry-after"] == "1", latest.text
        [problem] = latest.json()["detail"]
        assert (problem["loc"], problem["type"]) == (
            ["redis"],
            "unavailable",
        ) and "Redis unavailable" in problem["msg"]


def consumer_error(client: TestClient) -> dict | None:
    body = client.get("/readyz").json()
    return body if body["error"] else None
