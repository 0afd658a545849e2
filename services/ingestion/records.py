"""From a validated event to the Kafka record: id, receive time, clock-skew policy, enrichment and IP
truncation (services/ingestion/enrichment.py), key and value.

Clock-skew policy: a client timestamp more than max_clock_skew_ms before the receive time, or
more than max_future_skew_ms after it, is replaced by the receive time. The record then carries
the header `rtap-original-timestamp` (the client's value), the response flags the item with
"timestamp_adjusted": true and rtap_ingestion_timestamps_adjusted_total counts it. A missing
timestamp is the receive time, without a flag. The value written is the one the jobs window by and
raw storage keeps.

The future bound is what keeps one client's clock from closing everyone's windows early: the
watermark trails the newest event time by watermark_delay_ms, so an event time at most
max_future_skew_ms ahead of the receive time leaves every other client at least
Settings.lateness_allowance_ms (watermark_delay_ms - max_future_skew_ms); the settings model
refuses a future bound above half the watermark delay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec
import orjson
from uuid_utils import uuid7

from services.ingestion.enrichment import Enricher
from shared.events import EVENT, HEARTBEAT_TYPE, TrackEvent, complete
from shared.settings import IngestionSettings

ORIGINAL_TIMESTAMP_HEADER = "rtap-original-timestamp"
HEARTBEAT_KEY = HEARTBEAT_TYPE.encode()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class SkewPolicy:
    max_past_ms: int
    max_future_ms: int

    @classmethod
    def from_settings(cls, s: IngestionSettings) -> SkewPolicy:
        return cls(s.max_clock_skew_ms, s.max_future_skew_ms)

    def bound(self, timestamp: int | None, received_at: int) -> tuple[int, bool]:
        """(event time to store, whether the client's value was replaced)."""
        if timestamp is None:
            return received_at, False
        if received_at - self.max_past_ms <= timestamp <= received_at + self.max_future_ms:
            return timestamp, False
        return received_at, True


class Record(msgspec.Struct, gc=False):
    """One Kafka record and what the response says of it. A msgspec struct: built in C, once per event."""

    id: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] | None
    timestamp_adjusted: bool


def to_record(event: TrackEvent, received_at: int, policy: SkewPolicy, enricher: Enricher) -> Record:
    """event: a validated TrackEvent (mutated into the wire value: enriched, its IP truncated).
    fast_batch._record mirrors this for structs."""
    value = complete(event)
    info, context = value["event"], value["context"]
    info["id"] = info["id"] or new_event_id()
    client_timestamp = value["timestamp"]
    value["timestamp"], adjusted = policy.bound(client_timestamp, received_at)
    value["received_at"] = received_at
    enrichment, context["ip_address"] = enricher(
        context["url"], context["referrer"], value["device"]["user_agent"], context["ip_address"]
    )
    value["enrichment"] = orjson.Fragment(enrichment)
    return make_record(
        info["id"], value["context"]["session_id"], orjson.dumps(value), client_timestamp, adjusted
    )


def new_event_id() -> str:
    return str(uuid7())


def make_record(
    event_id: str, session_id: str, value: bytes, client_timestamp: int | None, adjusted: bool
) -> Record:
    headers = [(ORIGINAL_TIMESTAMP_HEADER, str(client_timestamp).encode())] if adjusted else None
    return Record(event_id, session_id.encode(), value, headers, adjusted)


def heartbeat_value(now: int) -> bytes:
    """A heartbeat in the full wire shape, so every reader parses it like an event."""
    return orjson.dumps(EVENT.heartbeat(str(uuid7()), now))
