"""Session-wide real services: each component starts once, on first use, in a private state dir with
free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infrastructure.local.isolated import Harness, isolated_settings
from shared.settings import Settings, settings_env

REPO_ROOT = Path(__file__).resolve().parents[1]


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
