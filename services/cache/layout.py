"""The Redis key layout of one metric job, derived from its MetricSchema.

    {prefix}:{job}:w:{record_key}        the window record as JSON (string, TTL)
    {prefix}:{job}:idx                   sorted set of record keys scored by window_start (all windows)
    {prefix}:{job}:idx:{col}={v}&...     the same, one per combination of group-key values and per
                                         index column value (for example session_id=..., user_id=...)
    {prefix}:{job}:end                   sorted set of record keys scored by window_end
    {prefix}:{job}:updates               pub/sub channel: every written window, as JSON

Every index keeps its newest `windows_per_key` members; every key expires after `ttl_seconds`
without writes. Writes are idempotent: a replayed window overwrites its record and re-adds the
same member with the same score, so nothing is ever counted twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any
from urllib.parse import quote

import orjson

from shared.metric_schema import MetricSchema

SESSION_KEY = "session_id"


def sessions_job(schemas: Iterable[MetricSchema], configured: str = "") -> str | None:
    """The job behind the session routes: `configured` (RTAP_CACHE__SESSIONS_JOB) when set, else the one
    job whose windows are keyed by session_id alone; None when no job is. ValueError when the configured job
    is not a registered schema keyed by session_id, or when several qualify and none is configured."""
    keyed = [s.name for s in schemas if SESSION_KEY in s.group_keys]
    if configured:
        if configured not in keyed:
            raise ValueError(
                f"RTAP_CACHE__SESSIONS_JOB={configured!r} is not a job keyed by {SESSION_KEY}; "
                f"those are: {', '.join(keyed) or 'none'}"
            )
        return configured
    alone = [s.name for s in schemas if s.group_keys == (SESSION_KEY,)]
    if len(alone) > 1:
        raise ValueError(
            f"jobs {', '.join(alone)} are all keyed by {SESSION_KEY}: "
            "choose one with RTAP_CACHE__SESSIONS_JOB"
        )
    return alone[0] if alone else None


@dataclass(frozen=True)
class JobLayout:
    prefix: str
    schema: MetricSchema
    index_columns: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        return f"{self.prefix}:{self.schema.name}"

    @property
    def all_index(self) -> str:
        return f"{self.base}:idx"

    @property
    def end_index(self) -> str:
        return f"{self.base}:end"

    @property
    def channel(self) -> str:
        return f"{self.base}:updates"

    @property
    def filter_columns(self) -> tuple[str, ...]:
        """Columns a reader may filter on: the group keys plus configured index columns in the schema."""
        extra = tuple(
            c for c in self.index_columns if c in self.schema.column_names and c not in self.schema.group_keys
        )
        return self.schema.group_keys + extra

    def record(self, record_key: str) -> str:
        return f"{self.base}:w:{record_key}"

    def index(self, filters: Mapping[str, Any]) -> str:
        """The sorted set holding exactly the windows that match `filters` (column -> value)."""
        if not filters:
            return self.all_index
        parts = "&".join(f"{col}={quote(str(filters[col]), safe='')}" for col in sorted(filters))
        return f"{self.base}:idx:{parts}"

    def indexes_of(self, record: Mapping[str, Any]) -> list[str]:
        """Every index a record belongs to: all, each non-empty subset of group keys, each index column."""
        keys = self.schema.group_keys
        subsets = [dict.fromkeys(combo) for n in range(len(keys) + 1) for combo in combinations(keys, n)]
        out = [self.index({k: record[k] for k in subset}) for subset in subsets]
        extra = [c for c in self.filter_columns if c not in keys and record.get(c) is not None]
        return out + [self.index({c: record[c]}) for c in extra]


def write_records(
    pipe: Any, records: Iterable[tuple[JobLayout, dict[str, Any]]], windows_per_key: int, ttl: int
) -> None:
    """Queue the idempotent writes of validated records on a Redis pipeline, in order: each record's value,
    then per index they touch one ZADD of all their members, one trim to the newest `windows_per_key` and
    one expiry: the state trimming after each record gives, in three commands per index, not per record."""
    members: dict[str, dict[str, int]] = defaultdict(dict)
    for layout, record in records:
        schema = layout.schema
        member = schema.record_key(record)
        pipe.set(layout.record(member), orjson.dumps(record), ex=ttl)
        for index in layout.indexes_of(record):
            members[index][member] = record[schema.window_start]
        members[layout.end_index][member] = record[schema.window_end]
    for index, scored in members.items():
        pipe.zadd(index, scored)
        pipe.zremrangebyrank(index, 0, -windows_per_key - 1)
        pipe.expire(index, ttl)


def publish_record(pipe: Any, layout: JobLayout, record: dict[str, Any]) -> None:
    """Queue the publication of a written record on the job's channel (the SSE streams)."""
    pipe.publish(layout.channel, orjson.dumps(record))


def delete_record(pipe: Any, layout: JobLayout, key_columns: dict[str, Any]) -> None:
    """Queue the removal of a window (an upsert-kafka tombstone) from the record key and the job-wide indexes.

    Filtered indexes may still name it; readers skip members whose record is gone.
    """
    member = layout.schema.record_key(key_columns)
    pipe.delete(layout.record(member))
    for index in (layout.all_index, layout.end_index):
        pipe.zrem(index, member)


def layouts(
    prefix: str, schemas: Iterable[MetricSchema], index_columns: Iterable[str] = ()
) -> dict[str, JobLayout]:
    cols = tuple(index_columns)
    return {s.name: JobLayout(prefix, s, cols) for s in schemas}
