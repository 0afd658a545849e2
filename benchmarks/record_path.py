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

    .venv/bin/python <this file> --stages

prints instead the CPU time per event of the batch path's stages (decoding the body, encoding the values, the
whole record path), each the median of 5 timings over --rounds rounds: what a batched event costs before the
Kafka client (benchmarks/kafka_clients.py) takes it.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections.abc import Callable
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


def cpu_us_per_event(work: Callable[[], object], rounds: int, events: int) -> float:
    """Median over 5 timings of this process's CPU time per event for `rounds` calls of work()."""
    timings = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(rounds):
            work()
        timings.append((time.process_time() - start) / rounds / events * 1e6)
    return statistics.median(timings)


def print_stages(body: bytes, events: int, rounds: int, policy: SkewPolicy, extra: tuple[Any, ...]) -> None:
    decoded = fast_batch.decode(body, events)
    assert decoded is not None
    stages: dict[str, Callable[[], object]] = {
        "decode the body (msgspec)": lambda: fast_batch.decode(body, events),
        "encode the values (msgspec)": lambda: [fast_batch.ENCODE(event) for event in decoded],
        "the whole record path": lambda: fast_batch.records(body, events, now_ms(), policy, *extra),
    }
    for name, work in stages.items():
        print(f"{name:<28} {cpu_us_per_event(work, rounds, events):5.2f} us of CPU per event")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--path", choices=("batch", "single"), default="batch")
    parser.add_argument("--stages", action="store_true", help="CPU per event of the batch path's stages")
    args = parser.parse_args()
    traffic = Traffic(TrafficSpec(seed=3, start_ms=now_ms()))
    events = [e for e in traffic.events(2 * args.events) if "event" in e][: args.events]
    policy, extra = SkewPolicy.from_settings(IngestionSettings()), extra_arguments()
    body = orjson.dumps({"events": events})
    singles = [orjson.dumps(event) for event in events]
    if args.stages:
        print_stages(body, args.events, args.rounds, policy, extra)
        return
    for _ in range(args.rounds):
        if args.path == "batch":
            assert fast_batch.records(body, args.events, now_ms(), policy, *extra) is not None
        else:
            for one in singles:
                assert fast_batch.record(one, now_ms(), policy, *extra) is not None


if __name__ == "__main__":
    main()
