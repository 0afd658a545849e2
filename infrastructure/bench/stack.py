"""The full local stack as processes on free ports in a state directory of its own (never the `rtap up`
stack): infrastructure from a Harness, the four services, and the running pipeline job. Shared by `rtap bench`
and the end-to-end and fault tests."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from infrastructure.local.isolated import Harness, isolated_settings
from infrastructure.local.stack import Service
from shared.settings import Settings, settings_env

RTAP = Path(sys.executable).with_name("rtap")
SERVICES = ("ingestion", "storage", "cache", "processing")
INFRASTRUCTURE = ("kafka", "redis", "flink-jobmanager", "flink-taskmanager")
MONITORING = ("redis-exporter", "prometheus")


def wait_for_flink_job(s: Settings, timeout: float = 180.0) -> str:
    """The id of the pipeline's RUNNING Flink job; TimeoutError when it is not running within `timeout`."""
    url = f"{s.flink.rest_url}/jobs/overview"
    deadline = time.monotonic() + timeout
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            jobs = httpx.get(url, timeout=5).json()["jobs"]
        except httpx.HTTPError:
            jobs = []
        running = [
            j for j in jobs if j["name"].startswith(s.processing.job_name + ":") and j["state"] == "RUNNING"
        ]
        if running:
            jid: str = running[0]["jid"]
            return jid
        time.sleep(1)
    raise TimeoutError(f"Flink job {s.processing.job_name} not RUNNING within {timeout}s: {jobs}")


@contextmanager
def full_stack(
    state_dir: Path,
    infrastructure: tuple[str, ...] = INFRASTRUCTURE,
    on_start: Callable[[str], None] = lambda name: None,
    **env: str,
) -> Iterator[tuple[Settings, Harness, dict[str, Service]]]:
    """Start infrastructure, then the services, wait for the pipeline job; stop all of it on exit (also on
    errors)."""
    s = isolated_settings(state_dir, **env)
    harness, services = Harness(s), {}
    try:
        for name in infrastructure:
            on_start(name)
            harness.ensure(name)
        for name in SERVICES:
            on_start(name)
            for index in range(Service.instances(s, name)):
                service = Service(s, name, index)
                services[service.name] = service
                service.start()
        on_start("pipeline job")
        wait_for_flink_job(s)
        yield s, harness, services
    finally:
        for svc in reversed(list(services.values())):
            svc.stop()
        harness.close()


def load_command(manifest: Path, *args: str) -> list[str]:
    """argv of `rtap load` writing `manifest`; the caller adds rate, events or duration, processes..."""
    return [str(RTAP), "load", "--manifest", str(manifest), *args]


def stack_env(s: Settings) -> dict[str, str]:
    """This process's environment with the stack's settings, for a child process such as `rtap load`."""
    return {**os.environ, **settings_env(s)}
