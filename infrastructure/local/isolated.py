"""A private local stack: settings whose every port is free and whose state lives in a directory of its own,
and a Harness that starts components on demand and stops what it started. Used by the tests, the benchmarks
and `rtap bench`, so none of them touches a stack started by `rtap up`."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import cast

from infrastructure.local.stack import Stack
from shared.settings import INSTANCE_PORT_STEP, Profile, Settings, profile_env


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


def free_series(count: int, stride: int, taken: set[int]) -> int:
    """A port p where p, p + stride, ... (count ports) are all free and none is in `taken` (which gets them).
    p is one the kernel picks (a random free port, as free_ports), so concurrent test sessions rarely pick
    the same one."""
    for _ in range(1000):
        port = free_ports(1)[0]
        series = [port + i * stride for i in range(count)]
        if all(p not in taken and p < 65535 and port_free(p) for p in series):
            taken.update(series)
            return port
    raise RuntimeError(f"no {count} free ports {stride} apart")


def adjacent_free_ports(count: int, taken: set[int]) -> int:
    """The first port p from a per-process start (in steps of 10, within 20000-39999) where p and the
    count - 1 ports after it are free and not in `taken` (which gets them): Flink reporters' one range."""
    start = 20000 + (os.getpid() % 2000) * 10
    for step in range(2000):
        port = 20000 + (start - 20000 + step * 10) % 20000
        series = list(range(port, port + count))
        if all(p not in taken and port_free(p) for p in series):
            taken.update(series)
            return port
    raise RuntimeError(f"no {count} adjacent free ports in 20000-39999")


def isolated_settings(state_dir: Path, **overrides: str) -> Settings:
    """Settings whose every port is free and whose state lives in state_dir, for the topology the overrides
    ask for (RTAP_PROFILE, counts): every instance of a replicated process gets free ports too. A profile
    in the overrides sets its whole preset, whatever this process's environment holds (the test session
    exports its own settings)."""
    if "RTAP_PROFILE" in overrides:
        overrides = {**profile_env(cast(Profile, overrides["RTAP_PROFILE"])), **overrides}
    topology = _settings_from({"RTAP_STATE_DIR": str(state_dir), **overrides})
    p = free_ports(9)
    taken = set(p)
    brokers, caches = topology.kafka.brokers, topology.cache.instances
    kafka_port = free_series(brokers, INSTANCE_PORT_STEP, taken)
    # Flink's metric reporters take one range: the JobManager's port, then one per TaskManager.
    flink_metrics = adjacent_free_ports(1 + topology.flink.taskmanagers, taken)
    env = {
        "RTAP_STATE_DIR": str(state_dir),
        "RTAP_KAFKA__PORT": str(kafka_port),
        "RTAP_KAFKA__BOOTSTRAP": "",  # every local broker
        "RTAP_KAFKA__CONTROLLER_PORT": str(free_series(brokers, INSTANCE_PORT_STEP, taken)),
        "RTAP_KAFKA__JMX_EXPORTER_PORT": str(free_series(brokers, INSTANCE_PORT_STEP, taken)),
        "RTAP_REDIS__PORT": str(p[0]),
        "RTAP_PROMETHEUS__PORT": str(p[1]),
        "RTAP_FLINK__REST_PORT": str(p[2]),
        "RTAP_FLINK__RPC_PORT": str(p[3]),
        "RTAP_FLINK__JOBMANAGER_METRICS_PORT": str(flink_metrics),
        "RTAP_FLINK__TASKMANAGER_METRICS_PORT": str(flink_metrics + 1),
        "RTAP_INGESTION__PORT": str(p[4]),
        "RTAP_STORAGE__PORT": str(p[5]),
        "RTAP_CACHE__PORT": str(free_series(caches, INSTANCE_PORT_STEP, taken)),
        # Session-wide pipelines (monitoring) and per-module test jobs share one TaskManager.
        "RTAP_FLINK__TASK_SLOTS": "4",
        "RTAP_PROCESSING__PORT": str(p[6]),
        "RTAP_REDIS__EXPORTER_PORT": str(p[7]),
    }
    env.update(overrides)
    return _settings_from(env)


def _settings_from(env: dict[str, str]) -> Settings:
    """Settings read with `env` added to this process's environment (which is left as it was)."""
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
        """Start what is not running of the named components, every instance of each (all Kafka brokers)."""
        for name in names:
            for component in self.stack.family(name):
                if component.pid() is None and name != "clickhouse":
                    component.start()
                    self.started.append(component.name)
            if name == "kafka" and "topics" not in self.started:
                self.stack.create_topics()
                self.started.append("topics")

    def close(self) -> None:
        for name in reversed(self.started):
            if name != "topics":
                self.stack.component(name).stop()
