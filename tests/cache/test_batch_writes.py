"""The cache consumer's batched Redis writes, against a real redis-server: a batch leaves exactly the keys,
members, scores and expiries that writing its records one at a time leaves, and a tombstone deletes what the
batch wrote before it."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from services.cache.consumer import Decoded, redis_writer
from services.cache.layout import JobLayout, layouts, write_records
from shared.settings import CacheSettings
from tests.cache.conftest import WINDOW_MS, event_record, schema, window_base

WINDOWS_PER_KEY = 5
TTL = 3_600


def layout(prefix: str) -> JobLayout:
    return layouts(prefix, [schema("event_metrics")])["event_metrics"]


def records() -> list[dict[str, Any]]:
    """More windows than an index keeps, four groups each, in no order of time, and every window written twice
    (the second time with new counts, as Flink's updates)."""
    base = window_base()
    starts = [base + k * WINDOW_MS for k in (3, 11, 0, 7, 9, 1, 12, 5, 2, 10, 4, 8, 6)]
    groups = [("page_view", "desktop"), ("page_view", "mobile"), ("click", "desktop"), ("purchase", "tablet")]
    first = [event_record(ws, t, d, 10, 5) for ws in starts for t, d in groups]
    return first + [{**r, "events": r["events"] + 1} for r in first[::3]]


def state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under the prefix (the prefix cut off): a string's value or a sorted set's members with
    scores, and whether it expires within the TTL."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(f"{prefix}:*"):
        kind = client.type(key)
        value = client.get(key) if kind == b"string" else client.zrange(key, 0, -1, withscores=True)
        out[key.decode().removeprefix(prefix)] = (value, 0 < client.ttl(key) <= TTL)
    return out


def test_a_batch_leaves_the_state_that_one_record_at_a_time_leaves(redis_url):
    client = redis.Redis.from_url(redis_url)
    batched, single = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    written = records()
    pipe = client.pipeline(transaction=False)
    write_records(pipe, [(layout(batched), r) for r in written], WINDOWS_PER_KEY, TTL)
    pipe.execute()
    for record in written:
        pipe = client.pipeline(transaction=False)
        write_records(pipe, [(layout(single), record)], WINDOWS_PER_KEY, TTL)
        pipe.execute()

    got, want = state(client, batched), state(client, single)
    assert got == want
    all_windows = got[":event_metrics:idx"][0]
    assert len(all_windows) == WINDOWS_PER_KEY  # the trim ran: 13 windows x 4 groups were written
    assert all(expires for _, expires in got.values())


def test_a_tombstone_deletes_what_the_batch_wrote_before_it(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    jobs = layout(prefix)
    ws = window_base()
    gone, kept = event_record(ws, "click", "mobile", 3, 2), event_record(ws, "click", "desktop", 4, 3)
    key = {k: gone[k] for k in jobs.schema.key}
    write = redis_writer(client, CacheSettings(windows_per_key=WINDOWS_PER_KEY, ttl_seconds=TTL))
    write({"topic": [Decoded(jobs, gone), Decoded(jobs, None, key), Decoded(jobs, kept)]})

    assert client.get(jobs.record(jobs.schema.record_key(gone))) is None
    assert client.get(jobs.record(jobs.schema.record_key(kept))) is not None
    assert client.zrange(jobs.end_index, 0, -1) == [jobs.schema.record_key(kept).encode()]
