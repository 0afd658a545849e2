"""The cache API's SSE streams: one Redis connection subscribed to every job's channel, fanned out in-process.

A stream costs a bounded queue of the windows that match its filters, never a Redis connection: at most
`cache.max_streams` are open per process (TooManyStreams beyond), and a stream that falls
`cache.stream_queue` windows behind is ended (EventSource clients reconnect) instead of buffering without
bound. When the subscription breaks, every open stream ends and the hub subscribes again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import orjson
from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.logging import get_logger

log = get_logger("cache.streams")

OPEN = Gauge("rtap_cache_streams_open", "Open SSE streams of the cache API")
RESUBSCRIBE_SECONDS = 1.0


class TooManyStreams(Exception):
    """Every stream slot of this process is taken."""


class SubscriptionUnavailable(Exception):
    """The shared Redis subscription is not established (Redis unreachable)."""


def matches(record: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    return all(str(record.get(k)) == v for k, v in filters.items())


class Stream:
    """One client's view of a channel: the windows matching its filters published since it opened,
    or why it ended."""

    def __init__(self, size: int, filters: Mapping[str, str]):
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self.filters = dict(filters)
        self.ended: str | None = None

    def offer(self, payload: bytes) -> None:
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.end("the client fell behind (cache.stream_queue)")

    def end(self, reason: str) -> None:
        self.ended = self.ended or reason

    async def next(self, timeout: float) -> bytes | None:
        """The next window, or None when none arrived within timeout."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class StreamHub:
    def __init__(
        self, redis: Redis, channels: Iterable[str], max_streams: int, queue_size: int, ready_timeout: float
    ):
        self.redis = redis
        self.channels = sorted(set(channels))
        self.max_streams = max_streams
        self.queue_size = queue_size
        self.ready_timeout = ready_timeout
        self.streams: dict[str, set[Stream]] = {c: set() for c in self.channels}
        self.open_count = 0
        self.subscribed = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def open(self, channel: str, filters: Mapping[str, str]) -> AsyncIterator[Stream]:
        """A stream of `channel`, once the shared subscription is live;
        TooManyStreams / SubscriptionUnavailable before."""
        if self.open_count >= self.max_streams:
            raise TooManyStreams(self.max_streams)
        stream = Stream(self.queue_size, filters)
        self.open_count += 1
        OPEN.inc()
        self.streams[channel].add(stream)
        try:
            await self._wait_subscribed()
            yield stream
        finally:
            self.streams[channel].discard(stream)
            self.open_count -= 1
            OPEN.dec()

    async def close(self) -> None:
        if self.reader:
            self.reader.cancel()
            with suppress(asyncio.CancelledError):
                await self.reader
            self.reader = None

    async def _wait_subscribed(self) -> None:
        if self.reader is None or self.reader.done():
            self.reader = asyncio.create_task(self._read(), name="cache-stream-hub")
        try:
            await asyncio.wait_for(self.subscribed.wait(), self.ready_timeout)
        except TimeoutError:
            raise SubscriptionUnavailable(f"no Redis subscription within {self.ready_timeout:g} s") from None

    async def _read(self) -> None:
        """Subscribe, fan every message out, and start over (ending the open streams) when Redis fails."""
        while True:
            try:
                await self._subscribe_and_fan_out()
            except RedisError as exc:
                log.warning("stream subscription lost; resubscribing", error=str(exc))
            self.subscribed.clear()
            self._end_all("the Redis subscription was lost")
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def _subscribe_and_fan_out(self) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(*self.channels)
            confirmed = 0
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is None:
                    continue
                if msg["type"] == "subscribe":
                    confirmed += 1
                    if confirmed == len(self.channels):
                        self.subscribed.set()
                elif msg["type"] == "message" and self.streams.get(msg["channel"].decode()):
                    self._fan_out(self.streams[msg["channel"].decode()], msg["data"])
                    # a burst (a consumer batch) must not fill the queues before streams drain them
                    await asyncio.sleep(0)
        finally:
            with suppress(RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    @staticmethod
    def _fan_out(streams: set[Stream], payload: bytes) -> None:
        """The window to every stream whose filters it matches (parsed once, and only if a stream filters)."""
        record: dict[str, Any] | None = None
        for stream in list(streams):
            if stream.filters:
                record = record if record is not None else orjson.loads(payload)
                if not matches(record, stream.filters):
                    continue
            stream.offer(payload)

    def _end_all(self, reason: str) -> None:
        for streams in self.streams.values():
            for stream in streams:
                stream.end(reason)
