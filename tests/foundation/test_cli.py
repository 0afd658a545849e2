"""The README's promises for `rtap up/status/down`, and the bad situations that must fail cleanly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from infrastructure.local import jars
from infrastructure.local.errors import RuntimeSetupError
from infrastructure.local.isolated import isolated_settings
from shared.settings import settings_env
from tests.conftest import REPO_ROOT

RTAP = str(REPO_ROOT / ".venv" / "bin" / "rtap")
INFRA = ["kafka", "redis", "clickhouse", "flink-jobmanager", "flink-taskmanager", "prometheus"]


def rtap(settings, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **settings_env(settings), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [RTAP, *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO_ROOT
    )


def processes_under(state_dir: Path) -> list[int]:
    """Processes whose command line mentions the state dir (ours only: each test has its own)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " ".join((proc.info["environ"] or {}).values())
        except psutil.Error:
            continue
        if str(state_dir) in text and proc.pid != os.getpid():
            found.append(proc.pid)
    return found


def log_tails(s, lines: int = 15) -> str:
    """The end of every component's log: why something the status shows stopped went away."""
    logs = sorted((s.state_path / "logs").glob("*.log"))
    return "".join(
        f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in logs
    )


@pytest.mark.slow
def test_up_status_down_and_state_survives(tmp_path):
    s = isolated_settings(tmp_path / "state")
    up = rtap(s, "up", "--detach")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        status = rtap(s, "status")
        assert status.returncode == 0 and "stopped" not in status.stdout, status.stdout + log_tails(s)
        for name in INFRA:
            assert name in status.stdout
        assert "unhealthy" not in status.stdout
        assert f"http://127.0.0.1:{s.flink.rest_port}" in status.stdout

        producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap, acks="all")
        producer.send("dead_letter", b"kept across restarts").get(timeout=10)
        producer.close()
        redis.Redis.from_url(s.redis.url).set("kept", "yes")
    finally:
        down = rtap(s, "down")
    assert down.returncode == 0
    assert processes_under(s.state_path) == []

    again = rtap(s, "up", "--detach", "--only", "kafka", "--only", "redis")
    try:
        assert again.returncode == 0, again.stderr[-2000:]
        consumer = KafkaConsumer(
            "dead_letter",
            bootstrap_servers=s.kafka.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        assert b"kept across restarts" in [r.value for r in consumer]
        consumer.close()
        assert redis.Redis.from_url(s.redis.url).get("kept") == b"yes"
    finally:
        rtap(s, "down")
    assert processes_under(s.state_path) == []


def test_port_taken_names_port_and_owner_and_starts_nothing(tmp_path):
    s = isolated_settings(tmp_path / "state")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", s.redis.port))
    blocker.listen()
    try:
        result = rtap(s, "up", "--detach", "--only", "kafka", "--only", "redis")
    finally:
        blocker.close()
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"port {s.redis.port} is already in use by pid {os.getpid()}" in message
    assert processes_under(s.state_path) == []
    assert not list((s.state_path / "run").glob("*.pid")) if (s.state_path / "run").exists() else True


def test_java_missing_is_one_clear_line(tmp_path):
    s = isolated_settings(tmp_path / "state")
    result = rtap(s, "up", "--detach", "--only", "kafka", env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "Java 17+ is required" in result.stderr
    assert "Traceback" not in result.stderr
    assert processes_under(s.state_path) == []


def test_maven_resolution_failure_is_clear(tmp_path):
    (tmp_path / "broken.xml").write_text(
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>t</groupId><artifactId>t</artifactId><version>1</version><packaging>pom</packaging>"
        "<dependencies><dependency><groupId>org.rtap.none</groupId><artifactId>does-not-exist</artifactId>"
        "<version>0.0.1</version></dependency></dependencies></project>"
    )
    with pytest.raises(RuntimeSetupError, match="Maven could not resolve the broken jars"):
        jars.resolve("broken", tmp_path / "jars", pom_dir=tmp_path)
    assert not (tmp_path / "jars" / "broken").exists()


def test_foreign_state_directory_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "thesis.tex").write_text("not ours")
    s = isolated_settings(state)
    result = rtap(s, "up", "--detach", "--only", "redis")
    assert result.returncode == 1
    assert "is not an rtap state directory" in " ".join(result.stderr.split())
    assert (state / "thesis.tex").read_text() == "not ours"
    assert processes_under(state) == []


def test_corrupt_kafka_state_is_refused(tmp_path):
    s = isolated_settings(tmp_path / "state")
    data = s.state_path / "kafka" / "data"
    data.mkdir(parents=True)
    (s.state_path / ".rtap-state").write_text(json.dumps({"format": 1}))
    (data / "some-topic-0").mkdir()
    result = rtap(s, "up", "--detach", "--only", "kafka")
    assert result.returncode == 1
    assert "corrupt or foreign state" in " ".join(result.stderr.split())
    assert processes_under(s.state_path) == []


def test_production_refuses_missing_keys(tmp_path):
    s = isolated_settings(tmp_path / "state")
    result = rtap(s, "status", env={"RTAP_ENV": "production", "RTAP_INGESTION__WRITE_KEYS": "[]"})
    assert result.returncode == 2
    assert "RTAP_INGESTION__WRITE_KEYS must be set" in result.stderr
