"""Every setting has one source: topic names, the Flink REST address, hosts and the sessions job are read
from the settings (or derived from the job registry) by every process, so overriding one never splits the
pipeline."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from services.cache.consumer import cache_consumer
from services.cache.consumer import processors as cache_processors
from services.cache.layout import layouts, sessions_job
from services.processing.coordinator import JobCoordinator
from services.processing.driver import remote_config
from services.processing.registry import load_schemas
from services.processing.supervisor import FlinkRest
from services.storage.consumer import processors as storage_processors
from services.storage.consumer import storage_consumer, tables
from shared.metric_schema import Column, MetricSchema
from shared.settings import Settings
from shared.topics import topics

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where a loopback address may be written: the settings' one default, and the load generator's check that a
# --url is this machine (a list of loopback names, not an address to connect to).
LOOPBACK_ALLOWED = {"shared/settings.py", "services/loadgen/commands.py"}


def overridden(tmp_path: Path) -> Settings:
    names = {"events": "ev_x", "dead_letter": "dl_x", "metric_prefix": "p_"}
    return Settings(
        state_dir=tmp_path, topics=names, flink={"rest_host": "jobmanager.internal", "rest_port": 18081}
    )


def test_topic_settings_reach_every_reader_and_writer(tmp_path):
    s = overridden(tmp_path)
    schemas = load_schemas()
    coordinator = JobCoordinator(s)
    assert "'topic' = 'ev_x'" in coordinator.source_ddl()
    assert "'topic' = 'p_event_metrics'" in coordinator.sink_ddl(schemas["event_metrics"])
    metric_topics = {f"p_{name}" for name in schemas}
    assert set(storage_processors(s, schemas)) == set(tables(s, schemas)) == {"ev_x", *metric_topics}
    assert set(cache_processors(s, layouts("test", schemas.values()))) == metric_topics
    assert {t.name for t in topics(s).all(schemas.values())} == {"ev_x", "dl_x", *metric_topics}


def test_both_sinks_send_dead_letters_to_the_configured_topic(tmp_path):
    """The consumer pipeline is told the dead-letter topic; storage and cache pass topics(settings)'s."""
    s = overridden(tmp_path)
    schemas = load_schemas()
    for pipeline in (
        storage_consumer(s, None, threading.Lock(), schemas),  # type: ignore[arg-type]
        cache_consumer(s, layouts("test", schemas.values())),
    ):
        pipeline.consumer.close()
        assert pipeline.writer.dead_letter_topic == "dl_x"


def test_the_flink_rest_address_is_one_setting(tmp_path):
    s = overridden(tmp_path)
    s.pipeline_jars_file.parent.mkdir(parents=True)
    s.pipeline_jars_file.write_text(json.dumps([str(tmp_path / "connector.jar")]))
    assert s.flink.rest_url == "http://jobmanager.internal:18081"
    assert FlinkRest(s).base == s.flink.rest_url
    config = remote_config(s, None)
    assert (config["rest.address"], config["rest.port"]) == ("jobmanager.internal", "18081")
    assert config["pipeline.jars"] == (tmp_path / "connector.jar").as_uri()


def test_the_driver_refuses_to_guess_jars_that_were_never_prepared(tmp_path):
    with pytest.raises(RuntimeError, match="rtap setup"):
        remote_config(Settings(state_dir=tmp_path), None)


def test_a_wildcard_bind_is_reached_over_loopback():
    s = Settings(storage={"host": "0.0.0.0", "port": 18090}, cache={"host": "cache.internal", "port": 18080})
    assert (s.storage.url, s.cache.url) == ("http://127.0.0.1:18090", "http://cache.internal:18080")


def test_no_product_code_writes_a_loopback_address_outside_the_settings():
    found = []
    for path in [*REPO_ROOT.glob("shared/**/*.py"), *REPO_ROOT.glob("services/**/*.py")]:
        name = str(path.relative_to(REPO_ROOT))
        if name in LOOPBACK_ALLOWED:
            continue
        found += [
            f"{name}:{n}"
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"127\.0\.0\.1|localhost|\[?::1\]?\b", line)
        ]
    assert not found, found


def schema(name: str, *keys: str) -> MetricSchema:
    columns = (
        Column("window_start", "timestamp_ms"),
        Column("window_end", "timestamp_ms"),
        *(Column(k, "string") for k in keys),
    )
    return MetricSchema(name, columns, ("window_start", *keys))


def test_the_sessions_job_is_derived_from_the_registry():
    assert sessions_job(load_schemas().values()) == "session_metrics"
    assert sessions_job([schema("by_url", "url")]) is None


def test_a_configured_sessions_job_is_checked_against_the_registry():
    both = [schema("sessions_a", "session_id"), schema("sessions_b", "session_id"), schema("by_url", "url")]
    assert sessions_job(both, "sessions_b") == "sessions_b"
    with pytest.raises(ValueError, match="choose one"):
        sessions_job(both)
    for wrong in ("by_url", "no_such_job"):
        with pytest.raises(ValueError, match="not a job keyed by session_id"):
            sessions_job(both, wrong)
