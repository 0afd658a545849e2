"""Reads of the cache layout. Records stay the JSON bytes the consumer wrote: no parse, no re-encode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from services.cache.layout import JobLayout

# One round trip: the newest score, the members that have it, then their records (nil when expired).
# ARGV[1] is the record key prefix; every key of a job shares it (single Redis, not a cluster).
LATEST_WINDOW = """
local top = redis.call('ZRANGE', KEYS[1], 0, 0, 'REV', 'WITHSCORES')
if #top == 0 then return {} end
local members = redis.call('ZRANGE', KEYS[1], top[2], top[2], 'BYSCORE')
local out = {top[2]}
for i, m in ipairs(members) do out[#out + 1] = m end
for first = 1, #members, 1000 do
  local keys = {}
  for i = first, math.min(first + 999, #members) do keys[#keys + 1] = ARGV[1] .. members[i] end
  local values = redis.call('MGET', unpack(keys))
  for i = 1, #keys do out[#out + 1] = values[i] end
end
return out
"""


@dataclass
class Windows:
    records: list[bytes]

    def json(self) -> bytes:
        return b"[" + b",".join(self.records) + b"]"


class CacheStore:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._latest_script = redis.register_script(LATEST_WINDOW)

    async def latest(self, layout: JobLayout, filters: Mapping[str, Any]) -> tuple[int | None, Windows]:
        """The newest window_start in the index and every record of that window."""
        index = layout.index(filters)
        found = await self._latest_script(keys=[index], args=[layout.record("")])
        if not found:
            return None, Windows([])
        n = (len(found) - 1) // 2
        members, values = found[1 : 1 + n], found[1 + n :]
        return int(float(found[0])), await self._present(index, members, values)

    async def window_range(
        self,
        layout: JobLayout,
        filters: Mapping[str, Any],
        start: int,
        end: int,
        limit: int,
        descending: bool,
    ) -> Windows:
        """Records with start <= window_start < end, ordered by window_start."""
        index = layout.index(filters)
        lo, hi = start, f"({end}"
        bounds: tuple[int | str, int | str] = (hi, lo) if descending else (lo, hi)
        members = await self.redis.zrange(index, *bounds, byscore=True, desc=descending, offset=0, num=limit)  # type: ignore[arg-type]
        return await self._records(layout, index, members)

    async def newest(self, layout: JobLayout, filters: Mapping[str, Any], limit: int) -> Windows:
        index = layout.index(filters)
        members = await self.redis.zrange(index, 0, limit - 1, desc=True)
        return await self._records(layout, index, members)

    async def count_ending_after(self, layout: JobLayout, since_ms: int) -> int:
        return int(await self.redis.zcount(layout.end_index, since_ms, "+inf"))

    async def size(self, layout: JobLayout) -> int:
        return int(await self.redis.zcard(layout.all_index))

    async def _records(self, layout: JobLayout, index: str, members: list[bytes]) -> Windows:
        if not members:
            return Windows([])
        values = await self.redis.mget([layout.record(m.decode()) for m in members])
        return await self._present(index, members, values)

    async def _present(self, index: str, members: list[bytes], values: list[bytes | None]) -> Windows:
        gone = [m for m, v in zip(members, values, strict=True) if v is None]
        if gone:  # expired or deleted windows: drop them from this index too
            await self.redis.zrem(index, *gone)
        return Windows([v for v in values if v is not None])
