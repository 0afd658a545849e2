"""Kafka stopped: never a 202, a quick 503 with Retry-After; after the broker returns, 202 again."""

from __future__ import annotations

import time

import pytest

from tests.ingestion.conftest import event

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TIMEOUT_S = 2.0  # produce_timeout_ms of the test instance


def post_timed(client, path: str, body) -> tuple[int, float, dict]:
    started = time.monotonic()
    r = client.post(path, json=body)
    return r.status_code, time.monotonic() - started, r.headers


def test_no_202_while_the_broker_is_stopped(client, harness, kafka):
    assert client.post("/v1/analytics/track", json=event()).status_code == 202
    broker = harness.stack.component("kafka")
    broker.stop()
    try:
        for path, body in [
            ("/v1/analytics/track", event()),
            ("/v1/analytics/batch", {"events": [event(), event()]}),
            ("/v1/analytics/track", event()),
        ]:
            status, elapsed, headers = post_timed(client, path, body)
            assert status == 503
            assert headers["Retry-After"] == "2"
            assert elapsed < TIMEOUT_S + 1.5
        assert client.get("/v1/readyz").status_code == 503
    finally:
        broker.start()
    deadline = time.monotonic() + 60
    while client.post("/v1/analytics/track", json=event()).status_code != 202:
        assert time.monotonic() < deadline, "ingestion did not recover after the broker came back"
        time.sleep(0.5)
    assert client.get("/v1/readyz").status_code == 200
