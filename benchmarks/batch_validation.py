"""CPU per event of a batch body's validation and record building, in-process (no HTTP, no Kafka):
pydantic's whole-batch JSON validation (the fast path before msgspec); msgspec decoding alone; the fast path
as the app runs it (msgspec structs, values encoded by msgspec); and pydantic's validation plus its record
building (dicts encoded by orjson: what the fast path did before 2026-11-30 after validating). Then the same
two paths for the body of one event, as the track endpoint takes it.

    .venv/bin/python benchmarks/batch_validation.py [--events 500] [--rounds 5]

Each cell is the best of --rounds rounds of 40 decodes of the same body, in microseconds per event.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from pydantic import TypeAdapter
from typing_extensions import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ingestion import sample_event  # noqa: E402
from services.ingestion import fast_batch  # noqa: E402
from services.ingestion.enrichment import Enricher  # noqa: E402
from services.ingestion.records import Record, SkewPolicy, now_ms, to_record  # noqa: E402
from shared.events import TRACK_EVENT, TrackEvent  # noqa: E402
from shared.settings import IngestionSettings  # noqa: E402


class BatchEnvelope(TypedDict):
    events: list[TrackEvent]


PYDANTIC_BATCH = TypeAdapter(BatchEnvelope)


def best_us_per_event(work: Callable[[], object], events: int, rounds: int, repeats: int = 40) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            work()
        best = min(best, (time.perf_counter() - started) / repeats / events * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500, help="events per batch body")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body = orjson.dumps({"events": [sample_event(i) for i in range(args.events)]})
    policy = SkewPolicy.from_settings(IngestionSettings())
    enricher = Enricher(IngestionSettings().ip_truncation)

    def dict_records() -> list[Record]:
        received = now_ms()
        events = PYDANTIC_BATCH.validate_json(body)["events"]
        return [to_record(e, received, policy, enricher) for e in events]

    print(f"{args.events} events, {len(body) / args.events:.0f} bytes of JSON each")
    work: Callable[[], object]
    for name, work in (
        ("pydantic validate_json", lambda: PYDANTIC_BATCH.validate_json(body)),
        ("msgspec decode only", lambda: fast_batch.decode(body, args.events)),
        (
            "fast path: decode + records",
            lambda: fast_batch.records(body, args.events, now_ms(), policy, enricher),
        ),
        ("pydantic + dict records (orjson)", dict_records),
    ):
        print(f"{name:34} {best_us_per_event(work, args.events, args.rounds):6.2f} us/event")
    one = orjson.dumps(sample_event(0))
    print("one event (POST /v1/analytics/track), per request:")
    for name, work in (
        (
            "pydantic + to_record",
            lambda: to_record(TRACK_EVENT.validate_json(one), now_ms(), policy, enricher),
        ),
        ("fast path: fast_batch.record", lambda: fast_batch.record(one, now_ms(), policy, enricher)),
    ):
        print(f"{name:34} {best_us_per_event(work, 1, args.rounds, repeats=20_000):6.2f} us")


if __name__ == "__main__":
    main()
