"""`rtap dlq` against real Kafka and the storage service: a refused record is listed, shown and left alone by
a replay while still invalid; a record valid now is replayed to its source topic and stored once however often
the replay runs; filters and --limit bound the output; hostile dead letters break nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from typer.testing import CliRunner

from infrastructure import cli
from services.processing.registry import load_schemas
from shared import dead_letters
from tests.conftest import REPO_ROOT
from tests.storage.conftest import event_metric, raw_event, scalar, unique, wait_for
from tests.topics import DEAD_LETTER, EVENTS, TOPICS

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]
COLOR_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE")  # plain text, whatever the terminal the tests run in
EVENT_ROWS = "SELECT count() AS c FROM analytics_events FINAL WHERE event_id = {id:String}"


def now_ms() -> int:
    return int(time.time() * 1000)


def produce_one(
    bootstrap: str,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
    partition: int = -1,
    timestamp_ms: int = 0,
) -> tuple[int, int]:
    """One record, delivered; its (partition, offset)."""
    delivered: list[tuple[Any, Message]] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(
        topic,
        key=key,
        value=value,
        headers=headers,
        partition=partition,
        timestamp=timestamp_ms,
        on_delivery=lambda error, msg: delivered.append((error, msg)),
    )
    assert producer.flush(15) == 0
    ((error, msg),) = delivered
    assert error is None, error
    return int(msg.partition()), int(msg.offset())


def copies(bootstrap: str, topic: str, partition: int, dlq_offset: int) -> list[Message]:
    """The records of `topic`/`partition` that a replay of dead letter `dlq_offset` produced (read to the
    partition's end)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("copies"), "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, partition, 0)])
    found, marker = [], str(dlq_offset).encode()
    try:
        while (msg := consumer.poll(10)) is not None and not msg.error():
            if (dead_letters.REPLAYED_FROM_DLQ_OFFSET, marker) in (msg.headers() or []):
                found.append(msg)
        assert msg is not None and msg.error().code() == KafkaError._PARTITION_EOF, msg and msg.error()
    finally:
        consumer.close()
    return found


def dlq(*args: str) -> Any:
    """`rtap dlq ...` in this process (the session's settings are in os.environ)."""
    return CliRunner().invoke(cli.app, ["dlq", *args])


def dlq_json(*args: str) -> dict[str, Any]:
    result = dlq(*args, "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = orjson.loads(result.stdout)
    return document


def dlq_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m infrastructure.cli dlq ...` in a process of its own, with the session's settings."""
    env = {k: v for k, v in os.environ.items() if k not in COLOR_ENV}
    return subprocess.run(
        [sys.executable, "-m", "infrastructure.cli", "dlq", *args],
        cwd=REPO_ROOT,
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_refused_raw_event_is_listed_shown_and_left_alone_by_replay(kafka, storage_service):
    since = now_ms() - 1_000
    session = unique("dlq-bad")
    value = orjson.dumps({"event": {"type": "click"}, "context": {"session_id": session}})
    partition, offset = produce_one(kafka, EVENTS.name, session.encode(), value)

    def listed() -> list[dict[str, Any]]:
        found = dlq_json("list", "--reason", "event.id", "--source-topic", EVENTS.name, "--since", str(since))
        mine = (partition, offset)
        return [d for d in found["dead_letters"] if (d["source_partition"], d["source_offset"]) == mine]

    (letter,) = wait_for(listed, 60, 0.5)
    assert letter["consumer"] == "storage" and "event.id" in letter["reason"]

    table = dlq_process("list", "--reason", "EVENT.ID", "--since", str(since))
    assert table.returncode == 0, table.stderr
    assert str(letter["offset"]) in table.stdout and f"{EVENTS.name}/{partition}/{offset}" in table.stdout
    assert "stays in the dead-letter topic" in table.stdout

    shown = dlq_process("show", str(letter["offset"]))
    assert shown.returncode == 0, shown.stderr
    assert session in shown.stdout and '"type": "click"' in shown.stdout and "event.id" in shown.stdout

    replay = dlq_process("replay", "--reason", "event.id", "--since", str(since), "--json")
    assert replay.returncode == 0, replay.stderr
    summary = orjson.loads(replay.stdout)
    assert summary["replayed"] == 0 and summary["produce_failures"] == 0
    refused = {e["offset"]: e["refusal"] for e in summary["still_invalid_examples"]}
    assert "event.id" in refused[letter["offset"]] and refused[letter["offset"]].startswith("storage: ")
    assert copies(kafka, EVENTS.name, partition, letter["offset"]) == []


def test_a_record_valid_now_is_replayed_to_its_source_and_stored_once_however_often(kafka, api):
    since = now_ms() - 1_000
    session, partition = unique("dlq-ok"), 1
    event = raw_event(session, str(uuid.uuid4()))
    rule = f"an older rule {session}"
    headers = dead_letters.headers(rule, EVENTS.name, partition, 12_345, "storage")
    _, dl_offset = produce_one(kafka, DEAD_LETTER.name, session.encode(), orjson.dumps(event), headers)
    chosen = ("--reason", rule, "--since", str(since))

    dry = dlq_json("replay", *chosen, "--dry-run")
    assert (dry["selected"], dry["replayed"], dry["still_invalid"]) == (1, 1, 0)
    for _ in range(2):
        summary = dlq_json("replay", *chosen)
        assert (summary["selected"], summary["replayed"], summary["produce_failures"]) == (1, 1, 0)

    replayed = copies(kafka, EVENTS.name, partition, dl_offset)
    assert len(replayed) == 2, "each replay run produces the record once, the dry run not at all"
    assert {(m.key(), m.value()) for m in replayed} == {(session.encode(), orjson.dumps(event))}
    later = raw_event(session, str(uuid.uuid4()))  # stored after both copies: same partition, after them
    produce_one(kafka, EVENTS.name, session.encode(), orjson.dumps(later), partition=partition)
    wait_for(lambda: scalar(api, EVENT_ROWS, id=later["event"]["id"]) == 1, 60)
    assert scalar(api, EVENT_ROWS, id=event["event"]["id"]) == 1
    assert [d["offset"] for d in dlq_json("list", *chosen)["dead_letters"]] == [dl_offset]


def test_replay_judges_a_metric_record_by_every_consumer_of_its_topic(kafka):
    since = now_ms() - 1_000
    tag = unique("dlq-metric")
    topic = TOPICS.metric(load_schemas()["event_metrics"]).name
    valid = event_metric(1_767_225_600_000, tag, "desktop", 3, 1)
    invalid = {k: v for k, v in valid.items() if k != "window_end"}
    offsets = [
        produce_one(
            kafka,
            DEAD_LETTER.name,
            b"{}",
            orjson.dumps(record),
            dead_letters.headers(tag, topic, 0, 7, "cache"),
        )[1]
        for record in (valid, invalid)
    ]
    summary = dlq_json("replay", "--reason", tag, "--since", str(since), "--dry-run")
    assert (summary["selected"], summary["replayed"]) == (2, 1)
    ((refused_offset, refusal),) = [(e["offset"], e["refusal"]) for e in summary["still_invalid_examples"]]
    assert refused_offset == offsets[1] and refusal.startswith("storage: ") and "window_end" in refusal


def test_filters_and_limit_bound_the_output_and_hostile_dead_letters_break_nothing(kafka):
    since, tag = now_ms() - 60_000, unique("dlq-filters")
    offsets = [
        produce_one(
            kafka,
            DEAD_LETTER.name,
            None,
            f"value {i}".encode(),
            dead_letters.headers(f"{tag} reason-{i % 2}", f"{tag}-topic-{i % 3}", 0, i, "storage"),
            timestamp_ms=since + i,
        )[1]
        for i in range(6)
    ]
    hostile_value = bytes(range(256)) * 3_000
    hostile_headers = [
        ("reason", b"\xff\xfe" + tag.encode() + b" \x1b[31mred[/] \x00"),
        ("source_topic", b"\xc3\x28"),
        ("source_partition", b"-1x"),
    ]
    hostile = produce_one(
        kafka, DEAD_LETTER.name, b"\xff\x00", hostile_value, hostile_headers, timestamp_ms=since + 6
    )[1]
    produce_one(kafka, DEAD_LETTER.name, None, b"{}", timestamp_ms=since + 7)  # no headers at all

    def listed(*args: str) -> list[int]:
        return [d["offset"] for d in dlq_json("list", "--since", str(since), *args)["dead_letters"]]

    assert listed("--reason", tag) == [*offsets, hostile]
    limited = dlq_json("list", "--since", str(since), "--reason", tag, "--limit", "2")
    assert [d["offset"] for d in limited["dead_letters"]] == offsets[:2] and limited["limit_reached"]
    assert listed("--reason", f"{tag} REASON-1") == offsets[1::2]
    assert listed("--reason", tag, "--source-topic", f"{tag}-topic-0") == offsets[::3]
    assert listed("--reason", tag, "--until", str(since + 3)) == offsets[:3]

    table = dlq_process("list", "--since", str(since), "--reason", tag)
    assert table.returncode == 0, table.stderr
    assert "\\x1b[31mred[/]" in table.stdout and "\x1b" not in table.stdout and "\x00" not in table.stdout

    shown = dlq("show", str(hostile), "--max-bytes", "64")
    assert shown.exit_code == 0, shown.output
    assert f"value ({len(hostile_value)} bytes)" in shown.stdout and "more bytes" in shown.stdout
    assert "\\x00" in shown.stdout and "\x00" not in shown.stdout and len(shown.stdout) < 10_000
    missing = dlq("show", str(10**12))
    assert missing.exit_code == 1 and "no offset" in missing.stderr

    summary = dlq_json("replay", "--since", str(since), "--reason", tag)
    assert (summary["selected"], summary["replayed"], summary["still_invalid"]) == (7, 0, 7)
    by_reason = summary["still_invalid_by_reason"]
    assert by_reason["no source_partition header: the record's partition is unknown"] == 1
    assert sum(n for r, n in by_reason.items() if r.startswith("no consumer reads source topic")) == 6
