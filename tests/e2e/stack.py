"""The full local stack for end-to-end and fault tests: infrastructure from a Harness, the four services as processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

from infrastructure.local.stack import Service, settings_env
from services.loadgen.manifest import read_manifest
from shared.settings import Settings
from tests.conftest import Harness, isolated_settings

RTAP = Path(sys.executable).with_name("rtap")
SERVICES = ("ingestion", "storage", "cache", "processing")
INFRASTRUCTURE = ("kafka", "redis", "flink-jobmanager", "flink-taskmanager")


def wait_for_flink_job(s: Settings, timeout: float = 180.0) -> str:
    url = f"http://127.0.0.1:{s.flink.rest_port}/jobs/overview"
    deadline = time.monotonic() + timeout
    jobs: list = []
    while time.monotonic() < deadline:
        try:
            jobs = httpx.get(url, timeout=5).json()["jobs"]
        except httpx.HTTPError:
            jobs = []
        running = [j for j in jobs if j["name"].startswith(s.processing.job_name + ":") and j["state"] == "RUNNING"]
        if running:
            return running[0]["jid"]
        time.sleep(1)
    raise AssertionError(f"Flink job {s.processing.job_name} not RUNNING within {timeout}s: {jobs}")


@contextmanager
def full_stack(state_dir: Path, **env: str) -> Iterator[tuple[Settings, Harness, dict[str, Service]]]:
    s = isolated_settings(state_dir, **env)
    harness, services = Harness(s), {}
    try:
        harness.ensure(*INFRASTRUCTURE)
        for name in SERVICES:
            services[name] = Service(s, name)
            services[name].start()
        wait_for_flink_job(s)
        yield s, harness, services
    finally:
        for svc in reversed(list(services.values())):
            svc.stop()
        harness.close()


def rtap_load(s: Settings, manifest: Path, *args: str, wait: bool = True) -> Any:
    """Run `rtap load` against the stack; returns the manifest entries, or the running process when wait=False."""
    argv = [str(RTAP), "load", "--processes", "2", "--batch-size", "100", "--seed", str(uuid.uuid4().int % 2**31),
            "--manifest", str(manifest), *args]
    env = {**os.environ, **settings_env(s)}
    if not wait:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return read_manifest(manifest)
