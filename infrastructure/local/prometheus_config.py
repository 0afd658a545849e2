"""Generate the local Prometheus config from monitoring/prometheus: same jobs, local targets."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from shared.settings import Settings, instance_port


def local_targets(settings: Settings) -> dict[str, list[str]]:
    """Each scrape job's local targets: one per process, every instance of a replicated one."""
    k, f = settings.kafka, settings.flink
    return {
        "prometheus": [f"127.0.0.1:{settings.prometheus.port}"],
        "ingestion": [f"127.0.0.1:{settings.ingestion.port}"],
        "storage": [f"127.0.0.1:{settings.storage.port}"],
        "cache": [
            f"127.0.0.1:{instance_port(settings.cache.port, i)}" for i in range(settings.cache.instances)
        ],
        "processing": [f"127.0.0.1:{settings.processing.port}"],
        "flink-jobmanager": [f"127.0.0.1:{f.jobmanager_metrics_port}"],
        "flink-taskmanager": [f"127.0.0.1:{f.taskmanager_port(i)}" for i in range(f.taskmanagers)],
        "kafka": [f"127.0.0.1:{instance_port(k.jmx_exporter_port, i)}" for i in range(k.brokers)],
        "redis": [f"127.0.0.1:{settings.redis.exporter_port}"],
    }


def write_local_config(settings: Settings, source: Path, target: Path) -> Path:
    config = yaml.safe_load((source / "prometheus.yml").read_text())
    targets = local_targets(settings)
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    target.mkdir(parents=True, exist_ok=True)
    rules = target / "rules"
    shutil.rmtree(rules, ignore_errors=True)
    shutil.copytree(source / "rules", rules)
    out = target / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out
