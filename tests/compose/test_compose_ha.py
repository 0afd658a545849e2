"""docker-compose.ha.yml, the ha profile as a Compose override, checked as data without Docker against the
settings' ha preset (shared/settings.py PROFILES["ha"]): the facts `./rtap up --profile ha` uses."""

from __future__ import annotations

import os

import jsonschema
import pytest
import yaml

from infrastructure.local.components import instance_name
from shared.settings import PROFILES, Settings, instance_port
from shared.topics import topics
from tests.compose import compose_file as cf
from tests.compose.test_compose_file import DUMMY, compose_spec

HA = PROFILES["ha"]
SERVICES = cf.ha_services()


def named(predicate) -> list[str]:
    return sorted(name for name, service in SERVICES.items() if predicate(service))


def instances(family: str, count: int) -> list[str]:
    """The names `./rtap status` gives the processes of a replicated component: kafka, kafka-2, ..."""
    return [instance_name(family, k) for k in range(count)]


BROKERS = named(lambda s: s.get("image", "").startswith("rtap/kafka:"))
TASKMANAGERS = named(lambda s: s.get("command") == "taskmanager")
CACHES = named(lambda s: s.get("command") == ["python", "-m", "services.cache"])
PYTHON = named(lambda s: "RTAP_ENV" in cf.environment(s))


def test_the_override_and_the_merged_deployment_follow_the_compose_specification():
    schema = compose_spec()
    validator = jsonschema.validators.validator_for(schema)(schema)
    merged = {**cf.load(), **cf.plain(cf.load_ha()), "services": cf.plain(SERVICES)}
    for document in (cf.plain(cf.load_ha()), merged):
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)
        ]
        assert not errors, "\n".join(errors)


def test_the_brokers_are_one_quorum_of_the_presets_size():
    expected = instances("kafka", HA["kafka"]["brokers"])
    assert expected == BROKERS
    envs = [cf.environment(SERVICES[name]) for name in BROKERS]
    ids = [env["KAFKA_NODE_ID"] for env in envs]
    assert ids == [str(k) for k in range(1, len(BROKERS) + 1)]
    voters = ",".join(f"{node}@{name}:9093" for node, name in zip(ids, BROKERS, strict=True))
    for name, env in zip(BROKERS, envs, strict=True):
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters, name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["CLUSTER_ID"] == envs[0]["CLUSTER_ID"]
    data = [v for name in BROKERS for v in SERVICES[name]["volumes"] if v.endswith(":/var/lib/kafka/data")]
    assert len(data) == len({v.split(":")[0] for v in data}) == len(BROKERS), "one data volume per broker"


def test_every_broker_replicates_kafkas_internal_topics_as_the_preset():
    factor, min_isr = str(HA["kafka"]["replication_factor"]), str(HA["kafka"]["min_insync_replicas"])
    for name in BROKERS:
        env = cf.environment(SERVICES[name])
        for key in (
            "KAFKA_DEFAULT_REPLICATION_FACTOR",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        ):
            assert env[key] == factor, f"{name}: {key}"
        for key in ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_MIN_INSYNC_REPLICAS"):
            assert env[key] == min_isr, f"{name}: {key}"


@pytest.mark.parametrize("service", PYTHON)
def test_every_python_process_reads_the_ha_preset(service, monkeypatch):
    for name in [name for name in os.environ if name.startswith("RTAP_")]:
        monkeypatch.delenv(name)
    for key, value in cf.environment(SERVICES[service]).items():
        monkeypatch.setenv(key, cf.interpolate(value, DUMMY))
    s = Settings()
    assert s.profile == "ha"
    for section, preset in HA.items():
        for field, value in preset.items():
            assert getattr(getattr(s, section), field) == value, f"{service}: {section}.{field}"
    assert s.kafka.bootstrap.split(",") == [f"{name}:9092" for name in BROKERS]
    replication = (HA["kafka"]["replication_factor"], HA["kafka"]["min_insync_replicas"])
    for topic in topics(s).all([]):
        assert (topic.replication.factor, topic.replication.min_insync) == replication


def test_the_python_processes_are_the_ones_of_the_deployment():
    expected = sorted(["topics", "processing", "ingestion", "storage", *CACHES])
    assert expected == PYTHON


def test_the_taskmanagers_run_the_jobs_at_the_presets_parallelism():
    expected = instances("flink-taskmanager", HA["flink"]["taskmanagers"])
    assert expected == TASKMANAGERS
    flink = yaml.safe_load(cf.load()["x-flink-properties"])
    assert flink["parallelism.default"] == HA["flink"]["parallelism"]
    assert flink["taskmanager.numberOfTaskSlots"] * len(TASKMANAGERS) >= HA["flink"]["parallelism"]
    assert flink["taskmanager.load-balance.mode"] == "slots", "subtasks spread over the TaskManagers"
    for name in TASKMANAGERS:
        assert SERVICES[name]["depends_on"]["flink-jobmanager"] == {"condition": "service_healthy"}
        assert cf.environment(SERVICES[name])["FLINK_PROPERTIES"] == cf.load()["x-flink-properties"]
    assert set(TASKMANAGERS) <= set(SERVICES["processing"]["depends_on"]), "jobs submitted once all are up"


def test_the_cache_processes_share_one_consumer_group_on_ports_of_their_own(monkeypatch):
    expected = instances("cache", HA["cache"]["instances"])
    assert expected == CACHES
    port = Settings.model_fields["cache"].default.port
    published = [SERVICES[name]["ports"] for name in CACHES]
    assert published == [[f"{instance_port(port, k)}:{port}"] for k in range(len(CACHES))]
    groups = {cf.environment(SERVICES[name]).get("RTAP_CACHE__CONSUMER_GROUP") for name in CACHES}
    assert groups == {None}, "each reads the settings' one consumer group"
    for name in CACHES:
        assert {"topics", "redis", *BROKERS} <= set(SERVICES[name]["depends_on"])


def test_storage_stays_the_single_writer():
    assert named(lambda s: s.get("command") == ["python", "-m", "services.storage"]) == ["storage"]


def test_the_topic_step_and_every_consumer_and_producer_wait_for_every_broker():
    for name in ["topics", "ingestion", "storage", *CACHES]:
        waits = SERVICES[name]["depends_on"]
        for broker in BROKERS:
            assert waits[broker] == {"condition": "service_healthy"}, f"{name} does not wait for {broker}"


def test_the_override_is_a_project_of_its_own_with_a_volume_per_new_broker():
    ha = cf.load_ha()
    assert ha["name"] != cf.load()["name"], "single-node volumes are never reused by the quorum of three"
    for name in BROKERS[1:]:
        assert f"{name}-data" in ha["volumes"]


def test_prometheus_scrapes_every_replica_in_its_components_job():
    command = SERVICES["prometheus"]["command"]
    assert command[0] == "--config.file=/etc/prometheus/prometheus-ha.yml"
    assert command[1:] == cf.services()["prometheus"]["command"][1:]
    replicated = {"kafka": BROKERS, "flink-taskmanager": TASKMANAGERS, "cache": CACHES}
    expected = prometheus_config("prometheus.yml")
    for job in expected["scrape_configs"]:
        if job["job_name"] in replicated:
            [[target]] = [sc["targets"] for sc in job["static_configs"]]
            port = target.split(":")[1]
            job["static_configs"] = [{"targets": [f"{name}:{port}" for name in replicated[job["job_name"]]]}]
    assert prometheus_config("prometheus-ha.yml") == expected


def prometheus_config(name: str) -> dict:
    return yaml.safe_load((cf.REPO_ROOT / "monitoring" / "prometheus" / name).read_text())
