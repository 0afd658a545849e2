"""Ingestion's record path alone (body -> Kafka record values), for counting CPU instructions per event, a
count that the machine's load does not change (unlike CPU time on a shared host).

    cd <checkout> && PYTHONPATH=. valgrind --tool=callgrind .venv/bin/python <this file> --rounds 0
    cd <checkout> && PYTHONPATH=. valgrind --tool=callgrind .venv/bin/python <this file> --rounds 20

(the difference of the two "I refs" counts over rounds x events is the instructions per event; perf's
hardware counters are not available on this virtual machine). It runs against any
checkout on PYTHONPATH, before or after enrichment: it passes an enricher only where the record builders
take one. Paths: `batch` (fast_batch.records over a 500-event body of the load generator's traffic, its
identity calls left out: a batch holding one takes the per-item path) and `single` (fast_batch.record, one
body per event).
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import orjson

from services.ingestion import fast_batch
from services.ingestion.records import SkewPolicy, now_ms
from services.loadgen.traffic import Traffic, TrafficSpec
from shared.settings import IngestionSettings


def extra_arguments() -> tuple[Any, ...]:
    if "enricher" not in inspect.signature(fast_batch.records).parameters:
        return ()
    from services.ingestion.enrichment import Enricher, warm_up

    warm_up()
    return (Enricher(IngestionSettings().ip_truncation),)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--path", choices=("batch", "single"), default="batch")
    args = parser.parse_args()
    traffic = Traffic(TrafficSpec(seed=3, start_ms=now_ms()))
    events = [e for e in traffic.events(2 * args.events) if "event" in e][: args.events]
    policy, extra = SkewPolicy.from_settings(IngestionSettings()), extra_arguments()
    body = orjson.dumps({"events": events})
    singles = [orjson.dumps(event) for event in events]
    for _ in range(args.rounds):
        if args.path == "batch":
            assert fast_batch.records(body, args.events, now_ms(), policy, *extra) is not None
        else:
            for one in singles:
                assert fast_batch.record(one, now_ms(), policy, *extra) is not None


if __name__ == "__main__":
    main()
