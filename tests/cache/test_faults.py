"""kill -9 of the cache service while it consumes, then a restart: every window is in Redis, exactly."""

from __future__ import annotations

import time

import pytest
import redis

from services.cache.layout import layouts
from services.processing.registry import load_schemas
from tests.cache.conftest import (
    RunningCache,
    cache_settings,
    event_record,
    produce,
    wait_for,
    wait_ready,
    window_base,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

RECORDS = 6_000


def test_kill9_mid_batch_loses_nothing(settings, kafka, redis_url):
    base = window_base()
    records = [event_record(base + i * 10_000, "fault", "desktop", i + 1, 1) for i in range(RECORDS)]
    produce(kafka, "event_metrics", records)
    s = cache_settings(settings, batch_records=50, windows_per_key=RECORDS * 2, max_lag_records=100)
    layout = layouts(s.cache.key_prefix, load_schemas().values())["event_metrics"]
    index = layout.index({"event_type": "fault", "device_category": "desktop"})
    r = redis.Redis.from_url(redis_url)

    def written():
        return r.zcount(index, base, "+inf")

    cache = RunningCache(s)
    cache.service.start()
    at_kill = wait_for(written, 60, 0.005, "first writes")
    cache.service.kill9()
    time.sleep(0.5)
    partial = written()
    assert partial < RECORDS, "the consumer finished before the kill; the test did not interrupt it"

    cache = RunningCache(s)
    cache.service.start()  # healthy (Redis reachable) long before ready (consumer assigned, lag <= 100)
    try:
        first = cache.client.get("/readyz")
        assert first.status_code == 503 and first.json()["ready"] is False, first.text
        wait_ready(cache.client)
        wait_for(lambda: written() == RECORDS, 30, 0.2, "all windows")
        values = r.mget([layout.record(layout.schema.record_key(rec)) for rec in records])
        assert [int(v.split(b'"events":')[1].split(b",")[0]) for v in values] == [
            rec["events"] for rec in records
        ]
        body = cache.client.get(
            "/v1/jobs/event_metrics/windows",
            params={"from": base, "event_type": "fault", "limit": 1000, "order": "desc"},
        ).json()
        assert body["records"] == records[::-1][:1000]
    finally:
        cache.stop()
    print(
        f"killed after {at_kill} windows written ({partial} by the time the process was gone); "
        "restart wrote the rest"
    )
