"""Accepted events per second over time, from the ingestion service's own counter (scraped once a second)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infrastructure.bench.periodic import Periodic

ACCEPTED = "rtap_ingestion_events_accepted"


def accepted_total(metrics_url: str) -> float | None:
    """The sum over endpoints of the accepted-events counter, or None when the scrape failed."""
    try:
        text = httpx.get(metrics_url, timeout=2).text
    except httpx.HTTPError:
        return None
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == ACCEPTED
        for sample in family.samples
        if sample.name == ACCEPTED + "_total"
    )


@dataclass
class AcceptedRate(Periodic):
    metrics_url: str
    interval: float = 1.0
    samples: list[tuple[float, float]] = field(default_factory=list)

    def sample(self) -> None:
        value = accepted_total(self.metrics_url)
        if value is not None:
            self.samples.append((time.time(), value))

    def series(self, since: float) -> tuple[list[float], list[float]]:
        """(seconds since `since`, events/s over the preceding interval) for each pair of samples."""
        pairs = zip(self.samples, self.samples[1:], strict=False)
        points = [(t1 - since, (v1 - v0) / (t1 - t0)) for (t0, v0), (t1, v1) in pairs if t1 > t0]
        return [t for t, _ in points], [r for _, r in points]

    def sustained(self) -> float:
        """Events/s from the first to the last sample where the counter moved (idle time before and after left
        out)."""
        moved = [
            (t1, v1, t0, v0)
            for (t0, v0), (t1, v1) in zip(self.samples, self.samples[1:], strict=False)
            if v1 > v0
        ]
        if not moved:
            return 0.0
        start_t, start_v = moved[0][2], moved[0][3]
        end_t, end_v = moved[-1][0], moved[-1][1]
        return (end_v - start_v) / max(end_t - start_t, 1e-9)
