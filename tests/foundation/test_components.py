"""The real components work: Kafka round trip, Flink SQL over Kafka, Redis, chDB across restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from infrastructure.local import jars
from services.processing.registry import load_schemas
from shared.kafka_admin import ensure_topics
from shared.topics import Topic
from tests.conftest import REPO_ROOT
from tests.topics import TOPICS


def _topic(bootstrap: str, partitions: int = 1) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    ensure_topics(bootstrap, [Topic(name, partitions, 3_600_000)])
    return name


@pytest.mark.kafka
def test_kafka_record_round_trip(kafka):
    topic = _topic(kafka)
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
    producer.send(topic, key=b"k1", value=b'{"n": 1}').get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka, auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    records = [(r.key, r.value) for r in consumer]
    consumer.close()
    assert records == [(b"k1", b'{"n": 1}')]


@pytest.mark.kafka
def test_admin_step_created_every_declared_topic(kafka):
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka)
    existing = set(admin.list_topics())
    admin.close()
    assert {t.name for t in TOPICS.all(load_schemas().values())} <= existing


FLINK_READ_SCRIPT = r"""
import json, sys
from pyflink.table import EnvironmentSettings, TableEnvironment
bootstrap, topic, jar = sys.argv[1:4]
t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
t_env.get_config().set("pipeline.jars", "file://" + jar)
t_env.get_config().set("parallelism.default", "1")
t_env.execute_sql(f'''
  CREATE TABLE src (user_id STRING, amount INT) WITH (
    'connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{bootstrap}',
    'properties.group.id' = 'flink-test', 'scan.startup.mode' = 'earliest-offset',
    'scan.bounded.mode' = 'latest-offset', 'format' = 'json')''')
result = t_env.execute_sql("SELECT user_id, SUM(amount) AS total FROM src GROUP BY user_id")
final = {}
with result.collect() as rows:
    for row in rows:
        if row.get_row_kind().name in ("INSERT", "UPDATE_AFTER"):
            final[row[0]] = row[1]
print(json.dumps(final, sort_keys=True))
"""


@pytest.mark.flink
def test_flink_sql_reads_kafka_through_connector_jar(kafka, settings):
    topic = _topic(kafka)
    producer = KafkaProducer(
        bootstrap_servers=kafka, acks="all", value_serializer=lambda v: json.dumps(v).encode()
    )
    for user, amount in [("a", 1), ("b", 5), ("a", 2), ("c", 7), ("b", 1)]:
        producer.send(topic, {"user_id": user, "amount": amount})
    producer.flush()
    producer.close()
    connector = jars.find_jar(
        jars.resolve("flink", settings.state_path / "jars"), "flink-sql-connector-kafka"
    )
    out = subprocess.run(
        [sys.executable, "-c", FLINK_READ_SCRIPT, kafka, topic, str(connector)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    printed = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert printed and json.loads(printed[-1]) == {"a": 3, "b": 6, "c": 7}, out.stdout[-3000:]


@pytest.mark.redis
def test_redis_round_trip(redis_url):
    client = redis.Redis.from_url(redis_url)
    key = f"t:{uuid.uuid4().hex}"
    client.hset(key, mapping={"events": 3, "users": 2})
    assert client.hgetall(key) == {b"events": b"3", b"users": b"2"}


CHDB_SCRIPT = r"""
import json, sys
from pathlib import Path
from services.storage.backends import ChdbBackend
db = ChdbBackend(Path(sys.argv[1]))
if sys.argv[2] == "write":
    db.command("CREATE DATABASE IF NOT EXISTS t")
    db.command("CREATE TABLE IF NOT EXISTS t.m (k String, v Int64) ENGINE = ReplacingMergeTree ORDER BY k")
    db.insert("t.m", [{"k": "a", "v": 1}, {"k": "b", "v": 2}])
print(json.dumps(db.query("SELECT k, v FROM t.m FINAL ORDER BY k")))
"""


@pytest.mark.clickhouse
def test_chdb_survives_process_restart(tmp_path):
    def run(mode: str) -> list:
        out = subprocess.run(
            [sys.executable, "-c", CHDB_SCRIPT, str(tmp_path / "ch"), mode],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run("write") == [{"k": "a", "v": 1}, {"k": "b", "v": 2}]
    assert run("read") == [{"k": "a", "v": 1}, {"k": "b", "v": 2}]
