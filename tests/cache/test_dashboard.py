"""Headless Chromium loads the live dashboard against the running cache service and sees numbers
appear and change."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.cache.chromium import Browser, chromium_path
from tests.cache.conftest import (
    READ_KEY,
    WINDOW_MS,
    YEAR_2100_MS,
    event_record,
    perf_record,
    produce,
    session_record,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "cache-dashboard.png"
LATER_THAN_OTHER_TESTS_MS = YEAR_2100_MS + 2 * 10**13  # newer than every window_base() of other cache tests


@pytest.fixture
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.fail("Debian's chromium is not installed (infrastructure/bootstrap.sh installs it)")
    b = Browser(executable)
    yield b
    b.close()


def text(browser: Browser, element_id: str) -> str:
    return browser.evaluate(f"document.getElementById({element_id!r}).textContent")


def test_dashboard_shows_live_numbers(cache, kafka, browser):
    base = LATER_THAN_OTHER_TESTS_MS + int(time.time()) * WINDOW_MS
    now = int(time.time() * 1000)
    produce(
        kafka,
        "event_metrics",
        [event_record(base, "page_view", "desktop", 30, 9), event_record(base, "click", "mobile", 12, 4)],
    )
    produce(
        kafka,
        "performance_metrics",
        [
            perf_record(base, "desktop", 120.0, 480.0, 900.0),
            perf_record(base, "mobile", 300.0, 950.0, 1600.0),
        ],
    )
    tag = uuid.uuid4().hex[:6]
    produce(
        kafka,
        "session_metrics",
        [session_record(now - 5_000, f"dash-{tag}-{i}", "u", 2, end=now + 600_000) for i in range(4)],
    )
    produce(
        kafka,
        "top_pages",
        [
            {
                "window_start": base,
                "window_end": base + WINDOW_MS,
                "place": place,
                "page": page,
                "page_views": views,
                "unique_users": 1,
            }
            for place, page, views in (
                (1, "https://shop.example/deals", 1200),
                (2, "https://shop.example/", 7),
            )
        ],
    )
    wait_for(
        lambda: cache.client.get("/v1/jobs/event_metrics/latest").json()["window_start"] == base,
        what="first window cached",
    )
    wait_for(
        lambda: cache.client.get("/v1/jobs/performance_metrics/latest").json()["window_start"] == base,
        what="perf cached",
    )

    browser.navigate(f"{cache.url}/?key={READ_KEY}")
    wait_for(lambda: text(browser, "events-total") == "42", 30, 0.2, "events total 42 on the page")
    wait_for(lambda: text(browser, "status") == "live", 30, 0.2, "SSE connected")
    load_rows = browser.evaluate("[...document.querySelectorAll('#load-times .row')].map(r => r.textContent)")
    assert "desktop p50" in load_rows[0] and "120" in load_rows[0]
    assert any("mobile p99" in row and "1,600" in row for row in load_rows)
    assert (
        int(
            wait_for(
                lambda: (
                    text(browser, "active-sessions").replace(",", "")
                    if text(browser, "active-sessions") != "–"
                    else None
                ),
                15,
                0.2,
                "active sessions",
            )
        )
        >= 4
    )

    produce(
        kafka,
        "event_metrics",
        [
            event_record(base + WINDOW_MS, "page_view", "desktop", 50, 20),
            event_record(base + WINDOW_MS, "purchase", "tablet", 7, 7),
        ],
    )
    wait_for(lambda: text(browser, "events-total") == "57", 30, 0.2, "events total 42 -> 57 pushed over SSE")
    assert int(text(browser, "updates")) >= 2
    by_type = browser.evaluate(
        "[...document.querySelectorAll('#events-by-type .row')].map(r => r.dataset.label)"
    )
    assert by_type == ["page_view", "purchase"]
    top_rows = wait_for(
        lambda: (
            browser.evaluate(
                "[...document.querySelectorAll('#job-top_pages tbody tr')].map(r => r.textContent)"
            )
            or None
        ),
        30,
        0.2,
        "a card for the top pages job, which has no view of its own",
    )
    assert top_rows == ["1https://shop.example/deals1,2001", "2https://shop.example/71"]
    assert browser.screenshot(SCREENSHOT).stat().st_size > 10_000
