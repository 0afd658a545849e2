"""The Kafka broker serves its JMX metrics to Prometheus through the exporter java agent."""

from __future__ import annotations

import httpx
import pytest
from kafka import KafkaProducer

from infrastructure.local.process import wait_until

pytestmark = pytest.mark.kafka


def test_broker_exports_topic_metrics_and_produce_failures(kafka, settings):
    producer = KafkaProducer(bootstrap_servers=kafka)
    producer.send("analytics_events", b"{}").get(timeout=10)
    producer.close()
    body = httpx.get(f"http://127.0.0.1:{settings.kafka.jmx_exporter_port}/metrics", timeout=10).text
    assert 'kafka_server_brokertopicmetrics_messagesin_total{topic="analytics_events"}' in body
    assert "kafka_server_brokertopicmetrics_failedproducerequests_total" in body
    assert "kafka_server_replicamanager_underreplicatedpartitions" in body


def test_prometheus_scrapes_the_broker(kafka, prometheus):
    def kafka_up() -> bool:
        result = httpx.get(
            f"{prometheus}/api/v1/query", params={"query": 'up{job="kafka"}'}, timeout=5
        ).json()
        return any(sample["value"][1] == "1" for sample in result["data"]["result"])

    assert wait_until(kafka_up, 30, 1), "Prometheus has no successful scrape of job=kafka"
