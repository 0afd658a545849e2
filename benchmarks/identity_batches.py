"""CPU per item of POST /v1/analytics/batch's body handling, in-process (no HTTP, no Kafka): `rtap load`
batches of events only, and batches where sessions log in or are aliased (identity calls among the events,
which the whole-batch msgspec path refuses, so each item takes its own path).

    .venv/bin/python benchmarks/identity_batches.py [--batches 200] [--rounds 5]

Each line is the best of --rounds rounds over the same bodies, in microseconds of process CPU per item.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.ingestion.records import SkewPolicy  # noqa: E402
from services.ingestion.routes.events import batch_records  # noqa: E402
from services.loadgen.traffic import Traffic, TrafficSpec  # noqa: E402

BATCH_ITEMS = 100
START_MS = 1_700_000_000_000


class Limits:
    max_batch_events = 1_000


class Ingestion:
    """What batch_records reads of the app's state: the batch limit and the clock-skew policy."""

    limits = Limits()
    policy = SkewPolicy(10**13, 10**13)


def bodies(login_fraction: float, alias_fraction: float, batches: int) -> list[bytes]:
    spec = TrafficSpec(
        seed=1, start_ms=START_MS, login_fraction=login_fraction, alias_fraction=alias_fraction
    )
    traffic = Traffic(spec)
    return [orjson.dumps({"events": traffic.events(BATCH_ITEMS)}) for _ in range(batches)]


def cpu_per_item(batch_bodies: list[bytes], rounds: int) -> float:
    ing: Any = Ingestion()
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for body in batch_bodies:
            batch_records(ing, body)
        best = min(best, time.process_time() - started)
    return best / (len(batch_bodies) * BATCH_ITEMS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for login, alias in ((0.0, 0.0), (0.2, 0.05)):
        sample = bodies(login, alias, args.batches)
        mixed = sum(any("event" not in item for item in orjson.loads(b)["events"]) for b in sample)
        print(
            f"login_fraction={login} alias_fraction={alias}: {cpu_per_item(sample, args.rounds):.1f} us CPU "
            f"per item ({mixed} of {len(sample)} batches hold an identity call)"
        )


if __name__ == "__main__":
    main()
