"""The local stack: every component in start order, one state directory, up/down/status."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

from infrastructure.local.components import (
    REPO_ROOT,
    ClickHouse,
    Component,
    FlinkJobManager,
    FlinkTaskManager,
    Kafka,
    Prometheus,
    Redis,
    RedisExporter,
    Status,
    _http_ok,
    instance_name,
)
from infrastructure.local.errors import RuntimeSetupError
from infrastructure.local.process import ManagedProcess, check_ports_free, wait_while_progressing
from shared.settings import STATE_MARKER, Settings, client_url, instance_port, settings_env

STATE_FORMAT = 1
SERVICES = ("ingestion", "storage", "cache", "processing")


class Service(Component):
    """A service of this project, run as `python -m services.<name>`; exists once it has a __main__. A
    section with `instances` runs that many processes, instance k on instance_port(port, k)."""

    health_path = "/healthz"

    def __init__(self, settings: Settings, service: str, index: int = 0):
        super().__init__(settings)
        self.service = service
        self.name = instance_name(service, index)
        self.section = getattr(settings, service)
        port = getattr(self.section, "port", None)
        self.port = instance_port(port, index) if port else None

    @property
    def family(self) -> str:
        return self.service

    @staticmethod
    def instances(settings: Settings, service: str) -> int:
        return int(getattr(getattr(settings, service), "instances", 1))

    @staticmethod
    def exists(service: str) -> bool:
        return (REPO_ROOT / "services" / service / "__main__.py").exists()

    def url(self) -> str:
        return client_url(self.section.host, self.port) if self.port else ""

    def ports(self) -> tuple[int, ...]:
        return (self.port,) if self.port else ()

    def argv(self) -> list[str]:
        return [sys.executable, "-m", f"services.{self.service}"]

    def env(self) -> dict[str, str]:
        env = settings_env(self.settings)
        if self.port:
            env[f"RTAP_{self.service.upper()}__PORT"] = str(self.port)
        return env

    def healthy(self) -> tuple[bool, str]:
        """Its health route answers; a service with several workers (ingestion) also has them all."""
        if not self.port:
            return self.pid() is not None, ""
        ok, detail = _http_ok(f"{self.url()}{self.health_path}")
        workers = int(getattr(self.section, "workers", 1))
        if workers == 1:
            return ok, detail
        running = len(self.worker_pids())
        return ok and running == workers, f"{detail}, {running} of {workers} workers"

    def worker_pids(self) -> list[int]:
        """The worker processes uvicorn's supervisor started (multiprocessing spawns them)."""
        pid = self.pid()
        if pid is None:
            return []
        try:
            children = psutil.Process(pid).children()
            return [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]
        except psutil.Error:
            return []

    def wait_started(self, proc: ManagedProcess) -> bool:
        """A service that may work a long time before it serves (storage re-sorting its raw table at start)
        has start_stall_seconds: it is waited for as long as its log keeps growing (it logs each partition it
        copies), up to start_max_seconds."""
        stall = getattr(self.section, "start_stall_seconds", None)
        if stall is None:
            return super().wait_started(proc)
        return wait_while_progressing(
            lambda: proc.pid() is not None and self.healthy()[0],
            lambda: proc.log_file.stat().st_size if proc.log_file.exists() else 0,
            stall,
            self.section.start_max_seconds,
        )

    def start_limit(self) -> str:
        stall = getattr(self.section, "start_stall_seconds", None)
        if stall is None:
            return super().start_limit()
        return (
            f"its log did not grow for {stall:.0f}s ({self.name}.start_stall_seconds), "
            f"or {self.section.start_max_seconds:.0f}s passed ({self.name}.start_max_seconds)"
        )


class Stack:
    def __init__(self, settings: Settings, only: list[str] | None = None):
        self.settings = settings
        components: list[Component] = [
            *(Kafka(settings, k) for k in range(settings.kafka.brokers)),
            Redis(settings),
            RedisExporter(settings),
            ClickHouse(settings),
            FlinkJobManager(settings),
            *(FlinkTaskManager(settings, k) for k in range(settings.flink.taskmanagers)),
            Prometheus(settings),
        ]
        components += [
            Service(settings, s, k)
            for s in SERVICES
            if Service.exists(s)
            for k in range(Service.instances(settings, s))
        ]
        self.components = [c for c in components if only is None or c.name in only or c.family in only]

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def family(self, name: str) -> list[Component]:
        """Every instance of a component (all Kafka brokers for "kafka"), in start order."""
        return [c for c in self.components if c.family == name]

    def check_state_dir(self) -> Path:
        """Create the state directory for this profile, or refuse one that is not ours or holds the state of
        another profile (its Kafka quorum has other voters)."""
        state = self.settings.state_path
        marker = state / STATE_MARKER
        if state.exists() and any(state.iterdir()):
            if not marker.exists():
                raise RuntimeSetupError(
                    f"{state} is not an rtap state directory (no {STATE_MARKER}); "
                    "choose another RTAP_STATE_DIR or remove it"
                )
            try:
                recorded = json.loads(marker.read_text())
                fmt = recorded["format"]
            except (ValueError, KeyError, TypeError):
                raise RuntimeSetupError(f"{marker} is corrupt; remove {state} to start fresh") from None
            if fmt != STATE_FORMAT:
                raise RuntimeSetupError(f"{state} has state format {fmt}, this version needs {STATE_FORMAT}")
            profile = recorded.get("profile", "single")
            if profile != self.settings.profile:
                raise RuntimeSetupError(
                    f"{state} holds the state of profile {profile}, not {self.settings.profile}; "
                    "choose another RTAP_STATE_DIR for this profile"
                )
            return state
        state.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"format": STATE_FORMAT, "profile": self.settings.profile}))
        return state

    def preflight(self) -> None:
        """Find every taken port before anything starts, so a failure leaves nothing half-started."""
        for c in self.components:
            if c.pid():
                continue
            check_ports_free(c.name, c.ports())

    def up(self, on_started: Callable[[Component], None] = lambda c: None) -> None:
        self.check_state_dir()
        self.preflight()
        started: list[Component] = []
        try:
            for c in self.components:
                was_running = c.pid() is not None
                c.start()
                if not was_running:
                    started.append(c)
                if isinstance(c, Kafka) and c.index == self.settings.kafka.brokers - 1:
                    self.create_topics()
                on_started(c)
        except BaseException:
            for c in reversed(started):
                c.stop()
            raise

    def create_topics(self) -> list[str]:
        from services.processing.registry import load_schemas
        from shared.kafka_admin import ensure_topics
        from shared.topics import topics

        declared = topics(self.settings).all(load_schemas(self.settings.processing.job_modules).values())
        return ensure_topics(self.settings.kafka.bootstrap, declared)

    def down(self) -> list[str]:
        return [c.name for c in reversed(self.components) if c.stop()]

    def status(self) -> list[Status]:
        return [c.status() for c in self.components]
