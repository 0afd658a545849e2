"""Backfill: recompute the metrics of an event-time range with the same jobs, in bounded mode.

The range is widened to whole tumbling windows; events are read from the retained Kafka records
whose record time falls within the range plus a margin (records arrive after their event time,
by up to the clock-skew/lateness margin); only windows the bounded read saw whole are written,
under the same keys as the streaming job, so a backfill repairs and never duplicates.
"""

from __future__ import annotations

import time

from services.processing.coordinator import Bounds
from shared.settings import Settings


def bounds_for(settings: Settings, start_ms: int, end_ms: int, now_ms: int | None = None) -> Bounds:
    if end_ms <= start_ms:
        raise ValueError(f"--to ({end_ms}) must be after --from ({start_ms})")
    p = settings.processing
    window_ms = p.window_seconds * 1000
    start = start_ms - start_ms % window_ms
    end = end_ms + (-end_ms % window_ms)
    lookaround = max(p.session_gap_seconds * 1000, window_ms)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return Bounds(
        start_ms=start,
        end_ms=end,
        read_from_ms=max(0, start - lookaround - p.backfill_margin_ms),
        read_to_ms=min(now_ms, end + lookaround + p.backfill_margin_ms),
        lookaround_ms=lookaround,
    )
