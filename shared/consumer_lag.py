"""A consumer group's backlog, read from the broker by a thread of its own.

The consumers report the lag they see from inside their own loop, so a consumer thread that is stuck
(a write that never returns) or dead (its backend failed) stops updating it. This collector's thread reads
the group's committed offsets and the partitions' end offsets from the broker every `interval_s`,
independently of the consumer thread, so the backlog of such a consumer keeps growing where
ConsumerLagGrowing and the dashboards look. A scrape serves the last measurement and never waits on the
broker; while the broker cannot be asked, the last measurement is served until it is `stale_after`
intervals old, then no sample.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.logging import get_logger

log = get_logger("consumer_lag")

NAME = "rtap_consumer_group_lag_records"
RETRY_S = 0.5  # after a failed measurement (a broker that just started has no group coordinator yet)


class GroupLag(Collector):
    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Iterable[str],
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
        stale_after: int = 3,
    ):
        # log_level 2: the consumer in the same process already logs a broker outage.
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
        # Committed offsets come from a consumer of the group that never joins it: the admin client's
        # list_consumer_group_offsets crashes librdkafka 2.x (a null group handle in its OffsetFetch error
        # path) while the broker's group coordinator is still loading.
        self.offsets = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 2}
        )
        self.group = group
        self.topics = sorted(set(topics))
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_age_s = stale_after * interval_s + timeout_s
        self.last: tuple[float, dict[str, int]] | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, name=f"group-lag-{group}", daemon=True)
        self.thread.start()

    def collect(self) -> Iterator[Metric]:
        """The last measurement, unless it is stale
        (broker unreachable for a while: ScrapeTargetDown/Kafka alerts)."""
        last = self.last
        if last is None or time.monotonic() - last[0] > self.max_age_s:
            return
        family = GaugeMetricFamily(
            NAME,
            "Records past the consumer group's committed offsets, read from the broker in the background",
            labels=["group", "topic"],
        )
        for topic, value in last[1].items():
            family.add_metric([self.group, topic], value)
        yield family

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(self.interval_s + 4 * self.timeout_s)
        if not self.thread.is_alive():
            self.offsets.close()

    def _poll(self) -> None:
        failing = False
        while not self.stopped.is_set():
            try:
                self.last = (time.monotonic(), self.measure())
                if failing:
                    log.info("consumer group lag measured again", group=self.group)
                failing = False
            except Exception as exc:  # broker unreachable or anything else: keep the last figure until stale
                if not failing:
                    log.warning(
                        "consumer group lag not measured; retrying",
                        group=self.group,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                failing = True
            self.stopped.wait(min(RETRY_S, self.interval_s) if failing else self.interval_s)

    def measure(self) -> dict[str, int]:
        """End offset minus committed offset per partition, summed per topic; before the group's first
        commit on a partition, everything from its start offset counts (auto.offset.reset=earliest)."""
        partitions = self._partitions()
        if not partitions:
            return {}
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in self.offsets.committed(partitions, timeout=self.timeout_s)
        }
        ends = self._offsets(partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        never = [tp for tp in partitions if committed.get((tp.topic, tp.partition), -1) < 0]
        committed.update(self._offsets(never, OffsetSpec.earliest()))  # type: ignore[no-untyped-call]
        lag = dict.fromkeys(self.topics, 0)
        for key, end in ends.items():
            lag[key[0]] += max(0, end - committed[key])
        return lag

    def _partitions(self) -> list[TopicPartition]:
        metadata = self.admin.list_topics(timeout=self.timeout_s).topics
        return [
            TopicPartition(t, p) for t in self.topics if t in metadata for p in sorted(metadata[t].partitions)
        ]

    def _offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self.admin.list_offsets({tp: spec for tp in partitions}, request_timeout=self.timeout_s)
        return {
            (tp.topic, tp.partition): future.result(self.timeout_s).offset for tp, future in futures.items()
        }


class GroupLagRegistry(CollectorRegistry):
    """A registry of its own (served next to the default one),
    so apps created twice in one process do not clash."""

    def __init__(self, lag: GroupLag):
        super().__init__()
        self.lag = lag
        self.register(lag)

    def close(self) -> None:
        """Stop the measuring thread (it is a daemon: a process may also just exit)."""
        self.lag.close()


def group_lag_registry(
    bootstrap: str, group: str, topics: Iterable[str], interval_s: float = 5.0
) -> GroupLagRegistry:
    """The group's lag collector, its measuring thread started."""
    return GroupLagRegistry(GroupLag(bootstrap, group, topics, interval_s))
