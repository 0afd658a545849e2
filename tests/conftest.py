"""Session-wide real services: each component starts once, on first use, in a private state dir with free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from infrastructure.local.stack import Stack, settings_env
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports, consecutive pairs where Flink needs a range."""
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if port + 1 < 65535 and port not in ports:
            socks.append(s)
            ports.append(port)
    for s in socks:
        s.close()
    return ports


def isolated_settings(state_dir: Path, **overrides) -> Settings:
    """Settings whose every port is free and whose state lives in state_dir."""
    p = free_ports(12)
    base = 20000 + (os.getpid() % 2000) * 10  # Flink metrics need two adjacent ports
    env = {
        "RTAP_STATE_DIR": str(state_dir),
        "RTAP_KAFKA__PORT": str(p[0]),
        "RTAP_KAFKA__BOOTSTRAP": f"127.0.0.1:{p[0]}",
        "RTAP_KAFKA__CONTROLLER_PORT": str(p[1]),
        "RTAP_REDIS__PORT": str(p[2]),
        "RTAP_PROMETHEUS__PORT": str(p[3]),
        "RTAP_FLINK__REST_PORT": str(p[4]),
        "RTAP_FLINK__RPC_PORT": str(p[5]),
        "RTAP_FLINK__JOBMANAGER_METRICS_PORT": str(base),
        "RTAP_FLINK__TASKMANAGER_METRICS_PORT": str(base + 1),
        "RTAP_INGESTION__PORT": str(p[6]),
        "RTAP_STORAGE__PORT": str(p[7]),
        "RTAP_CACHE__PORT": str(p[8]),
        # Session-wide pipelines (monitoring) and per-module test jobs share one TaskManager.
        "RTAP_FLINK__TASK_SLOTS": "4",
        "RTAP_KAFKA__JMX_EXPORTER_PORT": str(p[9]),
        "RTAP_PROCESSING__PORT": str(p[10]),
        "RTAP_REDIS__EXPORTER_PORT": str(p[11]),
    }
    env.update(overrides)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(old)


class Harness:
    """Starts components of one Stack on demand and stops them all at the end of the session."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stack = Stack(settings)
        self.stack.check_state_dir()
        self.started: list[str] = []

    def ensure(self, *names: str) -> None:
        for name in names:
            component = self.stack.component(name)
            if component.pid() is None and name != "clickhouse":
                component.start()
                self.started.append(name)
            if name == "kafka" and "topics" not in self.started:
                self.stack.create_topics()
                self.started.append("topics")

    def close(self) -> None:
        for name in reversed(self.started):
            if name != "topics":
                self.stack.component(name).stop()


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    s = isolated_settings(tmp_path_factory.mktemp("rtap") / "state")
    os.environ.update(settings_env(s))  # code that reads Settings() in this process sees the same values
    return s


@pytest.fixture(scope="session")
def harness(settings):
    h = Harness(settings)
    yield h
    h.close()


@pytest.fixture(scope="session")
def kafka(harness) -> str:
    harness.ensure("kafka")
    return harness.settings.kafka.bootstrap


@pytest.fixture(scope="session")
def redis_url(harness) -> str:
    harness.ensure("redis")
    return harness.settings.redis.url


@pytest.fixture(scope="session")
def flink_cluster(harness, kafka) -> str:
    harness.ensure("flink-jobmanager", "flink-taskmanager")
    return f"http://127.0.0.1:{harness.settings.flink.rest_port}"


@pytest.fixture(scope="session")
def prometheus(harness) -> str:
    harness.ensure("prometheus")
    return f"http://127.0.0.1:{harness.settings.prometheus.port}"
