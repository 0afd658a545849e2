"""The dashboard's funnel and sources views: the cache API forwards /v1/analytics/{kind} to the storage API
(services/cache/analytics_proxy.py), and headless Chromium sees the funnel of the storage API on the page.

Runs the real storage service (tests/storage/conftest.py) and a cache service of its own whose settings
carry the storage API's read key.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cache.chromium import Browser, chromium_path
from tests.cache.conftest import RunningCache, cache_settings
from tests.storage.conftest import READ_KEY, produce_events, raw_event, scalar, unique, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.clickhouse]
CACHE_KEY = "analytics-dashboard-cache-key-5d1e"
STEPS = ["dash_view", "dash_cart", "dash_buy"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "analytics-dashboard.png"


@pytest.fixture(scope="module")
def cache(settings, kafka, redis_url, storage_service) -> Iterator[RunningCache]:
    s = cache_settings(settings, read_keys=[CACHE_KEY])
    s = s.model_copy(update={"storage": s.storage.model_copy(update={"read_keys": [READ_KEY]})})
    running = RunningCache(s).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def funnel_events(kafka, api) -> str:
    """Within the last hour: 3 users view, 2 of them add to the cart, 1 buys (step types of this module)."""
    prefix = unique("dash")
    now = int(time.time() * 1000) - 600_000
    events = []
    for user, depth in enumerate((3, 2, 1)):
        for step, event_type in enumerate(STEPS[:depth]):
            event = raw_event(f"{prefix}-{user}", f"{prefix}-{user}-{step}", event_type, now + step * 1000)
            event["user"]["id"] = f"{prefix}-u{user}"
            events.append(event)
    produce_events(kafka, events)
    count = "SELECT count() AS n FROM analytics_events WHERE startsWith(event_id, {p:String})"
    wait_for(lambda: scalar(api, count, p=prefix) == len(events), timeout=60)
    return prefix


def test_the_cache_api_forwards_analytics_to_the_storage_api(cache, api, funnel_events):
    now = int(time.time() * 1000)
    params = {"from": now - 3_600_000, "to": now, "step": STEPS, "window": 3600}
    direct = api.get("/v1/analytics/funnel", params=params)
    forwarded = cache.client.get("/v1/analytics/funnel", params=params)
    assert forwarded.status_code == direct.status_code == 200
    assert forwarded.json() == direct.json()
    assert [r["users"] for r in forwarded.json()["rows"]] == [3, 2, 1]


def test_the_forwarded_routes_keep_the_cache_key_and_storage_refusals(cache, storage_service):
    url = f"{cache.url}/v1/analytics/funnel"
    assert httpx.get(url, params={"from": 0, "to": 1, "step": ["a", "b"]}, timeout=10).status_code == 401
    with_key = {"from": 0, "to": 1, "step": ["a"], "key": CACHE_KEY}
    refused = httpx.get(url, params=with_key, timeout=10)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "step"]
    unknown = httpx.get(f"{cache.url}/v1/analytics/users", params={"key": CACHE_KEY}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["detail"][0]["loc"] == ["path", "kind"]
    sources = httpx.get(f"{cache.url}/v1/analytics/sources", params={"from": 0, "to": 1, "key": CACHE_KEY})
    assert sources.status_code == 200 and sources.json()["rows"] == []


def test_the_dashboard_shows_the_funnel_and_the_sources_view(cache, funnel_events):
    executable = chromium_path()
    if executable is None:
        pytest.fail("Debian's chromium is not installed (infrastructure/bootstrap.sh installs it)")
    browser = Browser(executable)
    try:
        browser.navigate(f"{cache.url}/?key={CACHE_KEY}")
        # the page runs its default funnel at load: wait for it, so that it cannot overwrite this test's
        note = "document.getElementById('funnel-note').textContent"
        wait_for(lambda: browser.evaluate(note), 30, 0.2)
        browser.evaluate(f"document.getElementById('funnel-steps').value = {', '.join(STEPS)!r}; runFunnel()")
        rows = "[...document.querySelectorAll('#funnel .row')].map(r => r.textContent)"

        def dash_rows() -> list[str] | None:
            shown: list[str] = browser.evaluate(rows) or []
            return shown if len(shown) == 3 and shown[0].startswith(f"1. {STEPS[0]}") else None

        shown = wait_for(dash_rows, 30)
        assert [row.rsplit(step, 1) for row, step in zip(shown, STEPS, strict=True)] == [
            [f"{n}. ", users] for n, users in ((1, "3"), (2, "2"), (3, "1"))
        ], shown
        sources_note = "document.getElementById('sources-note').textContent"
        assert "row(s)" in wait_for(lambda: browser.evaluate(sources_note), 30)
        sources = "[...document.querySelectorAll('#sources tr')].map(r => r.textContent)"
        assert any("newsletter" in row for row in wait_for(lambda: browser.evaluate(sources), 30))
        browser.screenshot(SCREENSHOT)
    finally:
        browser.close()


def test_a_storage_api_that_does_not_answer_is_a_503_naming_storage(tmp_path):
    """The cache API in this process, its storage API on a port nothing listens on."""
    from fastapi.testclient import TestClient

    from services.cache.api import create_app
    from shared.settings import CacheSettings, Settings, StorageSettings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    settings = Settings(
        state_dir=tmp_path,
        cache=CacheSettings(read_keys=[CACHE_KEY]),
        storage=StorageSettings(port=free_port, read_keys=[READ_KEY]),
    )
    with TestClient(create_app(settings, run_consumer=False)) as client:
        response = client.get("/v1/analytics/funnel", params={"from": 0, "to": 1, "key": CACHE_KEY})
    assert response.status_code == 503, response.text
    assert response.json()["detail"][0]["loc"] == ["storage"] and response.headers["retry-after"] == "5"
