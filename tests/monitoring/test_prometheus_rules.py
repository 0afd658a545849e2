"""Prometheus configuration, recording and alert rules checked and unit-tested with promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infrastructure.local.prometheus_config import local_targets, write_local_config

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
ALERTS = {
    "ConsumerLagGrowing",
    "DeadLetterRecords",
    "NoWindowsEmitted",
    "Api5xxErrors",
    "KafkaProduceFailures",
    "LateEventsDropped",
    "TimestampsAdjusted",
    "RedisMemoryNearLimit",
    "CacheWritesRefused",
}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    if not shutil.which("promtool"):
        pytest.fail(
            "promtool is missing: it comes with the Debian prometheus package that `rtap setup` installs"
        )
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-ha.yml"])
def test_compose_config_and_rules_are_valid(config):
    out = promtool("check", "config", config)
    assert "SUCCESS" in out


def test_local_config_is_valid_and_scrapes_every_job_locally(settings, tmp_path):
    config_file = write_local_config(settings, PROMETHEUS_DIR, tmp_path)
    promtool("check", "config", str(config_file))
    jobs = {job["job_name"]: job for job in yaml.safe_load(config_file.read_text())["scrape_configs"]}
    assert set(jobs) == set(local_targets(settings)), "every scrape job needs a local target"
    for name, targets in local_targets(settings).items():
        assert jobs[name]["static_configs"] == [{"targets": targets}]


def test_every_required_alert_is_defined_and_unit_tested():
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "rtap.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}
    assert alerts >= ALERTS
    tested = set()
    for test_file in (PROMETHEUS_DIR / "tests").glob("*.test.yml"):
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts - {"ScrapeTargetDown"} <= tested, f"alerts never shown firing in a test: {alerts - tested}"


@pytest.mark.parametrize("test_file", sorted(p.name for p in (PROMETHEUS_DIR / "tests").glob("*.test.yml")))
def test_rule_unit_tests_pass(test_file):
    assert "SUCCESS" in promtool("test", "rules", f"tests/{test_file}")
