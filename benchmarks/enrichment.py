"""CPU per event of ingestion's enrichment (services/ingestion/enrichment.py) alone, in one process.

    .venv/bin/python benchmarks/enrichment.py [--events 20000]

Three inputs: the load generator's traffic (19 agents, a dozen sources: every lookup a cache hit after the
first few events), the same with a distinct user agent per event (every agent a cache miss: ua-parser runs),
and distinct referrer hosts per event (every referrer a cache miss: the database walk runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.ingestion import enrichment  # noqa: E402
from services.ingestion.enrichment import Enricher, warm_up  # noqa: E402
from services.loadgen.traffic import Traffic, TrafficSpec  # noqa: E402


def inputs(n: int, vary: str) -> list[tuple[str, str | None, str, str | None]]:
    events = Traffic(TrafficSpec(seed=1, start_ms=1_700_000_000_000)).events(n)
    out = []
    for i, e in enumerate(events):
        ctx, agent = e["context"], e["device"]["user_agent"]
        referrer = ctx["referrer"]
        if vary == "agent":
            agent = f"{agent} build/{i}"
        if vary == "referrer":
            referrer = f"https://site-{i}.example/page"
        out.append((ctx["url"], referrer, agent, ctx["ip_address"]))
    return out


def us_per_event(run: Callable[[Any], object], items: list[Any]) -> float:
    started = time.process_time()
    for item in items:
        run(item)
    return (time.process_time() - started) / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    warm_up()
    enricher = Enricher("network")
    for vary in ("none", "agent", "referrer"):
        for cached in (
            enrichment.agent_fields,
            enrichment.url_host,
            enrichment.database_class,
            enrichment.cached_enrichment_json,
        ):
            cached.cache_clear()
        items = inputs(args.events, vary)
        cost = us_per_event(lambda item: enricher(*item), items)
        print(f"distinct {vary:8}: {cost:6.1f} us of CPU per event")


if __name__ == "__main__":
    main()
