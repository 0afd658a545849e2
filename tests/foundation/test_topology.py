"""The topology as settings: a profile is a preset of counts and replication, every replicated process gets
ports and a name of its own, and every topic carries the replication. No process is started here
(tests/faults/test_ha.py runs the ha profile)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from infrastructure.local.isolated import isolated_settings
from infrastructure.local.prometheus_config import local_targets
from infrastructure.local.stack import Stack
from services.processing.registry import load_schemas
from shared.settings import Settings
from shared.topics import topics


@pytest.fixture
def clean_env(monkeypatch):
    """No RTAP_* variable (the session's exported settings would set every field explicitly)."""
    for name in [name for name in os.environ if name.startswith("RTAP_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_default_profile_is_the_single_node_stack(clean_env):
    s = Settings()
    assert (s.kafka.brokers, s.kafka.replication_factor, s.kafka.min_insync_replicas) == (1, 1, 1)
    assert (s.flink.taskmanagers, s.ingestion.workers, s.cache.instances) == (1, 1, 1)
    assert s.kafka.bootstrap == "127.0.0.1:9092"


def test_the_ha_profile_presets_counts_and_replication(clean_env):
    clean_env.setenv("RTAP_PROFILE", "ha")
    s = Settings()
    assert (s.kafka.brokers, s.kafka.replication_factor, s.kafka.min_insync_replicas) == (3, 3, 2)
    assert (s.flink.taskmanagers, s.flink.parallelism, s.ingestion.workers, s.cache.instances) == (2, 2, 2, 2)
    assert s.kafka.bootstrap == "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292"


def test_an_explicit_setting_wins_over_the_preset(clean_env):
    clean_env.setenv("RTAP_PROFILE", "ha")
    clean_env.setenv("RTAP_KAFKA__BROKERS", "5")
    s = Settings()
    assert s.kafka.brokers == 5 and s.kafka.replication_factor == 3
    assert Settings(profile="single").kafka.replication_factor == 1


def test_min_insync_replicas_above_the_replication_factor_is_refused(clean_env):
    with pytest.raises(ValidationError, match="min_insync_replicas"):
        Settings(kafka={"min_insync_replicas": 2})


def test_every_topic_carries_the_replication(clean_env):
    s = Settings(profile="ha")
    for topic in topics(s).all(load_schemas().values()):
        assert topic.replication.factor == 3
        assert topic.config()["min.insync.replicas"] == "2"


def test_every_process_of_the_ha_profile_has_its_own_name_and_ports(tmp_path, clean_env):
    s = isolated_settings(tmp_path / "state", RTAP_PROFILE="ha")
    stack = Stack(s)
    names = [c.name for c in stack.components]
    for name in (
        "kafka",
        "kafka-2",
        "kafka-3",
        "flink-taskmanager",
        "flink-taskmanager-2",
        "cache",
        "cache-2",
    ):
        assert name in names
    assert [c.name for c in stack.family("kafka")] == ["kafka", "kafka-2", "kafka-3"]
    ports = [port for c in stack.components for port in c.ports()]
    assert len(ports) == len(set(ports)), "no two processes share a port"
    assert len(s.kafka.bootstrap.split(",")) == 3
    targets = local_targets(s)
    assert (
        len(targets["kafka"]) == 3 and len(targets["flink-taskmanager"]) == 2 and len(targets["cache"]) == 2
    )


def test_a_state_directory_keeps_its_profile(tmp_path, clean_env):
    from infrastructure.local.errors import RuntimeSetupError

    Stack(isolated_settings(tmp_path / "state", RTAP_PROFILE="ha")).check_state_dir()
    with pytest.raises(RuntimeSetupError, match="profile ha"):
        Stack(isolated_settings(tmp_path / "state")).check_state_dir()


def test_isolated_settings_apply_the_whole_profile_whatever_the_environment_holds(tmp_path, clean_env):
    clean_env.setenv("RTAP_KAFKA__BROKERS", "1")  # as the test session exports its single-node settings
    clean_env.setenv("RTAP_CACHE__INSTANCES", "1")
    s = isolated_settings(tmp_path / "state", RTAP_PROFILE="ha")
    assert (s.kafka.brokers, s.cache.instances, s.kafka.min_insync_replicas) == (3, 2, 2)
