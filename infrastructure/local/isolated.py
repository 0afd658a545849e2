"""A private local stack: settings whose every port is free and whose state lives in a directory of its own,
and a Harness that starts components on demand and stops what it started. Used by the tests, the benchmarks
and `rtap bench`, so none of them touches a stack started by `rtap up`."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from infrastructure.local.stack import Stack
from shared.settings import Settings


def free_ports(n: int) -> list[int]:
    """n distinct free ports, consecutive pairs where Flink needs a range."""
    socks: list[socket.socket] = []
    ports: list[int] = []
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


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def adjacent_free_pair(start: int) -> int:
    """The first port p from `start` (in steps of 10, within 20000-39999) where p and p + 1 are both free."""
    for step in range(2000):
        port = 20000 + (start - 20000 + step * 10) % 20000
        if port_free(port) and port_free(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports in 20000-39999")


def isolated_settings(state_dir: Path, **overrides: str) -> Settings:
    """Settings whose every port is free and whose state lives in state_dir."""
    p = free_ports(12)
    base = adjacent_free_pair(20000 + (os.getpid() % 2000) * 10)  # Flink metrics need two adjacent ports
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
    """Starts components of one Stack on demand and stops them all at the end."""

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
