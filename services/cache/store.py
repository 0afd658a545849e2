"""Reads of the cache layout. Records stay the JSON bytes the consumer wrote: no parse, no re-encode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from redis.asyncio import Redis

from services.cache.layout import JobLayout

LATEST_SCAN = 512  # members read to find every record of the newest window in one round trip


@dataclass
class Windows:
    records: list[bytes]

    def json(self) -> bytes:
        return b"[" + b",".join(self.records) + b"]"


class CacheStore:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def latest(self, layout: JobLayout, filters: Mapping[str, Any]) -> tuple[int | None, Windows]:
        """The newest window_start in the index and every record of that window."""
        index = layout.index(filters)
        top = await self.redis.zrange(index, "+inf", "-inf", byscore=True, desc=True, offset=0, num=LATEST_SCAN, withscores=True)
        if not top:
            return None, Windows([])
        newest = top[0][1]
        members = [m for m, score in top if score == newest]
        if len(members) == len(top) == LATEST_SCAN:
            members = await self.redis.zrange(index, newest, newest, byscore=True)
        return int(newest), await self._records(layout, index, members)

    async def window_range(self, layout: JobLayout, filters: Mapping[str, Any], start: int, end: int,
                           limit: int, descending: bool) -> Windows:
        """Records with start <= window_start < end, ordered by window_start."""
        index = layout.index(filters)
        lo, hi = start, f"({end}"
        bounds = (hi, lo) if descending else (lo, hi)
        members = await self.redis.zrange(index, *bounds, byscore=True, desc=descending, offset=0, num=limit)
        return await self._records(layout, index, members)

    async def newest(self, layout: JobLayout, filters: Mapping[str, Any], limit: int) -> Windows:
        index = layout.index(filters)
        members = await self.redis.zrange(index, 0, limit - 1, desc=True)
        return await self._records(layout, index, members)

    async def count_ending_after(self, layout: JobLayout, since_ms: int) -> int:
        return await self.redis.zcount(layout.end_index, since_ms, "+inf")

    async def size(self, layout: JobLayout) -> int:
        return await self.redis.zcard(layout.all_index)

    async def _records(self, layout: JobLayout, index: str, members: list[bytes]) -> Windows:
        if not members:
            return Windows([])
        values = await self.redis.mget([layout.record(m.decode()) for m in members])
        gone = [m for m, v in zip(members, values) if v is None]
        if gone:  # expired or deleted windows: drop them from this index too
            await self.redis.zrem(index, *gone)
        return Windows([v for v in values if v is not None])
