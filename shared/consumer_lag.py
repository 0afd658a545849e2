"""A consumer group's backlog, asked of the broker at scrape time.

The consumers report the lag they see from inside their own loop, so a consumer thread that is stuck
(a write that never returns) or dead (its backend failed) stops updating it. This collector reads the
group's committed offsets and the partitions' end offsets from the broker on every scrape, so the
backlog of such a consumer keeps growing where ConsumerLagGrowing and the dashboards look.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

NAME = "rtap_consumer_group_lag_records"


class GroupLag(Collector):
    def __init__(self, bootstrap: str, group: str, topics: Iterable[str], timeout_s: float = 2.0):
        # log_level 2: the consumer in the same process already logs a broker outage.
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
        self.group = group
        self.topics = sorted(set(topics))
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        try:
            lag = self.measure()
        except (KafkaException, TimeoutError):
            return  # broker unreachable: no sample rather than a stale one (ScrapeTargetDown/Kafka alerts cover it)
        family = GaugeMetricFamily(NAME, "Records past the consumer group's committed offsets, read from the broker at scrape time",
                                   labels=["group", "topic"])
        for topic, value in lag.items():
            family.add_metric([self.group, topic], value)
        yield family

    def measure(self) -> dict[str, int]:
        """End offset minus committed offset per partition, summed per topic; before the group's first
        commit on a partition, everything from its start offset counts (auto.offset.reset=earliest)."""
        partitions = self._partitions()
        if not partitions:
            return {}
        request = [ConsumerGroupTopicPartitions(self.group, partitions)]
        result = self.admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)[self.group].result(self.timeout_s)
        committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
        ends = self._offsets(partitions, OffsetSpec.latest())
        never = [tp for tp in partitions if committed.get((tp.topic, tp.partition), -1) < 0]
        committed.update(self._offsets(never, OffsetSpec.earliest()))
        lag = dict.fromkeys(self.topics, 0)
        for key, end in ends.items():
            lag[key[0]] += max(0, end - committed[key])
        return lag

    def _partitions(self) -> list[TopicPartition]:
        metadata = self.admin.list_topics(timeout=self.timeout_s).topics
        return [TopicPartition(t, p) for t in self.topics if t in metadata for p in sorted(metadata[t].partitions)]

    def _offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self.admin.list_offsets({tp: spec for tp in partitions}, request_timeout=self.timeout_s)
        return {(tp.topic, tp.partition): future.result(self.timeout_s).offset for tp, future in futures.items()}


def group_lag_registry(bootstrap: str, group: str, topics: Iterable[str]) -> CollectorRegistry:
    """A registry of its own (served next to the default one), so apps created twice in one process do not clash."""
    registry = CollectorRegistry()
    registry.register(GroupLag(bootstrap, group, topics))
    return registry
