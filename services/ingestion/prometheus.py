"""Prometheus metrics of the ingestion service.

With one worker (the default) the process registry is served. With several uvicorn workers
__main__ sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client, and /metrics
aggregates every worker's files (one process-wide view).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestionMetrics:
    def __init__(self) -> None:
        self.accepted_total = Counter(
            "rtap_ingestion_events_accepted_total", "Events durably written to Kafka", ["endpoint"]
        )
        self.rejected_total = Counter(
            "rtap_ingestion_rejected_total", "Rejected requests or batch items by reason", ["reason"]
        )
        self.adjusted_total = Counter(
            "rtap_ingestion_timestamps_adjusted_total",
            "Client timestamps replaced by receive time (clock skew)",
        )
        self.heartbeats_total = Counter(
            "rtap_ingestion_heartbeats_total", "Heartbeat records produced (one per partition per tick)"
        )
        self.heartbeat_errors_total = Counter(
            "rtap_ingestion_heartbeat_errors_total", "Heartbeat records not queued or not delivered"
        )
        self.request_seconds = Histogram(
            "rtap_ingestion_request_seconds", "Ingest request latency", ["endpoint"], buckets=LATENCY_BUCKETS
        )
        self.produce_seconds = Histogram(
            "rtap_ingestion_produce_seconds", "Produce-to-acknowledgement latency", buckets=LATENCY_BUCKETS
        )
        self.queue_depth = Gauge(
            "rtap_ingestion_producer_queue_depth",
            "Records waiting in the producer queue",
            multiprocess_mode="livesum",
        )

    def rejected(self, reason: str, n: int = 1) -> None:
        self.rejected_total.labels(reason).inc(n)

    @staticmethod
    def exposition() -> tuple[bytes, str]:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(), CONTENT_TYPE_LATEST


METRICS = IngestionMetrics()
