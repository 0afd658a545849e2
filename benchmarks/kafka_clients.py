"""The raw Kafka send path, client by client: durable batches (acks=all, idempotent, lz4, linger 5 ms).

No HTTP: each of --concurrency loops sends --batch-size real event records (the ingestion wire
value and key) and waits for every acknowledgement, like one batch request in the service.
Prints events/s and events per CPU-second of this process (the client's whole cost: its own
threads included; the broker runs in a separate process).

    .venv/bin/python benchmarks/kafka_clients.py [--duration 10] \\
        [--clients service,produce_batch,aiokafka,kafka-python]

Clients (a client whose package is not installed is reported and skipped):
  service        the ingestion service's EventProducer: one confluent-kafka Producer.produce_batch() call per
                 batch (produce() for a record with headers), one delivery callback object per batch, its
                 queue limit and its handling of refused records
  produce_batch  that produce_batch() call alone (BatchProducer): no queue limit, no refused records handled
  confluent-aio  confluent_kafka.aio.AIOProducer (one asyncio future per record)
  aiokafka       aiokafka AIOKafkaProducer (pure Python protocol on asyncio)
  kafka-python   kafka-python KafkaProducer (pure Python; its own sender thread)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

from confluent_kafka import KafkaError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ingestion import bench_settings, running, sample_event  # noqa: E402
from infrastructure.local.stack import Stack  # noqa: E402
from services.ingestion.enrichment import Enricher  # noqa: E402
from services.ingestion.producer import EventProducer, _Pending, per_record_errors  # noqa: E402
from services.ingestion.records import Record, SkewPolicy, now_ms, to_record  # noqa: E402
from shared.events import TRACK_EVENT  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import topics  # noqa: E402

EVENTS = topics(Settings()).events

SendBatch = Callable[[Sequence[Record]], Awaitable[None]]
DURABLE = {"acks": "all", "idempotence": True, "compression": "lz4", "linger_ms": 5}


def records(n: int) -> list[Record]:
    policy, enricher = SkewPolicy(24 * 3600 * 1000, 3600 * 1000), Enricher("network")
    return [
        to_record(TRACK_EVENT.validate_python(sample_event(i)), now_ms(), policy, enricher) for i in range(n)
    ]


async def service_client(settings: Settings, stack: AsyncExitStack) -> SendBatch:
    producer = EventProducer(settings, EVENTS.name)
    producer.start()
    stack.callback(producer.close)

    async def send(batch: Sequence[Record]) -> None:
        errors = await producer.send(batch)
        assert not any(errors), errors

    return send


class BatchProducer(EventProducer):
    """EventProducer.send reduced to its produce_batch() call (one C call and one callback object per batch):
    no queue limit, no handling of refused records or of headers."""

    async def send(self, records: Sequence[Record]) -> list[KafkaError | None]:
        if self._loop is None:
            raise RuntimeError("BatchProducer.send before start()")
        pending = _Pending(self._loop.create_future(), len(records), self._done)
        queued = self._producer.produce_batch(
            self.topic, [{"value": r.value, "key": r.key} for r in records], on_delivery=pending.delivered
        )
        assert queued == len(records), f"only {queued} of {len(records)} queued"
        return per_record_errors(records, await asyncio.wait_for(pending.future, self.timeout_s), {})


async def produce_batch_client(settings: Settings, stack: AsyncExitStack) -> SendBatch:
    producer = BatchProducer(settings, EVENTS.name)
    producer.start()
    stack.callback(producer.close)

    async def send(batch: Sequence[Record]) -> None:
        errors = await producer.send(batch)
        assert not any(errors), errors

    return send


async def confluent_aio_client(settings: Settings, stack: AsyncExitStack) -> SendBatch:
    from confluent_kafka.aio import AIOProducer

    from services.ingestion.producer import producer_config

    config = {k: v for k, v in producer_config(settings).items() if k != "logger"}
    producer = AIOProducer(config)
    stack.push_async_callback(producer.close)

    async def send(batch: Sequence[Record]) -> None:
        futures = [await producer.produce(EVENTS.name, r.value, r.key) for r in batch]
        await producer.flush()
        await asyncio.gather(*futures)

    return send


async def aiokafka_client(settings: Settings, stack: AsyncExitStack) -> SendBatch:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-not-found]

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=DURABLE["compression"],
        linger_ms=DURABLE["linger_ms"],
    )
    await producer.start()
    stack.push_async_callback(producer.stop)

    async def send(batch: Sequence[Record]) -> None:
        futures = [await producer.send(EVENTS.name, r.value, r.key) for r in batch]
        await asyncio.gather(*futures)

    return send


async def kafka_python_client(settings: Settings, stack: AsyncExitStack) -> SendBatch:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=DURABLE["compression"],
        linger_ms=DURABLE["linger_ms"],
    )
    stack.callback(producer.close)

    def send_and_wait(batch: Sequence[Record]) -> None:
        for future in [producer.send(EVENTS.name, r.value, r.key) for r in batch]:
            future.get(timeout=30)

    async def send(batch: Sequence[Record]) -> None:
        await asyncio.to_thread(send_and_wait, batch)

    return send


CLIENTS = {
    "service": service_client,
    "produce_batch": produce_batch_client,
    "confluent-aio": confluent_aio_client,
    "aiokafka": aiokafka_client,
    "kafka-python": kafka_python_client,
}


async def measure(name: str, settings: Settings, args: argparse.Namespace, pool: list[Record]) -> None:
    async with AsyncExitStack() as stack:
        try:
            send = await CLIENTS[name](settings, stack)
        except ImportError as exc:
            print(f"{name:<14} skipped: {exc.name} is not installed", flush=True)
            return
        except RuntimeError as exc:
            print(f"{name:<14} skipped: {exc}", flush=True)
            return
        batches = [
            pool[i : i + args.batch_size] for i in range(0, len(pool) - args.batch_size + 1, args.batch_size)
        ]
        await send(batches[0])  # connect and warm up
        sent = 0

        async def loop(offset: int) -> None:
            nonlocal sent
            i = offset
            while time.perf_counter() < deadline:
                await send(batches[i % len(batches)])
                sent += args.batch_size
                i += 1

        cpu, started = time.process_time(), time.perf_counter()
        deadline = started + args.duration
        await asyncio.gather(*(loop(i) for i in range(args.concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(
            f"{name:<14} {sent / elapsed:>9,.0f} events/s | client CPU {cpu / elapsed:4.2f} cores, "
            f"{sent / cpu:>9,.0f} events per client CPU-second, {cpu / sent * 1e6:5.1f} us/event | "
            f"{sent:,} events in {elapsed:.1f}s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per client (bounded)")
    parser.add_argument("--concurrency", type=int, default=8, help="batches in flight")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help=f"comma-separated, from {', '.join(CLIENTS)}"
    )
    args = parser.parse_args()
    args.duration = min(args.duration, 120.0)
    names = [n for n in args.clients.split(",") if n]
    if unknown := set(names) - set(CLIENTS):
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    pool = records(max(20 * args.batch_size, 5000))
    with tempfile.TemporaryDirectory(prefix="rtap-bench-") as tmp, ExitStack() as stack:
        settings = bench_settings(Path(tmp), None, 1)
        local = Stack(settings, only=["kafka"])
        local.check_state_dir()
        print(f"starting a private Kafka broker on {settings.kafka.bootstrap} ...", flush=True)
        stack.enter_context(running(local.component("kafka")))
        local.create_topics()
        print(
            f"{args.concurrency} batches of {args.batch_size} in flight, {args.duration:g}s per client; "
            f"{DURABLE} (value {len(pool[0].value)} bytes)",
            flush=True,
        )
        for name in names:
            asyncio.run(measure(name, settings, args, pool))


if __name__ == "__main__":
    main()
