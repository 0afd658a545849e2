"""What the ingestion routes share: settings, the producer, the clock-skew policy, the enricher, the partition
count, the write-key checks, and the heartbeats that keep every partition's event time moving."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from fastapi import Request

from services.ingestion.enrichment import Enricher, warm_up
from services.ingestion.errors import unauthorized, unavailable
from services.ingestion.producer import EventProducer, Unavailable
from services.ingestion.prometheus import METRICS
from services.ingestion.records import Record, SkewPolicy
from shared.api_keys import WRITE_KEY, key_matches, presented_key
from shared.settings import Settings
from shared.topics import topics

PARTITIONS_REFRESH_SECONDS = 30


class Ingestion:
    """The service's state, one per app; the routes read it and call produce()."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limits = settings.ingestion
        self.max_event_bytes = settings.kafka.max_event_bytes
        events = topics(settings).events
        self.metrics = METRICS
        self.producer = EventProducer(settings, events.name, self.metrics.heartbeat_errors_total.inc)
        self.policy = SkewPolicy.from_settings(settings.ingestion)
        self.enricher = Enricher(settings.ingestion.ip_truncation)
        warm_up()  # the rule data and the referrer database loaded before the first request
        self.partitions = events.partitions

    def check_key(self, request: Request) -> None:
        """401 unless no write keys are configured or the request carries a valid one outside its body."""
        if not self.header_key_checked(request):
            raise unauthorized()

    def header_key_checked(self, request: Request) -> bool:
        """Check a write key given outside the body (header, Bearer, Basic username, ?write_key=), before the
        body is read. True: none is needed, or a valid one was given; False: none was given. Wrong: 401."""
        keys = self.limits.write_keys
        if not keys:
            return True
        key = presented_key(WRITE_KEY, request)
        if not key:
            return False
        if not key_matches(key, keys):
            raise unauthorized()
        return True

    def check_body_key(self, body_key: str | None) -> None:
        """Segment's body writeKey, for a request that carried no key outside its body."""
        if not key_matches(body_key, self.limits.write_keys):
            raise unauthorized()

    async def produce(self, records: Sequence[Record]) -> list[Any]:
        """Per record: None (acknowledged by Kafka) or its error; a 503 IngestError when none was queued."""
        started = time.perf_counter()
        try:
            return await self.producer.send(records)
        except Unavailable as exc:
            raise unavailable(str(exc), self.limits.retry_after_seconds) from None
        finally:
            self.metrics.produce_seconds.observe(time.perf_counter() - started)
            self.metrics.queue_depth.set(self.producer.queue_depth())

    async def heartbeats(self) -> None:
        """Forever: a heartbeat record per partition each interval; the partition count refreshed at times."""
        interval = self.limits.heartbeat_interval_ms / 1000
        refresh_every = max(1, int(PARTITIONS_REFRESH_SECONDS / interval))
        for tick in itertools.count():
            if tick % refresh_every == 0:
                await self._refresh_partitions()
            self.producer.heartbeat(self.partitions)
            self.metrics.heartbeats_total.inc(self.partitions)
            await asyncio.sleep(interval)

    async def _refresh_partitions(self) -> None:
        with suppress(Exception):
            self.partitions = await asyncio.to_thread(self.producer.partitions, 2.0)
