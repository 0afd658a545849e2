"""GET /v1/events/export: the raw table's events back in the Kafka wire format, and its refusals."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from tests.storage.conftest import produce_events, raw_event, unique, wait_for

DAY_MS = 86_400_000


def export(api: httpx.Client, start: int | str, end: int | str) -> httpx.Response:
    return api.get("/v1/events/export", params={"from": str(start), "to": str(end)})


def as_stored(value: dict[str, Any]) -> dict[str, Any]:
    """The wire value as the table keeps it: properties as text (booleans true/false)."""
    texts = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in value["properties"].items()}
    return {**value, "properties": texts}


def test_export_gives_back_each_stored_event_in_the_wire_format_oldest_first(api, kafka):
    session = unique("export")
    now = int(time.time() * 1000)
    sent = [raw_event(session, unique("e"), "page_view", ts=now - 3_000 + i * 1_000) for i in range(3)]
    sent[1]["context"]["referrer"] = "https://search.example/?q=x"
    sent[2]["metrics"]["interaction_time"] = 12.5
    produce_events(kafka, reversed(sent))  # stored in any order, exported oldest first

    def ours() -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in export(api, now - 10_000, now + 10_000).text.splitlines()]
        assert "export_end" in lines[-1] and lines[-1]["export_end"]["rows"] == len(lines) - 1
        return [v for v in lines[:-1] if v["context"]["session_id"] == session]

    got = wait_for(lambda: (rows := ours()) and len(rows) == 3 and rows, timeout=30)
    assert got == [as_stored(v) for v in sent]


def test_export_refusals_name_the_parameter(api, storage_service):
    now = int(time.time() * 1000)
    too_old = export(api, now - 31 * DAY_MS, now)
    assert too_old.status_code == 400
    assert too_old.json()["detail"][0]["loc"] == ["query", "from"]
    assert "raw_events_ttl_days = 30" in too_old.json()["detail"][0]["msg"]
    backwards = export(api, now, now - 1)
    assert backwards.status_code == 400 and backwards.json()["detail"][0]["loc"] == ["query", "to"]
    garbage = export(api, "yesterday", now)
    assert garbage.status_code == 400 and garbage.json()["detail"][0]["loc"] == ["query", "from"]
    huge = export(api, "9" * 30, now)
    assert huge.status_code == 400 and huge.json()["detail"][0]["loc"] == ["query", "from"]
    missing = api.get("/v1/events/export", params={"from": str(now)})
    assert missing.status_code == 422
    no_key = httpx.get(f"{storage_service.url()}/v1/events/export", params={"from": now - 1, "to": now})
    assert no_key.status_code == 401
