"""The Compose deployment checked as data here, without Docker: schema, files, settings, ports, secrets."""

from __future__ import annotations

import json
import re
from importlib import resources
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from infrastructure.local.stack import SERVICES
from shared.settings import Settings
from tests.compose import compose_file as cf

RTAP_VAR = re.compile(r"^RTAP_(?P<section>[A-Z_]+?)(?:__(?P<field>[A-Z_]+))?$")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEYS?$|CLUSTER_ID")
DUMMY = {name: f"dummy-{name.lower().replace('_', '-')}" for name in cf.example_env()}


def compose_spec() -> dict:
    # The official compose-spec schema, as vendored by the check-jsonschema package.
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    return json.loads(text)


def test_compose_file_follows_the_compose_specification():
    schema = compose_spec()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(cf.load())]
    assert not errors, "\n".join(errors)


def test_every_service_has_a_healthcheck_restart_policy_and_resource_limits():
    for name, service in cf.services().items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, (
            f"{name} has no restart policy"
        )
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") or service.get("mem_limit"), f"{name} has no memory limit"


def test_four_services_run_from_the_repository_images():
    services = cf.services()
    for name in ("ingestion", "storage", "cache"):
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]
        assert name in SERVICES
    assert "flink run" in (cf.COMPOSE_DIR / "submit-jobs.sh").read_text()
    assert services["processing"]["command"][-1].endswith("infrastructure/compose/submit-jobs.sh")


def test_referenced_files_exist():
    for name, service in cf.services().items():
        build = service.get("build")
        if build:
            context = cf.repo_path(build["context"])
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            for source in cf.dockerfile_copies(dockerfile):
                assert list(context.glob(source)), (
                    f"{name}: {dockerfile.name} copies {source}, which does not exist"
                )
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert cf.repo_path(source).exists(), f"{name}: mounted {source} does not exist"
        for word in service.get("command") or []:
            if str(word).startswith("/opt/rtap/"):
                assert (cf.REPO_ROOT / word.removeprefix("/opt/rtap/")).is_file(), f"{name}: {word} missing"
            if str(word).endswith(".py") and not word.startswith("/"):
                assert (cf.REPO_ROOT / word).is_file(), f"{name}: {word} missing"


def test_images_built_from_the_repository_bind_mount_no_source():
    for name, service in cf.services().items():
        if "build" not in service:
            continue
        for volume in service.get("volumes", []):
            assert not volume.startswith((".", "/")), (
                f"{name} bind-mounts {volume}; images must be self-contained"
            )


def test_rtap_variables_are_fields_of_the_settings_model():
    for name, service in cf.services().items():
        for var in cf.environment(service):
            if not var.startswith("RTAP_"):
                continue
            m = RTAP_VAR.match(var)
            section, field = m.group("section").lower(), (m.group("field") or "").lower()
            assert section in Settings.model_fields, f"{name}: {var}: Settings has no field {section}"
            if field:
                model = Settings.model_fields[section].annotation
                assert field in model.model_fields, f"{name}: {var}: {model.__name__} has no field {field}"


@pytest.mark.parametrize("service", ["ingestion", "storage", "cache", "processing", "topics"])
def test_settings_load_from_the_compose_environment(service, monkeypatch):
    env = {k: cf.interpolate(v, DUMMY) for k, v in cf.environment(cf.services()[service]).items()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.env == "production"
    assert settings.kafka.bootstrap == "kafka:9092"
    assert settings.flink.rest_host == "flink-jobmanager"
    assert settings.redis.host == "redis" and settings.redis.password == DUMMY["REDIS_PASSWORD"]
    url = urlsplit(settings.clickhouse.url)
    assert (url.hostname, url.port, url.password) == ("clickhouse", 8123, None)
    assert settings.clickhouse.password == DUMMY["CLICKHOUSE_PASSWORD"]
    assert settings.ingestion.write_keys == [DUMMY["INGESTION_WRITE_KEY"]]
    assert settings.cache.read_keys == [DUMMY["CACHE_READ_KEY"]]
    assert settings.storage.read_keys == [DUMMY["STORAGE_READ_KEY"]]


@pytest.mark.parametrize("service", ["ingestion", "storage", "cache"])
def test_ports_agree_with_settings_healthcheck_and_prometheus(service):
    spec = cf.services()[service]
    port = Settings().model_fields[service].default.port
    assert cf.environment(spec)[f"RTAP_{service.upper()}__PORT"] == str(port)
    assert cf.environment(spec)[f"RTAP_{service.upper()}__HOST"] == "0.0.0.0"
    assert any(p.endswith(f":{port}") for p in spec["ports"]), f"{service} does not publish {port}"
    assert f"127.0.0.1:{port}/healthz" in " ".join(spec["healthcheck"]["test"])
    assert f"{service}:{port}" in prometheus_targets()[service]


def test_flink_and_kafka_metrics_ports_agree_with_prometheus():
    targets = prometheus_targets()
    flink = Settings.model_fields["flink"].default
    assert "metrics.reporter.prom.port: 9249" in cf.load()["x-flink-properties"]
    assert targets["flink-jobmanager"] == [f"flink-jobmanager:{flink.jobmanager_metrics_port}"]
    assert targets["flink-taskmanager"] == ["flink-taskmanager:9249"]
    kafka_port = Settings.model_fields["kafka"].default.jmx_exporter_port
    assert "=9404:" in cf.environment(cf.services()["kafka"])["KAFKA_OPTS"] and kafka_port == 9404
    assert targets["kafka"] == [f"kafka:{kafka_port}"]
    for job, addresses in targets.items():
        for address in addresses:
            host = address.split(":")[0]
            assert host == "localhost" or host in cf.services(), (
                f"prometheus job {job} scrapes unknown host {host}"
            )


def prometheus_targets() -> dict[str, list[str]]:
    config = yaml.safe_load((cf.REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    return {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }


def test_secrets_come_only_from_the_env_file_without_defaults():
    example = cf.example_env()
    for match in cf.variables():
        name = match.group("name")
        assert name in example, f"${{{name}}} is not listed in .env.example"
        if SECRET_NAME.search(name):
            assert match.group("op") == ":?", (
                f"${{{name}}} must be required (${{{name}:?...}}), never defaulted"
            )
    assert all(value == "" for value in example.values()), ".env.example must hold names only, no values"


def test_no_literal_password_or_key_in_the_deployment():
    for name, service in cf.services().items():
        for key, value in cf.environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_OPTS"):
                assert "${" in value, f"{name}: {key} holds a literal value"
            userinfo = re.search(r"://[^:/@]+:(.+)@", value)
            if userinfo:
                assert userinfo.group(1).startswith("${"), f"{name}: {key} embeds a literal password"
    for path in [cf.COMPOSE_FILE, *cf.COMPOSE_DIR.glob("*Dockerfile"), cf.COMPOSE_DIR / "submit-jobs.sh"]:
        for line in path.read_text().splitlines():
            assert not literal_secret(line), f"{path.name}: literal secret in: {line.strip()}"


LITERAL_SECRET = re.compile(r"(?i)((password|passwd|secret)\w*(:\s+|=)|--requirepass\s+)(?![\"']?\$)[\"']?\w")


def literal_secret(line: str) -> bool:
    return not line.lstrip().startswith("#") and bool(LITERAL_SECRET.search(line))


@pytest.mark.parametrize(
    "line, literal",
    [
        ("CLICKHOUSE_PASSWORD: hunter2", True),
        ("REDIS_PASSWORD=hunter2", True),
        ("--requirepass secret", True),
        ('GF_SECURITY_ADMIN_PASSWORD: "admin"', True),
        ("CLICKHOUSE_PASSWORD: ${CLICKHOUSE_PASSWORD:?set CLICKHOUSE_PASSWORD in .env}", False),
        ('--requirepass "$$REDIS_PASSWORD"', False),
    ],
)
def test_literal_secret_detector(line, literal):
    assert literal_secret(line) is literal


def test_kafka_image_uses_the_jmx_exporter_version_of_the_local_runtime():
    pom = (cf.REPO_ROOT / "infrastructure" / "local" / "maven" / "kafka.xml").read_text()
    local = re.search(r"jmx_prometheus_javaagent</artifactId><version>([^<]+)<", pom).group(1)
    dockerfile = (cf.COMPOSE_DIR / "kafka.Dockerfile").read_text()
    assert f"ARG JMX_EXPORTER_VERSION={local}" in dockerfile
    kafka_version = re.search(r"kafka_2\.13</artifactId><version>([^<]+)<", pom).group(1)
    assert f"apache/kafka:{kafka_version}" in dockerfile


def test_flink_image_matches_the_pyflink_and_connector_versions():
    from importlib.metadata import version

    dockerfile = (cf.COMPOSE_DIR / "flink.Dockerfile").read_text()
    assert f"FROM flink:{version('apache-flink')}-" in dockerfile
    assert "infrastructure/local/maven/flink.xml" in dockerfile
    assert "COPY services/processing/udf " in dockerfile and "rtap-udf.jar /jars/" in dockerfile
    udf_pom = (cf.REPO_ROOT / "services" / "processing" / "udf" / "pom.xml").read_text()
    assert re.search(r"flink-table-common</artifactId><version>([^<]+)<", udf_pom).group(1) == version(
        "apache-flink"
    )


def test_redis_exporter_is_pinned_scrapes_redis_and_is_scraped():
    exporter = cf.services()["redis-exporter"]
    image, _, tag = exporter["image"].partition(":")
    assert image == "oliver006/redis_exporter" and re.match(r"v\d+\.\d+\.\d+", tag), (
        f"unpinned image {exporter['image']}"
    )
    env = cf.environment(exporter)
    assert env["REDIS_ADDR"] == "redis://redis:6379" and env["REDIS_PASSWORD"].startswith(
        "${REDIS_PASSWORD:?"
    )
    assert prometheus_targets()["redis"] == ["redis-exporter:9121"]
    assert Settings.model_fields["redis"].default.exporter_port == 9121
